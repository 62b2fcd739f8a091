"""Error feedback: what compression dropped is kept on the client and sent later (Seide et al.
2014, "1-Bit Stochastic Gradient Descent"; Stich et al. 2018, "Sparsified SGD with Memory";
Karimireddy et al. 2019, "Error Feedback Fixes SignSGD", Algorithm 2).

Each round client ``i`` forms its update ``Δ_i``, adds its residual ``e_i`` and compresses the sum:
``p_i = Δ_i + e_i``, sent ``C(p_i)``, new residual ``e_i ← p_i − C(p_i)``, so that over rounds
``Σ sent + e_i = Σ Δ_i`` (nothing is lost, only delayed). ``C`` is the whole client side of the
aggregator chain as the server decodes it: with ``clip → compress → mean`` the residual also keeps
what clipping removed.

The residual is client state, never server state: :class:`ErrorFeedback` wraps any algorithm, keeps
``(inner client state, residual)`` as the client's state (stored by the client's host — the
:class:`~fedkit.data.store.ClientStore` in simulation, the worker in deployment, checkpointed with
the other client states), and replaces the update by ``p_i`` in ``client_final``; the aggregator's
``prepare`` then encodes ``p_i`` as usual. To know ``C(p_i)`` the wrapper runs that ``prepare``
once itself and decodes it with the chain's compressor: every random draw of ``prepare`` comes
from the client's own ``AggContext`` streams, so the two runs encode the same bits.

A compressor stage asks for it with ``error_feedback = true``; :func:`with_error_feedback` wraps
an algorithm whose chain has such a stage (the experiment runner calls it for every experiment,
in simulation and in deployment).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedkit.aggregate import Aggregator
from fedkit.algorithm import (
    Algorithm,
    ClientContext,
    ClientData,
    ClientResult,
    LocalOutcome,
    LocalPlan,
    PersonalAccess,
)
from fedkit.compress.codec import Compressor
from fedkit.params import Params, tree_map
from fedkit.wrapper import ForwardsServerHalf

__all__ = ["ErrorFeedback", "FeedbackState", "find_compressor", "with_error_feedback"]


@dataclasses.dataclass(frozen=True)
class FeedbackState:
    """A client's state under error feedback: the wrapped algorithm's state and the residual.

    Attributes:
        inner: the wrapped algorithm's client state (``None`` when it keeps none).
        residual: ``e_i``, shaped like the update (zero before the client's first round).
    """

    inner: Any
    residual: Any


@dataclasses.dataclass(frozen=True)
class _Carry:
    inner: Any
    residual: Any


def find_compressor(aggregator: Any) -> Compressor | None:
    """The outermost :class:`~fedkit.compress.codec.Compressor` of an aggregator chain (following
    ``inner``), or ``None``."""
    stage = aggregator
    while stage is not None:
        if isinstance(stage, Compressor):
            return stage
        stage = getattr(stage, "inner", None)
    return None


@dataclasses.dataclass(frozen=True, kw_only=True)
class ErrorFeedback(ForwardsServerHalf):
    """``inner`` with each client's compression error fed back (module docstring).

    Attributes:
        inner: the wrapped algorithm (its server half and its client training are unchanged).
        aggregator: the chain that compresses (holds a compressor; the wrapped algorithm's own
            aggregator is not used).
    """

    inner: Algorithm[Any, Any, Any, Any]
    aggregator: Aggregator[Any, Any, Any]

    def __post_init__(self) -> None:
        if find_compressor(self.aggregator) is None:
            raise ValueError("error feedback needs a compressor stage in the aggregator chain")

    def client_init(
        self, ctx: ClientContext, msg: Any, data: ClientData, state: FeedbackState | None
    ) -> LocalPlan[Any]:
        """The wrapped plan, carrying the residual to ``client_final``."""
        plan = self.inner.client_init(ctx, msg, data, None if state is None else state.inner)
        residual = None if state is None else state.residual
        return dataclasses.replace(plan, carry=_Carry(inner=plan.carry, residual=residual))

    def client_final(
        self, ctx: ClientContext, msg: Any, plan: LocalPlan[Any], outcome: LocalOutcome
    ) -> ClientResult[Any, FeedbackState]:
        """``p = Δ + e`` as the update; ``p − C(p)`` as the new residual."""
        from fedkit.client import round_context  # the context finish_client's prepare uses

        carry = plan.carry
        if not isinstance(carry, _Carry):
            raise ValueError("this plan was not made by ErrorFeedback.client_init")
        res = self.inner.client_final(
            ctx, msg, dataclasses.replace(plan, carry=carry.inner), outcome
        )
        update = res.update
        if carry.residual is not None:
            update = tree_map(
                lambda u, e: u + e if u.is_floating_point() else u, update, carry.residual
            )
        encoded = self.aggregator.prepare(
            update, res.weight, round_context(ctx.info, ctx.client_id)
        )
        compressor = find_compressor(self.aggregator)
        assert compressor is not None  # checked in __post_init__
        sent = compressor.decompress(encoded)
        residual = tree_map(
            lambda p, c: p - c.to(p.dtype) if p.is_floating_point() else p.new_zeros(p.shape),
            update,
            sent,
        )
        return dataclasses.replace(
            res,
            update=update,
            client_state=FeedbackState(inner=res.client_state, residual=residual),
        )

    def client_state_template(self, params: Params) -> FeedbackState:
        """The wrapped state's shapes and a residual shaped like the update."""
        return FeedbackState(
            inner=self.inner.client_state_template(params),
            residual=self.inner.update_template(params),
        )

    def personal_params(
        self,
        global_params: Params,
        state: FeedbackState | None,
        local: PersonalAccess | None = None,
    ) -> Params | None:
        """The wrapped algorithm's personal model."""
        inner = None if state is None else state.inner
        return self.inner.personal_params(global_params, inner, local)


def with_error_feedback(algorithm: Algorithm[Any, Any, Any, Any]) -> Algorithm[Any, Any, Any, Any]:
    """``algorithm`` wrapped in :class:`ErrorFeedback` when its aggregator chain has a
    compressor with ``error_feedback = true``; ``algorithm`` itself otherwise (or when it is
    wrapped already)."""
    if isinstance(algorithm, ErrorFeedback):
        return algorithm
    aggregator = getattr(algorithm, "aggregator", None)
    compressor = find_compressor(aggregator)
    if compressor is None or not compressor.error_feedback:
        return algorithm
    return ErrorFeedback(inner=algorithm, aggregator=aggregator)  # type: ignore[arg-type]
