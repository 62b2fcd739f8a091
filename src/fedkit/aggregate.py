"""Streaming aggregation of client updates.

An :class:`Aggregator` is a monoid over *accumulators*: ``zero`` is the identity, ``add`` folds
one client's update in, ``merge`` combines two partial accumulators and ``result`` finishes.
Memory is one model's worth whatever the cohort size (a buffering rule such as the median says
so), and ``merge`` is what lets the same round run on one process, on N ranks, behind a
coordinator or under secure aggregation. Each aggregator owns its cross-rank reduction
(``reduce``, over a :class:`Collective`), so no executor inspects accumulator types.

``prepare`` runs on the client before its update leaves (clipping, quantisation, masking, noise
live there in the stages that need them) and ``result`` on the server; both receive an
:class:`AggContext` (round, client id, seed and named random streams derived from them), so a
stage's randomness is reproducible under any executor.

Aggregators are frozen dataclasses: the algorithm holds one as its ``aggregator`` field, the
experiment file builds it from ``[aggregator]``, and wrappers compose by holding an ``inner``
aggregator (clip → noise → secure sum → mean).

**State across rounds.** An aggregator that must remember something from one round to the next
(adaptive clipping's clip norm, Andrew et al. 2021) keeps it *outside* itself, as an
:data:`AggState`: a few named float64 scalars. It may define ``init_state() -> AggState`` and
``next_state(acc, state, ctx) -> AggState`` (both optional; :func:`init_state` and
:func:`next_state` give the stateless defaults). The run loop holds the state, hands it to every
step of the round (``RoundInfo.agg_state`` → ``AggContext.state``, on the clients and on the
server), calls ``next_state`` after ``result`` on committed rounds, and checkpoints it with the
server state. Being plain JSON-safe numbers, it travels to gloo ranks and deployment workers with
the round's information and is validated on arrival (:func:`check_state`).

**Values per client.** A client-side step may need a few numbers that differ from client to
client and that only the server knows (the importance-corrected mean's inclusion probability
``π_k`` and total weight ``W``, :mod:`fedkit.samplers.importance`). A stage that does names them
in a class attribute ``client_value_names``, gives them for one client with
``client_values(client_id) -> AggState`` (server side) and takes them back with
``with_client_values(client_id, values)`` (client side: a copy of itself resolved with them,
which validates them). :func:`client_values` and :func:`with_client_values` walk the chain
(``inner``). In simulation every client runs the server's resolved chain (gloo ranks started
apart are sent each cohort client's values by rank 0, :mod:`fedkit.sim.distributed`); a
deployment worker is sent its client's values with each task and resolves its own chain with
them (:mod:`fedkit.net.worker`), so the step stays on the client, under secure aggregation too.

:class:`WeightedMean` keeps its sums in float64, so the mean does not depend (beyond float64
rounding) on the order in which clients arrive; its result stays in float64 (the server step
casts to each parameter's dtype when it applies it).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Generic, Protocol, TypeVar, cast

import torch
from torch import Tensor

from fedkit.params import tree_leaves, tree_map
from fedkit.rng import SERVER, generator

U = TypeVar("U")
A = TypeVar("A")
R = TypeVar("R", covariant=True)
T = TypeVar("T")


AggState = tuple[tuple[str, float], ...]
"""An aggregator's state across rounds: ``(name, value)`` pairs, names unique, values finite."""

MAX_STATE_ENTRIES = 64
"""The most entries an :data:`AggState` may hold (what a peer or a file may send)."""
_STATE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.]{0,63}")


class AggStateError(ValueError):
    """An aggregator state that is malformed (from a peer, a file, or a buggy stage)."""


class AggregationAborted(RuntimeError):
    """A round whose aggregate must not be released (secure aggregation with fewer than its
    threshold of clients left): ``result`` raises it, and the run loop records the round as
    not committed, leaving the model and the aggregator state unchanged."""


def check_state(raw: object) -> AggState:
    """Validate ``raw`` (a sequence of ``(name, value)`` pairs, e.g. parsed JSON) as an
    :data:`AggState`: at most :data:`MAX_STATE_ENTRIES` entries, names of letters, digits, ``_``
    and ``.`` (at most 64, unique), values finite numbers (booleans are not numbers).

    Raises:
        AggStateError: saying which entry is wrong.
    """
    if not isinstance(raw, list | tuple):
        raise AggStateError(f"aggregator state must be a list of [name, value] pairs, got {raw!r}")
    if len(raw) > MAX_STATE_ENTRIES:
        raise AggStateError(
            f"aggregator state has {len(raw)} entries; at most {MAX_STATE_ENTRIES} allowed"
        )
    out: list[tuple[str, float]] = []
    for entry in raw:
        if not isinstance(entry, list | tuple) or len(entry) != 2:
            raise AggStateError(f"aggregator state entry {entry!r} is not a [name, value] pair")
        name, value = entry
        if not isinstance(name, str) or not _STATE_NAME.fullmatch(name):
            raise AggStateError(f"aggregator state name {name!r} is not a valid name")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AggStateError(f"aggregator state {name!r} = {value!r} is not a number")
        if not math.isfinite(value):
            raise AggStateError(f"aggregator state {name!r} = {value!r} is not finite")
        out.append((name, float(value)))
    names = [n for n, _ in out]
    if len(set(names)) != len(names):
        raise AggStateError(f"aggregator state names repeat: {names}")
    return tuple(out)


