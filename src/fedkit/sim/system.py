"""System heterogeneity: per-client speed and links, availability, dropout, deadlines, a clock.

A :class:`SystemModel` describes the devices: compute speed (samples per second) and link
bandwidth/latency per client, drawn from distributions or read from traces; the probability that
a selected client is reachable (availability) and that it fails mid-round (dropout); a round
deadline; and FedProx-style stragglers (Li et al. 2020, "Federated Optimization in Heterogeneous
Networks", §5.2: a share of the selected devices can only do a random fraction of the local work).

:class:`SystemParticipation` binds a model to a population and a workload and is the executors'
``participation`` hook ``(client_id, info) -> work fraction | None``. The straggler ``policy``
decides what happens to late clients: ``"drop"`` discards them (FedAvg's behaviour in the paper)
and ``"partial"`` accepts the work they finished (FedProx). :class:`SimulatedClock` wraps any
executor and fills in :attr:`RoundOutput.sim_seconds`, the simulated wall-clock duration of the
round (the server waits for the slowest client it keeps, or until the deadline).

Every draw comes from :mod:`fedkit.rng`: fixed device traits from ``(model.seed, client_id)``,
per-round events from ``(run seed, round, client_id)`` — the same under every executor.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch

from fedkit.algorithm import Algorithm, RoundInfo
from fedkit.executor import Executor, ExecutorWrapper, RoundOutput
from fedkit.local import LocalTraining
from fedkit.params import tree_nbytes
from fedkit.rng import generator

POLICIES = ("drop", "partial")


def _uniform(seed: int, round_: int, client_id: int, stream: str) -> float:
    """One U[0, 1) draw from the stream ``(seed, round, client_id, stream)``."""
    return float(
        torch.rand((), generator=generator(seed, round_, client_id, stream), dtype=torch.float64)
    )


def _normal(seed: int, round_: int, client_id: int, stream: str) -> float:
    g = generator(seed, round_, client_id, stream)
    return float(torch.randn((), generator=g, dtype=torch.float64))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Constant:
    """The same value for every client."""

    value: float

    def __post_init__(self) -> None:
        if not (self.value > 0 and math.isfinite(self.value)):
            raise ValueError(f"Constant.value must be a finite number > 0, got {self.value!r}")

    def draw(self, seed: int, client_id: int, stream: str) -> float:
        """The constant."""
        return self.value


MAX_SIGMA = 20.0
"""Largest lognormal sigma (``LogNormal.sigma``, ``speed_jitter``): ``exp(sigma · z)`` stays
finite for every normal draw ``z`` a float64 can produce (|z| < 9), where a larger one raises
``OverflowError`` in the timing; 20 already spreads speeds over 10^78."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogNormal:
    """``median · exp(sigma · N(0, 1))`` per client (device speeds and bandwidths are skewed)."""

    median: float
    sigma: float = 0.5

    def __post_init__(self) -> None:
        if not (self.median > 0 and math.isfinite(self.median)):
            raise ValueError(f"LogNormal.median must be a finite number > 0, got {self.median!r}")
        if not 0 <= self.sigma <= MAX_SIGMA:
            raise ValueError(f"LogNormal.sigma must be in [0, {MAX_SIGMA:g}], got {self.sigma!r}")

    def draw(self, seed: int, client_id: int, stream: str) -> float:
        """One client's value."""
        return self.median * math.exp(self.sigma * _normal(seed, 0, client_id, stream))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Uniform:
    """Uniform on ``[low, high]`` per client."""

    low: float
    high: float

    def __post_init__(self) -> None:
        if not (0 < self.low <= self.high and math.isfinite(self.high)):
            raise ValueError(
                f"Uniform needs 0 < low <= high < inf, got low={self.low!r}, high={self.high!r}"
            )

    def draw(self, seed: int, client_id: int, stream: str) -> float:
        """One client's value."""
        return self.low + (self.high - self.low) * _uniform(seed, 0, client_id, stream)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Trace:
    """Measured per-device values (e.g. from a device trace); client ``i`` gets
    ``values[i % len(values)]``."""

    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("Trace.values must not be empty")
        bad = [v for v in self.values if not (v > 0 and math.isfinite(v))]
        if bad:
            raise ValueError(f"Trace.values must be finite numbers > 0, got {bad[:3]}")

    def draw(self, seed: int, client_id: int, stream: str) -> float:
        """The trace value of this client."""
        return self.values[client_id % len(self.values)]


