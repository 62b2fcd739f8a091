"""Typed settings of the data-parallel track: ``ParallelSpec`` is the ``[parallel]`` TOML section.

Config lives at the edge (DESIGN.md): the trainer only ever sees a validated, frozen
``ParallelSpec``. ``ParallelSpec.from_mapping`` turns a parsed TOML table into one, rejecting
unknown keys and bad values with errors that name the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

Method = Literal[
    "sync",
    "local_sgd",
    "post_local_sgd",
    "slowmo",
    "diloco",
    "async_ps",
    "adaptive_h",
    "adaptive_batch",
]
OptimizerName = Literal["sgd", "lars", "lamb", "adamw"]
Topology = Literal["ring", "ps"]
Mode = Literal["replicas", "gloo"]
Schedule = Literal["constant", "cosine", "step"]
GradCompression = Literal["none", "fp16", "powersgd"]

METHODS: tuple[str, ...] = get_args(Method)
OPTIMIZERS: tuple[str, ...] = get_args(OptimizerName)
TOPOLOGIES: tuple[str, ...] = get_args(Topology)
MODES: tuple[str, ...] = get_args(Mode)
SCHEDULES: tuple[str, ...] = get_args(Schedule)
GRAD_COMPRESSIONS: tuple[str, ...] = get_args(GradCompression)

#: Inner momentum of each optimiser when ``momentum`` is unset: heavy ball off for SGD and LARS
#: (as ``torch.optim.SGD``), β1 = 0.9 for the Adam-family LAMB (You et al. 2020) and AdamW.
DEFAULT_MOMENTUM: dict[str, float] = {"sgd": 0.0, "lars": 0.0, "lamb": 0.9, "adamw": 0.9}

#: Methods that train locally for several steps between model averages.
LOCAL_METHODS: frozenset[str] = frozenset(
    {"local_sgd", "post_local_sgd", "slowmo", "diloco", "adaptive_h"}
)


def _check(ok: bool, name: str, value: object, allowed: str) -> None:
    if not ok:
        raise ValueError(f"parallel.{name} = {value!r} is invalid; allowed: {allowed}")


@dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """A network for the simulated communication clock.

    Attributes:
        latency_ms: one-way latency of one message, in milliseconds.
        bandwidth_gbit: link bandwidth of every worker (and of the server), in Gbit/s.
    """

    latency_ms: float = 0.05
    bandwidth_gbit: float = 10.0

    def __post_init__(self) -> None:
        _check(self.latency_ms >= 0, "network.latency_ms", self.latency_ms, "a number >= 0")
        _check(self.bandwidth_gbit > 0, "network.bandwidth_gbit", self.bandwidth_gbit, "> 0")

    @property
    def latency_s(self) -> float:
        """Latency in seconds."""
        return self.latency_ms / 1e3

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """Bandwidth in bytes per second."""
        return self.bandwidth_gbit * 1e9 / 8


@dataclass(frozen=True, kw_only=True)
class ParallelSpec:
    """One data-parallel training run (the ``[parallel]`` section of an experiment file).

    Attributes:
        method: the algorithm; see the package docstring for each one's update rule.
        workers: number of data-parallel workers K.
        local_steps: H, local steps between model averages (local methods; the starting H of
            ``adaptive_h``).
        post_local_warmup_steps: synchronous steps before Local SGD starts (``post_local_sgd``).
        batch_size: mini-batch size per worker B (the starting size for ``adaptive_batch``).
        max_batch_size: largest per-worker batch ``adaptive_batch`` may grow to (0: no limit).
        lr: base (inner) learning rate.
        momentum: inner momentum: heavy ball for ``sgd``/``lars``, the first-moment
            coefficient β1 for ``lamb``/``adamw``. Unset (``None``) means the optimiser's
            default, :data:`DEFAULT_MOMENTUM`: 0 for ``sgd``/``lars``, 0.9 for ``lamb`` (You et
            al. 2020, Algorithm 2) and ``adamw``; read the resolved value from
            :attr:`inner_momentum`.
        nesterov: Nesterov inner momentum (``sgd`` only).
        weight_decay: L2 weight decay (decoupled for ``lamb``/``adamw``).
        optimizer: inner optimiser.
        trust_coefficient: LARS trust coefficient η.
        lr_warmup_steps: linear LR warm-up length in steps (Goyal et al. 2017).
        lr_warmup_epochs: the same, in epochs of the training set (added to the steps).
        lr_schedule: LR shape after warm-up (``adaptive_batch`` always uses ``step``: its
            milestones grow the batch, and decay the LR only once the batch is capped).
        lr_milestones: fractions of the sample budget where ``step`` decays the LR (and where
            ``adaptive_batch`` grows the batch instead).
        lr_decay: factor applied at each milestone (the batch grows by ``1 / lr_decay``).
        slow_lr: SlowMo slow learning rate α.
        slow_momentum: SlowMo slow momentum β.
        outer_lr: DiLoCo outer learning rate.
        outer_momentum: DiLoCo outer Nesterov momentum.
        staleness: bound s on the staleness of an asynchronous update (``async_ps``).
        worker_speed_sigma: log-normal spread of per-worker speed in the async simulation.
        async_step_seconds: nominal compute time of one gradient on the async event clock.
        adapt_every_steps: ``adaptive_h`` re-chooses H this often (in steps).
        min_local_steps: ``adaptive_h`` never goes below this H.
        sample_budget: total training samples over all workers.
        eval_every_samples: evaluate after this many samples (at the next synchronisation).
        eval_batch_size: batch size of evaluation.
        max_eval_samples: evaluate on at most this many test samples (0: all).
        network: the simulated network.
        topology: ``ring`` all-reduce or parameter server ``ps`` (accounting and clock).
        mode: ``replicas`` (K replicas in one process, deterministic) or ``gloo`` (K processes).
        seed: every random choice (init, data order, async speeds) derives from it.
        grad_compression: PyTorch's DDP communication hook for the gradient all-reduce:
            ``none``, ``fp16`` or ``powersgd`` (:mod:`fedkit.parallel.grad_compress`; gloo
            mode, methods ``sync`` and ``adaptive_batch``).
        powersgd_rank: PowerSGD's matrix approximation rank.
        powersgd_start_iter: plain all-reduce steps before PowerSGD starts (>= 2).
    """

    method: Method = "sync"
    workers: int = 1
    local_steps: int = 1
    post_local_warmup_steps: int = 0
    batch_size: int = 32
    max_batch_size: int = 0
    lr: float = 0.05
    momentum: float | None = None
    nesterov: bool = False
    weight_decay: float = 0.0
    optimizer: OptimizerName = "sgd"
    trust_coefficient: float = 0.001
    lr_warmup_steps: int = 0
    lr_warmup_epochs: float = 0.0
    lr_schedule: Schedule = "constant"
    lr_milestones: tuple[float, ...] = (0.5, 0.75)
    lr_decay: float = 0.1
    slow_lr: float = 1.0
    slow_momentum: float = 0.5
    outer_lr: float = 0.7
    outer_momentum: float = 0.9
    staleness: int = 4
    worker_speed_sigma: float = 0.0
    async_step_seconds: float = 0.01
    adapt_every_steps: int = 100
    min_local_steps: int = 1
    sample_budget: int = 50_000
    eval_every_samples: int = 10_000
    eval_batch_size: int = 1000
    max_eval_samples: int = 0
    network: NetworkSpec = field(default_factory=NetworkSpec)
    topology: Topology = "ring"
    mode: Mode = "replicas"
    seed: int = 0
    grad_compression: GradCompression = "none"
    powersgd_rank: int = 1
    powersgd_start_iter: int = 2

    def __post_init__(self) -> None:
        _check(self.method in METHODS, "method", self.method, " | ".join(METHODS))
        _check(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, " | ".join(OPTIMIZERS))
        _check(self.topology in TOPOLOGIES, "topology", self.topology, " | ".join(TOPOLOGIES))
        _check(self.mode in MODES, "mode", self.mode, " | ".join(MODES))
        _check(
            self.lr_schedule in SCHEDULES, "lr_schedule", self.lr_schedule, " | ".join(SCHEDULES)
        )
        for name in ("workers", "local_steps", "batch_size", "sample_budget", "eval_batch_size"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        for name in (
            "post_local_warmup_steps",
            "max_batch_size",
            "lr_warmup_steps",
            "staleness",
            "max_eval_samples",
        ):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, name, value, "an integer >= 0")
        for name in ("adapt_every_steps", "min_local_steps", "eval_every_samples"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 1, name, value, "an integer >= 1")
        _check(self.lr > 0, "lr", self.lr, "a number > 0")
        _check(
            self.momentum is None or 0 <= self.momentum < 1,
            "momentum",
            self.momentum,
            "0 <= momentum < 1 (or unset: the optimiser's default)",
        )
        _check(self.weight_decay >= 0, "weight_decay", self.weight_decay, "a number >= 0")
        _check(self.trust_coefficient > 0, "trust_coefficient", self.trust_coefficient, "> 0")
        _check(self.lr_warmup_epochs >= 0, "lr_warmup_epochs", self.lr_warmup_epochs, ">= 0")
        _check(
            all(0 < m < 1 for m in self.lr_milestones)
            and list(self.lr_milestones) == sorted(self.lr_milestones),
            "lr_milestones",
            self.lr_milestones,
            "increasing fractions of the sample budget in (0, 1)",
        )
        _check(0 < self.lr_decay <= 1, "lr_decay", self.lr_decay, "0 < lr_decay <= 1")
        _check(self.slow_lr > 0, "slow_lr", self.slow_lr, "a number > 0")
        _check(0 <= self.slow_momentum < 1, "slow_momentum", self.slow_momentum, "[0, 1)")
        _check(self.outer_lr > 0, "outer_lr", self.outer_lr, "a number > 0")
        _check(0 <= self.outer_momentum < 1, "outer_momentum", self.outer_momentum, "[0, 1)")
        _check(self.async_step_seconds > 0, "async_step_seconds", self.async_step_seconds, "> 0")
        _check(self.worker_speed_sigma >= 0, "worker_speed_sigma", self.worker_speed_sigma, ">= 0")
        _check(
            not (self.nesterov and (self.optimizer != "sgd" or self.inner_momentum == 0)),
            "nesterov",
            self.nesterov,
            "true only with optimizer = 'sgd' and momentum > 0",
        )
        _check(
            self.max_batch_size == 0 or self.max_batch_size >= self.batch_size,
            "max_batch_size",
            self.max_batch_size,
            f"0 (no limit) or >= batch_size ({self.batch_size})",
        )
        _check(
            self.grad_compression in GRAD_COMPRESSIONS,
            "grad_compression",
            self.grad_compression,
            " | ".join(GRAD_COMPRESSIONS),
        )
        _check(
            self.grad_compression == "none"
            or (self.mode == "gloo" and self.method in ("sync", "adaptive_batch")),
            "grad_compression",
            self.grad_compression,
            "'none' unless mode = 'gloo' and method is 'sync' or 'adaptive_batch' (a DDP "
            "communication hook compresses every step's gradient all-reduce across processes)",
        )
        _check(self.powersgd_rank >= 1, "powersgd_rank", self.powersgd_rank, "an integer >= 1")
        _check(
            self.powersgd_start_iter >= 2,
            "powersgd_start_iter",
            self.powersgd_start_iter,
            "an integer >= 2 (PowerSGD's error feedback needs it)",
        )
        _check(
            self.min_local_steps <= self.local_steps,
            "min_local_steps",
            self.min_local_steps,
            f"<= local_steps ({self.local_steps})",
        )

    @property
    def inner_momentum(self) -> float:
        """``momentum`` if set, else the optimiser's default (:data:`DEFAULT_MOMENTUM`)."""
        return DEFAULT_MOMENTUM[self.optimizer] if self.momentum is None else self.momentum

    @property
    def global_batch(self) -> int:
        """K · B, samples consumed by one synchronous step over all workers."""
        return self.workers * self.batch_size

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ParallelSpec:
        """Build a spec from a parsed TOML table, naming any unknown key or bad value.

        Args:
            data: the ``[parallel]`` table; ``network`` may be a nested table.

        Returns:
            The validated spec.

        Raises:
            ValueError: an unknown key, a value of the wrong type, or an invalid value.
        """
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(
                f"unknown key(s) in [parallel]: {', '.join(unknown)}; allowed: {', '.join(known)}"
            )
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "network":
                kwargs[key] = _network_from(value)
                continue
            default = getattr(cls(), key)
            kwargs[key] = _coerce(key, value, 0.0 if key == "momentum" else default)
        return cls(**kwargs)


