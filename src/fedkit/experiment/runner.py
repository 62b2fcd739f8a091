"""The experiment runner: a validated config in, core objects built, the run executed and recorded.

:func:`run_experiment` builds the federated data (``build_federated`` → ``ClientStore``), the model
(``fedkit.models`` via :class:`fedkit.models.spec.ModelSpec`, initialised from
``derive_seed(run.seed, 0, SERVER, "model-init")`` — the same initial model a deployment builds),
the algorithm and the executor, then drives the one core run loop (:func:`fedkit.run.run`; for
``centralized`` :func:`fedkit.centralized.train_centralized`, one epoch per round; for a
``[parallel]`` experiment :func:`fedkit.parallel.run_parallel`). Callbacks update the progress bar
and write every round (and its clients) to the results store.

Everything that can be checked is checked before the run is inserted into the store: the config
(already typed), the dataset files, the model and the cohort size. Once inserted, the run ends
``completed`` with a :class:`~fedkit.experiment.results.RunSummary`, ``failed`` with the error,
or ``interrupted`` (``KeyboardInterrupt`` — Ctrl-C, or SIGTERM, which ``fedkit run`` turns into
one — or a lost torchrun rank), leaving every other run intact.

Resume: every federated run checkpoints each committed round under
``OUT/checkpoints/<name>-<config digest>/`` (:func:`checkpoint_dir`; removed when the run ends
``completed`` or ``failed``). With ``resume`` (the default), a run whose name, study and resolved
config match an ``interrupted`` run of the store continues that run in place: the same row goes
back to ``running``, its rounds after the checkpoint are dropped and repeated, the summary totals
are rebuilt from the kept rounds, and the run ends with the same model (``model_sha256``) and
rounds as an uninterrupted run. Without ``resume`` (or with no interrupted run to continue) a
leftover checkpoint is removed and the run starts afresh in a new row.

Under ``torchrun`` (:func:`run_study` with a :class:`~fedkit.sim.torchrun.RankGroup` on rank 0,
:func:`serve_study` on the others) every rank builds the same run (:func:`_setup`, agreed by one
exchange so that a failure on any rank stops all of them before anything is recorded); rank 0's
executor is the group's (``run.executor = "torchrun"``), and a dead rank ends the run as
``interrupted`` with an error naming the rank and its host; rerunning resumes it as above.

The algorithm, its server optimiser and aggregator, the sampler and the executor are built from
the config's tables by :mod:`fedkit.registry` names (see :mod:`fedkit.experiment.config`); the
runner only special-cases ``centralized`` (:func:`fedkit.centralized.train_centralized`, one epoch
per round, with the ``[algorithm.local]`` settings).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import multiprocessing
import re
import shutil
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.algorithms.fedseq import superclient_population
from fedkit.centralized import train_centralized
from fedkit.checkpoint import FILENAME, Checkpoint, FileCheckpointer, RunKey
from fedkit.compress.feedback import with_error_feedback
from fedkit.data.spec import DataSpec, FederatedData, build_federated
from fedkit.data.store import ClientStore
from fedkit.evaluate import ClientEval, Distribution
from fedkit.executor import Executor, ExecutorWrapper
from fedkit.experiment.config import (
    AlgorithmSettings,
    ConfigError,
    ExperimentConfig,
    Study,
    experiment_from_mapping,
)
from fedkit.experiment.final_model import model_file, save_final_model
from fedkit.experiment.init_from import initial_model
from fedkit.experiment.nwp_probe import nwp_probes
from fedkit.experiment.progress import RunProgress
from fedkit.experiment.records import client_rows, finite, round_row
from fedkit.experiment.results import (
    ResultsStore,
    RoundRow,
    RunSummary,
    code_version,
    environment,
)
from fedkit.local import LocalTraining
from fedkit.models.spec import ModelSpec
from fedkit.params import Params, model_params, sha256
from fedkit.privacy.plan import PrivacyPlan, dpsgd_probes, plan_privacy
from fedkit.registry import EXECUTORS
from fedkit.rng import SERVER, derive_seed
from fedkit.run import Callback, Probe, RoundRecord, RunConfig, central_evaluator, run
from fedkit.samplers.population import simulated_population
from fedkit.sim.distributed import DistributedExecutor, RemoteRankError, startup_check
from fedkit.sim.factory import build_executor
from fedkit.sim.serial import SerialExecutor
from fedkit.sim.torchrun import GroupExecutor, RankGroup, RankLostError, is_transport_error

__all__ = [
    "RunOutcome",
    "build_algorithm",
    "checkpoint_dir",
    "model_init_seed",
    "on_group",
    "run_experiment",
    "run_study",
    "serve_study",
]

T = TypeVar("T")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunOutcome:
    """How one run of a study ended.

    Attributes:
        run_id: Id in the results store.
        name: Run name.
        status: ``"completed"``, ``"failed"`` or ``"interrupted"`` (a lost torchrun rank).
        summary: The run's summary when completed.
        error: The error (``Type: message``) when failed or interrupted.
    """

    run_id: int
    name: str
    status: str
    summary: RunSummary | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The ``fedkit run --json`` object: run id, name, status and every summary field."""
        out: dict[str, Any] = {"run_id": self.run_id, "name": self.name, "status": self.status}
        if self.summary is not None:
            out.update(self.summary.to_dict())
        if self.error is not None:
            out["error"] = self.error
        return out


