"""ClientStore: each client's data and persistent state, in one place.

Data are kept as the pooled tensors plus one index tensor per client, so memory grows with the
dataset, not with the number of clients; a client's tensors are gathered when it is selected.
Client state (SCAFFOLD control variates, personal layers) lives here in simulation — never in
server state — and is checkpointed from here.

In lazy mode (:meth:`ClientStore.from_lazy`) a client's tensors are made by a
:class:`~fedkit.data.lazy.LazyClients` supplier when :meth:`ClientStore.data` asks for them and
only the most recently used few are kept (an LRU cache), so a population larger than memory
runs; every executor reads client data through :meth:`ClientStore.data`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from fedkit.algorithm import ClientData
from fedkit.data.lazy import LRU, LazyClients
from fedkit.params import tree_flatten, tree_unflatten

if TYPE_CHECKING:
    from fedkit.data.spec import FederatedData


class ClientStore:
    """Per-client data views and per-client state for a population of clients."""

    def __init__(
        self,
        x_train: Tensor,
        y_train: Tensor,
        train_parts: Sequence[Tensor],
        x_test: Tensor | None = None,
        y_test: Tensor | None = None,
        test_parts: Sequence[Tensor] | None = None,
    ) -> None:
        if len(train_parts) == 0:
            raise ValueError("a ClientStore needs at least one client (train_parts is empty)")
        if test_parts is not None and len(test_parts) != len(train_parts):
            raise ValueError(
                f"test_parts has {len(test_parts)} clients but train_parts has {len(train_parts)}"
            )
        self._x, self._y = x_train, y_train
        self._parts = [p.to(torch.int64) for p in train_parts]
        self._xt, self._yt = x_test, y_test
        self._tparts = None if test_parts is None else [p.to(torch.int64) for p in test_parts]
        self._state: dict[int, Any] = {}
        self._lazy: LazyClients | None = None
        self._cache: LRU[int, ClientData] = LRU(0)

    @classmethod
    def from_lazy(cls, clients: LazyClients) -> ClientStore:
        """A store whose clients' data is supplied on demand (see module docstring)."""
        empty = torch.zeros(0)
        store = cls(empty, empty, [torch.zeros(0, dtype=torch.int64)])
        store._parts = []
        store._lazy = clients
        store._cache = LRU(clients.cache)
        return store

    @property
    def lazy(self) -> bool:
        """Whether client data is supplied on demand."""
        return self._lazy is not None

    @classmethod
    def from_federated(cls, fd: FederatedData) -> ClientStore:
        """Build from a dataset and its partition (see :func:`fedkit.data.spec.build_federated`)."""
        if fd.lazy is not None:
            return cls.from_lazy(fd.lazy)
        ds = fd.dataset
        return cls(ds.train.x, ds.train.y, fd.train_parts, ds.test.x, ds.test.y, fd.test_parts)

    @classmethod
    def from_clients(cls, clients: Sequence[ClientData]) -> ClientStore:
        """Build from explicit per-client tensors (tests, small examples)."""
        sizes = [c.num_examples for c in clients]
        offsets = torch.tensor([0, *sizes]).cumsum(0)
        parts = [torch.arange(int(offsets[i]), int(offsets[i + 1])) for i in range(len(clients))]
        x = torch.cat([c.x_train for c in clients])
        y = torch.cat([c.y_train for c in clients])
        if all(c.x_test is not None and c.y_test is not None for c in clients):
            tsizes = [int(c.y_test.shape[0]) for c in clients if c.y_test is not None]
            toff = torch.tensor([0, *tsizes]).cumsum(0)
            tparts = [torch.arange(int(toff[i]), int(toff[i + 1])) for i in range(len(clients))]
            xt = torch.cat([c.x_test for c in clients if c.x_test is not None])
            yt = torch.cat([c.y_test for c in clients if c.y_test is not None])
            return cls(x, y, parts, xt, yt, tparts)
        return cls(x, y, parts)

    def __len__(self) -> int:
        return self.num_clients

    @property
    def num_clients(self) -> int:
        """Population size."""
        return len(self._parts) if self._lazy is None else self._lazy.num_clients

    def num_examples(self, client_id: int) -> int:
        """Training examples held by ``client_id``."""
        i = self._check(client_id)
        return int(self._parts[i].numel()) if self._lazy is None else self._lazy.sizes[i]

    def data(self, client_id: int) -> ClientData:
        """The client's training (and, when present, local test) tensors."""
        i = self._check(client_id)
        if self._lazy is not None:
            return self._cache.get(i, self._lazy.checked)
        idx = self._parts[i]
        if self._tparts is not None and self._xt is not None and self._yt is not None:
            t = self._tparts[i]
            return ClientData(self._x[idx], self._y[idx], self._xt[t], self._yt[t])
        return ClientData(self._x[idx], self._y[idx])

    def has_test_data(self) -> bool:
        """True when clients carry local test data (federated evaluation is possible)."""
        if self._lazy is not None:
            return self._lazy.local_test
        return self._tparts is not None

    def pooled_train(self) -> tuple[Tensor, Tensor]:
        """The union of all clients' training data (for centralised baselines).

        In lazy mode this materialises every client's data at once.
        """
        if self._lazy is not None:
            parts = [self._lazy.checked(i) for i in range(self._lazy.num_clients)]
            return torch.cat([c.x_train for c in parts]), torch.cat([c.y_train for c in parts])
        idx = torch.cat(self._parts)
        return self._x[idx], self._y[idx]

    def get_state(self, client_id: int) -> Any:
        """The client's persistent state, or ``None`` if it has none yet."""
        return self._state.get(self._check(client_id))

    def set_state(self, client_id: int, state: Any) -> None:
        """Replace the client's persistent state (``None`` clears it)."""
        i = self._check(client_id)
        if state is None:
            self._state.pop(i, None)
        else:
            self._state[i] = state

    def state_tensors(self) -> dict[str, Tensor]:
        """All client states as one flat dictionary (``"<client>/<path>"``), for checkpoints."""
        out: dict[str, Tensor] = {}
        for cid in sorted(self._state):
            for path, t in tree_flatten(self._state[cid]).items():
                out[f"{cid}/{path}"] = t
        return out

    def load_state_tensors(self, flat: Mapping[str, Tensor], template: Any) -> None:
        """Restore client states saved by :meth:`state_tensors`, validated against ``template``."""
        grouped: dict[int, dict[str, Tensor]] = {}
        for key, t in flat.items():
            cid, _, path = key.partition("/")
            grouped.setdefault(self._check(int(cid)), {})[path] = t
        self._state = {cid: tree_unflatten(template, g) for cid, g in grouped.items()}

    def _check(self, client_id: int) -> int:
        if not 0 <= client_id < self.num_clients:
            raise IndexError(f"client id {client_id} out of range [0, {self.num_clients})")
        return client_id
