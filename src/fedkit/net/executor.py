"""The remote executor: runs a round's cohort on workers behind the coordinator.

``execute`` is the :class:`fedkit.executor.Executor` contract, so the coordinator drives the one
run loop (:func:`fedkit.run.run`) exactly as the simulator does. One round:

1. wait (up to ``select_timeout_s``) until enough selected clients have a live worker;
2. over-selection: with ``over_selection > 1``, extra clients (drawn from the server RNG stream of
   the round) are asked too and the first ``clients_per_round`` results win; a cohort member whose
   worker is suspended (it kept missing its tasks, see :class:`~fedkit.net.broker.Broker`) gets a
   stand-in drawn the same way, so it no longer makes the round wait its deadline;
3. the broadcast message is encoded once (safetensors chunks) and published with a deadline;
   each client's task also carries the few numbers its aggregator steps need from the server
   (:func:`fedkit.aggregate.client_values`, e.g. its inclusion probability for the
   importance-corrected mean);
4. results are validated as they stream in (see :class:`~fedkit.net.broker.Broker`); the phase
   ends when enough results arrived, every outstanding worker is gone, or the deadline passes;
5. results are added to the algorithm's aggregator as they arrive but **in ascending client id
   order** (a result waits only for lower ids still outstanding) — the serial executor's order, so
   a seeded run is bit-identical to the simulator; with ``deploy.fold = "arrival"`` each is added
   the moment it arrives, so memory stays one accumulator whatever the cohort. With at least
   ``ceil(quorum * clients_per_round)`` results the round commits; otherwise the attempt is
   aborted (model unchanged) and retried ``round_retries`` times, then skipped or the run stopped
   (``on_abort``).

Every worker's round-trip time is recorded each round and feeds the straggler policy.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from fedkit.aggregate import NonFiniteUpdateError, check_finite, client_values
from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.evaluate import ClientEval, EvalResult
from fedkit.executor import ClientMetrics, RoundOutput
from fedkit.net.broker import Assignment, Broker, Result
from fedkit.net.codec import Buffer, split
from fedkit.net.deployment import DeploySettings
from fedkit.net.errors import ErrorCode, NetError
from fedkit.net.payload import (
    EvalMeta,
    ResultMeta,
    check_tree_header,
    decode_tree,
    encode_tree,
    info_metadata,
)
from fedkit.net.proto import fedkit_pb2 as pb
from fedkit.net.state import RoundRow, RttRow
from fedkit.net.straggler import StragglerPolicy
from fedkit.params import Params
from fedkit.rng import SERVER, generator

log = logging.getLogger("fedkit.coordinator")


class RoundHook(Protocol):
    """Steps a chain stage plays with the workers around training (secure aggregation's key
    rounds, :mod:`fedkit.net.secagg_coordinator`)."""

    def before_train(self, asked: Sequence[int], info: RoundInfo) -> list[int]:
        """Run before an attempt's training tasks; returns the clients to ask to train."""
        ...

    def screen(self, client: int, update: Any) -> None:
        """Refuse a decoded update before it is added (``NetError``: the client is dropped)."""
        ...


class QuorumError(RuntimeError):
    """A round missed its quorum after every retry and ``on_abort = "stop"``."""


