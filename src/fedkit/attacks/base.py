"""Attacks as client behaviour: the seam every attack in :mod:`fedkit.attacks` plugs into.

An :class:`Attack` changes what a client does, never what the server does: it may replace the
client's training data before local training (:meth:`Attack.poison`: label flipping, a backdoor
trigger, corrupted inputs) and replace the update the client then sends (:meth:`Attack.forge`:
sign flipping, Gaussian noise, boosting, "a little is enough", inner-product manipulation).

:class:`Attacked` wraps any algorithm and applies the attack to the clients in ``attackers``; every
other client, and the whole server half, is the wrapped algorithm's. Because it is an algorithm it
runs wherever algorithms run — the serial, vectorised and multi-process executors, and a real
worker (``fedkit worker --attack``) — and the server's defence (a robust aggregator) cannot tell an
attacker from an honest client except by its update. The attacker's own random draws come from
its own streams ``(seed, round, client_id, "attack…")``, so attacking a client never shifts an
honest client's (or its own training's) random numbers.

Which clients attack: :func:`choose_attackers` draws ``round(fraction · N)`` of the population
once per run from ``(seed, "attackers")``, so the same clients attack under every executor and
in deployment (a worker computes the same set from the experiment file).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from fedkit.aggregate import Aggregator
from fedkit.algorithm import (
    Algorithm,
    ClientContext,
    ClientData,
    ClientResult,
    LocalOutcome,
    LocalPlan,
    RoundInfo,
)
from fedkit.params import tree_map
from fedkit.rng import generator
from fedkit.run import Probe
from fedkit.wrapper import ForwardsServerHalf

ATTACK_STREAM = "attack"
"""The name of an attacker's own random stream (poisoning, noise)."""


@dataclasses.dataclass(frozen=True)
class AttackContext:
    """What an attacker knows when it forges its update.

    Attributes:
        client: the attacking client's context.
        data: the data the client trained on (its own, or the attack's poisoned copy).
        honest: the update the wrapped algorithm formed from this client's local training (on the
            poisoned data when the attack poisons data).
        expected_attackers: attackers expected in a cohort (``round(fraction · cohort size)``).
        train: an honest update from training on other data (same start, same settings, a
            stream of its own): what "a little is enough" uses to estimate the honest spread.
        stream: the attacker's own random stream.
    """

    client: ClientContext
    data: ClientData
    honest: Any
    expected_attackers: int
    train: Callable[[ClientData], Any]
    stream: torch.Generator


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attack:
    """Base of the attacks: no poisoning, the honest update (subclasses override one or both)."""

    def poison(self, data: ClientData, stream: torch.Generator) -> ClientData | None:
        """The data the attacker trains on instead of its own, or ``None`` to train honestly."""
        return None

    def forge(self, actx: AttackContext) -> Any:
        """The update the attacker sends (the honest one unless overridden)."""
        return actx.honest

    def probe(self, model: nn.Module, x: Tensor, y: Tensor) -> Probe | None:
        """A measurement of the attack's success on the global model (e.g. backdoor accuracy on
        the held-out set ``(x, y)``), or ``None`` when the attack has none."""
        return None


def map_update(update: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` applied to every floating-point tensor of an update (integer leaves kept)."""
    return tree_map(lambda t: fn(t) if t.is_floating_point() else t, update)


def choose_attackers(num_clients: int, fraction: float, seed: int) -> frozenset[int]:
    """``round(fraction · num_clients)`` client ids drawn without replacement from
    ``(seed, "attackers")``: the same set for a run under every executor and in deployment."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"attack fraction must be in [0, 1], got {fraction!r}")
    k = round(fraction * num_clients)
    perm = torch.randperm(num_clients, generator=generator(seed, 0, -1, "attackers"))
    return frozenset(int(i) for i in perm[:k])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Attacked(ForwardsServerHalf):
    """``inner`` with ``attack`` applied to the clients in ``attackers`` (module docstring).

    Attributes:
        inner: the algorithm every honest client and the server run.
        attack: what the attackers do.
        attackers: the attacking client ids.
        assumed_fraction: the attackers' share of a cohort they assume when they size their
            attack ("a little is enough"'s ``z``); ``None``: ``len(attackers) / N`` — the truth in
            simulation; a lone deployed worker is told it.
    """

    inner: Algorithm[Any, Any, Any, Any]
    attack: Attack
    attackers: frozenset[int]
    assumed_fraction: float | None = None

    def __post_init__(self) -> None:
        f = self.assumed_fraction
        if f is not None and not 0.0 <= f <= 1.0:
            raise ValueError(f"assumed_fraction must be in [0, 1], got {f!r}")
        object.__setattr__(self, "attackers", frozenset(int(c) for c in self.attackers))

    @property
    def aggregator(self) -> Aggregator[Any, Any, Any]:
        """The wrapped algorithm's aggregator: the defence under test."""
        return self.inner.aggregator

    def client_init(
        self, ctx: ClientContext, msg: Any, data: ClientData, state: Any
    ) -> LocalPlan[Any]:
        """The wrapped plan; an attacker's trains on its poisoned data when the attack has any."""
        plan = self.inner.client_init(ctx, msg, data, state)
        if ctx.client_id not in self.attackers:
            return plan
        own = data if plan.data is None else plan.data
        poisoned = self.attack.poison(own, self._stream(ctx, "poison"))
        return dataclasses.replace(plan, data=own if poisoned is None else poisoned)

    def client_final(
        self, ctx: ClientContext, msg: Any, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[Any, Any]:
        """The wrapped result; an attacker's update is replaced by the attack's forgery."""
        res = self.inner.client_final(ctx, msg, plan, outcome)
        if ctx.client_id not in self.attackers:
            return res
        shards = iter(range(1 << 30))

        def train(data: ClientData) -> Any:
            from fedkit.client import train_plan  # the one local-training path

            own = dataclasses.replace(ctx, generator=self._stream(ctx, f"train:{next(shards)}"))
            shard_plan = dataclasses.replace(plan, data=data)
            return self.inner.client_final(
                own, msg, shard_plan, train_plan(own, shard_plan, data)
            ).update

        actx = AttackContext(
            client=ctx,
            data=plan.data if plan.data is not None else _missing(ctx),
            honest=res.update,
            expected_attackers=self._expected(ctx.info),
            train=train,
            stream=self._stream(ctx, "forge"),
        )
        return dataclasses.replace(res, update=self.attack.forge(actx))

    def _expected(self, info: RoundInfo) -> int:
        frac = self.assumed_fraction
        if frac is None:
            frac = len(self.attackers) / max(info.num_clients, 1)
        return max(1, math.floor(frac * info.cohort_size + 0.5))

    @staticmethod
    def _stream(ctx: ClientContext, what: str) -> torch.Generator:
        return generator(ctx.info.seed, ctx.info.round, ctx.client_id, f"{ATTACK_STREAM}:{what}")


def _missing(ctx: ClientContext) -> ClientData:
    raise ValueError(
        f"client {ctx.client_id}: an attacker's plan names its data (Attacked.client_init "
        "sets it); this plan was not made by Attacked.client_init"
    )


def attacked(
    inner: Algorithm[Any, Any, Any, Any],
    attack: Attack | None,
    attackers: Iterable[int],
    assumed_fraction: float | None = None,
) -> Algorithm[Any, Any, Any, Any]:
    """``inner`` wrapped with ``attack`` for ``attackers`` (``inner`` itself when there is no
    attack or no attacker)."""
    who = frozenset(attackers)
    if attack is None or not who:
        return inner
    return Attacked(inner=inner, attack=attack, attackers=who, assumed_fraction=assumed_fraction)