def model_init_seed(seed: int) -> int:
    """The ``torch.manual_seed`` applied before building the initial model of run ``seed``."""
    return derive_seed(seed, 0, SERVER, "model-init")


def build_algorithm(a: AlgorithmSettings) -> Algorithm[Any, Any, Any, Any]:
    """The core algorithm object of a federated ``[algorithm]`` section (built by the config
    from its tables through the registry).

    Raises:
        ConfigError: ``centralized`` (it is not a federated algorithm).
    """
    if not a.federated:
        raise ConfigError("algorithm.name = 'centralized' has no federated algorithm object")
    algorithm: Algorithm[Any, Any, Any, Any] = a.algorithm
    return with_error_feedback(algorithm)  # client-side residuals when a compressor asks


def _local(a: AlgorithmSettings, why: str) -> LocalTraining:
    if a.local is None:
        raise ConfigError(f"algorithm {a.name!r} has no local-training settings (`local`), {why}")
    return a.local


# -- recording ---------------------------------------------------------------------------------


class _EvalCapture(ExecutorWrapper):
    """Delegates to an executor and keeps the per-client results of its last ``evaluate``."""

    def __init__(self, inner: Executor) -> None:
        super().__init__(inner)
        self.evals: list[ClientEval] | None = None

    def evaluate(
        self,
        params: Params,
        clients: Sequence[int],
        algorithm: Algorithm[Any, Any, Any, Any] | None = None,
        info: RoundInfo | None = None,
    ) -> list[ClientEval]:
        """Forwarded; the per-client results are kept for the round's record."""
        self.evals = self.inner.evaluate(params, clients, algorithm, info)
        return self.evals

    def take(self) -> list[ClientEval] | None:
        """The captured evaluations (once)."""
        evals, self.evals = self.evals, None
        return evals


class _Recorder:
    """Run-loop callback: writes rounds to the store, feeds the progress bar, tracks the summary."""

    def __init__(
        self,
        store: ResultsStore,
        run_id: int,
        *,
        total_rounds: int,
        target: float | None,
        progress: RunProgress,
        federated_evals: Callable[[RoundRecord, Params], list[ClientEval] | None],
    ) -> None:
        self.store, self.run_id, self.total, self.target = store, run_id, total_rounds, target
        self.progress = progress
        self.federated_evals = federated_evals
        self._reset()

    def _reset(self) -> None:
        self.rounds = 0
        self.final_accuracy: float | None = None
        self.final_loss: float | None = None
        self.best_accuracy: float | None = None
        self.rounds_to_target: int | None = None
        self.bytes_up = 0
        self.bytes_down = 0
        self.metrics: dict[str, float] = {}

    def _tally(self, row: RoundRow, evaluated: bool) -> None:
        """Add a round's row to the totals (``evaluated``: the round ran a central evaluation,
        whose scores, ``None`` when not finite, become the final ones)."""
        if evaluated:
            acc = row.test_accuracy
            self.final_accuracy, self.final_loss = acc, row.test_loss
            if acc is not None:
                self.best_accuracy = (
                    acc if self.best_accuracy is None else max(self.best_accuracy, acc)
                )
                if self.target is not None and self.rounds_to_target is None and acc >= self.target:
                    self.rounds_to_target = row.round + 1
        self.rounds = row.round + 1
        self.bytes_up += row.bytes_up
        self.bytes_down += row.bytes_down
        self.metrics.update({k: float(v) for k, v in (row.details or {}).items()})

    def __call__(self, record: RoundRecord, params: Params) -> None:
        evals = self.federated_evals(record, params)
        fed = record.federated
        if evals is not None and fed is None:
            fed = Distribution.of(evals)
        row = round_row(record, fed, evals or ())
        self.store.add_round(self.run_id, row, client_rows(record, evals or ()))
        self._tally(row, evaluated=record.central is not None)
        self.progress.update(
            self.rounds, loss=finite(record.train_loss), accuracy=row.test_accuracy
        )

    def restore(self, kept: Sequence[RoundRow]) -> None:
        """Resume the totals from a resumed run's kept rounds, as if this recorder had seen
        them (so the summary equals an uninterrupted run's, wall time aside)."""
        self._reset()
        for row in kept:
            self._tally(row, evaluated=row.test_accuracy is not None or row.test_loss is not None)
        self.progress.update(self.rounds, loss=None, accuracy=self.final_accuracy)

    def summary(
        self, params: Params, wall_seconds: float, stopped: str | None = None
    ) -> RunSummary:
        return RunSummary(
            rounds=self.rounds,
            final_accuracy=self.final_accuracy,
            best_accuracy=self.best_accuracy,
            rounds_to_target=self.rounds_to_target,
            target_accuracy=self.target,
            wall_seconds=wall_seconds,
            bytes_up=self.bytes_up,
            bytes_down=self.bytes_down,
            model_sha256=sha256(params),
            final_loss=self.final_loss,
            metrics=dict(self.metrics) or None,
            stopped=stopped,
        )


