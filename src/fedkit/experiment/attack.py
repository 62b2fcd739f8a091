"""The experiment file's ``[attack]`` table: which attack, and which clients run it.

::

    [attack]
    name = "sign_flip"      # fedkit.registry.ATTACKS, or "package.module:Class"
    fraction = 0.2          # share of the population that attacks (drawn once from the seed)
    # clients = [0, 3]      # or: exactly these client ids
    # assumed_fraction = 0.2  # the attackers' belief about their share (ALIE's z); default:
    #                         # the true share
    scale = 1.0             # the attack's own fields

The attackers are the same under every executor and in deployment (a worker running one of them
attacks, see :func:`fedkit.attacks.base.choose_attackers`). An attack with a ``num_classes`` field
left unset gets the dataset's number of classes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedkit.algorithm import Algorithm
from fedkit.attacks.base import Attack, attacked, choose_attackers
from fedkit.experiment.tables import ConfigError, build, describe
from fedkit.registry import ATTACKS

ASSIGNMENT_KEYS: tuple[str, ...] = ("fraction", "clients", "assumed_fraction")
"""Keys of ``[attack]`` that say who attacks (the others are the attack's own fields)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class AttackSettings:
    """A validated ``[attack]`` table (module docstring).

    Attributes:
        name: the attack's name as the file gives it (a preset such as ``ipm`` keeps its name).
        attack: the attack.
        fraction: share of the population that attacks (ignored when ``clients`` is given).
        clients: the attacking client ids, or ``None`` to draw ``fraction`` of them.
        assumed_fraction: passed to :class:`fedkit.attacks.base.Attacked`.
    """

    name: str
    attack: Attack
    fraction: float = 0.0
    clients: tuple[int, ...] | None = None
    assumed_fraction: float | None = None

    @classmethod
    def from_mapping(cls, table: Mapping[str, Any]) -> AttackSettings:
        """Build and validate the table (errors name the key and the allowed values)."""
        if not isinstance(table, Mapping):
            raise ConfigError(f"[attack] must be a table; got {table!r}")
        own = {k: v for k, v in table.items() if k not in ASSIGNMENT_KEYS}
        attack = build(ATTACKS, own, "attack")
        fraction = table.get("fraction", 0.0)
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise ConfigError(f"attack.fraction must be a number in [0, 1]; got {fraction!r}")
        if not 0.0 <= fraction <= 1.0:
            raise ConfigError(f"attack.fraction must be in [0, 1]; got {fraction!r}")
        clients = table.get("clients")
        if clients is not None:
            ok = isinstance(clients, list) and all(
                isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in clients
            )
            if not ok:
                raise ConfigError(
                    f"attack.clients must be a list of client ids (ints >= 0); got {clients!r}"
                )
            clients = tuple(sorted(set(clients)))
        elif "fraction" not in table:
            raise ConfigError("[attack] needs 'fraction' (share of clients) or 'clients' (ids)")
        assumed = table.get("assumed_fraction")
        if assumed is not None and (
            isinstance(assumed, bool)
            or not isinstance(assumed, int | float)
            or not 0.0 <= assumed <= 1.0
        ):
            raise ConfigError(f"attack.assumed_fraction must be in [0, 1]; got {assumed!r}")
        return cls(
            name=str(own["name"]),
            attack=attack,
            fraction=float(fraction),
            clients=clients,
            assumed_fraction=None if assumed is None else float(assumed),
        )

    def attackers(self, num_clients: int, seed: int) -> frozenset[int]:
        """The attacking client ids of a run with this population and seed."""
        if self.clients is not None:
            bad = [c for c in self.clients if c >= num_clients]
            if bad:
                raise ConfigError(
                    f"attack.clients: client {bad[0]} is not in the population "
                    f"(ids 0 to {num_clients - 1})"
                )
            return frozenset(self.clients)
        return choose_attackers(num_clients, self.fraction, seed)

    def resolved(self, num_classes: int | None) -> Attack:
        """The attack with an unset ``num_classes`` field filled in from the dataset."""
        if getattr(self.attack, "num_classes", 0) is None:
            try:
                return dataclasses.replace(self.attack, num_classes=num_classes)  # type: ignore[call-arg]
            except ValueError as e:  # a setting the dataset rules out (a backdoor target)
                raise ConfigError(f"attack: {e}") from None
        return self.attack

    def wrap(
        self,
        algorithm: Algorithm[Any, Any, Any, Any],
        *,
        num_clients: int,
        seed: int,
        num_classes: int | None,
        only: frozenset[int] | None = None,
    ) -> Algorithm[Any, Any, Any, Any]:
        """``algorithm`` with the attack applied to this run's attackers (to those of them in
        ``only`` when given: a worker wraps only the clients it serves)."""
        who = self.attackers(num_clients, seed)
        if only is not None:
            who &= only
        return attacked(algorithm, self.resolved(num_classes), who, self.assumed_fraction)

    def to_mapping(self) -> dict[str, Any]:
        """The table as plain values (what the results store records)."""
        out = describe(self.attack, name=self.name)
        if self.clients is not None:
            out["clients"] = list(self.clients)
        else:
            out["fraction"] = self.fraction
        if self.assumed_fraction is not None:
            out["assumed_fraction"] = self.assumed_fraction
        return out
