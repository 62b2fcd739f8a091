"""Experiment files: TOML parsed at the edge into typed, validated, frozen settings.

An experiment file describes one run, or a *study* of several runs (arms and grids) that share a
base. Everything is validated before anything runs or is written, with errors that name the key,
the bad value and the allowed values; the library below only ever sees typed objects.

The parts a file chooses by name (algorithm, server optimiser, aggregator, sampler, executor) come
from :mod:`fedkit.registry` and are built from their tables through their own fields
(:mod:`fedkit.experiment.tables`); their range checks live once, in their ``__post_init__``.

Sections and keys::

    [study]                    # optional
    name = "quickstart"        # default: the file's stem
    description = "..."

    [data]                     # fedkit.data.spec.DataSpec (dataset, partition, num_clients,
    dataset = "synthetic"      #   alpha, beta, shards_per_client, sigma, seed, options, ...)
    partition = "natural"

    [model]                    # name + the model builder's own keyword options
    name = "logreg"

    [algorithm]                # name (fedkit.registry.ALGORITHMS, or "package.module:Class")
    name = "fedprox"           #   + the algorithm's own fields (weighting, mu, ...)
    mu = 0.01

    [algorithm.local]          # fedkit.local.LocalTraining: lr, epochs, steps, batch_size,
    lr = 0.01                  #   momentum, weight_decay
    epochs = 1
    batch_size = 10

    [algorithm.server]         # name = sgd | adam | yogi | adagrad + the optimiser's fields
    name = "sgd"               #   (lr, momentum; lr, beta1, beta2, tau)
    lr = 1.0

    [aggregator]               # optional; name (fedkit.registry.AGGREGATORS) + its fields; a
    name = "mean"              #   wrapper's inner aggregator is a nested table [aggregator.inner]

    [sampler]                  # optional; name (fedkit.registry.SAMPLERS) + its fields
    name = "uniform"

    [attack]                   # optional; name (fedkit.registry.ATTACKS) + its fields, and who
    name = "sign_flip"         #   attacks: fraction = 0.2 or clients = [..]
    fraction = 0.2             #   (fedkit.experiment.attack)

    [run]                      # see RunSettings
    rounds = 50
    clients_per_round = 10     # or client_fraction = 0.1 (McMahan's C); unset: every client
    eval_every = 1
    executor = "serial"        # fedkit.registry.EXECUTORS: serial | processes | vectorized
    seed = 0
    target_accuracy = 0.8

    [parallel]                 # optional: a data-parallel run (fedkit.parallel.ParallelSpec);
                               # [algorithm] and [run] rounds are then not used

    [[arms]]                   # optional: one run per arm; every other key overrides the base
    name = "fedprox"
    algorithm.name = "fedprox"
    algorithm.mu = 0.01

    [grid]                     # optional: cartesian product over dotted keys (in every arm
    "algorithm.local.epochs" = [1, 5]   # unless the arm has its own `grid`, `grid = {}` for none)

Presets: ``fedavgm`` (server SGD with momentum 0.9), ``fedadam``, ``fedyogi`` and ``fedadagrad``
are FedAvg with that server optimiser; ``centralized`` is the non-federated baseline (its
``[algorithm.local]`` is the SGD on the pooled data, one epoch per round).

Old files keep working: the flat ``[algorithm]`` keys of earlier versions (:data:`LEGACY_KEYS`:
``clients_per_round``, ``lr``, ``local_epochs``, ``server_lr``, ``beta1`` …) are moved to their
new places with a ``FutureWarning`` naming old key → new key; as before, such a file's keys that
the chosen algorithm does not use are ignored.

Overrides from the command line (``--set algorithm.local.lr=0.05``, or the old
``--set algorithm.lr=0.05``) use the same dotted keys, are applied last (after arms and grids) and
remove a grid axis over the same key; a layer (arm, grid point, override) that sets one spelling
of a moved key replaces the other spelling. Values are TOML values (``3``, ``0.5``, ``true``,
``"x"``); a bare word is taken as a string.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
import re
import tomllib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from fedkit.data.spec import DataSpec
from fedkit.experiment.attack import AttackSettings
from fedkit.experiment.tables import (
    ConfigError,
    build,
    check_keys,
    check_value,
    construct,
    describe,
    did_you_mean,
    merge_preset,
)
from fedkit.local import LocalTraining
from fedkit.registry import (
    AGGREGATORS,
    ALGORITHMS,
    EXECUTORS,
    SAMPLERS,
    SERVER_OPTIMIZERS,
    UnknownNameError,
    is_import_path,
)
from fedkit.sampling import ClientSampler, UniformSampler, cohort_from_fraction
from fedkit.sim.system import SystemModel

if TYPE_CHECKING:
    from fedkit.parallel.spec import ParallelSpec

__all__ = [
    "ALGORITHMS",
    "EXECUTORS",
    "LEGACY_KEYS",
    "AlgorithmSettings",
    "ConfigError",
    "ExperimentConfig",
    "ModelSettings",
    "RunSettings",
    "Study",
    "apply_overrides",
    "experiment_from_mapping",
    "load_study",
    "parse_overrides",
    "study_from_mapping",
]

SECTIONS: tuple[str, ...] = (
    "data",
    "model",
    "algorithm",
    "aggregator",
    "sampler",
    "run",
    "parallel",
    "system",
    "deploy",
    "attack",
)
"""The sections of one experiment."""

STUDY_KEYS: tuple[str, ...] = ("study", "arms", "grid")
"""Top-level keys that describe a study rather than one experiment."""

LEGACY_KEYS: Mapping[str, str] = MappingProxyType(
    {
        "clients_per_round": "run.clients_per_round",
        "client_fraction": "run.client_fraction",
        "local_epochs": "algorithm.local.epochs",
        "local_steps": "algorithm.local.steps",
        "batch_size": "algorithm.local.batch_size",
        "lr": "algorithm.local.lr",
        "momentum": "algorithm.local.momentum",
        "weight_decay": "algorithm.local.weight_decay",
        "server_lr": "algorithm.server.lr",
        "server_momentum": "algorithm.server.momentum",
        "beta1": "algorithm.server.beta1",
        "beta2": "algorithm.server.beta2",
        "tau": "algorithm.server.tau",
    }
)
"""Old flat ``[algorithm]`` key → its dotted key now (still accepted, with a FutureWarning)."""

_NEW_TO_OLD: Mapping[str, str] = {new: f"algorithm.{old}" for old, new in LEGACY_KEYS.items()}

_LEGACY_FEDSGD_LR = 0.1
"""Old files' default ``lr``, which ``fedsgd`` used as its server step size."""
# -- small validators --------------------------------------------------------------------------


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