def _due(every: int, r: int, rounds: int) -> bool:
    return every > 0 and ((r + 1) % every == 0 or r + 1 == rounds)


# -- building ----------------------------------------------------------------------------------


@dataclasses.dataclass
class _Built:
    fd: FederatedData
    store: ClientStore
    model_spec: ModelSpec


def _store_from_mapping(data: dict[str, Any], root: Path | None) -> ClientStore:
    """Rebuild the client store on another rank from the plain ``[data]`` table (picklable)."""
    return ClientStore.from_federated(build_federated(DataSpec.from_mapping(data), root=root))


def _warm_up() -> None:
    """Pay torch's one-time lazy imports (the first ``torch.optim`` optimiser imports
    ``torch._dynamo``, seconds on a small machine) before the clock of round 0 starts."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)


def _build(cfg: ExperimentConfig, data_root: Path | None) -> _Built:
    try:
        fd = build_federated(cfg.data, root=data_root)
        store = ClientStore.from_federated(fd)
    except ValueError as e:  # e.g. more clients than the dataset's natural ones
        raise ConfigError(f"data: {e}") from e
    spec = ModelSpec(
        name=cfg.model.name,
        num_classes=fd.dataset.num_classes,
        input_shape=tuple(fd.dataset.input_shape),
        options=dict(cfg.model.options),
        init_seed=model_init_seed(cfg.run.seed),
    )
    try:
        spec.build()
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e
    _warm_up()
    return _Built(fd=fd, store=store, model_spec=spec)


def _probes(cfg: ExperimentConfig, built: _Built, rounds: int) -> list[Probe]:
    """The run's probes (an attack's success metric), due when centralised evaluation is."""
    if cfg.attack is None:
        return []
    test = built.fd.dataset.test
    probe = cfg.attack.resolved(built.fd.dataset.num_classes).probe(
        built.model_spec.build(), test.x, test.y
    )
    if probe is None:
        return []
    every = cfg.run.eval_every

    def when_due(params: Params, info: RoundInfo) -> Mapping[str, float]:
        return probe(params, info) if _due(every, info.round, rounds) else {}

    return [when_due]


def _with_privacy(
    cfg: ExperimentConfig, algorithm: Any, num_clients: int
) -> tuple[Any, ExperimentConfig, PrivacyPlan]:
    """A DP aggregator chain checked and resolved for this run (cohort size, seeded noise:
    the run's recorded config then says ``noise_source = "seeded"``; an adaptive clipping
    stage's count noise likewise), and its privacy plan."""
    aggregator = getattr(algorithm, "aggregator", None)
    try:
        plan = plan_privacy(
            aggregator,
            weighting=getattr(algorithm, "weighting", None),
            num_clients=num_clients,
            cohort=cfg.run.cohort_size(num_clients),
            sampler=cfg.sampler,
            seeded=True,
        )
    except ValueError as e:
        raise ConfigError(f"aggregator: {e}") from e
    if plan.aggregator is aggregator or cfg.algorithm is None:
        return algorithm, cfg, plan
    algorithm = dataclasses.replace(algorithm, aggregator=plan.aggregator)
    settings = dataclasses.replace(cfg.algorithm, algorithm=algorithm)
    return algorithm, dataclasses.replace(cfg, algorithm=settings), plan


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".rstrip(": ")


def run_experiment(
    cfg: ExperimentConfig,
    results: ResultsStore,
    *,
    progress: RunProgress | None = None,
    data_root: Path | None = None,
    group: RankGroup | None = None,
    resume: bool = True,
) -> RunOutcome:
    """Run one experiment and record it in ``results``.

    Args:
        cfg: The validated experiment.
        results: Where the run is recorded.
        progress: Progress display (none drawn when ``None``).
        data_root: Data directory (default: ``FEDKIT_DATA`` / ``~/.cache/fedkit``).
        group: Under torchrun, the process group (this process is its rank 0; the others run
            :func:`serve_study`): a federated run's cohort runs on every rank.
        resume: Continue an ``interrupted`` run of the same name, study and config from its
            checkpoint, in its own row (see the module docstring); ``False`` starts afresh.

    Returns:
        The outcome; a run that fails after it was recorded returns ``status="failed"``, one
        whose torchrun rank was lost ``status="interrupted"``.

    Raises:
        ConfigError: The experiment cannot run (e.g. cohort larger than the population,
            unknown model option); nothing is recorded.
        fedkit.data.datasets.FedkitDataError: A dataset file is missing or corrupt; nothing is
            recorded.
        KeyboardInterrupt: After marking the run interrupted (resumable).
    """
    if group is not None and group.rank != 0:
        raise ValueError("run_experiment runs on rank 0; the other ranks call serve_study")
    progress = progress or RunProgress(enabled=False)
    t0 = time.perf_counter()
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.run.threads)
    try:
        if cfg.parallel is not None:
            return _run_parallel(cfg, results, progress, data_root, t0)
        return _run_federated(cfg, results, progress, data_root, t0, group, resume)
    finally:
        torch.set_num_threads(previous_threads)