class RemoteExecutor:
    """Executes cohorts on remote workers (see module docstring).

    Args:
        broker: The coordinator's task board (served by the gRPC servicer).
        num_clients: Size of the client population (the experiment's ``num_clients``).
        settings: Round policy.
        update_template: A client update shaped as this algorithm's (after ``prepare``); results
            are checked against it before they are used.
        on_round: Called with each attempt's record and its round trips (the coordinator stages
            them for its SQLite commit).
        round_hook: Steps to play with the workers before each attempt's training, and a screen
            of each update (secure aggregation).
    """

    def __init__(
        self,
        broker: Broker,
        *,
        num_clients: int,
        settings: DeploySettings,
        update_template: Any,
        on_round: Callable[[RoundRow, list[RttRow]], None] | None = None,
        round_hook: RoundHook | None = None,
    ) -> None:
        self.broker = broker
        self.round_hook = round_hook
        self._num_clients = num_clients
        self.settings = settings
        self.update_template = update_template
        self.on_round = on_round
        self._last_info = RoundInfo(round=0, seed=0, num_clients=num_clients, cohort_size=0)
        self.last_evals: list[ClientEval] = []
        """The per-client evaluations of the last :meth:`evaluate` (for the results database)."""
        self.stragglers = StragglerPolicy(
            enabled=settings.balance_stragglers, min_fraction=settings.min_work_fraction
        )

    @property
    def num_clients(self) -> int:
        """Population size."""
        return self._num_clients

    def _extras(self, cohort: Sequence[int], info: RoundInfo) -> list[int]:
        """Over-selected clients, plus one stand-in per suspended cohort member (a worker that
        kept missing its tasks), drawn from the live clients outside the cohort."""
        suspended = {int(c) for c in self.broker.suspended_clients() if c.isdigit()}
        want = math.ceil(self.settings.over_selection * len(cohort)) - len(cohort)
        want += len(suspended & set(cohort))
        if want <= 0:
            return []
        live = {int(c) for c in self.broker.live_clients() if c.isdigit()}
        pool = sorted(live - set(cohort))
        if not pool:
            return []
        g = generator(info.seed, info.round, SERVER, "over-selection")
        order = torch.randperm(len(pool), generator=g).tolist()
        return sorted(pool[i] for i in order[:want])

    def _check(self, payload: Buffer, complete: bool) -> tuple[Any, dict[str, str]] | None:
        """A result is refused on arrival (typed ``MALFORMED``, the worker is told) when its
        metadata is invalid, its weight is not bounded by its example count (see
        :func:`check_weight`), or (once complete) any update tensor holds a NaN or infinite
        value. Returns the complete payload decoded (zero-copy views of it), which the fold
        then uses."""
        meta = ResultMeta.from_metadata(check_tree_header(payload, self.update_template))
        check_weight(meta, self.settings.max_client_examples)
        if not complete:
            return None
        decoded = decode_tree(payload, self.update_template)
        try:
            check_finite(decoded[0])
        except NonFiniteUpdateError as err:
            raise NetError(ErrorCode.MALFORMED, str(err)) from None
        return decoded

    def execute(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:
        """Run ``cohort`` on the workers; aggregate in ascending client id order."""
        s = self.settings
        need = max(1, math.ceil(s.quorum * len(cohort)))
        self._last_info = info
        payload = encode_tree(msg, info_metadata(info))
        shared = Assignment.of(split(payload), len(payload))  # serialised once per round
        for attempt in range(s.round_retries + 1):
            out = self._attempt(algorithm, payload, shared, cohort, info, attempt, need)
            if out.accumulator is not None:
                return out
        if s.on_abort == "stop":
            raise QuorumError(
                f"round {info.round}: fewer than {need} of {len(cohort)} results after "
                f"{s.round_retries + 1} attempt(s); deploy.on_abort = 'stop'"
            )
        return out

    def _attempt(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        payload: bytes,
        shared: Assignment,
        cohort: Sequence[int],
        info: RoundInfo,
        attempt: int,
        need: int,
    ) -> RoundOutput:
        s = self.settings
        t0 = time.perf_counter()
        wanted = {str(c) for c in cohort}
        self.broker.wait_for_clients(wanted, need, s.select_timeout_s)
        asked = sorted({*cohort, *self._extras(cohort, info)})
        if self.round_hook is not None:
            asked = self.round_hook.before_train(asked, info)
        fractions = {c: self.stragglers.fraction(c) for c in asked}
        agg = algorithm.aggregator  # resolved by the run loop: each client's values go with it
        self.broker.open_round(
            info.round,
            {str(c): shared.with_fraction(fractions[c], client_values(agg, c)) for c in asked},
            deadline_s=s.deadline_s,
            result_check=self._check,
        )
        folder = _OrderedFold(
            algorithm, self.update_template, order=asked, limit=len(cohort), info=info,
            attempt=attempt, by_arrival=s.fold == "arrival", hook=self.round_hook,
        )  # fmt: skip
        self.broker.collect(want=len(cohort), on_result=folder.offer)
        folder.finish()
        accepted, acc, metrics, rtts, bytes_up = (
            folder.accepted, folder.acc, folder.metrics, folder.rtts, folder.bytes_up
        )  # fmt: skip
        for trip in rtts:
            self.stragglers.observe(trip.client_id, trip.rtt_s, trip.work_fraction)
        committed = len(accepted) >= need
        dropped = tuple(sorted(set(cohort) - set(accepted))) if committed else tuple(cohort)
        out = RoundOutput(
            accumulator=acc if committed else None,
            clients=tuple(metrics),
            dropped=dropped,
            bytes_down=len(payload) * len(asked),
            bytes_up=bytes_up,
        )
        if self.on_round is not None:
            row = RoundRow(
                round=info.round, attempt=attempt, committed=committed, cohort=tuple(cohort),
                accepted=tuple(sorted(accepted)), dropped=dropped, train_loss=None, accuracy=None,
                bytes_up=bytes_up, bytes_down=out.bytes_down, wall_s=time.perf_counter() - t0,
            )  # fmt: skip
            self.on_round(row, rtts)
        return out

    def evaluate(
        self,
        params: Params,
        clients: Sequence[int],
        algorithm: Algorithm[Any, Any, Any, Any] | None = None,
        info: RoundInfo | None = None,
    ) -> list[ClientEval]:
        """Federated evaluation on the workers: each live listed client scores ``params`` on its
        own local test data (clients without any are left out, as in the simulator).

        Uses the round of the last :meth:`execute` (``info`` is not needed: the task carries that
        round, and a worker trains a personal model on its stream); workers that miss the
        deadline are left out.
        """
        live = {int(c) for c in self.broker.live_clients() if c.isdigit()}
        asked = sorted(live & set(clients))
        if not asked:
            self.last_evals = []
            return []
        payload = encode_tree(dict(params), info_metadata(self._last_info))
        task = Assignment.of(split(payload), len(payload), kind=pb.EVALUATE)
        self.broker.open_round(
            self._last_info.round,
            {str(c): task for c in asked},
            deadline_s=self.settings.deadline_s,
            result_check=self._check_eval,
        )
        results = self.broker.collect(want=len(asked))
        evals: list[ClientEval] = []
        for cid in sorted(int(c) for c in results):
            _, meta = decode_tree(results[str(cid)].payload, {})
            m = EvalMeta.from_metadata(meta)
            if m.num_examples > 0:
                r = EvalResult(loss=m.loss, accuracy=m.accuracy, num_examples=m.num_examples)
                own = None
                if m.personal_loss is not None and m.personal_accuracy is not None:
                    own = EvalResult(
                        loss=m.personal_loss,
                        accuracy=m.personal_accuracy,
                        num_examples=m.num_examples,
                    )
                evals.append(ClientEval(client_id=cid, result=r, personal=own))
        self.last_evals = evals
        return evals

    def _check_eval(self, payload: Buffer, complete: bool) -> None:
        """An evaluation is refused on arrival (``MALFORMED``) when its loss is not finite, its
        accuracy is outside [0, 1] or it declares more than ``max_client_examples`` examples."""
        m = EvalMeta.from_metadata(check_tree_header(payload, {}))
        _check_examples("evaluation", m.num_examples, self.settings.max_client_examples)

    def client_state_tensors(self) -> dict[str, Tensor]:
        """Workers keep their own client state: nothing to checkpoint here."""
        return {}

    def load_client_state_tensors(self, flat: dict[str, Tensor], template: Any) -> None:
        """Nothing to restore (client state lives on the workers)."""


def check_weight(meta: ResultMeta, max_examples: int) -> None:
    """Bound a self-reported aggregation weight by the client's declared example count.

    fedkit's client weights are the example count ``n_i`` (FedAvg's ``n_i / n`` weighting,
    McMahan et al. 2017) or 1 (uniform weighting), so an honest weight lies in
    ``(0, max(1, n_i)]``; ``n_i`` itself must not exceed the coordinator's
    ``deploy.max_client_examples``. A weight of 1e300 (one client replacing the model) or 0 (a
    cohort of one with nothing to average) is refused: the client is dropped from the round.

    Raises:
        NetError: ``MALFORMED``, naming the weight, the count and the limit.
    """
    n = meta.num_examples
    _check_examples("result", n, max_examples)
    if not 0.0 < meta.weight <= max(1, n):
        raise NetError(
            ErrorCode.MALFORMED,
            f"result weight {meta.weight!r} outside (0, max(1, num_examples = {n})]",
        )


def _check_examples(what: str, n: int, max_examples: int) -> None:
    """Refuse (``MALFORMED``) a ``what`` declaring more than ``deploy.max_client_examples``."""
    if n > max_examples:
        raise NetError(
            ErrorCode.MALFORMED,
            f"{what} declares {n} examples; deploy.max_client_examples is {max_examples}",
        )


class _OrderedFold:
    """Folds results into the aggregator in ascending client-id order as they stream in.

    A result is added as soon as every lower client id of the round is either added or known
    never to come; until then it waits (the only results held in memory). The first ``limit``
    arrivals are accepted (all of them without over-selection); later ones are ignored. The
    order of additions is the sorted order of the accepted clients — the serial executor's —
    whatever the arrival order, which is what makes a seeded deployment bit-identical to it.
    With ``by_arrival`` every accepted result is added at once instead (nothing waits).
    """

    def __init__(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        template: Any,
        *,
        order: list[int],
        limit: int,
        info: RoundInfo,
        attempt: int,
        by_arrival: bool = False,
        hook: RoundHook | None = None,
    ) -> None:
        self.by_arrival = by_arrival
        self.hook = hook
        self.agg = algorithm.aggregator
        self.template = template
        self.order = order
        self.limit = limit
        self.info = info
        self.attempt = attempt
        self.pos = 0
        self.pending: dict[int, Result] = {}
        self.accepted: list[int] = []
        self.acc: Any = None
        self.metrics: list[ClientMetrics] = []
        self.rtts: list[RttRow] = []
        self.bytes_up = 0

    def offer(self, res: Result) -> None:
        """Take one arriving result (ignored past the first ``limit``)."""
        if len(self.accepted) >= self.limit:
            return
        cid = int(res.client_id)
        self.accepted.append(cid)
        if self.by_arrival:
            self._add(cid, res)
            return
        self.pending[cid] = res
        self._drain(final=False)

    def finish(self) -> None:
        """The round is closed: add what waits, skipping clients that never answered."""
        if not self.by_arrival:
            self._drain(final=True)

    def _drain(self, *, final: bool) -> None:
        while self.pos < len(self.order):
            cid = self.order[self.pos]
            res = self.pending.pop(cid, None)
            if res is not None:
                self._add(cid, res)
            elif not final:
                return
            self.pos += 1

    def _add(self, cid: int, res: Result) -> None:
        try:  # validated on arrival already; a failure here drops the client, not the round
            # the arrival check's own decoding of this payload (``_check``), else decode it
            decoded = res.decoded or decode_tree(res.payload, self.template)
            update, meta = decoded
            m = ResultMeta.from_metadata(meta)
            if self.hook is not None:
                self.hook.screen(cid, update)
        except NetError as err:
            log.warning("round %d: result of client %d dropped: %s", self.info.round, cid, err)
            self.accepted.remove(cid)
            return
        zero = self.agg.zero(update) if self.acc is None else self.acc
        self.acc = self.agg.add(zero, update, m.weight)
        self.bytes_up += len(res.payload)
        self.rtts.append(
            RttRow(
                round=self.info.round, attempt=self.attempt, client_id=cid,
                worker_id=res.worker_id, rtt_s=res.rtt_s, compute_s=m.compute_s,
                work_fraction=m.work_fraction, bytes_up=len(res.payload),
            )
        )  # fmt: skip
        self.metrics.append(
            ClientMetrics(
                client_id=cid,
                num_examples=m.num_examples,
                steps=m.steps,
                train_loss=m.train_loss,
                work_fraction=m.work_fraction,
                seconds=res.rtt_s,
            )
        )
