"""Functional server optimisers for the FedOpt family (Reddi et al. 2021, "Adaptive Federated
Optimization", Algorithm 2).

The server treats the negated mean client update as a pseudo-gradient ``g = -mean_i(Δ_i)`` and
takes one optimiser step on the global parameters ``x``:

* SGD with momentum (FedAvg when ``lr = 1, momentum = 0``; FedAvgM otherwise):
  ``m = μ m + g;  x = x - η m``
* Adam:    ``m = β1 m + (1-β1) g;  v = β2 v + (1-β2) g²;              x = x - η m / (√v + τ)``
* Yogi:    ``m = β1 m + (1-β1) g;  v = v - (1-β2) g² sign(v - g²);    x = x - η m / (√v + τ)``
* Adagrad: ``m = β1 m + (1-β1) g;  v = v + g²;                         x = x - η m / (√v + τ)``

All three adaptive methods keep the first moment ``m`` (Algorithm 2 applies it to each; the paper's
experiments use ``β1 = 0.9``); ``β1 = 0`` gives the momentum-free Adagrad step ``x = x - η g /
(√v + τ)``, where ``β2`` plays no part. As in the paper, there is no bias correction and ``τ``
(default 1e-3) sets the adaptivity.
Optimisers are frozen dataclasses; their state is a dataclass of tensors, so it checkpoints and
travels like any other payload. Each step returns new tensors and never mutates its inputs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol

import torch

from fedkit.params import Params, zeros_like


@dataclasses.dataclass(frozen=True)
class OptState:
    """First and second moment estimates (empty dictionaries when an optimiser has none)."""

    m: Params
    v: Params


class ServerOptimizer(Protocol):
    """A functional optimiser: ``state = init(x)``; ``x, state = step(x, g, state)``."""

    def init(self, params: Params) -> OptState:
        """Fresh state for ``params``."""
        ...

    def step(self, params: Params, grad: Params, state: OptState) -> tuple[Params, OptState]:
        """One step along the pseudo-gradient ``grad``."""
        ...


def _positive(name: str, value: float) -> None:
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SGD:
    """Server SGD with heavy-ball momentum (FedAvg: ``lr=1, momentum=0``; FedAvgM otherwise)."""

    lr: float = 1.0
    momentum: float = 0.0

    def __post_init__(self) -> None:
        _positive("server_lr", self.lr)
        _unit_interval("server_momentum", self.momentum)

    def init(self, params: Params) -> OptState:
        """A zero momentum buffer when momentum is used, else no state."""
        return OptState(m=zeros_like(params) if self.momentum else {}, v={})

    def step(self, params: Params, grad: Params, state: OptState) -> tuple[Params, OptState]:
        """``m = μ m + g; x = x - η m``."""
        if not self.momentum:
            return {k: params[k] - self.lr * grad[k] for k in params}, state
        m = {k: self.momentum * state.m[k] + grad[k] for k in params}
        return {k: params[k] - self.lr * m[k] for k in params}, OptState(m=m, v={})


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Adaptive:
    """Shared fields and step of the adaptive optimisers; subclasses define the ``v`` update."""

    lr: float = 1e-2
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        _positive("server_lr", self.lr)
        _unit_interval("beta1", self.beta1)
        _unit_interval("beta2", self.beta2)
        _positive("tau", self.tau)

    def initial_v(self, params: Params) -> Params:
        """Starting second moment: ``τ²`` (Reddi et al. initialise ``v_{-1} ≥ τ²``)."""
        return {k: torch.full_like(p, self.tau**2) for k, p in params.items()}

    def init(self, params: Params) -> OptState:
        """Zero first moment, ``τ²`` second moment."""
        return OptState(m=zeros_like(params), v=self.initial_v(params))

    def second_moment(self, v: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        """The method-specific ``v`` update."""
        raise NotImplementedError

    def step(self, params: Params, grad: Params, state: OptState) -> tuple[Params, OptState]:
        """``m = β1 m + (1-β1) g``, the subclass's ``v``, then ``x = x - η m / (√v + τ)``."""
        m = {k: self.beta1 * state.m[k] + (1.0 - self.beta1) * grad[k] for k in params}
        v = {k: self.second_moment(state.v[k], grad[k] * grad[k]) for k in params}
        new = {k: params[k] - self.lr * m[k] / (v[k].sqrt() + self.tau) for k in params}
        return new, OptState(m=m, v=v)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Adam(_Adaptive):
    """FedAdam's server optimiser."""

    def second_moment(self, v: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        """``v = β2 v + (1-β2) g²``."""
        return self.beta2 * v + (1.0 - self.beta2) * g2


@dataclasses.dataclass(frozen=True, kw_only=True)
class Yogi(_Adaptive):
    """FedYogi's server optimiser: additive, sign-controlled second moment."""

    def second_moment(self, v: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        """``v = v - (1-β2) g² sign(v - g²)``."""
        return v - (1.0 - self.beta2) * g2 * torch.sign(v - g2)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Adagrad(_Adaptive):
    """FedAdagrad's server optimiser: accumulated squares (``beta2`` is unused)."""

    def second_moment(self, v: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        """``v = v + g²``."""
        return v + g2


def step_along_delta(
    opt: ServerOptimizer, params: Params, mean_delta: Params, state: OptState
) -> tuple[Params, OptState]:
    """One server step with the pseudo-gradient ``g = -mean Δ`` (cast to each parameter's dtype).

    The server half of every algorithm whose clients send model deltas (FedAvg family, SCAFFOLD).
    """
    grad = {k: -mean_delta[k].to(p.dtype) for k, p in params.items()}
    return opt.step(params, grad, state)


SERVER_OPTIMIZERS: dict[str, type[Any]] = {
    "sgd": SGD,
    "adam": Adam,
    "yogi": Yogi,
    "adagrad": Adagrad,
}


def make_server_optimizer(name: str, **settings: Any) -> ServerOptimizer:
    """Build a server optimiser by name, rejecting unknown names and unknown settings clearly."""
    if name not in SERVER_OPTIMIZERS:
        raise ValueError(
            f"unknown server optimizer {name!r}; "
            f"allowed values: {', '.join(sorted(SERVER_OPTIMIZERS))}"
        )
    cls = SERVER_OPTIMIZERS[name]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - allowed)
    if unknown:
        raise ValueError(
            f"server optimizer {name!r} has no setting(s) {unknown}; allowed: {sorted(allowed)}"
        )
    opt: ServerOptimizer = cls(**settings)
    return opt