def _start(results: ResultsStore, cfg: ExperimentConfig, group: RankGroup | None = None) -> int:
    env = environment(threads=cfg.run.threads)
    if group is not None:  # where the ranks ran (the config says executor = "torchrun")
        env["distributed"] = {
            "launcher": "torchrun",
            "world_size": group.world_size,
            "ranks": [f"{h.host} {h.address}" for h in group.hosts],
        }
    return results.start_run(
        name=cfg.name,
        study=cfg.study,
        config=cfg.to_mapping(),
        code=code_version(),
        env=env,
    )


@dataclasses.dataclass
class _Setup:
    """A federated (or centralised) run's objects, built the same way on every rank."""

    cfg: ExperimentConfig  # with the privacy chain resolved
    built: _Built
    algorithm: Any = None  # None for ``centralized``
    privacy: PrivacyPlan = dataclasses.field(default_factory=lambda: PrivacyPlan(aggregator=None))
    executor: Any = None


def _setup(cfg: ExperimentConfig, data_root: Path | None, group: RankGroup | None) -> _Setup:
    """Data, model, algorithm (privacy resolved, attack wrapped) and executor of a run: rank 0's
    (or a single process's) executor for the loop, or a serving rank's DistributedExecutor."""
    a = cfg.algorithm
    assert a is not None  # validated by experiment_from_mapping
    built = _build(cfg, data_root)
    store, spec = built.store, built.model_spec
    if not a.federated:
        return _Setup(cfg=cfg, built=built)
    algorithm = build_algorithm(a)
    store_fn: Callable[[], ClientStore]
    store_fn = functools.partial(_store_from_mapping, cfg.data.to_mapping(), data_root)
    test = built.fd.dataset.test  # FedSeq's public set is drawn from it (profile = "confidence")
    store, store_fn = superclient_population(  # FedSeq: the population becomes superclients
        a.algorithm,
        store,
        store_fn,
        built.fd.dataset.num_classes,
        public=(test.x, test.y),
        model_fn=spec,
    )
    built = dataclasses.replace(built, store=store)
    algorithm, cfg, privacy = _with_privacy(cfg, algorithm, store.num_clients)
    if cfg.attack is not None:
        algorithm = cfg.attack.wrap(
            algorithm,
            num_clients=store.num_clients,
            seed=cfg.run.seed,
            num_classes=built.fd.dataset.num_classes,
        )
    if group is not None and group.rank > 0:  # rank 0 decides participation and sends it
        executor: Any = DistributedExecutor(store, spec.build())
        return _Setup(cfg=cfg, built=built, algorithm=algorithm, privacy=privacy, executor=executor)
    local = _local(a, "which [system] needs") if cfg.system is not None else None
    try:
        executor = build_executor(
            cfg.run.executor,
            store=store,
            model_fn=spec,
            processes=cfg.run.processes,
            threads=cfg.run.threads,
            store_fn=store_fn,
            model_spec=spec,
            system=cfg.system,
            local=local,
        )
    except ImportError as e:
        raise ConfigError(
            f"run.executor = {cfg.run.executor!r} is not available in this installation "
            f"({e}); registered: {', '.join(EXECUTORS)}"
        ) from e
    if group is not None:
        executor = GroupExecutor(executor, group)
    return _Setup(cfg=cfg, built=built, algorithm=algorithm, privacy=privacy, executor=executor)


def _agreed(group: RankGroup, build: Callable[[], T]) -> T:
    """``build()`` on every rank, then one exchange so that every rank learns whether all of
    them could (a missing dataset file on one host stops every rank before the run starts).

    Raises:
        Exception: This rank's own error, with its type (``ConfigError``, a data error).
        ConfigError: Another rank could not build; its message names it.
        RankLostError: The exchange itself failed (a rank died).
    """
    own: Exception | None = None
    result: T | None = None
    try:
        result = build()
    except Exception as e:
        own = e
    try:
        startup_check(group.world_size, group.rank, "" if own is None else _describe(own))
    except RemoteRankError as e:
        if own is not None:
            raise own from None
        raise ConfigError(f"another rank could not prepare the run: {e}") from None
    except Exception as e:
        if is_transport_error(e):
            raise group.lost(e, "the start of a run") from e
        raise
    assert result is not None
    return result


def checkpoint_dir(out: Path, cfg: ExperimentConfig) -> Path:
    """Where a federated run checkpoints: ``OUT/checkpoints/<name>-<config digest>``, so a
    rerun of the same file (same resolved config) finds it and resumes."""
    digest = hashlib.sha256(json.dumps(cfg.to_mapping(), sort_keys=True).encode()).hexdigest()
    slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", cfg.name)[:60]
    return out / "checkpoints" / f"{slug}-{digest[:16]}"