MAX_ROUNDS = 1_000_000
"""Largest ``run.rounds`` (and evaluation interval): a million rounds is beyond any study."""
MAX_CLIENTS = 10_000_000
"""Largest client population or cohort (``data.num_clients``, ``run.clients_per_round``)."""
MAX_PROCESSES = 1_024
"""Largest ``run.processes`` and ``run.threads``."""
MAX_SEED = 2**63 - 1
"""Largest seed (seeds end up in int64 generators)."""
MAX_MODEL_SIZE = 1 << 20
"""Largest integer model option (a width, a layer count, a vocabulary size)."""


def _int(key: str, v: object, lo: int, hi: int | None = None, *, optional: bool = False) -> None:
    if optional and v is None:
        return
    bound = f">= {lo}" if hi is None else f">= {lo} and <= {hi}"
    if not _is_int(v) or v < lo or (hi is not None and v > hi):  # type: ignore[operator]
        raise ConfigError(f"{key} must be an int {bound}; got {v!r}")


def _num(
    key: str,
    v: object,
    lo: float,
    hi: float | None = None,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
    optional: bool = False,
) -> None:
    if optional and v is None:
        return
    f = float(v) if _is_num(v) else math.nan  # type: ignore[arg-type]
    ok = not math.isnan(f) and (f > lo if lo_open else f >= lo)
    if hi is not None:
        ok = ok and (f < hi if hi_open else f <= hi)
    if not ok:
        left = "(" if lo_open else "["
        right = ")" if hi_open else "]"
        rng = f"> {lo}" if hi is None and lo_open else f">= {lo}"
        if hi is not None:
            rng = f"in {left}{lo}, {hi}{right}"
        raise ConfigError(f"{key} must be a finite number {rng}; got {v!r}")


def _choice(key: str, v: object, allowed: Sequence[str]) -> None:
    if not isinstance(v, str) or v not in allowed:
        raise ConfigError(f"{key} must be one of {', '.join(allowed)}; got {v!r}")


def _table(key: str, v: object) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise ConfigError(f"[{key}] must be a table; got {v!r}")
    return v


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """The ``[model]`` section: a model name from :mod:`fedkit.models` and its options.

    Attributes:
        name: Registered model name (``fedkit.models.model_names()``) or the import path of
            an ``nn.Module`` subclass or ``@fedkit.plugins.model`` function (docs/plugins.md).
        options: The builder's own keyword options (every other key of ``[model]``), checked
            against the builder's signature.
    """

    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        from fedkit.models import MODELS, model_names
        from fedkit.models.registry import model_builder
        from fedkit.plugins import is_import_path, option_names

        if not (isinstance(self.name, str) and is_import_path(self.name)):
            _choice("model.name", self.name, model_names())
        try:
            builder = model_builder(self.name)  # a plugin's import path: docs/plugins.md
        except ValueError as e:
            raise ConfigError(f"model.name: {e}") from None
        params = inspect.signature(builder).parameters.values()
        allowed = (
            option_names(builder)
            if self.name not in MODELS
            else sorted(
                p.name
                for p in params
                if p.kind is inspect.Parameter.KEYWORD_ONLY
                and p.name not in ("num_classes", "input_shape")
            )
        )
        unknown = sorted(set(self.options) - set(allowed))
        if unknown:
            raise ConfigError(
                f"unknown key model.{unknown[0]} for model {self.name!r}"
                f"{did_you_mean(unknown[0], allowed)}; allowed: "
                f"name{', ' if allowed else ''}{', '.join(allowed)}"
            )
        _check_model_options(builder, self.options)
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> ModelSettings:
        """Validate a ``[model]`` table."""
        table = _table("model", table)
        if "name" not in table:
            from fedkit.models import model_names

            raise ConfigError(f"[model] needs 'name', one of {', '.join(model_names())}")
        opts = {k: v for k, v in table.items() if k != "name"}
        return cls(name=table["name"], options=opts)

    def to_mapping(self) -> dict[str, Any]:
        """As a ``[model]`` table."""
        return {"name": self.name, **dict(self.options)}