def state_value(state: AggState, name: str) -> float:
    """The value of ``name`` in ``state``.

    Raises:
        AggStateError: ``name`` is not in ``state`` (the round's state did not reach this step).
    """
    for key, value in state:
        if key == name:
            return value
    raise AggStateError(
        f"aggregator state {name!r} is missing from this round's state {dict(state)!r}: the "
        "run loop (or the executor) did not pass the aggregator's state to this step"
    )


def combine_states(*parts: Iterable[tuple[str, float]]) -> AggState:
    """Concatenate stage states (an outer stage's keys, then its inner's), checked."""
    return check_state([entry for part in parts for entry in part])


@dataclasses.dataclass(frozen=True)
class AggContext:
    """Where an aggregation step runs: the round, the client (``SERVER`` on the server), the
    seed, the aggregator's state for this round (:data:`AggState`; empty when stateless) and
    the round's cohort (the sampled client ids, for stages whose clients work with their peers,
    such as secure aggregation's pairwise masks; empty where the caller does not know it).

    ``stream(name)`` is a generator derived from ``(seed, round, client_id, "agg/" + name)``:
    the same draw wherever the step runs, independent of the client's training stream.
    """

    round: int
    seed: int
    client_id: int = SERVER
    state: AggState = ()
    cohort: tuple[int, ...] = ()

    def stream(self, name: str) -> torch.Generator:
        """A named random stream of this step."""
        return generator(self.seed, self.round, self.client_id, "agg/" + name)

    def value(self, name: str) -> float:
        """The aggregator state's ``name`` this round (see :func:`state_value`)."""
        return state_value(self.state, name)


class Collective(Protocol):
    """The cross-rank operations an aggregator's ``reduce`` may use (one call on every rank)."""

    def all_sum(self, tree: T) -> T:
        """Element-wise sum of ``tree`` over every rank (same structure and shapes everywhere)."""
        ...

    def gather(self, tree: T) -> list[T] | None:
        """Every rank's ``tree`` (leading sizes may differ) in rank order at the root; ``None``
        elsewhere."""
        ...


class Aggregator(Protocol[U, A, R]):
    """The streaming aggregation contract (see module docstring)."""

    def prepare(self, update: U, weight: float, ctx: AggContext) -> U:
        """Client-side transformation applied before the update leaves the client."""
        ...

    def zero(self, like: U) -> A:
        """The identity accumulator for (prepared) updates shaped like ``like``."""
        ...

    def add(self, acc: A, update: U, weight: float) -> A:
        """Fold one prepared update with its weight into ``acc`` (may reuse ``acc``'s storage)."""
        ...

    def merge(self, a: A, b: A) -> A:
        """Combine two partial accumulators (associative and commutative)."""
        ...

    def reduce(self, acc: A, comm: Collective) -> A:
        """Combine the partial accumulators of every rank; the root's return value is the total."""
        ...

    def result(self, acc: A, ctx: AggContext) -> R:
        """Finish: the aggregate the server half consumes."""
        ...


def init_state(agg: Any) -> AggState:
    """The aggregator's state before round 0: its ``init_state()``, or empty (stateless)."""
    method = getattr(agg, "init_state", None)
    return check_state(method()) if method is not None else ()


def next_state(agg: Any, acc: Any, state: AggState, ctx: AggContext) -> AggState:
    """The state after a committed round whose total accumulator is ``acc``: the aggregator's
    ``next_state(acc, state, ctx)`` (server side, ``ctx`` the server's context), or ``state``.

    Raises:
        AggStateError: the new state is malformed or its names differ from ``state``'s (a
            stage's state keeps its names for the whole run).
    """
    method = getattr(agg, "next_state", None)
    if method is None:
        return state
    new = check_state(method(acc, state, ctx))
    if [n for n, _ in new] != [n for n, _ in state]:
        raise AggStateError(
            f"next_state changed the state's names from {[n for n, _ in state]} to "
            f"{[n for n, _ in new]}"
        )
    return new


