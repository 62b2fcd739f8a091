"""The server half of a wrapped algorithm, forwarded: a base for wrappers that change only the
client half.

An algorithm wrapper such as :class:`fedkit.attacks.base.Attacked` (what attacking clients do) or
:class:`fedkit.compress.feedback.ErrorFeedback` (client-side residual memory) replaces
``client_init`` / ``client_final``; the server half (initial state, broadcast, server update,
global parameters) and the shapes the executors and the deployment codec rely on stay those of
the wrapped algorithm ``inner``. Subclasses are frozen dataclasses with an ``inner`` field and
override what they change (e.g. ``client_state_template`` when they keep client state of their
own).
"""

from __future__ import annotations

from typing import Any

from fedkit.algorithm import Algorithm, PersonalAccess, RoundInfo
from fedkit.params import Params


class ForwardsServerHalf:
    """Forwards everything but the client half to ``self.inner``."""

    inner: Algorithm[Any, Any, Any, Any]

    @property
    def name(self) -> str:
        """The wrapped algorithm's name (the server half is the same algorithm)."""
        return self.inner.name

    def init_state(self, params: Params) -> Any:
        """The wrapped algorithm's server state."""
        return self.inner.init_state(params)

    def broadcast(self, state: Any, info: RoundInfo) -> Any:
        """The wrapped algorithm's message."""
        return self.inner.broadcast(state, info)

    def update_template(self, params: Params) -> Any:
        """The wrapped algorithm's update shapes."""
        return self.inner.update_template(params)

    def server_update(self, state: Any, aggregate: Any, info: RoundInfo) -> Any:
        """The wrapped algorithm's server update."""
        return self.inner.server_update(state, aggregate, info)

    def global_params(self, state: Any) -> Params:
        """The wrapped algorithm's global parameters."""
        return self.inner.global_params(state)

    def client_state_template(self, params: Params) -> Any:
        """The wrapped algorithm's client state shapes."""
        return self.inner.client_state_template(params)

    def personal_params(
        self, global_params: Params, state: Any, local: PersonalAccess | None = None
    ) -> Params | None:
        """The wrapped algorithm's personal model."""
        return self.inner.personal_params(global_params, state, local)