def _how_to_resume(ckpt: Path | None) -> str:
    """What an interrupted run's error adds: whether and how it resumes."""
    if ckpt is None:
        return "not resumable (only federated runs checkpoint): a rerun starts a new run"
    if (ckpt / FILENAME).exists():
        return f"resumable: rerun the same command and it resumes from the checkpoint in {ckpt}"
    return "no round was checkpointed yet: a rerun starts it over in the same run"


def _interrupted(e: RankLostError, ckpt: Path) -> RankLostError:
    """The run's error when a rank was lost: what happened and how to resume."""
    return RankLostError(f"{e}; {_how_to_resume(ckpt)}", e.ranks)


class _ResumingCheckpointer(FileCheckpointer):
    """The run's :class:`FileCheckpointer`, telling ``on_load`` how many rounds the run loop
    resumes after (0 without a checkpoint) once it has loaded and verified the checkpoint."""

    def __init__(self, directory: Path, on_load: Callable[[int], None]) -> None:
        super().__init__(directory)
        self.on_load = on_load

    def load(self, template: T, key: RunKey) -> Checkpoint[T] | None:
        """The checkpoint (see :meth:`FileCheckpointer.load`), reported to ``on_load``."""
        restored = super().load(template, key)
        self.on_load(0 if restored is None else restored.completed_rounds)
        return restored


def _resumable(
    results: ResultsStore, cfg: ExperimentConfig, ckpt: Path | None, resume: bool
) -> int | None:
    """The id of the interrupted run this run continues (now ``running`` again), else
    ``None`` after removing any leftover checkpoint of this config (the run starts afresh)."""
    if ckpt is None:
        return None
    if resume:
        prior = results.interrupted_run(name=cfg.name, study=cfg.study, config=cfg.to_mapping())
        if prior is not None:
            with contextlib.suppress(ValueError):  # another process resumed it first
                results.reopen_run(prior.id)
                return prior.id
    _remove_checkpoint(ckpt)
    return None


def _remove_checkpoint(ckpt: Path | None) -> None:
    """Remove a run's checkpoint folder (and ``checkpoints/`` when it holds no other)."""
    if ckpt is None:
        return
    shutil.rmtree(ckpt, ignore_errors=True)
    with contextlib.suppress(OSError):
        ckpt.parent.rmdir()


def _run_federated(
    cfg: ExperimentConfig,
    results: ResultsStore,
    progress: RunProgress,
    data_root: Path | None,
    t0: float,
    group: RankGroup | None = None,
    resume: bool = True,
) -> RunOutcome:
    a = cfg.algorithm
    rounds = cfg.run.rounds
    assert a is not None and rounds is not None  # validated by experiment_from_mapping
    on_group = group is not None and a.federated  # a centralised arm runs on rank 0 alone
    if group is not None and on_group:
        setup = _agreed(group, lambda: _setup(cfg, data_root, group))
    else:
        setup = _setup(cfg, data_root, None)
    cfg, built, algorithm, privacy = setup.cfg, setup.built, setup.algorithm, setup.privacy
    store, spec = built.store, built.model_spec
    fed_every = cfg.run.federated_eval_every
    if fed_every is None:
        fed_every = rounds if store.has_test_data() else 0
    test = built.fd.dataset.test
    evaluator = central_evaluator(spec.build(), test.x, test.y)
    centralized = not a.federated
    executor: Any = setup.executor
    capture = None if executor is None else _EvalCapture(executor)
    sizes = [store.num_examples(i) for i in range(store.num_clients)]
    ckpt = None if centralized else checkpoint_dir(results.path.parent, cfg)
    fed_scorer = SerialExecutor(store, spec.build()) if centralized else None
    initial = initial_model(spec, built.fd.dataset.words, cfg.run.init_from)  # [run] init_from

    def federated_evals(record: RoundRecord, params: Params) -> list[ClientEval] | None:
        if capture is not None:
            return capture.take() if record.federated is not None else None
        if fed_scorer is not None and _due(fed_every, record.round, rounds):
            return fed_scorer.evaluate(params, range(store.num_clients))
        return None

    resumed = _resumable(results, cfg, ckpt, resume)
    run_id = resumed if resumed is not None else _start(results, cfg, group if on_group else None)
    recorder = _Recorder(
        results,
        run_id,
        total_rounds=rounds,
        target=cfg.run.target_accuracy,
        progress=progress,
        federated_evals=federated_evals,
    )
    callbacks: list[Callback] = [recorder]
    tb = _tensorboard(cfg, results, run_id)
    if tb is not None:
        callbacks.append(tb)
    progress.start_run(cfg.name, rounds)

    def on_load(start: int) -> None:  # the run loop resumes after ``start`` rounds
        if resumed is not None:
            results.drop_rounds(run_id, from_round=start)
            recorder.restore(results.rounds(run_id))

    def body() -> RunSummary:
        stopped: str | None = None
        if centralized:
            final = train_centralized(
                initial,
                store,
                _local(a, "which the centralised baseline trains with"),
                epochs=rounds,
                seed=cfg.run.seed,
                evaluator=evaluator,
                eval_every=cfg.run.eval_every,
                federated_eval=False,
                callbacks=callbacks,
            ).params
        else:
            assert capture is not None and ckpt is not None
            try:
                result = run(
                    algorithm,
                    capture,
                    model_params(initial),
                    RunConfig(
                        rounds=rounds,
                        clients_per_round=cfg.run.cohort_size(store.num_clients),
                        seed=cfg.run.seed,
                        eval_every=cfg.run.eval_every,
                        federated_eval_every=fed_every,
                        checkpoint_every=cfg.run.checkpoint_every,
                    ),
                    checkpointer=_ResumingCheckpointer(ckpt, on_load),
                    evaluator=evaluator,
                    sampler=cfg.sampler,
                    callbacks=callbacks,
                    stop=privacy.stop,
                    population=simulated_population(
                        sizes, cfg.system, _local(a, "which [system] needs") if cfg.system else None
                    ),
                    probes=[
                        *_probes(cfg, built, rounds),
                        *nwp_probes(
                            built.fd.dataset, spec, every=cfg.run.eval_every, rounds=rounds
                        ),
                        *privacy.probes,
                        *dpsgd_probes(a.local, sizes),
                    ],
                )
            except RankLostError as e:
                raise _interrupted(e, ckpt) from e
            final, stopped = result.params, result.stopped
            _remove_checkpoint(ckpt)  # completed: a rerun of the file starts a new run
        # kept for `fedkit export RUN` (fedkit.experiment.final_model)
        words = built.fd.dataset.words
        save_final_model(model_file(results.path.parent, run_id), final, spec, words)
        return recorder.summary(final, time.perf_counter() - t0, stopped)

    close = getattr(executor, "close", None)
    return _recorded(
        results,
        run_id,
        cfg,
        progress,
        body,
        cleanup=close if callable(close) else None,
        checkpoint=ckpt,
    )