Distribution = Constant | LogNormal | Uniform | Trace


DISTRIBUTIONS = ("constant", "lognormal", "uniform", "trace")


def distribution_from(key: str, value: Any) -> Distribution:
    """A distribution from its experiment-file form (``key`` names it in errors).

    A number is a :class:`Constant`, a list a :class:`Trace`, and a table names its ``dist``
    (``"constant"``, ``"lognormal"``, ``"uniform"``, ``"trace"``) with that class's fields, e.g.
    ``{ dist = "lognormal", median = 100.0, sigma = 1.0 }``.
    """
    if isinstance(value, bool):
        raise ValueError(f"{key} must be a number, a list or a table, got {value!r}")
    if isinstance(value, (int, float)):
        return Constant(value=float(value))
    if isinstance(value, (list, tuple)):
        return Trace(values=tuple(float(v) for v in value))
    if isinstance(value, Mapping):
        table = dict(value)
        kind = table.pop("dist", None)
        classes: dict[str, type[Constant | LogNormal | Uniform | Trace]] = {
            "constant": Constant,
            "lognormal": LogNormal,
            "uniform": Uniform,
            "trace": Trace,
        }
        if kind not in classes:
            raise ValueError(f"{key}.dist must be one of {', '.join(DISTRIBUTIONS)}, got {kind!r}")
        cls = classes[kind]
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise ValueError(
                f"{key}: unknown key(s) {unknown} for dist {kind!r}; allowed: {allowed}"
            )
        if cls is Trace and "values" in table:
            table["values"] = tuple(float(v) for v in table["values"])
        try:
            return cls(**table)
        except TypeError as e:
            raise ValueError(f"{key}: {e}") from e
    raise ValueError(f"{key} must be a number, a list or a table, got {value!r}")