def _check_model_options(builder: Any, options: Mapping[str, Any]) -> None:
    """Each option against the builder's annotation (booleans are not numbers), and every
    integer in it (a width, a count, a size) in [1, MAX_MODEL_SIZE]."""
    import typing

    init = getattr(builder, "__init__", builder) if isinstance(builder, type) else builder
    hints = typing.get_type_hints(init)
    for k, v in options.items():
        key = f"model.{k}"
        tp = hints.get(k)
        if typing.get_origin(tp) in (Sequence, list):  # e.g. mlp's ``hidden: Sequence[int]``
            tp = tuple[typing.get_args(tp)[0], ...]  # type: ignore[misc]
        check_value(tp, v, key)
        for x in v if isinstance(v, list | tuple) else [v]:
            if _is_int(x) and not 1 <= x <= MAX_MODEL_SIZE:
                raise ConfigError(f"{key} must hold ints >= 1 and <= {MAX_MODEL_SIZE}; got {v!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class AlgorithmSettings:
    """The ``[algorithm]`` section, built: the name as written and the algorithm object.

    Attributes:
        name: A name of :data:`fedkit.registry.ALGORITHMS` (``fedavg``, ``fedadam``,
            ``centralized`` …) or an import path ``"package.module:Class"``.
        algorithm: The object built from the table through its own fields (``FedAvg(local=…,
            server=…, aggregator=…)``; for ``centralized`` a
            :class:`fedkit.centralized.Centralized`).
    """

    name: str
    algorithm: Any

    @property
    def federated(self) -> bool:
        """False for the ``centralized`` baseline."""
        return self.name != "centralized"

    @property
    def local(self) -> LocalTraining | None:
        """The algorithm's local-training settings, when it has a ``local`` field."""
        local = getattr(self.algorithm, "local", None)
        return local if isinstance(local, LocalTraining) else None

    @classmethod
    def from_mapping(
        cls, table: Mapping[str, Any], *, aggregator: Mapping[str, Any] | None = None
    ) -> AlgorithmSettings:
        """Build an ``[algorithm]`` table (and the ``[aggregator]`` table, passed to the
        algorithm's ``aggregator`` field).

        Raises:
            ConfigError: No or unknown name, an unknown key (the allowed ones are listed), a
                value of the wrong type or one the algorithm's classes reject.
        """
        table = _table("algorithm", table)
        if "name" not in table:
            raise ConfigError(f"[algorithm] needs 'name', one of {ALGORITHMS.allowed()}")
        name = table["name"]
        extra: dict[str, Any] = {}
        if aggregator is not None and name != "centralized":
            if "aggregator" in table:
                raise ConfigError(
                    "set the aggregator in [aggregator] or algorithm.aggregator, not both"
                )
            try:
                takes = "aggregator" in _field_names(ALGORITHMS.load(str(name)))
            except UnknownNameError as e:
                raise ConfigError(f"algorithm.name: {e}") from None
            if not takes:
                raise ConfigError(
                    f"algorithm {name!r} has no aggregator field; remove the [aggregator] section"
                )
            extra["aggregator"] = build(
                AGGREGATORS, _table("aggregator", aggregator), "aggregator", default="mean"
            )
        return cls(name=name, algorithm=build(ALGORITHMS, table, "algorithm", extra=extra))

    def to_mapping(self) -> dict[str, Any]:
        """As an ``[algorithm]`` table (every field, resolved; the aggregator is its own table)."""
        return describe(self.algorithm, name=self.name, skip=("aggregator",))

    def aggregator_mapping(self) -> dict[str, Any] | None:
        """The algorithm's aggregator as an ``[aggregator]`` table, if it has one."""
        if not self.federated or "aggregator" not in _field_names(type(self.algorithm)):
            return None
        agg = self.algorithm.aggregator
        return describe(agg, name=AGGREGATORS.name_of(agg))


def _field_names(factory: Any) -> set[str]:
    if dataclasses.is_dataclass(factory):
        return {f.name for f in dataclasses.fields(factory) if f.init}
    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """The ``[run]`` section: run policy.

    Attributes:
        rounds: Rounds to run (>= 1; epochs for ``centralized``). Required unless the
            experiment is a ``[parallel]`` one.
        clients_per_round: Cohort size (1 to the number of clients); unset with
            ``client_fraction`` unset means every client.
        client_fraction: McMahan's C in (0, 1]: cohort = C · clients rounded half up, at least 1
            (:func:`fedkit.sampling.cohort_from_fraction`); exclusive with ``clients_per_round``.
        eval_every: Centralised test evaluation every k rounds and after the last (0: never).
        federated_eval_every: Per-client (federated) evaluation every k rounds and after the
            last; 0 disables it; unset means after the last round only.
        executor: A name of :data:`fedkit.registry.EXECUTORS` (``serial``, ``processes``,
            ``vectorized``) or an import path of an executor factory.
        processes: Ranks for the ``processes`` executor (>= 1).
        threads: torch threads per process (>= 1).
        seed: Root of every random draw of the run (model init, sampling, batch order).
        target_accuracy: Test accuracy in [0, 1] whose first attainment gives
            ``rounds_to_target``.
        tensorboard: Write each round's scalars for TensorBoard: ``true`` under
            ``OUT/tensorboard/``, a string under that directory (``fedkit run --tensorboard
            DIR``); one subdirectory per run (:mod:`fedkit.tensorboard`).
        init_from: A model bundle directory (``fedkit export``) whose weights start the run
            instead of a fresh initialisation (pretrain, then fine-tune federated); its model and
            vocabulary must be the run's (:mod:`fedkit.experiment.init_from`).
        checkpoint_every: Checkpoint after every k-th committed round and the last (default 1:
            each); a resumed run repeats the rounds after the last checkpoint and still equals
            an uninterrupted one. Raise it when every client's state (e.g. error-feedback
            residuals) makes a checkpoint large.
    """

    rounds: int | None = None
    clients_per_round: int | None = None
    client_fraction: float | None = None
    eval_every: int = 1
    federated_eval_every: int | None = None
    executor: str = "serial"
    processes: int = 2
    threads: int = 1
    seed: int = 0
    target_accuracy: float | None = None
    tensorboard: bool | str = False
    init_from: str | None = None
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        r = "run."
        _int(r + "rounds", self.rounds, 1, MAX_ROUNDS, optional=True)
        _int(r + "clients_per_round", self.clients_per_round, 1, MAX_CLIENTS, optional=True)
        _num(r + "client_fraction", self.client_fraction, 0.0, 1.0, lo_open=True, optional=True)
        if self.clients_per_round is not None and self.client_fraction is not None:
            raise ConfigError("set one of run.clients_per_round and run.client_fraction, not both")
        _int(r + "eval_every", self.eval_every, 0, MAX_ROUNDS)
        _int(r + "federated_eval_every", self.federated_eval_every, 0, MAX_ROUNDS, optional=True)
        _int(r + "checkpoint_every", self.checkpoint_every, 1, MAX_ROUNDS)
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"run.executor must be one of {EXECUTORS.allowed()}; got {self.executor!r}"
            )
        if is_import_path(self.executor):
            try:
                EXECUTORS.load(self.executor)
            except UnknownNameError as e:
                raise ConfigError(f"run.executor: {e}") from None
        _int(r + "processes", self.processes, 1, MAX_PROCESSES)
        _int(r + "threads", self.threads, 1, MAX_PROCESSES)
        _int(r + "seed", self.seed, 0, MAX_SEED)
        _num(r + "target_accuracy", self.target_accuracy, 0.0, 1.0, optional=True)
        if not isinstance(self.tensorboard, bool | str) or self.tensorboard == "":
            raise ConfigError(
                f"run.tensorboard must be true, false or a directory; got {self.tensorboard!r}"
            )
        if self.init_from is not None and (
            not isinstance(self.init_from, str) or not self.init_from
        ):
            raise ConfigError(f"run.init_from must be a bundle directory; got {self.init_from!r}")

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> RunSettings:
        """Validate a ``[run]`` table."""
        result: RunSettings = construct(cls, _table("run", table), "run")
        return result

    def cohort_size(self, num_clients: int) -> int:
        """The cohort size for a population of ``num_clients``.

        Raises:
            ConfigError: ``clients_per_round`` exceeds the population.
        """
        if self.clients_per_round is not None:
            if self.clients_per_round > num_clients:
                raise ConfigError(
                    f"run.clients_per_round must be in [1, {num_clients}] (the number of "
                    f"clients); got {self.clients_per_round}"
                )
            return self.clients_per_round
        if self.client_fraction is not None:
            return cohort_from_fraction(self.client_fraction, num_clients)
        return num_clients


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """One fully resolved, validated run.

    Attributes:
        name: Run name (arm name, plus grid values for a grid point).
        study: The study's name.
        data: The ``[data]`` section.
        model: The ``[model]`` section.
        algorithm: The ``[algorithm]`` section (``None`` for a ``[parallel]`` run); its
            algorithm holds the ``[aggregator]``.
        run: The ``[run]`` section.
        sampler: The ``[sampler]`` section (default: uniform without replacement).
        parallel: The ``[parallel]`` section (a data-parallel run), or ``None``.
        system: The ``[system]`` section (system heterogeneity: speeds, links, availability,
            stragglers, deadline; :class:`fedkit.sim.system.SystemModel`), or ``None``.
        attack: The ``[attack]`` section (attacking or corrupted clients), or ``None``.
        grid_point: The grid values (dotted key -> value) that produced this run.
        source: The resolved document (plain TOML values, current key names) this config was
            validated from; it rebuilds the config in another process (``experiment_from_mapping``).
    """

    name: str
    study: str
    data: DataSpec
    model: ModelSettings
    algorithm: AlgorithmSettings | None
    run: RunSettings
    sampler: ClientSampler = dataclasses.field(default_factory=UniformSampler)
    parallel: ParallelSpec | None = None
    system: SystemModel | None = None
    attack: AttackSettings | None = None
    grid_point: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)
    source: Mapping[str, Any] = dataclasses.field(
        default_factory=dict, hash=False, compare=False, repr=False
    )

    def cohort_size(self, num_clients: int) -> int:
        """Clients per round for a population of ``num_clients`` (``[run]`` policy)."""
        return self.run.cohort_size(num_clients)

    def to_mapping(self) -> dict[str, Any]:
        """The resolved config as plain JSON-ready tables (what the results store records)."""
        out: dict[str, Any] = {
            "data": self.data.to_mapping(),
            "model": self.model.to_mapping(),
            "run": _plain(dataclasses.asdict(self.run)),
        }
        if self.algorithm is not None:
            out["algorithm"] = self.algorithm.to_mapping()
            agg = self.algorithm.aggregator_mapping()
            if agg is not None:
                out["aggregator"] = agg
        out["sampler"] = describe(self.sampler, name=SAMPLERS.name_of(self.sampler))
        if self.parallel is not None:
            out["parallel"] = _plain(dataclasses.asdict(self.parallel))
        if self.system is not None:  # as written (distributions stay in their TOML form)
            out["system"] = _plain(dict(self.source.get("system", {})))
        if self.attack is not None:
            out["attack"] = self.attack.to_mapping()
        if self.grid_point:
            out["grid_point"] = dict(self.grid_point)
        return out


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """Drop unset (``None``) values and turn tuples into lists."""
    return {
        k: list(v) if isinstance(v, tuple) else _plain(v) if isinstance(v, Mapping) else v
        for k, v in d.items()
        if v is not None
    }


