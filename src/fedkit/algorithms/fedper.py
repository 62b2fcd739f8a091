"""FedPer: Arivazhagan et al. 2019, "Federated Learning with Personalization Layers".

The model is a shared *base* and personal *layers* on top. Every client trains base and
personal layers together on its own data, starting from the global base and its own personal
layers; only the base is averaged by the server (FedAvg's ``x_{t+1} = x_t + Σ n_i Δ_i / Σ n_i``
on the base entries), and the personal layers stay on the client as its state. The client's
personal model is the global base with its own personal layers.

``head`` names the personal layers by state-dict prefix (``"fc2"`` covers ``fc2.weight`` and
``fc2.bias``); left empty, the last ``layers`` modules of the model are personal (the paper's
``K_P`` personalisation layers; ``1`` = the output layer).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from torch import Tensor

from fedkit.algorithms.keep_local import KeepLocal


def module_prefix(key: str) -> str:
    """``"net.2.weight"`` -> ``"net.2"`` (the module that owns a state-dict entry)."""
    return key.rpartition(".")[0]


def last_modules(params: Mapping[str, Tensor], count: int) -> tuple[str, ...]:
    """The prefixes of the last ``count`` modules in state-dict order."""
    order: list[str] = []
    for key in params:
        prefix = module_prefix(key)
        if prefix in order:
            order.remove(prefix)
        order.append(prefix)
    return tuple(order[-count:])


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    """Whether ``key`` is one of ``prefixes`` or an entry of a module named by one."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedPer(KeepLocal):
    """FedAvg on the base, personal layers on each client (see module docstring).

    Attributes:
        head: state-dict prefixes of the personal layers (empty: the last ``layers`` modules).
        layers: how many trailing modules are personal when ``head`` is empty (>= 1).
    """

    head: tuple[str, ...] = ()
    layers: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers < 1:
            raise ValueError(f"layers must be >= 1, got {self.layers!r}")

    @property
    def name(self) -> str:
        """Algorithm identifier."""
        return "fedper"

    def local_keys(self, params: Mapping[str, Tensor]) -> frozenset[str]:
        """The entries of the personal layers."""
        head = self.head or last_modules(params, self.layers)
        keys = frozenset(k for k in params if under(k, head))
        if not keys:
            raise ValueError(f"fedper: no model entry under head {list(head)}")
        return keys


__all__ = ["FedPer"]