def _network_from(value: object) -> NetworkSpec:
    if not isinstance(value, Mapping):
        raise ValueError(f"parallel.network = {value!r} is invalid; allowed: a table")
    names = {f.name for f in dataclasses.fields(NetworkSpec)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ValueError(
            f"unknown key(s) in [parallel.network]: {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(names))}"
        )
    kwargs = {str(k): float(_coerce(f"network.{k}", v, 0.0)) for k, v in value.items()}  # type: ignore[arg-type]
    return NetworkSpec(**kwargs)


def _coerce(key: str, value: object, default: object) -> object:
    """Check ``value`` has the type of ``default`` (ints are accepted for floats)."""
    if isinstance(default, bool):
        _check(isinstance(value, bool), key, value, "true or false")
        return value
    if isinstance(default, int):
        _check(isinstance(value, int) and not isinstance(value, bool), key, value, "an integer")
        return value
    if isinstance(default, float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _check(ok, key, value, "a number")
        return float(value)  # type: ignore[arg-type]
    if isinstance(default, tuple):
        ok = isinstance(value, list | tuple) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value
        )
        _check(ok, key, value, "a list of numbers")
        assert isinstance(value, list | tuple)
        return tuple(float(v) for v in value)
    if isinstance(default, str):
        _check(isinstance(value, str), key, value, "a string")
        return value
    return value