# -- old flat [algorithm] keys -----------------------------------------------------------------

_MISSING = object()


def _get(doc: Mapping[str, Any], dotted: str) -> Any:
    node: Any = doc
    for p in dotted.split("."):
        if not isinstance(node, Mapping) or p not in node:
            return _MISSING
        node = node[p]
    return node


def _put(doc: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = doc
    for p in parents:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {dotted}: {p!r} is a value, not a table")
        node = child
    node[leaf] = value


def _pop(doc: dict[str, Any], dotted: str) -> None:
    *parents, leaf = dotted.split(".")
    node: Any = doc
    for p in parents:
        node = node.get(p) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node.pop(leaf, None)


def _server_class(alg_cls: Any, table: Mapping[str, Any]) -> Any:
    """The server optimiser class an ``[algorithm]`` table (with its preset merged) selects."""
    server = table.get("server")
    if isinstance(server, Mapping) and isinstance(server.get("name"), str):
        return SERVER_OPTIMIZERS.load(server["name"])
    if dataclasses.is_dataclass(alg_cls):
        for f in dataclasses.fields(alg_cls):
            if f.name == "server" and f.default_factory is not dataclasses.MISSING:
                return type(f.default_factory())
    return None


def _translate_legacy(doc: Mapping[str, Any]) -> tuple[Mapping[str, Any], dict[str, str]]:
    """Move old flat ``[algorithm]`` keys to their new places (see :data:`LEGACY_KEYS`).

    Returns:
        The document in the current form, and ``{new dotted key: old dotted key}`` for the keys
        moved (error messages then name the key as the user wrote it).

    Raises:
        ConfigError: An old key and its new spelling are both set to different values.
    """
    alg = doc.get("algorithm")
    if not isinstance(alg, Mapping) or not any(k in alg for k in LEGACY_KEYS):
        return doc, {}
    out = _merge(doc, {})
    a = out["algorithm"]
    name = a.get("name")
    old = {k: a.pop(k) for k in LEGACY_KEYS if k in a}
    moved: dict[str, str] = {}
    ignored: list[str] = []
    for k, v in old.items():
        target = LEGACY_KEYS[k]
        if name == "fedsgd" and target.startswith("algorithm.local."):
            # FedSGD's local training is fixed; old files gave its server step size as ``lr``
            if (
                k == "lr"
                and "server_lr" not in old
                and _get(out, "algorithm.server.lr") is _MISSING
            ):
                target = "algorithm.server.lr"
            else:
                ignored.append(f"algorithm.{k}")
                continue
        current = _get(out, target)
        if current is not _MISSING and current != v:
            raise ConfigError(
                f"algorithm.{k} (the old spelling of {target}) and {target} are both set; "
                f"keep {target}"
            )
        _put(out, target, v)
        moved[target] = f"algorithm.{k}"
    if name == "fedsgd" and _get(out, "algorithm.server.lr") is _MISSING:
        _put(out, "algorithm.server.lr", _LEGACY_FEDSGD_LR)
    # As before, keys the chosen algorithm (or its server optimiser) does not use are ignored.
    fields: set[str] | None
    server_fields: set[str] | None
    try:
        entry = ALGORITHMS.entry(str(name))
        alg_cls = entry.load()
        fields = _field_names(alg_cls)
        server_fields = _field_names(_server_class(alg_cls, merge_preset(entry.preset, a)))
    except UnknownNameError:
        fields = server_fields = None  # the builder reports the name
    if fields is not None:
        for target in list(moved):
            section, sub, *rest = target.split(".")
            if section != "algorithm":
                continue
            unused = sub not in fields or (sub == "server" and rest[0] not in (server_fields or ()))
            if unused:
                _pop(out, target)
                ignored.append(moved.pop(target))
        for k in ("mu", "weighting"):
            if k in a and k not in fields:
                del a[k]
                ignored.append(f"algorithm.{k}")
        for sub in ("local", "server"):
            if a.get(sub) == {}:
                del a[sub]
    notes = [f"{o} -> {n}" for n, o in moved.items()]
    msg = "[algorithm] uses old flat keys; write them in their new places: " + ", ".join(notes)
    if ignored:
        msg += f" (not used by {name!r}, ignored: {', '.join(ignored)})"
    warnings.warn(msg, FutureWarning, stacklevel=4)
    return out, moved


def _relabel(e: ConfigError, moved: Mapping[str, str]) -> ConfigError:
    """``e`` with every moved key named as the user wrote it."""
    msg = str(e)
    for new, old in moved.items():
        msg = re.sub(rf"(?<![\w.]){re.escape(new)}(?![\w])", old, msg)
    return ConfigError(msg)


def experiment_from_mapping(
    doc: Mapping[str, Any],
    *,
    name: str,
    study: str,
    grid_point: Mapping[str, Any] | None = None,
) -> ExperimentConfig:
    """Validate one experiment's sections (no ``arms``/``grid``) into an :class:`ExperimentConfig`.

    Old flat ``[algorithm]`` keys are moved to their new places first (with a FutureWarning).

    Raises:
        ConfigError: A section or key is unknown, missing, of the wrong type or out of range.
    """
    _check_depth(doc)
    unknown = sorted(set(doc) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"unknown section or key {unknown[0]!r}"
            f"{did_you_mean(unknown[0], SECTIONS + STUDY_KEYS)}; "
            f"allowed: {', '.join(SECTIONS + STUDY_KEYS)}"
        )
    doc, moved = _translate_legacy(doc)
    try:
        return _experiment(doc, name=name, study=study, grid_point=grid_point)
    except ConfigError as e:
        raise _relabel(e, moved) from None


def _experiment(
    doc: Mapping[str, Any],
    *,
    name: str,
    study: str,
    grid_point: Mapping[str, Any] | None,
) -> ExperimentConfig:
    for required in ("data", "model"):
        if required not in doc:
            raise ConfigError(f"missing section [{required}]")
    check_keys(_table("data", doc["data"]), [f.name for f in dataclasses.fields(DataSpec)], "data")
    try:
        data = DataSpec.from_mapping(_table("data", doc["data"]))
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e
    model = ModelSettings.from_mapping(doc["model"])
    run = RunSettings.from_mapping(doc.get("run", {}))
    sampler = build(
        SAMPLERS, _table("sampler", doc.get("sampler", {})), "sampler", default="uniform"
    )
    parallel: ParallelSpec | None = None
    algorithm: AlgorithmSettings | None = None
    aggregator = doc.get("aggregator")
    if "parallel" in doc:
        from fedkit.parallel.spec import NetworkSpec, ParallelSpec

        table = _table("parallel", doc["parallel"])
        check_keys(table, [f.name for f in dataclasses.fields(ParallelSpec)], "parallel")
        if isinstance(table.get("network"), Mapping):
            network = [f.name for f in dataclasses.fields(NetworkSpec)]
            check_keys(table["network"], network, "parallel.network")
        try:
            parallel = ParallelSpec.from_mapping(table)
        except ConfigError:
            raise
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e)) from e
        if "algorithm" in doc:
            algorithm = AlgorithmSettings.from_mapping(doc["algorithm"], aggregator=aggregator)
    else:
        if "algorithm" not in doc:
            raise ConfigError(f"missing section [algorithm] (name: one of {ALGORITHMS.allowed()})")
        algorithm = AlgorithmSettings.from_mapping(doc["algorithm"], aggregator=aggregator)
        if run.rounds is None:
            raise ConfigError("missing key run.rounds (an int >= 1) in [run]")
        if data.num_clients is not None and algorithm.federated:
            run.cohort_size(data.num_clients)
    system = _system(doc)
    attack = None
    if "attack" in doc:
        if algorithm is None or not algorithm.federated or parallel is not None:
            raise ConfigError("[attack] applies to federated runs (not centralized or [parallel])")
        attack = AttackSettings.from_mapping(doc["attack"])
    if "deploy" in doc:  # the coordinator's round policy: validated here, used by deployments
        from fedkit.net.deployment import deploy_from_mapping

        try:
            deploy_from_mapping(_table("deploy", doc["deploy"]))
        except ValueError as e:
            raise ConfigError(str(e)) from e
    return ExperimentConfig(
        name=name,
        study=study,
        data=data,
        model=model,
        algorithm=algorithm,
        run=run,
        sampler=sampler,
        parallel=parallel,
        system=system,
        attack=attack,
        grid_point=dict(grid_point or {}),
        source=_merge(doc, {}),
    )


