"""Experiment files for deployments: the ``fedkit run`` format plus a ``[deploy]`` section.

The sections ``[data]``, ``[model]``, ``[algorithm]`` and ``[run]`` are parsed and validated by
:mod:`fedkit.experiment.config`, and the model and algorithm are built exactly as ``fedkit run``
builds them (:mod:`fedkit.experiment.runner`), so a deployment of a file ends with the same model
as ``fedkit run`` of it. ``[deploy]`` (:class:`DeploySettings`) holds the round policy only a
coordinator uses; studies (``arms``/``grid``) are not deployable. The coordinator and every worker
load the same file; the coordinator refuses workers whose file differs (SHA-256 digest).
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from torch import nn

from fedkit.data.spec import DataSpec
from fedkit.experiment.config import ConfigError, ExperimentConfig, experiment_from_mapping
from fedkit.experiment.runner import build_algorithm, model_init_seed
from fedkit.params import Params, model_params
from fedkit.sim.factory import ModelSpec

ON_ABORT = ("skip", "stop")


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
class Experiment:
    """What a coordinator and its workers build from one experiment file."""

    config: ExperimentConfig
    deploy: DeploySettings
    digest: str

    @property
    def data(self) -> DataSpec:
        """The ``[data]`` section."""
        return self.config.data

    @property
    def rounds(self) -> int:
        """``run.rounds``."""
        assert self.config.run.rounds is not None  # checked at load
        return self.config.run.rounds

    @property
    def seed(self) -> int:
        """``run.seed``."""
        return self.config.run.seed

    @property
    def eval_every(self) -> int:
        """``run.eval_every``."""
        return self.config.run.eval_every

    def cohort_size(self, num_clients: int) -> int:
        """Clients per round for a population of ``num_clients``."""
        assert self.config.algorithm is not None  # checked at load
        return self.config.algorithm.cohort_size(num_clients)

    def build_algorithm(self) -> Any:
        """The algorithm object, as ``fedkit run`` builds it."""
        assert self.config.algorithm is not None
        return build_algorithm(self.config.algorithm)

    def build_model(self, *, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
        """The model, initialised from the run seed as ``fedkit run`` does (same everywhere)."""
        m = self.config.model
        return ModelSpec(
            name=m.name,
            num_classes=num_classes,
            input_shape=tuple(input_shape),
            options=dict(m.options),
            init_seed=model_init_seed(self.seed),
        ).build()

    def initial_params(self, model: nn.Module) -> Params:
        """A detached copy of the model's initial parameters."""
        return {k: v.detach().clone() for k, v in model_params(model).items()}


def load_experiment(path: Path) -> Experiment:
    """Parse and validate an experiment file for deployment.

    Raises:
        ExperimentError: a missing file, malformed TOML, an unknown key or an out-of-range value
            (messages from :mod:`fedkit.experiment.config` name the key and the allowed values).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ExperimentError(f"cannot read experiment file {path}: {exc}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ExperimentError(f"{path} is not valid TOML: {exc}") from None
    deploy_t = doc.pop("deploy", {})
    if not isinstance(deploy_t, dict):
        raise ExperimentError("[deploy] must be a table")
    for key in ("arms", "grid"):
        if key in doc:
            raise ExperimentError(
                f"{path}: a deployment runs one experiment; remove `{key}` (studies run with "
                "`fedkit run`)"
            )
    doc.pop("study", None)
    try:
        cfg = experiment_from_mapping(doc, name=path.stem, study=path.stem)
    except ConfigError as exc:
        raise ExperimentError(str(exc)) from None
    if cfg.algorithm is None or cfg.algorithm.name == "centralized" or cfg.parallel is not None:
        raise ExperimentError(
            "a deployment needs a federated [algorithm] (not 'centralized', not [parallel])"
        )
    if cfg.run.rounds is None:
        raise ExperimentError("run.rounds is required")
    deploy = deploy_from_mapping(deploy_t)
    return Experiment(config=cfg, deploy=deploy, digest=hashlib.sha256(raw).hexdigest())


def deploy_from_mapping(table: Mapping[str, Any]) -> DeploySettings:
    """Validate a ``[deploy]`` table (also called by ``fedkit run``, which ignores the policy).

    Raises:
        ExperimentError: an unknown key or a value out of range, named with what is allowed.
    """
    deploy_keys = {f.name for f in dataclasses.fields(DeploySettings)}
    unknown = sorted(set(table) - deploy_keys)
    if unknown:
        raise ExperimentError(
            f"[deploy] unknown key(s) {unknown}; allowed: {', '.join(sorted(deploy_keys))}"
        )
    try:
        return DeploySettings(**table)
    except TypeError as exc:
        raise ExperimentError(f"[deploy]: {exc}") from None
