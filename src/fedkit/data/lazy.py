"""Clients whose data is supplied on demand: :class:`LazyClients` and its small LRU cache.

A population whose data does not fit in memory (1,000 clients of 600 images each is 1.9 GB of
float32) is described by its size and a function from client id to that client's data; the
:class:`~fedkit.data.store.ClientStore` calls it when the client is selected and keeps only the
last few clients' tensors (:class:`LRU`). Peak memory is then the model plus a cohort's data,
as in a plain loop that generates each client's data when it trains.

The supplier must be a pure function of the client id (same tensors on every call, on every
process): a client evicted from the cache and selected again, a ``processes`` rank and a
deployment worker all call it again and must see the same data.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from fedkit.algorithm import ClientData
from fedkit.data.datasets.base import Split

__all__ = ["LRU", "LazyClients"]

MAX_CACHE = 1_000_000
"""Largest LRU capacity."""

K = TypeVar("K")
V = TypeVar("V")


class LRU(Generic[K, V]):
    """A least-recently-used cache of at most ``capacity`` entries (0: keep nothing)."""

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"LRU capacity must be an int >= 0, got {capacity!r}")
        self.capacity = capacity
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, make: Callable[[K], V]) -> V:
        """The cached value for ``key``, made (and cached, evicting the oldest) when absent."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = make(key)
        if self.capacity > 0:
            self._items[key] = value
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return value

    def keys(self) -> list[K]:
        """Cached keys, least recently used first."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, kw_only=True)
class LazyClients:
    """A population whose clients' data is produced by ``load(client_id)`` when needed.

    Attributes:
        sizes: Training examples of each client (its length is the number of clients); known
            up front so that weights and cohort sizes need no data.
        load: ``client_id -> ClientData``, a pure function of the id. Its training tensors must
            have ``sizes[client_id]`` rows.
        test: The central test set (evaluated by the server every ``eval_every`` rounds).
        num_classes: Number of output classes.
        input_shape: Shape of one input sample.
        local_test: Whether ``load`` also returns each client's local test tensors (federated
            evaluation).
        cache: Clients kept in memory by the store (least recently used evicted first).
    """

    sizes: Sequence[int]
    load: Callable[[int], ClientData]
    test: Split
    num_classes: int
    input_shape: tuple[int, ...]
    local_test: bool = False
    cache: int = 16

    def __post_init__(self) -> None:
        sizes = tuple(self.sizes)
        if not sizes:
            raise ValueError("LazyClients needs at least one client (sizes is empty)")
        for i, n in enumerate(sizes):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"LazyClients.sizes[{i}] must be an int >= 1, got {n!r}")
        if not callable(self.load):
            raise ValueError(f"LazyClients.load must be callable, got {self.load!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise ValueError(f"LazyClients.num_classes must be an int, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise ValueError(f"LazyClients.num_classes must be >= 1, got {self.num_classes}")
        if tuple(self.test.x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(
                f"LazyClients.test.x sample shape {tuple(self.test.x.shape[1:])} != input_shape "
                f"{tuple(self.input_shape)}"
            )
        if isinstance(self.cache, bool) or not isinstance(self.cache, int):
            raise ValueError(f"LazyClients.cache must be an int, got {self.cache!r}")
        if not 0 <= self.cache <= MAX_CACHE:
            raise ValueError(f"LazyClients.cache must be in [0, {MAX_CACHE}], got {self.cache}")
        object.__setattr__(self, "sizes", sizes)
        object.__setattr__(self, "input_shape", tuple(self.input_shape))

    @property
    def num_clients(self) -> int:
        """Population size."""
        return len(self.sizes)

    def checked(self, client_id: int) -> ClientData:
        """``load(client_id)``, checked against the declared size, shape and local test."""
        data = self.load(client_id)
        if not isinstance(data, ClientData):
            raise TypeError(
                f"LazyClients.load({client_id}) returned {type(data).__name__}, not ClientData"
            )
        want = self.sizes[client_id]
        if data.num_examples != want:
            raise ValueError(
                f"LazyClients.load({client_id}) gave {data.num_examples} training examples; "
                f"sizes[{client_id}] = {want}"
            )
        if tuple(data.x_train.shape[1:]) != self.input_shape:
            raise ValueError(
                f"LazyClients.load({client_id}): sample shape {tuple(data.x_train.shape[1:])} "
                f"!= input_shape {self.input_shape}"
            )
        if self.local_test and (data.x_test is None or data.y_test is None):
            raise ValueError(
                f"LazyClients.load({client_id}) has no local test tensors but local_test=True"
            )
        if not self.local_test and data.x_test is not None:
            data = ClientData(data.x_train, data.y_train)
        return data