def _check_prob(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SystemModel:
    """The devices and the round rules (see module docstring).

    Attributes:
        compute_speed: training samples per second of each client.
        bandwidth_down: bytes per second from server to client.
        bandwidth_up: bytes per second from client to server.
        latency: seconds of latency per message (paid once each way).
        speed_jitter: per-round lognormal noise (sigma) on each client's speed.
        availability: probability that a selected client is reachable this round: one number
            for every client, or a distribution (as for ``compute_speed``) that gives each
            client its own probability, drawn once per device from ``seed`` (a value above 1
            counts as 1: always reachable).
        dropout: probability that a reachable client fails before reporting.
        deadline: seconds after which the server stops waiting (``None``: wait for everyone).
        stragglers: share of the selected clients that can only do part of the local work this
            round (FedProx's 0/50/90 % settings), each with a work fraction drawn uniformly from
            ``straggler_work``.
        straggler_work: ``(low, high)`` bounds of a straggler's work fraction, ``0 <= low <= high
            <= 1`` (at least one local step is always taken).
        policy: ``"drop"`` (late clients and stragglers are discarded) or ``"partial"`` (their
            finished work is accepted).
        seed: seed of the fixed per-device traits.
    """

    compute_speed: Distribution = dataclasses.field(default_factory=lambda: Constant(value=1e4))
    bandwidth_down: Distribution = dataclasses.field(default_factory=lambda: Constant(value=1e7))
    bandwidth_up: Distribution = dataclasses.field(default_factory=lambda: Constant(value=1e6))
    latency: Distribution = dataclasses.field(default_factory=lambda: Constant(value=0.05))
    speed_jitter: float = 0.0
    availability: float | Distribution = 1.0
    dropout: float = 0.0
    deadline: float | None = None
    stragglers: float = 0.0
    straggler_work: tuple[float, float] = (0.0, 1.0)
    policy: Literal["drop", "partial"] = "drop"
    seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.availability, (int, float)):
            _check_prob("availability", self.availability)
        _check_prob("dropout", self.dropout)
        _check_prob("stragglers", self.stragglers)
        if not 0 <= self.speed_jitter <= MAX_SIGMA:
            raise ValueError(
                f"speed_jitter must be in [0, {MAX_SIGMA:g}], got {self.speed_jitter!r}"
            )
        if self.deadline is not None and not (self.deadline > 0 and math.isfinite(self.deadline)):
            raise ValueError(f"deadline must be a number > 0 or unset, got {self.deadline!r}")
        lo, hi = self.straggler_work
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(
                f"straggler_work must be (low, high) with 0 <= low <= high <= 1, got "
                f"{self.straggler_work!r}"
            )
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {self.policy!r}")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any], *, section: str = "system") -> SystemModel:
        """Validate a ``[system]`` table (keys as the attributes; distributions as accepted by
        :func:`distribution_from`). Errors name ``section.key``, the value and what is allowed."""
        allowed = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise ValueError(f"{section}: unknown key(s) {unknown}; allowed: {allowed}")
        kw: dict[str, Any] = {}
        for key, value in table.items():
            per_device = key == "availability" and not isinstance(value, (int, float))
            if per_device or key in ("compute_speed", "bandwidth_down", "bandwidth_up", "latency"):
                kw[key] = distribution_from(f"{section}.{key}", value)
            elif key == "straggler_work":
                if not (isinstance(value, (list, tuple)) and len(value) == 2):
                    raise ValueError(f"{section}.straggler_work must be [low, high], got {value!r}")
                kw[key] = (float(value[0]), float(value[1]))
            else:
                kw[key] = value
        try:
            return cls(**kw)
        except ValueError as e:
            raise ValueError(f"{section}: {e}") from e


@dataclasses.dataclass(frozen=True)
class ClientTiming:
    """One selected client in one round, as the system model sees it.

    Attributes:
        client_id: the client.
        work: work fraction it does (``None``: its update does not reach the aggregate).
        seconds: simulated time from the broadcast until its update arrives (or until it
            stopped mattering: the deadline, or the moment it failed).
        reason: ``"ok"``, ``"partial"``, ``"unavailable"``, ``"dropout"``, ``"late"`` or
            ``"straggler"``.
    """

    client_id: int
    work: float | None
    seconds: float
    reason: str