def _chain(agg: Any) -> list[Any]:
    """The stages of ``agg``'s chain, outermost first (following dataclass ``inner`` fields)."""
    out = [agg]
    while dataclasses.is_dataclass(out[-1]) and not isinstance(out[-1], type):
        inner = getattr(out[-1], "inner", None)
        if inner is None:
            break
        out.append(inner)
    return out


def client_value_names(agg: Any) -> tuple[str, ...]:
    """The names of the per-client values ``agg``'s chain takes (outermost stage first)."""
    return tuple(n for stage in _chain(agg) for n in getattr(stage, "client_value_names", ()))


def client_values(agg: Any, client_id: int) -> AggState:
    """Server side: the values ``client_id``'s client-side steps need from ``agg``'s chain
    (each stage's ``client_values(client_id)``, outermost first); empty for most chains.

    Raises:
        AggStateError: a stage gave a malformed state.
    """
    return combine_states(
        *(stage.client_values(client_id) for stage in _chain(agg) if _takes_values(stage))
    )


def _takes_values(stage: Any) -> bool:
    return bool(getattr(stage, "client_value_names", ()))


def with_client_values(agg: T, client_id: int, values: AggState) -> T:
    """Client side: ``agg`` with every stage that takes per-client values resolved with
    ``values`` (as :func:`client_values` gave them for ``client_id``); ``agg`` itself when its
    chain takes none and ``values`` is empty. Stages above a resolved one are rebuilt around it.

    Raises:
        AggStateError: ``values`` is malformed or its names are not exactly the chain's
            (:func:`client_value_names`: none missing, none extra, in that order).
        ValueError: a stage refuses a value (e.g. a probability outside ``(0, 1]``).
    """
    values = check_state(values)
    names = client_value_names(agg)
    got = tuple(n for n, _ in values)
    if got != names:
        raise AggStateError(f"per-client values {list(got)} given; this chain takes {list(names)}")
    if not names:
        return agg
    return _resolve_values(agg, client_id, values)  # type: ignore[no-any-return]


def _resolve_values(agg: Any, client_id: int, values: AggState) -> Any:
    def resolve(stage: Any) -> Any:
        return stage.with_client_values(client_id, values) if _takes_values(stage) else stage

    return map_chain(agg, resolve)


def map_chain(agg: T, fn: Callable[[Any], Any]) -> T:
    """``agg``'s chain with ``fn`` applied to every stage (outermost first, each on the stage as
    ``fn`` of the stages above left it, following dataclass ``inner`` fields); a stage whose
    inner changed is rebuilt around it (:func:`rebuilt_around`), one whose chain ``fn`` left
    alone is returned as it is."""
    stage: Any = fn(agg)
    inner = getattr(stage, "inner", None)
    if inner is not None and dataclasses.is_dataclass(stage) and not isinstance(stage, type):
        mapped = map_chain(inner, fn)
        if mapped is not inner:
            stage = rebuilt_around(stage, mapped)
    return cast(T, stage)


def rebuilt_around(stage: T, inner: Any) -> T:
    """The dataclass ``stage`` with its ``inner`` replaced, keeping what it holds outside its
    init fields (e.g. a secure-aggregation stage's bound wire and key root)."""
    rebuilt = dataclasses.replace(stage, inner=inner)  # type: ignore[type-var]
    for f in dataclasses.fields(stage):  # type: ignore[arg-type]
        if not f.init:
            object.__setattr__(rebuilt, f.name, getattr(stage, f.name))
    return rebuilt


def gather_merge(agg: Aggregator[Any, A, Any], acc: A, comm: Collective) -> A:
    """``reduce`` for any aggregator: gather every rank's accumulator and ``merge`` in rank order.

    Buffering rules (median, Krum) use this; sum-like accumulators use ``comm.all_sum``.
    """
    parts = comm.gather(acc)
    if parts is None:
        return acc
    merged = parts[0]
    for part in parts[1:]:
        merged = agg.merge(merged, part)
    return merged


def fold(agg: Aggregator[U, A, Any], acc: A | None, update: U, weight: float) -> A:
    """Add ``update`` into ``acc``, starting a fresh accumulator when ``acc`` is ``None``."""
    return agg.add(agg.zero(update) if acc is None else acc, update, weight)


@dataclasses.dataclass
class MeanAcc(Generic[U]):
    """Accumulator of :class:`WeightedMean`: float64 weighted sums, total weight, count.

    Every field is a tensor (or a tree of tensors), so partial accumulators on several ranks are
    combined by a plain all-reduce SUM.
    """

    total: U
    weight: Tensor
    count: Tensor


class EmptyAggregateError(RuntimeError):
    """Raised when a mean is requested over no updates (or zero total weight)."""


class NonFiniteUpdateError(ValueError):
    """An update holds NaN or infinite values: it is refused before any aggregator sees it."""