def _system(doc: Mapping[str, Any]) -> SystemModel | None:
    """The validated ``[system]`` table, or ``None`` when the file has none."""
    if "system" not in doc:
        return None
    if "parallel" in doc:
        raise ConfigError("[system] applies to federated runs; remove it from a [parallel] run")
    try:
        return SystemModel.from_mapping(_table("system", doc["system"]))
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from e


@dataclasses.dataclass(frozen=True, kw_only=True)
class Study:
    """A validated study: its runs in the order they execute.

    Attributes:
        name: Study name (``[study] name`` or the file's stem).
        description: Free text from ``[study] description``.
        runs: One :class:`ExperimentConfig` per arm × grid point.
    """

    name: str
    description: str
    runs: tuple[ExperimentConfig, ...]


def _set_dotted(doc: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if len(parts) < 2 or not all(parts):
        raise ConfigError(
            f"override key {key!r} must be dotted, section.key (e.g. algorithm.local.lr); "
            f"sections: {', '.join(SECTIONS)}"
        )
    if parts[0] not in SECTIONS:
        raise ConfigError(
            f"unknown section {parts[0]!r} in key {key!r}{did_you_mean(parts[0], SECTIONS)}; "
            f"allowed: {', '.join(SECTIONS)}"
        )
    node = doc
    for p in parts[:-1]:
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        elif not isinstance(child, dict):
            raise ConfigError(f"cannot set {key!r}: {p!r} is a value, not a table")
        node = child
    node[parts[-1]] = value


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``over`` into a copy of ``base`` (tables merge, values replace)."""
    out: dict[str, Any] = {
        k: _merge(v, {}) if isinstance(v, Mapping) else v for k, v in base.items()
    }
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = _merge(v, {}) if isinstance(v, Mapping) else v
    return out


def _flatten_grid(grid: Mapping[str, Any], prefix: str = "") -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for k, v in grid.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten_grid(v, key + "."))
        elif isinstance(v, list) and v:
            out[key] = v
        else:
            raise ConfigError(f"grid.{key} must be a non-empty list of values; got {v!r}")
    return out


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Parse ``--set key=value`` items into ``{dotted key: value}``.

    Values are parsed as TOML values; a value that is not valid TOML (a bare word such as
    ``mnist``) is taken as a string.

    Raises:
        ConfigError: An item has no ``=`` or an empty key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value (e.g. run.rounds=5); got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw.strip()}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw.strip()
        out[key] = value
    return out


def _shadow(doc: dict[str, Any], key: str) -> None:
    """Remove the other spelling of a moved key (old flat / new dotted) from ``doc``, so the
    layer that sets ``key`` wins over the file whichever spelling each uses."""
    section, _, rest = key.partition(".")
    if section == "algorithm" and rest in LEGACY_KEYS:
        _pop(doc, LEGACY_KEYS[rest])
    elif key in _NEW_TO_OLD:
        _pop(doc, _NEW_TO_OLD[key])


def _leaves(table: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for k, v in table.items():
        if isinstance(v, Mapping) and v:
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def _layer(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``over`` deep-merged onto ``base``, each key of ``over`` replacing both its spellings."""
    out = _merge(base, {})
    for key in _leaves(over):
        _shadow(out, key)
    return _merge(out, over)


def apply_overrides(doc: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``doc`` with each dotted key of ``overrides`` set (replacing the key's other
    spelling, old or new; see :data:`LEGACY_KEYS`)."""
    out = _merge(doc, {})
    for key, value in overrides.items():
        _shadow(out, key)
        _set_dotted(out, key, value)
    return out


def _grid_name(point: Mapping[str, Any]) -> str:
    last = [k.rsplit(".", 1)[-1] for k in point]
    keys = last if len(set(last)) == len(last) else list(point)
    return ",".join(f"{k}={v}" for k, v in zip(keys, point.values(), strict=True))


MAX_DEPTH = 32
"""Deepest nesting of tables and arrays an experiment file may have (a real one uses about 4)."""


def _check_depth(doc: Any) -> None:
    """Refuse documents nested deeper than :data:`MAX_DEPTH` before anything recurses into them."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigError(
                f"tables or arrays nested deeper than {MAX_DEPTH} levels; this is not an "
                "experiment file fedkit can read"
            )
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list | tuple):
            stack.extend((v, depth + 1) for v in node)