class SystemParticipation:
    """A :class:`SystemModel` bound to a population and a workload: the ``participation`` hook.

    Args:
        model: the devices and rules.
        num_examples: training examples of each client (index = client id).
        local: the clients' local-training settings (how many samples a full unit of work is).
        bytes_down: bytes of the broadcast message; ``bytes_up``: bytes of one update
            (defaults to ``bytes_down``). Left unset, :class:`SimulatedClock` measures the
            message of each round (updates are taken to be as large as the message).
    """

    def __init__(
        self,
        model: SystemModel,
        *,
        num_examples: Sequence[int],
        local: LocalTraining,
        bytes_down: int | None = None,
        bytes_up: int | None = None,
    ) -> None:
        self.model = model
        self.num_examples = tuple(int(n) for n in num_examples)
        self.local = local
        self.auto_bytes = bytes_down is None
        self.bytes_down = int(bytes_down or 0)
        self.bytes_up = int(self.bytes_down if bytes_up is None else bytes_up)

    def availability(self, client_id: int) -> float:
        """The probability that ``client_id`` is reachable in a round (its own, with a
        per-device distribution)."""
        a = self.model.availability
        if isinstance(a, (int, float)):
            return float(a)
        return min(1.0, a.draw(self.model.seed, client_id, "system/availability"))

    def work_samples(self, client_id: int) -> int:
        """Samples processed by a full unit of local work."""
        n = self.num_examples[client_id]
        b = n if self.local.batch_size == 0 else self.local.batch_size
        return self.local.planned_steps(n) * min(max(b, 1), max(n, 1))

    def timing(self, client_id: int, info: RoundInfo) -> ClientTiming:
        """What happens to ``client_id`` in the round ``info`` (deterministic)."""
        m, s, r = self.model, info.seed, info.round
        speed = m.compute_speed.draw(m.seed, client_id, "system/speed")
        if m.speed_jitter > 0:
            speed *= math.exp(m.speed_jitter * _normal(s, r, client_id, "system/jitter"))
        latency = m.latency.draw(m.seed, client_id, "system/latency")
        down = latency + self.bytes_down / m.bandwidth_down.draw(m.seed, client_id, "system/down")
        up = latency + self.bytes_up / m.bandwidth_up.draw(m.seed, client_id, "system/up")
        compute = self.work_samples(client_id) / speed
        deadline = math.inf if m.deadline is None else m.deadline
        if _uniform(s, r, client_id, "system/available") >= self.availability(client_id):
            return ClientTiming(client_id, None, 0.0, "unavailable")
        work = 1.0
        reason = "ok"
        if _uniform(s, r, client_id, "system/straggler") < m.stragglers:
            lo, hi = m.straggler_work
            work = lo + (hi - lo) * _uniform(s, r, client_id, "system/straggler-work")
            reason = "straggler"
        if _uniform(s, r, client_id, "system/dropout") < m.dropout:
            fail_at = down + compute * _uniform(s, r, client_id, "system/dropout-at")
            return ClientTiming(client_id, None, min(fail_at, deadline), "dropout")
        if down + compute * work + up > deadline:
            reason = "late"
            work = min(work, (deadline - down - up) / compute) if compute > 0 else 0.0
        if reason != "ok":
            if m.policy == "drop" or work <= 0.0:
                seconds = deadline if reason == "late" else down + compute * work + up
                return ClientTiming(client_id, None, seconds, reason)
            reason = "partial"
        work = min(max(work, 1e-9), 1.0)
        return ClientTiming(client_id, work, down + compute * work + up, reason)

    def __call__(self, client_id: int, info: RoundInfo) -> float | None:
        """The participation hook: this client's work fraction, or ``None`` when dropped."""
        return self.timing(client_id, info).work

    def round_seconds(self, cohort: Sequence[int], info: RoundInfo) -> float:
        """Simulated duration of the round: until the last kept update arrives, or the server
        gives up on a late or failed client (at the deadline when there is one)."""
        times = [self.timing(c, info) for c in cohort]
        kept = [t.seconds for t in times if t.work is not None]
        waited = [t.seconds for t in times if t.work is None and t.reason != "unavailable"]
        if self.model.deadline is not None and waited:
            return self.model.deadline
        return max(kept + waited, default=0.0)


class SimulatedClock(ExecutorWrapper):
    """Wraps an executor whose ``participation`` hook is ``system``; adds ``sim_seconds``."""

    def __init__(self, executor: Executor, system: SystemParticipation) -> None:
        super().__init__(executor)
        self.system = system

    def execute(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        msg: Any,
        cohort: Sequence[int],
        info: RoundInfo,
    ) -> RoundOutput:
        """Run the round on the wrapped executor and stamp its simulated duration."""
        if self.system.auto_bytes:
            self.system.bytes_down = self.system.bytes_up = tree_nbytes(msg)
        out = self.inner.execute(algorithm, msg, cohort, info)
        return dataclasses.replace(out, sim_seconds=self.system.round_seconds(cohort, info))
