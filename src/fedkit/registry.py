"""Names for the parts an experiment file chooses: algorithms, server optimisers, aggregators,
samplers and executors.

A :class:`Registry` maps a name to an *import path* (``"package.module:Attribute"``), so a
registry line imports nothing and can never create an import cycle; the target is imported the
first time a config asks for it. A target is a class (usually a frozen dataclass, built from a TOML
table through its own fields by :mod:`fedkit.experiment.tables`) or a factory function (executors).
An entry may carry a *preset*: default table values applied under the user's table, which is how
``fedadam`` is FedAvg with an Adam server optimiser.

Anything not registered can still be named by its import path (``name = "mypkg.algos:MyAlgo"``),
and a new built-in part is its own module plus ONE line below, for example::

    ALGORITHMS.register("qfedavg", "fedkit.algorithms.qfedavg:QFedAvg")

The lists of accepted names (``[algorithm] name``, ``[run] executor`` …) are these registries;
nothing else spells them out.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping
from types import MappingProxyType
from typing import Any

__all__ = [
    "AGGREGATORS",
    "ALGORITHMS",
    "EXECUTORS",
    "REGISTRIES",
    "SAMPLERS",
    "SERVER_OPTIMIZERS",
    "Entry",
    "Registry",
    "UnknownNameError",
    "is_import_path",
    "load_path",
]


class UnknownNameError(ValueError):
    """A name that is neither registered nor an importable ``module:Attribute`` path."""


def is_import_path(name: str) -> bool:
    """Whether ``name`` has the form ``package.module:Attribute``."""
    module, sep, attr = name.partition(":")
    return bool(sep and module and attr)


def load_path(path: str) -> Any:
    """Import ``"package.module:Attribute"`` (dotted attributes allowed after the colon).

    Raises:
        UnknownNameError: The module or attribute cannot be found; the message says which.
    """
    module_name, sep, attr = path.partition(":")
    if not (sep and module_name and attr):
        raise UnknownNameError(f"{path!r} is not an import path of the form 'package.module:Name'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise UnknownNameError(f"cannot import module {module_name!r} of {path!r}: {e}") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UnknownNameError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


@dataclasses.dataclass(frozen=True)
class Entry:
    """One registered name.

    Attributes:
        name: The registered name.
        target: An import path ``"module:Attribute"`` or the object itself.
        preset: Default table values applied under the user's table (nested tables merge).
    """

    name: str
    target: str | Callable[..., Any]
    preset: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    registered: bool = True

    def load(self) -> Callable[..., Any]:
        """The class or factory (imported on first use).

        A name that only a config file gives (an import path, not a registry line) must be a
        dataclass: a file is data, and constructing an arbitrary callable from it
        (``subprocess:Popen`` with ``args``) would run code.
        """
        obj = load_path(self.target) if isinstance(self.target, str) else self.target
        if not callable(obj):
            raise UnknownNameError(f"{self.target!r} (for {self.name!r}) is not callable")
        if not self.registered and not (isinstance(obj, type) and dataclasses.is_dataclass(obj)):
            raise UnknownNameError(
                f"{self.target!r} is not a dataclass; a config file may name only dataclasses "
                "by import path (register a factory with a registry line instead)"
            )
        return obj


class Registry:
    """Name → class or factory of one kind of part (see module docstring).

    Args:
        kind: What the entries are, for messages (``"algorithm"``, ``"executor"`` …).
        protocol: Import path of the protocol the entries implement; a dataclass field annotated
            with it is built from a nested table with a ``name`` (``None``: no such fields).
    """

    def __init__(self, kind: str, *, protocol: str | None = None) -> None:
        self.kind = kind
        self.protocol = protocol
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        target: str | Callable[..., Any],
        *,
        replace: bool = False,
        **preset: Any,
    ) -> None:
        """Register ``name`` → ``target`` with optional preset table values.

        Args:
            name: The name a config uses (no ``:``).
            target: ``"package.module:Attribute"`` (imported lazily) or the object itself.
            replace: Allow replacing an existing entry.
            **preset: Default table values (e.g. ``server={"name": "adam"}``).

        Raises:
            ValueError: A bad name, or a name already registered (without ``replace``).
        """
        if not name or ":" in name or name != name.strip():
            raise ValueError(
                f"a {self.kind} name must be non-empty without ':' or spaces: {name!r}"
            )
        if name in self._entries and not replace:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if isinstance(target, str) and not is_import_path(target):
            raise ValueError(f"target {target!r} is not an import path 'package.module:Name'")
        self._entries[name] = Entry(name, target, MappingProxyType(dict(preset)))

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a no-op when absent)."""
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        """The registered names, in registration order."""
        return tuple(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        """Registered, or an import path (which is checked only when loaded)."""
        return isinstance(name, str) and (name in self._entries or is_import_path(name))

    def allowed(self) -> str:
        """The accepted names, for messages."""
        return f"{', '.join(self._entries)} (or an import path 'package.module:Name')"

    def entry(self, name: str) -> Entry:
        """The entry for ``name``; an import path gets an entry of its own.

        Raises:
            UnknownNameError: ``name`` is neither registered nor an import path.
        """
        if name in self._entries:
            return self._entries[name]
        if isinstance(name, str) and is_import_path(name):
            return Entry(name, name, registered=False)
        raise UnknownNameError(f"unknown {self.kind} {name!r}; allowed: {self.allowed()}")

    def load(self, name: str) -> Callable[..., Any]:
        """The class or factory for ``name`` (see :meth:`entry`)."""
        return self.entry(name).load()

    def name_of(self, obj: object) -> str:
        """The name that builds an object of ``obj``'s type with no preset: the first plain
        registered entry whose target is that type, else the type's import path."""
        cls = type(obj)
        for e in self._entries.values():
            if not e.preset:
                try:
                    if e.load() is cls:
                        return e.name
                except UnknownNameError:
                    continue
        return f"{cls.__module__}:{cls.__qualname__}"

    def protocol_type(self) -> Any:
        """The protocol class (imported), or ``None``."""
        return None if self.protocol is None else load_path(self.protocol)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


# -- the registries and their built-in lines ---------------------------------------------------

ALGORITHMS = Registry("algorithm", protocol="fedkit.algorithm:Algorithm")
"""``[algorithm] name``: a federated algorithm (or the ``centralized`` baseline)."""

SERVER_OPTIMIZERS = Registry("server optimizer", protocol="fedkit.server_opt:ServerOptimizer")
"""``[algorithm.server] name``."""

AGGREGATORS = Registry("aggregator", protocol="fedkit.aggregate:Aggregator")
"""``[aggregator] name`` (wrappers take their ``inner`` aggregator as a nested table)."""

SAMPLERS = Registry("sampler", protocol="fedkit.sampling:ClientSampler")
"""``[sampler] name``."""

ATTACKS = Registry("attack", protocol="fedkit.attacks.base:Attack")
"""``[attack] name``: what attacking (or corrupted) clients do (:mod:`fedkit.attacks`)."""

EXECUTORS = Registry("executor")
"""``[run] executor``: factories ``(fedkit.sim.factory.ExecutorRecipe) -> Executor``."""

REGISTRIES: tuple[Registry, ...] = (
    ALGORITHMS,
    SERVER_OPTIMIZERS,
    AGGREGATORS,
    SAMPLERS,
    ATTACKS,
    EXECUTORS,
)
"""Every registry (a field typed with one's protocol is built from a table with ``name``)."""

_FEDAVG = "fedkit.algorithms.fedavg:FedAvg"

ALGORITHMS.register("fedavg", _FEDAVG)
ALGORITHMS.register("fedavgm", _FEDAVG, server={"name": "sgd", "momentum": 0.9})
ALGORITHMS.register("fedadam", _FEDAVG, server={"name": "adam"})
ALGORITHMS.register("fedyogi", _FEDAVG, server={"name": "yogi"})
ALGORITHMS.register("fedadagrad", _FEDAVG, server={"name": "adagrad"})
ALGORITHMS.register("fedsgd", "fedkit.algorithms.fedsgd:FedSGD")
ALGORITHMS.register("fedprox", "fedkit.algorithms.fedprox:FedProx")
ALGORITHMS.register("scaffold", "fedkit.algorithms.scaffold:Scaffold")
ALGORITHMS.register("centralized", "fedkit.centralized:Centralized")
ALGORITHMS.register("fedper", "fedkit.algorithms.fedper:FedPer")
ALGORITHMS.register("fedbn", "fedkit.algorithms.fedbn:FedBN")
ALGORITHMS.register("ditto", "fedkit.algorithms.ditto:Ditto")
ALGORITHMS.register("finetune", "fedkit.algorithms.finetune:FineTune")
ALGORITHMS.register("perfedavg", "fedkit.algorithms.perfedavg:PerFedAvg")
ALGORITHMS.register("qfedavg", "fedkit.algorithms.qfedavg:QFedAvg")
ALGORITHMS.register("fedaws", "fedkit.algorithms.fedaws:FedAwS")
ALGORITHMS.register("fedseq", "fedkit.algorithms.fedseq:FedSeq")

SERVER_OPTIMIZERS.register("sgd", "fedkit.server_opt:SGD")
SERVER_OPTIMIZERS.register("adam", "fedkit.server_opt:Adam")
SERVER_OPTIMIZERS.register("yogi", "fedkit.server_opt:Yogi")
SERVER_OPTIMIZERS.register("adagrad", "fedkit.server_opt:Adagrad")

AGGREGATORS.register("mean", "fedkit.aggregate:WeightedMean")
AGGREGATORS.register("importance", "fedkit.samplers.importance:ImportanceWeighted")
AGGREGATORS.register("trimmed_mean", "fedkit.robust.trimmed_mean:TrimmedMean")
AGGREGATORS.register("median", "fedkit.robust.median:CoordinateMedian")
AGGREGATORS.register("krum", "fedkit.robust.krum:Krum")
AGGREGATORS.register("bulyan", "fedkit.robust.bulyan:Bulyan")
AGGREGATORS.register("clip", "fedkit.privacy.clip:ClipNorm")
AGGREGATORS.register("gaussian", "fedkit.privacy.gaussian:GaussianNoise")
AGGREGATORS.register("adaptive_clip", "fedkit.privacy.adaptive_clip:AdaptiveClip")
AGGREGATORS.register("secagg", "fedkit.privacy.secagg.stage:SecureSum")
AGGREGATORS.register("norm_bound", "fedkit.robust.norm_bound:NormBound")
AGGREGATORS.register("quantize", "fedkit.compress.quantize:UniformQuantizer")
AGGREGATORS.register("qsgd", "fedkit.compress.quantize:QSGD")
AGGREGATORS.register("sign", "fedkit.compress.sign:SignCompressor")
AGGREGATORS.register("topk", "fedkit.compress.sparsify:TopK")
AGGREGATORS.register("randk", "fedkit.compress.sparsify:RandomK")
AGGREGATORS.register("geomed", "fedkit.robust.geomed:GeometricMedian")
AGGREGATORS.register("centered_clip", "fedkit.robust.centered_clip:CenteredClip")
AGGREGATORS.register("reweight", "fedkit.robust.reweight:HuberReweight")

SAMPLERS.register("uniform", "fedkit.sampling:UniformSampler")
SAMPLERS.register("poisson", "fedkit.privacy.poisson:PoissonSampler")
_PROBABILITY = "fedkit.samplers.probability:ProbabilitySampler"
SAMPLERS.register("proportional", _PROBABILITY, law="size")
SAMPLERS.register("probability", _PROBABILITY, law="power")
SAMPLERS.register("power_of_choice", "fedkit.samplers.power_of_choice:PowerOfChoice")
SAMPLERS.register("availability", "fedkit.samplers.availability:AvailabilityAware")

ATTACKS.register("none", "fedkit.attacks.base:Attack")  # honest: a study's clean baseline
ATTACKS.register("label_flip", "fedkit.attacks.label_flip:LabelFlip")
ATTACKS.register("sign_flip", "fedkit.attacks.sign_flip:SignFlip")
ATTACKS.register("ipm", "fedkit.attacks.sign_flip:SignFlip", scale=0.1)
ATTACKS.register("gaussian_noise", "fedkit.attacks.gaussian:GaussianNoise")
ATTACKS.register("backdoor", "fedkit.attacks.backdoor:Backdoor")
ATTACKS.register("alie", "fedkit.attacks.alie:ALittleIsEnough")
ATTACKS.register("label_noise", "fedkit.attacks.noisy:LabelNoise")
ATTACKS.register("input_noise", "fedkit.attacks.noisy:InputNoise")

EXECUTORS.register("serial", "fedkit.sim.factory:serial_executor")
EXECUTORS.register("processes", "fedkit.sim.factory:process_executor")
EXECUTORS.register("vectorized", "fedkit.sim.factory:vectorized_executor")
EXECUTORS.register("torchrun", "fedkit.sim.factory:torchrun_executor")  # fedkit run under torchrun