def check_finite(update: Any, client_id: int | None = None) -> None:
    """Refuse an update with a NaN or infinite element (one poisoned value would otherwise turn
    every global parameter into NaN through any mean).

    Raises:
        NonFiniteUpdateError: naming the first offending tensor (and the client, when given).
    """
    for path, t in tree_leaves(update):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            who = "" if client_id is None else f"client {client_id}: "
            raise NonFiniteUpdateError(f"{who}update tensor {path!r} has a NaN or infinite value")


@dataclasses.dataclass(frozen=True)
class WeightedMean(Generic[U]):
    """Weighted mean of updates (any tree of tensors): ``sum(w_i * u_i) / sum(w_i)``."""

    def prepare(self, update: U, weight: float, ctx: AggContext) -> U:
        """Identity: the plain mean needs no client-side step."""
        return update

    def zero(self, like: U) -> MeanAcc[U]:
        """Zero sums in float64, shaped like ``like``."""
        return MeanAcc(
            total=tree_map(lambda t: torch.zeros_like(t, dtype=torch.float64), like),
            weight=torch.zeros((), dtype=torch.float64),
            count=torch.zeros((), dtype=torch.int64),
        )

    def add(self, acc: MeanAcc[U], update: U, weight: float) -> MeanAcc[U]:
        """Add ``weight * update`` in place into the float64 sums."""
        if not weight >= 0.0:
            raise ValueError(f"aggregation weight must be >= 0, got {weight}")
        # in-place add promotes each element to float64 without materialising a float64 copy
        tree_map(lambda s, u: s.add_(u, alpha=weight), acc.total, update)
        acc.weight += weight
        acc.count += 1
        return acc

    def merge(self, a: MeanAcc[U], b: MeanAcc[U]) -> MeanAcc[U]:
        """Sum two partial accumulators (a new accumulator; inputs untouched)."""
        return MeanAcc(
            total=tree_map(torch.add, a.total, b.total),
            weight=a.weight + b.weight,
            count=a.count + b.count,
        )

    def reduce(self, acc: MeanAcc[U], comm: Collective) -> MeanAcc[U]:
        """Sums are reduced by one all-reduce SUM of every field."""
        return comm.all_sum(acc)

    def result(self, acc: MeanAcc[U], ctx: AggContext) -> U:
        """The weighted mean; raises :class:`EmptyAggregateError` when no weight was added."""
        if float(acc.weight) <= 0.0:
            raise EmptyAggregateError(
                f"no client update to average ({int(acc.count)} updates, total weight "
                f"{float(acc.weight)})"
            )
        w = acc.weight
        return tree_map(lambda s: s / w, acc.total)


def aggregate(agg: Aggregator[Any, A, Any], updates: list[tuple[Any, float]]) -> A:
    """Fold ``(update, weight)`` pairs in order into a fresh accumulator (for tests)."""
    if not updates:
        raise EmptyAggregateError("no updates to aggregate")
    acc: A | None = None
    for u, w in updates:
        acc = fold(agg, acc, u, w)
    assert acc is not None
    return acc


@dataclasses.dataclass(frozen=True, kw_only=True)
class Stage:
    """A stage of the aggregator chain that forwards everything to its ``inner`` aggregator.

    Subclass it and override what the stage changes (clipping overrides ``prepare``; a noise
    stage ``result``): stages compose, ``Clip(inner=Noise(inner=WeightedMean()))``. State
    across rounds (:data:`AggState`) is forwarded too: a stage with state of its own overrides
    ``init_state``/``next_state`` and combines its keys with the inner stage's.
    """

    inner: Aggregator[Any, Any, Any] = dataclasses.field(default_factory=WeightedMean)

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
        """The inner stage's."""
        return self.inner.prepare(update, weight, ctx)

    def zero(self, like: Any) -> Any:
        """The inner stage's."""
        return self.inner.zero(like)

    def add(self, acc: Any, update: Any, weight: float) -> Any:
        """The inner stage's."""
        return self.inner.add(acc, update, weight)

    def merge(self, a: Any, b: Any) -> Any:
        """The inner stage's."""
        return self.inner.merge(a, b)

    def reduce(self, acc: Any, comm: Collective) -> Any:
        """The inner stage's."""
        return self.inner.reduce(acc, comm)

    def result(self, acc: Any, ctx: AggContext) -> Any:
        """The inner stage's."""
        return self.inner.result(acc, ctx)

    def init_state(self) -> AggState:
        """The inner stage's (empty for a stateless chain)."""
        return init_state(self.inner)

    def next_state(self, acc: Any, state: AggState, ctx: AggContext) -> AggState:
        """The inner stage's (``state`` unchanged for a stateless chain)."""
        return next_state(self.inner, acc, state, ctx)
