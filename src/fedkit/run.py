"""The one run loop, shared by simulation and deployment.

For each round: sample a cohort → broadcast → execute (any executor) → aggregate result →
server update → the aggregator's next state → evaluate every ``eval_every`` rounds → callbacks →
checkpoint. A round in which no client finished, or whose aggregate the aggregator refuses to
release (:class:`~fedkit.aggregate.AggregationAborted`: secure aggregation below its threshold),
leaves the model (and the aggregator's state) unchanged and is recorded as not committed; when
the aggregator can refuse (a chain stage with ``may_abort = True``), the clients' own state
(SCAFFOLD's control variates, personal layers) is taken before the round and put back after a
refusal, so it advances only with a committed round. The
sampled cohort is in the round's :class:`~fedkit.algorithm.RoundInfo` (``cohort``) from
broadcast on.

The loop holds the aggregator's state across rounds (:data:`fedkit.aggregate.AggState`, e.g.
adaptive clipping's clip norm): ``init_state`` before round 0, in each round's
:class:`~fedkit.algorithm.RoundInfo` (so every client's and the server's aggregation context
carry it, under any executor and in deployment), ``next_state`` after a committed round's
``result``, and in the checkpoint with the server state.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from torch import Tensor, nn

from fedkit.aggregate import AggregationAborted, AggState, init_state, next_state
from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.checkpoint import (
    Checkpointer,
    CheckpointError,
    FileCheckpointer,
    RunKey,
    split_agg_state,
    with_agg_state,
)
from fedkit.client import server_context
from fedkit.evaluate import Distribution, EvalResult, evaluate
from fedkit.executor import ClientMetrics, Executor, RoundOutput
from fedkit.params import Params, load_params
from fedkit.samplers.importance import with_inclusion
from fedkit.sampling import ClientSampler, Population, UniformSampler, draw_cohort

S = TypeVar("S")
log = logging.getLogger("fedkit.run")

Evaluator = Callable[[Params], EvalResult]
"""Scores global parameters on held-out data (centralised evaluation)."""


def central_evaluator(
    model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 1000
) -> Evaluator:
    """An :data:`Evaluator` that loads parameters into ``model`` and scores it on ``(x, y)``."""

    def score(params: Params) -> EvalResult:
        load_params(model, params)
        return evaluate(model, x, y, batch_size=batch_size)

    return score


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunConfig:
    """How long to run and how often to evaluate and checkpoint.

    Attributes:
        rounds: number of rounds (>= 1).
        clients_per_round: cohort size, 1 ≤ k ≤ number of clients.
        seed: the root of every random draw.
        eval_every: centralised evaluation every k rounds (and after the last); 0 disables it.
        federated_eval_every: federated evaluation every k rounds (and after the last); 0 disables.
        checkpoint_dir: where to checkpoint after every committed round and resume from.
        checkpoint_every: checkpoint after every k-th committed round (and after the last
            round) instead of after each; a resume repeats the rounds after the last checkpoint,
            exactly, since every draw derives from ``(seed, round, client)``. Saves a run whose
            checkpoint is large (every client's error-feedback residual) most of its writes.
    """

    rounds: int
    clients_per_round: int
    seed: int = 0
    eval_every: int = 1
    federated_eval_every: int = 0
    checkpoint_dir: Path | None = None
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.clients_per_round < 1:
            raise ValueError(f"clients_per_round must be >= 1, got {self.clients_per_round}")
        if self.eval_every < 0 or self.federated_eval_every < 0:
            raise ValueError("eval_every and federated_eval_every must be >= 0 (0 disables)")
        if self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")

    def validate_population(self, num_clients: int) -> None:
        """Fail clearly when the cohort is larger than the population."""
        if self.clients_per_round > num_clients:
            raise ValueError(
                f"clients_per_round = {self.clients_per_round} exceeds the number of clients "
                f"({num_clients}); allowed values: 1 to {num_clients}"
            )


@dataclasses.dataclass(frozen=True)
class RoundRecord:
    """What happened in one round (what callbacks, progress bars and result stores consume)."""

    round: int
    cohort: tuple[int, ...]
    clients: tuple[ClientMetrics, ...]
    dropped: tuple[int, ...]
    committed: bool
    train_loss: float
    central: EvalResult | None
    federated: Distribution | None
    bytes_up: int
    bytes_down: int
    wall_seconds: float
    sim_seconds: float | None
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)


class Probe(Protocol):
    """A named measurement of the global model after a round (e.g. an attack's backdoor
    accuracy, a privacy accountant's ε); its values go to :attr:`RoundRecord.metrics`."""

    def __call__(self, params: Params, info: RoundInfo) -> Mapping[str, float]:
        """The round's values by name (empty when the probe has nothing to say this round)."""
        ...


class Callback(Protocol):
    """Observes the run after each round."""

    def __call__(self, record: RoundRecord, params: Params) -> None:
        """Called with the round's record and the global parameters after it."""
        ...


@dataclasses.dataclass(frozen=True)
class RunResult(Generic[S]):
    """The final server state and the history of the rounds this call ran (``agg_state``: the
    aggregator's state after the last round, empty for a stateless aggregator)."""

    state: S
    params: Params
    history: list[RoundRecord]
    start_round: int
    stopped: str | None = None
    agg_state: AggState = ()


def _may_abort(aggregator: Any) -> bool:
    """Whether a stage of the chain (following ``inner``) declares ``may_abort = True``: its
    ``result`` may raise :class:`~fedkit.aggregate.AggregationAborted` (secure aggregation)."""
    stage = aggregator
    while stage is not None:
        if getattr(stage, "may_abort", False) is True:
            return True
        stage = getattr(stage, "inner", None)
    return False


def _client_states(executor: Executor) -> dict[str, Tensor]:
    """A copy of every client's state (to put back if the round is refused)."""
    return {k: v.clone() for k, v in executor.client_state_tensors().items()}


def _train_loss(clients: Sequence[ClientMetrics]) -> float:
    n = sum(c.num_examples for c in clients if not math.isnan(c.train_loss))
    if n == 0:
        return float("nan")
    return sum(c.train_loss * c.num_examples for c in clients if not math.isnan(c.train_loss)) / n


def _due(every: int, r: int, rounds: int) -> bool:
    return every > 0 and ((r + 1) % every == 0 or r + 1 == rounds)


def _save_due(config: RunConfig, unsaved: int, r: int) -> bool:
    """Checkpoint now: ``checkpoint_every`` committed rounds are unsaved, or round ``r`` is the
    last."""
    return unsaved >= config.checkpoint_every or r + 1 == config.rounds


def _executor_losses(executor: Executor) -> Callable[[Params, Sequence[int]], dict[int, float]]:
    """Candidates' losses on the global model: the executor's evaluation on their local data."""

    def losses(params: Params, clients: Sequence[int]) -> dict[int, float]:
        return {e.client_id: e.result.loss for e in executor.evaluate(params, clients)}

    return losses


def run(
    algorithm: Algorithm[S, Any, Any, Any],
    executor: Executor,
    initial_params: Params,
    config: RunConfig,
    *,
    evaluator: Evaluator | None = None,
    sampler: ClientSampler | None = None,
    callbacks: Sequence[Callback] = (),
    checkpointer: Checkpointer | None = None,
    probes: Sequence[Probe] = (),
    stop: Callable[[RoundInfo], str | None] | None = None,
    population: Population | None = None,
) -> RunResult[S]:
    """Run ``config.rounds`` rounds of ``algorithm`` on ``executor`` (see module docstring).

    With a ``checkpointer`` (or ``config.checkpoint_dir``, a :class:`FileCheckpointer` there), an
    existing checkpoint is resumed from, and each committed round is checkpointed after the
    callbacks saw it; a resumed run ends with the same model as an uninterrupted one. Every
    probe is called after each round's server update; what they return is the round's
    ``metrics``. ``stop`` is asked before each round; a reason it returns ends the run there
    (e.g. a privacy budget the round would exceed), as :attr:`RunResult.stopped`.
    ``population`` is what samplers may read (data sizes, availability; candidates' losses
    default to the executor's evaluation of the current model); an ``importance`` aggregator
    is given the sampler's inclusion probabilities from it before round 0.
    """
    num_clients = executor.num_clients
    config.validate_population(num_clients)
    sampler = sampler or UniformSampler()
    pop = population or Population(num_clients)
    if pop.num_clients != num_clients:
        raise ValueError(f"population has {pop.num_clients} clients, the executor {num_clients}")
    if pop.local_loss is None:
        pop = dataclasses.replace(pop, local_loss=_executor_losses(executor))
    state = algorithm.init_state(initial_params)
    agg_state = init_state(algorithm.aggregator)
    may_abort = _may_abort(algorithm.aggregator)
    start = 0
    key = RunKey(algorithm=algorithm.name, seed=config.seed)
    ckpt = checkpointer
    if config.checkpoint_dir is not None:
        if ckpt is not None:
            raise ValueError("give config.checkpoint_dir or a checkpointer, not both")
        ckpt = FileCheckpointer(config.checkpoint_dir)
    if ckpt is not None:
        try:
            restored = ckpt.load(with_agg_state(state, agg_state), key)
        except CheckpointError as e:
            if not agg_state:
                raise
            raise CheckpointError(
                f"{e} (this run's aggregator keeps state {[n for n, _ in agg_state]} across "
                "rounds: a checkpoint of a run without it cannot be resumed)"
            ) from e
        if restored is not None:
            state, agg_state = split_agg_state(restored.state, agg_state)
            start = restored.completed_rounds
            template = algorithm.client_state_template(initial_params)
            if restored.client_tensors and template is not None:
                executor.load_client_state_tensors(restored.client_tensors, template)
    history: list[RoundRecord] = []
    stopped: str | None = None
    unsaved = 0  # committed rounds since the last checkpoint
    for r in range(start, config.rounds):
        t0 = time.perf_counter()
        info = RoundInfo(
            round=r,
            seed=config.seed,
            num_clients=num_clients,
            cohort_size=config.clients_per_round,
            agg_state=agg_state,
        )
        if r == start:
            algorithm = with_inclusion(algorithm, sampler, pop, config.clients_per_round, info)
        stopped = stop(info) if stop is not None else None
        if stopped is not None:
            break
        view = dataclasses.replace(pop, params=algorithm.global_params(state))
        cohort = draw_cohort(sampler, view, config.clients_per_round, info)
        info = dataclasses.replace(info, cohort=tuple(int(c) for c in cohort))
        msg = algorithm.broadcast(state, info)
        before = _client_states(executor) if may_abort else None
        out: RoundOutput = executor.execute(algorithm, msg, cohort, info)
        committed = out.accumulator is not None
        if committed:
            server_ctx = server_context(info)
            try:
                agg = algorithm.aggregator.result(out.accumulator, server_ctx)
            except AggregationAborted as err:  # e.g. secure aggregation below its threshold
                log.warning("round %d not committed: %s", r, err)
                committed = False
                template = algorithm.client_state_template(initial_params)
                if before is not None and template is not None:
                    executor.load_client_state_tensors(before, template)
        if committed:
            done = dataclasses.replace(info, reported=len(out.clients))
            state = algorithm.server_update(state, agg, done)
            agg_state = next_state(algorithm.aggregator, out.accumulator, agg_state, server_ctx)
        params = algorithm.global_params(state)
        central = (
            evaluator(params) if evaluator and _due(config.eval_every, r, config.rounds) else None
        )
        metrics: dict[str, float] = {}
        for probe in probes:
            metrics.update(probe(params, info))
        federated = None
        if _due(config.federated_eval_every, r, config.rounds):
            evals = executor.evaluate(params, range(num_clients), algorithm, info)
            federated = Distribution.of(evals)
        record = RoundRecord(
            round=r,
            cohort=tuple(cohort),
            clients=out.clients,
            dropped=out.dropped,
            committed=committed,
            train_loss=_train_loss(out.clients),
            central=central,
            federated=federated,
            bytes_up=out.bytes_up,
            bytes_down=out.bytes_down,
            wall_seconds=time.perf_counter() - t0,
            sim_seconds=out.sim_seconds,
            metrics=metrics,
        )
        history.append(record)
        for cb in callbacks:
            cb(record, params)
        unsaved += committed
        if ckpt is not None and unsaved and _save_due(config, unsaved, r):
            ckpt.save(r + 1, with_agg_state(state, agg_state), executor.client_state_tensors(), key)
            unsaved = 0
    return RunResult(
        state=state,
        params=algorithm.global_params(state),
        history=history,
        start_round=start,
        stopped=stopped,
        agg_state=agg_state,
    )
