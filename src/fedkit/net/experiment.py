"""A small typed adapter from an experiment TOML file to what a deployment needs.

The experiment file format belongs to ``fedkit.experiment.config`` (issue 4); until that module
exists this adapter reads the contract keys it needs — ``[data]`` (via
:class:`fedkit.data.spec.DataSpec`), ``[model]`` name (+ options), ``[algorithm]`` (name,
clients_per_round, local_epochs, local_steps, batch_size, lr, momentum, weight_decay, mu,
server_lr, server_momentum), ``[run]`` (rounds, eval_every, seed) — plus the ``[deploy]`` section
that only deployments use (:class:`DeploySettings`). The coordinator and every worker build their
model and algorithm from the same file; the coordinator refuses workers whose file differs
(SHA-256 digest).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import tomllib
import torch
from torch import nn

from fedkit.algorithms import FedAvg, FedProx, FedSGD, Scaffold
from fedkit.data.spec import DataSpec
from fedkit.local import LocalTraining
from fedkit.models import build_model
from fedkit.params import Params, model_params
from fedkit.rng import SERVER, derive_seed
from fedkit.server_opt import SGD, ServerOptimizer, make_server_optimizer

ALGORITHMS = (
    "fedavg",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "fedprox",
    "fedsgd",
    "scaffold",
)
ON_ABORT = ("skip", "stop")
_ALGO_KEYS = {
    "name", "clients_per_round", "local_epochs", "local_steps", "batch_size", "lr", "momentum",
    "weight_decay", "mu", "server_lr", "server_momentum", "weighting",
}  # fmt: skip
_RUN_KEYS = {"rounds", "eval_every", "seed", "executor", "processes", "threads", "target_accuracy"}


class ExperimentError(ValueError):
    """An experiment file that cannot be used (names the key and the allowed values)."""


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

    def __post_init__(self) -> None:
        for name in (
            "deadline_s",
            "select_timeout_s",
            "heartbeat_s",
            "liveness_s",
            "max_update_mib",
        ):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and v > 0):
                raise ExperimentError(f"deploy.{name} = {v!r}: must be a number > 0")
        if not 0 < self.quorum <= 1:
            raise ExperimentError(f"deploy.quorum = {self.quorum!r}: must be in (0, 1]")
        if not self.over_selection >= 1:
            raise ExperimentError(f"deploy.over_selection = {self.over_selection!r}: must be >= 1")
        if not (isinstance(self.round_retries, int) and self.round_retries >= 0):
            raise ExperimentError(f"deploy.round_retries = {self.round_retries!r}: must be >= 0")
        if self.on_abort not in ON_ABORT:
            raise ExperimentError(f"deploy.on_abort = {self.on_abort!r}: allowed {ON_ABORT}")
        if not 0 < self.min_work_fraction <= 1:
            raise ExperimentError(
                f"deploy.min_work_fraction = {self.min_work_fraction!r}: must be in (0, 1]"
            )
        if self.liveness_s < self.heartbeat_s:
            raise ExperimentError("deploy.liveness_s must be >= deploy.heartbeat_s")

    @property
    def max_update_bytes(self) -> int:
        """The result cap in bytes."""
        return int(self.max_update_mib * 1024 * 1024)


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgorithmSpec:
    """The ``[algorithm]`` section (contract keys of issue 4)."""

    name: str = "fedavg"
    clients_per_round: int = 10
    local_epochs: int = 1
    local_steps: int | None = None
    batch_size: int = 10
    lr: float = 0.1
    momentum: float = 0.0
    weight_decay: float = 0.0
    mu: float = 0.01
    server_lr: float | None = None
    server_momentum: float | None = None
    weighting: Literal["examples", "uniform"] | None = None

    def __post_init__(self) -> None:
        if self.name not in ALGORITHMS:
            raise ExperimentError(f"algorithm.name = {self.name!r}: allowed {ALGORITHMS}")
        if self.clients_per_round < 1:
            raise ExperimentError(
                f"algorithm.clients_per_round = {self.clients_per_round}: must be >= 1"
            )

    def local(self) -> LocalTraining:
        """Client optimiser settings."""
        return LocalTraining(
            lr=self.lr,
            epochs=self.local_epochs,
            steps=self.local_steps,
            batch_size=self.batch_size,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
        )

    def server(self) -> ServerOptimizer:
        """The server optimiser implied by the algorithm name."""
        if self.name in ("fedadam", "fedyogi", "fedadagrad"):
            kw = {} if self.server_lr is None else {"lr": self.server_lr}
            return make_server_optimizer(self.name[3:], **kw)
        momentum = self.server_momentum
        if momentum is None:
            momentum = 0.9 if self.name == "fedavgm" else 0.0
        return SGD(lr=1.0 if self.server_lr is None else self.server_lr, momentum=momentum)

    def build(self) -> Any:
        """The algorithm object."""
        kw: dict[str, Any] = {"server": self.server()}
        if self.weighting is not None:
            kw["weighting"] = self.weighting
        if self.name == "fedsgd":
            return FedSGD(**kw)
        if self.name == "fedprox":
            return FedProx(local=self.local(), mu=self.mu, **kw)
        if self.name == "scaffold":
            return Scaffold(local=self.local(), **kw)
        return FedAvg(local=self.local(), **kw)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Experiment:
    """What a coordinator and its workers build from one experiment file."""

    data: DataSpec
    model: str
    model_options: Mapping[str, Any]
    algorithm: AlgorithmSpec
    rounds: int
    eval_every: int
    seed: int
    deploy: DeploySettings
    digest: str

    def build_model(self, *, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        """The model, initialised from the run seed (same on every machine)."""
        torch.manual_seed(derive_seed(self.seed, 0, SERVER, "model-init"))
        return build_model(
            self.model, num_classes=num_classes, input_shape=input_shape, **self.model_options
        )

    def initial_params(self, model: nn.Module) -> Params:
        """A detached copy of the model's initial parameters."""
        return {k: v.detach().clone() for k, v in model_params(model).items()}


