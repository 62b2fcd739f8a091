"""What a coordinator and its workers run, as typed objects: :class:`Deployment`.

A :class:`Deployment` holds the algorithm (built), the model recipe, the data recipe, the run
policy and the ``[deploy]`` round policy (:class:`DeploySettings`), plus the SHA-256 digest of the
experiment file it came from (the coordinator refuses workers whose digest differs). It is built
at the edge, from an experiment file, by :func:`fedkit.experiment.deploy.load_deployment`; this
package never reads experiment files, so it imports neither :mod:`fedkit.experiment` nor
:mod:`fedkit.sim`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Literal

from torch import nn

from fedkit.algorithm import Algorithm
from fedkit.data.spec import DataSpec
from fedkit.models.spec import ModelSpec
from fedkit.params import Params, model_params
from fedkit.sampling import ClientSampler, UniformSampler

ON_ABORT = ("skip", "stop")
ENROLMENT = ("none", "secret")
FOLD = ("ordered", "arrival")


class DeployError(ValueError):
    """A ``[deploy]`` setting out of range or unknown (names the key and the allowed values)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeploySettings:
    """The ``[deploy]`` section: round policy of a coordinator.

    Attributes:
        deadline_s: Deadline of a round's training phase (task out to results in), > 0.
        select_timeout_s: How long to wait for enough live workers before opening a round.
        quorum: Fraction of ``clients_per_round`` whose results are needed to commit, in (0, 1].
        over_selection: Ask ``ceil(over_selection * clients_per_round)`` clients and commit with
            the first ``clients_per_round`` results (>= 1; 1 = no over-selection, deterministic).
        round_retries: How often an aborted round (quorum missed) is retried before ``on_abort``.
        on_abort: ``"skip"`` (record the round as not committed, model unchanged, go on) or
            ``"stop"`` (end the run with an error).
        balance_stragglers: Give workers measured slow proportionally fewer local steps.
        min_work_fraction: Floor of the work fraction given to a slow worker, in (0, 1].
        max_update_mib: Cap on one result payload, in MiB.
        heartbeat_s: Worker heartbeat interval.
        liveness_s: A worker not heard from for this long counts as gone.
        max_client_examples: The largest example count a client may declare (in a training
            result or an evaluation); a result declaring more is refused.
        stream_idle_s: A result stream silent this long between two messages is cut, and a
            stream's first message must arrive within it (connection exhaustion).
        max_pending_streams: Result streams one peer (its address, or its certificate under
            mutual TLS) may hold open before they are authenticated; more are refused at once.
        max_missed_tasks: A worker whose tasks got no result this many rounds in a row (while
            it heartbeats) is suspended: no round waits for it, over-selection and federated
            evaluation pass it by, until it answers or registers again (0: never suspend).
        enrolment: ``"none"``, or ``"secret"``: in plaintext mode every worker must register
            with its client id's enrolment secret (``fedkit secrets create``; the coordinator
            refuses to start without ``--secret-file``).
        fold: ``"ordered"`` (default): results are added in ascending client-id order, so a
            seeded run is bit-identical to the serial simulator, and a result that arrives
            before a lower id's waits in memory (up to the cohort's worth when the lowest id is
            last); ``"arrival"``: each result is added as it arrives and dropped, so the
            coordinator holds one accumulator whatever the cohort, and the sum equals the
            ordered one up to float rounding (addition order).
        bulk: Offer workers the bulk result channel (:mod:`fedkit.net.bulk`): results arrive
            over one TCP connection each (TLS under mutual TLS), read straight into their
            buffer, instead of as gRPC chunk messages. Workers that do not use it still push
            by gRPC.
        bulk_port: The bulk channel's port on the coordinator's listen host (0: any free
            port, told to workers when they register).
    """

    deadline_s: float = 120.0
    select_timeout_s: float = 120.0
    quorum: float = 1.0
    over_selection: float = 1.0
    round_retries: int = 0
    on_abort: Literal["skip", "stop"] = "skip"
    balance_stragglers: bool = False
    min_work_fraction: float = 0.25
    max_update_mib: float = 512.0
    heartbeat_s: float = 2.0
    liveness_s: float = 10.0
    max_client_examples: int = 100_000_000
    stream_idle_s: float = 10.0
    max_pending_streams: int = 4
    max_missed_tasks: int = 3
    enrolment: Literal["none", "secret"] = "none"
    fold: Literal["ordered", "arrival"] = "ordered"
    bulk: bool = True
    bulk_port: int = 0

    def __post_init__(self) -> None:
        for name, (lo, hi) in _NUMBERS.items():
            _check_number(name, getattr(self, name), lo, hi, integer=name in _INTEGERS)
        if self.quorum <= 0:
            raise DeployError(f"deploy.quorum = {self.quorum!r}: must be in (0, 1]")
        if self.enrolment not in ENROLMENT:
            raise DeployError(f"deploy.enrolment = {self.enrolment!r}: allowed {ENROLMENT}")
        if self.fold not in FOLD:
            raise DeployError(f"deploy.fold = {self.fold!r}: allowed {FOLD}")
        if self.on_abort not in ON_ABORT:
            raise DeployError(f"deploy.on_abort = {self.on_abort!r}: allowed {ON_ABORT}")
        for flag in ("balance_stragglers", "bulk"):
            if not isinstance(getattr(self, flag), bool):
                raise DeployError(f"deploy.{flag} = {getattr(self, flag)!r}: must be true or false")
        if self.liveness_s < self.heartbeat_s:
            raise DeployError("deploy.liveness_s must be >= deploy.heartbeat_s")

    @property
    def max_update_bytes(self) -> int:
        """The result cap in bytes."""
        return int(self.max_update_mib * 1024 * 1024)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Deployment:
    """A run to deploy, already built (see module docstring).

    Attributes:
        name: The experiment's name (results and summaries).
        digest: SHA-256 of the experiment file; coordinator and workers must agree.
        data: How every party loads the data (each worker only its own partition).
        algorithm: The algorithm object (both halves).
        model: Registered model name (:mod:`fedkit.models`).
        model_options: The model builder's keyword options.
        init_seed: Seed of the initial weights (the same on every party).
        rounds: Number of rounds.
        seed: The run seed (root of every random draw).
        eval_every: Central evaluation every k rounds (0: never).
        federated_eval_every: Federated evaluation every k rounds (0: never).
        target_accuracy: Accuracy for ``rounds_to_target``, or None.
        cohort: Clients per round for a population of n clients.
        sampler: Who takes part in a round.
        deploy: The coordinator's round policy.
    """

    name: str
    digest: str
    data: DataSpec
    algorithm: Algorithm[Any, Any, Any, Any]
    model: str
    model_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    init_seed: int = 0
    rounds: int
    seed: int
    eval_every: int = 1
    federated_eval_every: int = 0
    target_accuracy: float | None = None
    cohort: Callable[[int], int]
    sampler: ClientSampler = dataclasses.field(default_factory=UniformSampler)
    deploy: DeploySettings = dataclasses.field(default_factory=DeploySettings)

    def cohort_size(self, num_clients: int) -> int:
        """Clients per round for a population of ``num_clients``."""
        return self.cohort(num_clients)

    def build_model(self, *, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        """The model with its initial weights (the same on every party)."""
        return ModelSpec(
            name=self.model,
            num_classes=num_classes,
            input_shape=tuple(input_shape),
            options=dict(self.model_options),
            init_seed=self.init_seed,
        ).build()

    @staticmethod
    def initial_params(model: nn.Module) -> Params:
        """A detached copy of the model's initial parameters."""
        return {k: v.detach().clone() for k, v in model_params(model).items()}


_DAY = 86_400.0
_NUMBERS: dict[str, tuple[float, float]] = {
    "deadline_s": (1e-3, _DAY),
    "select_timeout_s": (1e-3, _DAY),
    "heartbeat_s": (1e-3, 3_600.0),
    "liveness_s": (1e-3, _DAY),
    "max_update_mib": (1 / 1024, 64 * 1024),  # 1 KiB .. 64 GiB
    "quorum": (0.0, 1.0),
    "over_selection": (1.0, 100.0),
    "round_retries": (0, 1_000),
    "min_work_fraction": (1e-6, 1.0),
    "max_client_examples": (1, 1 << 53),
    "stream_idle_s": (1e-3, 3_600.0),
    "max_pending_streams": (1, 10_000),
    "max_missed_tasks": (0, 1_000),
    "bulk_port": (0, 65_535),
}
"""Allowed closed range of every numeric ``[deploy]`` key (booleans are not numbers here)."""
_INTEGERS = {
    "round_retries",
    "max_client_examples",
    "max_pending_streams",
    "max_missed_tasks",
    "bulk_port",
}


def _check_number(name: str, v: object, lo: float, hi: float, *, integer: bool) -> None:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(v, int) if integer else isinstance(v, int | float)
    if isinstance(v, bool) or not ok_type or not lo <= v <= hi:  # type: ignore[operator]
        raise DeployError(f"deploy.{name} = {v!r}: must be {kind} in [{lo:g}, {hi:g}]")


def deploy_from_mapping(table: Mapping[str, Any]) -> DeploySettings:
    """Validate a ``[deploy]`` table (also called by ``fedkit run``, which ignores the policy).

    Raises:
        DeployError: an unknown key or a value out of range, named with what is allowed.
    """
    deploy_keys = {f.name for f in dataclasses.fields(DeploySettings)}
    unknown = sorted(set(table) - deploy_keys)
    if unknown:
        raise DeployError(
            f"[deploy] unknown key(s) {unknown}; allowed: {', '.join(sorted(deploy_keys))}"
        )
    try:
        return DeploySettings(**table)
    except TypeError as exc:
        raise DeployError(f"[deploy]: {exc}") from None