@dataclasses.dataclass
class _Tally:
    """Running totals of a data-parallel run's evaluation points."""

    t: float
    i: int = 0
    bytes_up: float = 0.0
    bytes_down: float = 0.0
    sim: float = 0.0


def _tensorboard(cfg: ExperimentConfig, results: ResultsStore, run_id: int) -> Any:
    """``[run] tensorboard``: the run's event-file writer in ``<root>/<run id>-<name>`` (one
    subdirectory per arm), else ``None`` (:mod:`fedkit.tensorboard`, imported only then)."""
    if cfg.run.tensorboard is False:
        return None
    from fedkit.tensorboard import TensorBoardCallback, tensorboard_root

    root = tensorboard_root(cfg.run.tensorboard, results.path.parent)
    return None if root is None else TensorBoardCallback(root / f"{run_id}-{cfg.name}")


def _run_parallel(
    cfg: ExperimentConfig,
    results: ResultsStore,
    progress: RunProgress,
    data_root: Path | None,
    t0: float,
) -> RunOutcome:
    """A ``[parallel]`` experiment: data-parallel training on the whole dataset."""
    from fedkit.data.datasets import load_dataset
    from fedkit.parallel import run_parallel
    from fedkit.parallel.result import EvalPoint

    spec = cfg.parallel
    assert spec is not None
    try:
        ds = load_dataset(cfg.data.dataset, root=data_root, **cfg.data.dataset_options())
    except ValueError as e:
        raise ConfigError(f"data: {e}") from e
    model_spec = ModelSpec(
        name=cfg.model.name,
        num_classes=ds.num_classes,
        input_shape=tuple(ds.input_shape),
        options=dict(cfg.model.options),
        init_seed=spec.seed,
    )
    try:
        model_spec.build()
    except ValueError as e:
        raise ConfigError(f"model: {e}") from e
    _warm_up()
    expected = max(1, spec.sample_budget // max(1, spec.eval_every_samples))
    run_id = _start(results, cfg)
    tb = _tensorboard(cfg, results, run_id)
    progress.start_run(cfg.name, expected)
    state = _Tally(t=time.perf_counter())
    accs: list[float] = []
    target = cfg.run.target_accuracy
    reached: list[int] = []

    def on_point(p: EvalPoint) -> None:
        i = state.i
        now = time.perf_counter()
        up, down = p.bytes_up_per_worker * spec.workers, p.bytes_down_per_worker * spec.workers
        results.add_round(
            run_id,
            RoundRow(
                round=i,
                train_loss=finite(p.train_loss),
                test_loss=finite(p.test_loss),
                test_accuracy=finite(p.test_accuracy),
                fed_mean=None,
                fed_p10=None,
                fed_var=None,
                fed_min=None,
                fed_clients=None,
                cohort_size=spec.workers,
                dropped=0,
                bytes_up=round(up - state.bytes_up),
                bytes_down=round(down - state.bytes_down),
                wall_seconds=now - state.t,
                sim_seconds=p.sim_seconds - state.sim,
                committed=True,
                details=p.to_dict(),
            ),
        )
        if not math.isnan(p.test_accuracy):
            accs.append(p.test_accuracy)
            if target is not None and not reached and p.test_accuracy >= target:
                reached.append(i + 1)
        state.i, state.bytes_up, state.bytes_down = i + 1, up, down
        state.sim, state.t = p.sim_seconds, now
        progress.update(i + 1, loss=finite(p.train_loss), accuracy=finite(p.test_accuracy))
        if tb is not None:  # one step per evaluation point (fedkit.tensorboard)
            tb.scalars(i + 1, {
                "test/accuracy": p.test_accuracy, "test/loss": p.test_loss,
                "train/loss": p.train_loss, "bytes/up": up, "bytes/down": down,
                **{f"parallel/{k}": v for k, v in p.to_dict().items()},
            })  # fmt: skip

    def body() -> RunSummary:
        result = run_parallel(spec, ds, model_spec, callback=on_point)
        last = result.history[-1] if result.history else None
        return RunSummary(
            rounds=state.i,
            final_accuracy=None if last is None else finite(last.test_accuracy),
            best_accuracy=max(accs) if accs else None,
            rounds_to_target=reached[0] if reached else None,
            target_accuracy=target,
            wall_seconds=time.perf_counter() - t0,
            bytes_up=round(state.bytes_up),
            bytes_down=round(state.bytes_down),
            model_sha256=sha256(result.final_params),
            final_loss=None if last is None else finite(last.test_loss),
        )

    return _recorded(results, run_id, cfg, progress, body)


def _recorded(
    results: ResultsStore,
    run_id: int,
    cfg: ExperimentConfig,
    progress: RunProgress,
    body: Callable[[], RunSummary],
    *,
    cleanup: Callable[[], object] | None = None,
    checkpoint: Path | None = None,
) -> RunOutcome:
    """Run ``body`` for a recorded run: completed with its summary, failed with the error, or
    interrupted.

    An ordinary exception marks the run failed (its ``checkpoint`` folder is removed) and is
    returned as the outcome (a study goes on with its next run); a lost torchrun rank marks it
    interrupted and is returned likewise; anything else (Ctrl-C, SIGTERM as
    ``KeyboardInterrupt``) marks it interrupted, keeping its checkpoint, and propagates.
    """
    status = "failed"
    try:
        summary = body()
        results.finish_run(run_id, summary)
        status = "completed"
        return RunOutcome(run_id=run_id, name=cfg.name, status=status, summary=summary)
    except RankLostError as e:  # the message already says how to resume
        status = "interrupted"
        results.interrupt_run(run_id, _describe(e))
        return RunOutcome(run_id=run_id, name=cfg.name, status=status, error=_describe(e))
    except Exception as e:
        error = _describe(e)
        results.fail_run(run_id, error + "\n" + traceback.format_exc(limit=20))
        _remove_checkpoint(checkpoint)
        return RunOutcome(run_id=run_id, name=cfg.name, status="failed", error=error)
    except BaseException as e:
        status = "interrupted"
        what = _describe(e) or type(e).__name__
        results.interrupt_run(run_id, f"{what}; {_how_to_resume(checkpoint)}")
        raise
    finally:
        progress.end_run(status)
        if cleanup is not None:
            cleanup()


def _run_in_worker(
    source: dict[str, Any],
    name: str,
    study: str,
    grid_point: dict[str, Any],
    db_path: str,
    data_root: Path | None,
    resume: bool = True,
) -> RunOutcome:
    """One run of a parallel study, in a worker process with its own store connection."""
    cfg = experiment_from_mapping(source, name=name, study=study, grid_point=grid_point)
    with ResultsStore(db_path) as store:
        return run_experiment(cfg, store, data_root=data_root, resume=resume)


def run_study(
    study: Study,
    results: ResultsStore,
    *,
    progress: RunProgress | None = None,
    data_root: Path | None = None,
    on_outcome: Callable[[RunOutcome], None] | None = None,
    jobs: int = 1,
    group: RankGroup | None = None,
    resume: bool = True,
) -> list[RunOutcome]:
    """Run every run of ``study``, recording each in ``results``.

    With ``jobs = 1`` runs go one after another in this process, each with its own progress bar.
    With ``jobs > 1`` up to ``jobs`` runs go at once, each in a fresh (spawned) process that
    writes to the same database; the progress bar then counts finished runs and ``on_outcome``
    sees runs in the order they finish. Each run uses ``[run] threads`` torch threads, so keep
    ``jobs × threads`` within the machine's cores.

    A run that fails is marked failed and the study goes on; a run that cannot start
    (:class:`ConfigError`, missing dataset) stops the study with that error (with ``jobs > 1``,
    runs not yet started are cancelled and runs under way finish).

    Args:
        study: The validated study.
        results: The results store.
        progress: Progress display.
        data_root: Data directory.
        on_outcome: Called after each run (e.g. to print its ``--json`` line).
        jobs: Runs at once (>= 1).
        group: Under torchrun, the process group; this process is rank 0 and the other ranks
            run :func:`serve_study` on the same study. Runs go one after another on the whole
            group (``jobs`` must be 1); each federated run's executor is the group's
            (``run.executor`` is recorded as ``"torchrun"``).
        resume: Each run continues its interrupted run, if any (see :func:`run_experiment`).

    Returns:
        The outcomes, in the study's run order.

    Raises:
        RankLostError: Under torchrun, a rank died: the run under way was recorded as
            interrupted (resumable from its checkpoint) and the study stops.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    if group is not None:
        return _run_on_group(study, results, group, progress, data_root, on_outcome, jobs, resume)
    for cfg in study.runs:
        if cfg.run.executor == "torchrun":
            raise ConfigError(
                f"run {cfg.name!r}: run.executor = 'torchrun' runs on the ranks of a torchrun "
                "launch: torchrun --nproc-per-node K … -m fedkit run FILE (see docs/distributed.md)"
            )
    if jobs == 1 or len(study.runs) == 1:
        outcomes: list[RunOutcome] = []
        for cfg in study.runs:
            outcome = run_experiment(
                cfg, results, progress=progress, data_root=data_root, resume=resume
            )
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
        return outcomes
    progress = progress or RunProgress(enabled=False)
    progress.start_run(f"{study.name}: {len(study.runs)} runs, {jobs} at a time", len(study.runs))
    done: dict[int, RunOutcome] = {}
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = {
            pool.submit(
                _run_in_worker,
                dict(cfg.source),
                cfg.name,
                cfg.study,
                dict(cfg.grid_point),
                str(results.path),
                data_root,
                resume,
            ): i
            for i, cfg in enumerate(study.runs)
        }
        try:
            for fut in concurrent.futures.as_completed(futures):
                outcome = fut.result()
                done[futures[fut]] = outcome
                acc = outcome.summary.final_accuracy if outcome.summary is not None else None
                progress.update(len(done), loss=None, accuracy=acc)
                if on_outcome is not None:
                    on_outcome(outcome)
        except BaseException:
            for f in futures:
                f.cancel()
            progress.end_run("stopped")
            raise
    progress.end_run("done")
    return [done[i] for i in sorted(done)]


def on_group(study: Study) -> list[ExperimentConfig]:
    """The study's runs as they run under torchrun: federated runs on the group's executor
    (``run.executor = "torchrun"``); the same list on every rank.

    Raises:
        ConfigError: A ``[parallel]`` run (it has its own torchrun entry point).
    """
    runs: list[ExperimentConfig] = []
    for cfg in study.runs:
        if cfg.parallel is not None:
            raise ConfigError(
                f"run {cfg.name!r} is a [parallel] experiment: under torchrun it runs with "
                f"`torchrun … -m fedkit.parallel FILE --arm {cfg.name}`, not `fedkit run`"
            )
        if cfg.algorithm is not None and cfg.algorithm.federated:
            cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, executor="torchrun"))
        runs.append(cfg)
    return runs


def _run_on_group(
    study: Study,
    results: ResultsStore,
    group: RankGroup,
    progress: RunProgress | None,
    data_root: Path | None,
    on_outcome: Callable[[RunOutcome], None] | None,
    jobs: int,
    resume: bool = True,
) -> list[RunOutcome]:
    """Rank 0's side of a study under torchrun (see :func:`run_study`)."""
    if jobs != 1:
        raise ConfigError("--jobs runs arms in separate processes; under torchrun use --jobs 1")
    outcomes: list[RunOutcome] = []
    for cfg in on_group(study):
        outcome = run_experiment(
            cfg, results, progress=progress, data_root=data_root, group=group, resume=resume
        )
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)
        if group.broken:
            raise RankLostError(
                (outcome.error or "a rank was lost").removeprefix("RankLostError: ")
            )
    return outcomes


def serve_study(study: Study, group: RankGroup, *, data_root: Path | None = None) -> None:
    """A rank > 0's side of a study under torchrun: for each federated run, build the same
    data, model and algorithm as rank 0 and serve its cohorts until rank 0 ends the run
    (centralised runs are rank 0's alone). Nothing is written.

    Raises:
        ConfigError: A run could not be prepared on some rank (all ranks stop).
        RankLostError: A rank (rank 0 included) died or became unreachable.
    """
    if group.rank == 0:
        raise ValueError("serve_study is for ranks > 0; rank 0 calls run_study")
    for cfg in on_group(study):
        if cfg.algorithm is None or not cfg.algorithm.federated:
            continue
        previous = torch.get_num_threads()
        torch.set_num_threads(cfg.run.threads)
        try:
            setup = _agreed(group, functools.partial(_setup, cfg, data_root, group))
            try:
                setup.executor.serve(setup.algorithm)
            except Exception as e:
                if is_transport_error(e):
                    raise group.lost(e, f"run {cfg.name!r}") from e
                raise
        finally:
            torch.set_num_threads(previous)