def _table(doc: Mapping[str, Any], name: str) -> dict[str, Any]:
    t = doc.get(name, {})
    if not isinstance(t, dict):
        raise ExperimentError(f"[{name}] must be a table")
    return dict(t)


def _build(cls: type[Any], section: str, values: Mapping[str, Any], allowed: set[str]) -> Any:
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise ExperimentError(f"[{section}] unknown key(s) {unknown}; allowed: {sorted(allowed)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    try:
        return cls(**{k: v for k, v in values.items() if k in fields})
    except TypeError as exc:
        raise ExperimentError(f"[{section}]: {exc}") from None


def load_experiment(path: Path) -> Experiment:
    """Parse and validate an experiment file.

    Raises:
        ExperimentError: a missing file, malformed TOML, an unknown key or an out-of-range value.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ExperimentError(f"cannot read experiment file {path}: {exc}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"{path} is not valid TOML: {exc}") from None
    try:
        data = DataSpec.from_mapping(_table(doc, "data"))
    except ValueError as exc:
        raise ExperimentError(str(exc)) from None
    model_t = _table(doc, "model")
    if "name" not in model_t:
        raise ExperimentError("[model] name is required")
    model_name = str(model_t.pop("name"))
    options = model_t.pop("options", {}) if isinstance(model_t.get("options"), dict) else {}
    options.update(model_t)
    algo_t = _table(doc, "algorithm")
    algorithm = _build(AlgorithmSpec, "algorithm", algo_t, _ALGO_KEYS)
    run_t = _table(doc, "run")
    unknown = sorted(set(run_t) - _RUN_KEYS)
    if unknown:
        raise ExperimentError(f"[run] unknown key(s) {unknown}; allowed: {sorted(_RUN_KEYS)}")
    rounds, eval_every, seed = (
        run_t.get("rounds", 1),
        run_t.get("eval_every", 1),
        run_t.get("seed", 0),
    )
    for key, v, low in (("rounds", rounds, 1), ("eval_every", eval_every, 0), ("seed", seed, 0)):
        if not (isinstance(v, int) and v >= low):
            raise ExperimentError(f"run.{key} = {v!r}: must be an integer >= {low}")
    deploy_t = _table(doc, "deploy")
    deploy_keys = {f.name for f in dataclasses.fields(DeploySettings)}
    deploy = _build(DeploySettings, "deploy", deploy_t, deploy_keys)
    return Experiment(
        data=data,
        model=model_name,
        model_options=options,
        algorithm=algorithm,
        rounds=rounds,
        eval_every=eval_every,
        seed=seed,
        deploy=deploy,
        digest=hashlib.sha256(raw).hexdigest(),
    )