def study_from_mapping(
    doc: Mapping[str, Any], *, default_name: str, overrides: Mapping[str, Any] | None = None
) -> Study:
    """Expand and validate a parsed experiment file (see module docstring).

    Args:
        doc: The parsed TOML document.
        default_name: Study name when ``[study] name`` is absent (the file's stem).
        overrides: Dotted-key overrides applied to every run last.

    Raises:
        ConfigError: Anything invalid, prefixed with the arm / grid point it concerns.
    """
    _check_depth(doc)
    overrides = dict(overrides or {})
    meta = dict(_table("study", doc.get("study", {})))
    bad = sorted(set(meta) - {"name", "description"})
    if bad:
        raise ConfigError(f"unknown key study.{bad[0]} in [study]; allowed: name, description")
    name = meta.get("name", default_name)
    description = meta.get("description", "")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"study.name must be a non-empty string; got {name!r}")
    if not isinstance(description, str):
        raise ConfigError(f"study.description must be a string; got {description!r}")
    for key in overrides:
        _set_dotted({}, key, None)  # validates the key's shape and section
    base = {k: v for k, v in doc.items() if k not in STUDY_KEYS}
    base_grid = _flatten_grid(_table("grid", doc.get("grid", {})))
    arms_raw = doc.get("arms")
    if arms_raw is None:
        arms: list[tuple[str, dict[str, Any], dict[str, list[Any]]]] = [(name, base, base_grid)]
    else:
        if not isinstance(arms_raw, list) or not arms_raw:
            raise ConfigError("arms must be a non-empty array of tables ([[arms]] with a name)")
        arms = []
        seen: set[str] = set()
        for i, arm in enumerate(arms_raw):
            arm = _table(f"arms[{i}]", arm)
            arm_name = arm.get("name")
            if not isinstance(arm_name, str) or not arm_name:
                raise ConfigError(f"arms[{i}] needs a non-empty string 'name'")
            if arm_name in seen:
                raise ConfigError(f"arm name {arm_name!r} is used twice; arm names must differ")
            seen.add(arm_name)
            body = {k: v for k, v in arm.items() if k not in ("name", "grid")}
            extra = sorted(set(body) - set(SECTIONS))
            if extra:
                raise ConfigError(
                    f"arm {arm_name!r}: unknown key {extra[0]!r}; an arm holds name, grid and "
                    f"overrides of the sections {', '.join(SECTIONS)}"
                )
            grid = base_grid
            if "grid" in arm:
                grid = _flatten_grid(_table(f"arms[{i}].grid", arm["grid"]))
            arms.append((arm_name, _layer(base, body), grid))
    runs: list[ExperimentConfig] = []
    for arm_name, arm_doc, grid in arms:
        axes = {k: v for k, v in grid.items() if k not in overrides}
        for values in itertools.product(*axes.values()):
            point = dict(zip(axes, values, strict=True))
            run_name = f"{arm_name}[{_grid_name(point)}]" if point else arm_name
            try:
                resolved = apply_overrides(apply_overrides(arm_doc, point), overrides)
                runs.append(
                    experiment_from_mapping(resolved, name=run_name, study=name, grid_point=point)
                )
            except ConfigError as e:
                where = f"run {run_name!r}: " if len(arms) > 1 or point else ""
                raise ConfigError(f"{where}{e}") from None
    return Study(name=name, description=description, runs=tuple(runs))


def load_study(path: str | Path, overrides: Sequence[str] | Mapping[str, Any] = ()) -> Study:
    """Read, expand and validate an experiment file.

    Args:
        path: The TOML file.
        overrides: ``--set`` items (``"key=value"`` strings) or an already parsed mapping.

    Raises:
        ConfigError: The file is missing, is not valid TOML (the message gives line and column)
            or describes an invalid experiment; the message starts with the file's path.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read experiment file ({e.strerror or e})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: invalid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{p}: values nested too deeply to parse") from None
    try:
        parsed = overrides if isinstance(overrides, Mapping) else parse_overrides(overrides)
        return study_from_mapping(doc, default_name=p.stem, overrides=parsed)
    except ConfigError as e:
        raise ConfigError(f"{p}: {e}") from None
