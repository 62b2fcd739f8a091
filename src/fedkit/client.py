"""Running one client: the one function every executor and the deployment worker call.

``run_client`` = context and random stream (from ``(seed, round, client_id)``) → the algorithm's
``client_init`` → local training (:func:`train_plan`) → ``client_final`` → the aggregator's
``prepare`` (with an :class:`~fedkit.aggregate.AggContext`) → the new client state stored with
the client's host. The vectorised executor runs the same init and final around its batched step
and finishes each client with :func:`finish_client`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from torch import nn

from fedkit.aggregate import (
    AggContext,
    NonFiniteUpdateError,
    check_finite,
    client_value_names,
    init_state,
    with_client_values,
)
from fedkit.algorithm import (
    Algorithm,
    ClientContext,
    ClientData,
    ClientResult,
    LocalOutcome,
    LocalPlan,
    PersonalAccess,
    RoundInfo,
)
from fedkit.evaluate import ClientEval, evaluate
from fedkit.executor import ClientMetrics
from fedkit.local import GradHook, classification_loss, train_local
from fedkit.params import Params, load_params, zeros_like
from fedkit.rng import SERVER, generator

log = logging.getLogger("fedkit.client")

CLIENT_STREAM = "client"
"""The name of a client's training stream (batch order)."""

PERSONAL_EVAL_STREAM = "personal-eval"
"""The name of the stream personal evaluation trains a personal model with."""


class ClientHost(Protocol):
    """Whoever holds clients: their data and their persistent state."""

    def data(self, client_id: int) -> ClientData:
        """The client's local data."""
        ...

    def get_state(self, client_id: int) -> Any:
        """The client's state (``None`` before its first round)."""
        ...

    def set_state(self, client_id: int, state: Any) -> None:
        """Store the client's new state."""
        ...


@dataclasses.dataclass(frozen=True)
class PreparedUpdate:
    """One client's contribution to the round: the prepared update, its weight, its metrics."""

    update: Any
    weight: float
    metrics: ClientMetrics


def client_context(
    model: nn.Module, client_id: int, info: RoundInfo, work_fraction: float = 1.0
) -> ClientContext:
    """The context of ``client_id`` in round ``info`` with its own training stream."""
    return ClientContext(
        client_id=client_id,
        info=info,
        model=model,
        generator=generator(info.seed, info.round, client_id, CLIENT_STREAM),
        work_fraction=work_fraction,
    )


def linear_hook(plan: LocalPlan[Any]) -> GradHook | None:
    """The plan's gradient term ``g += μ (w - anchor) + offset`` as an in-place hook."""
    mu = plan.prox_mu
    anchor = plan.start if plan.anchor is None else plan.anchor
    offset = plan.offset
    extra = plan.grad_hook
    if mu == 0.0 and offset is None:
        return extra

    def hook(model: nn.Module) -> None:
        for k, p in model.named_parameters():
            if p.grad is None:
                continue
            if mu != 0.0:
                p.grad.add_(p.detach() - anchor[k], alpha=mu)
            if offset is not None:
                p.grad.add_(offset[k])
        if extra is not None:
            extra(model)

    return hook


def train_plan(ctx: ClientContext, plan: LocalPlan[Any], data: ClientData) -> LocalOutcome:
    """The local step(s) of a plan on the resident model: load ``start``, train, copy out.

    Training runs on ``plan.data`` when the plan names data of its own, else on ``data``.
    """
    if plan.data is not None:
        data = plan.data
    load_params(ctx.model, plan.start)
    frozen = plan.frozen
    stats = train_local(
        ctx.model,
        data.x_train,
        data.y_train,
        plan.local,
        generator=ctx.generator,
        loss_hook=plan.loss_hook,
        grad_hook=linear_hook(plan),
        loss_fn=classification_loss if plan.loss_fn is None else plan.loss_fn,
        work_fraction=ctx.work_fraction,
        trainable=(lambda k: k not in frozen) if frozen else None,
    )
    trained = {k: v.detach().clone() for k, v in ctx.model.state_dict().items()}
    return LocalOutcome(trained=trained, stats=stats, num_examples=data.num_examples)


def client_update(
    algorithm: Algorithm[Any, Any, Any, Any],
    ctx: ClientContext,
    msg: Any,
    data: ClientData,
    state: Any,
) -> ClientResult[Any, Any]:
    """The client half end to end: init → local training → final (nothing prepared or stored)."""
    plan = algorithm.client_init(ctx, msg, data, state)
    return algorithm.client_final(ctx, msg, plan, train_plan(ctx, plan, data))


def finish_client(
    algorithm: Algorithm[Any, Any, Any, Any],
    res: ClientResult[Any, Any],
    client_id: int,
    info: RoundInfo,
    work_fraction: float,
    seconds: float,
) -> PreparedUpdate | None:
    """Apply the aggregator's client-side ``prepare`` and record the client's metrics.

    Returns ``None`` (logged) when the update is refused for a NaN or infinite value: the caller
    drops the client from the round and keeps its previous state.
    """
    ctx = round_context(info, client_id)
    try:
        update = algorithm.aggregator.prepare(res.update, res.weight, ctx)
        check_finite(update, client_id)
    except NonFiniteUpdateError as err:
        log.warning("round %d: %s; the client is dropped from the round", info.round, err)
        return None
    metrics = ClientMetrics(
        client_id=client_id,
        num_examples=res.num_examples,
        steps=res.stats.steps,
        train_loss=res.stats.mean_loss,
        work_fraction=work_fraction,
        seconds=seconds,
    )
    return PreparedUpdate(update=update, weight=res.weight, metrics=metrics)


def run_client(
    algorithm: Algorithm[Any, Any, Any, Any],
    host: ClientHost,
    model: nn.Module,
    msg: Any,
    client_id: int,
    info: RoundInfo,
    work_fraction: float = 1.0,
) -> PreparedUpdate | None:
    """Run one client on the resident ``model`` and store its new state with ``host``.

    ``None`` when its update is refused (see :func:`finish_client`); its state is then not stored.
    """
    t0 = time.perf_counter()
    ctx = client_context(model, client_id, info, work_fraction)
    res = client_update(algorithm, ctx, msg, host.data(client_id), host.get_state(client_id))
    done = finish_client(algorithm, res, client_id, info, work_fraction, time.perf_counter() - t0)
    if done is not None:
        host.set_state(client_id, res.client_state)
    return done


def prepared_template(algorithm: Algorithm[Any, Any, Any, Any], params: Params, seed: int) -> Any:
    """A prepared update shaped as clients send it, found without training.

    ``prepare`` runs on the algorithm's zero ``update_template`` (its draws use the server's
    stream of round 0, so no client's stream is touched; its state is the aggregator's initial
    one; a stage that takes per-client values is given 1.0 for each, as the server's own, so
    the template needs no resolved chain); only names, dtypes and shapes matter.
    """
    update = algorithm.update_template(zeros_like(params))
    agg = algorithm.aggregator
    placeholder = tuple((name, 1.0) for name in client_value_names(agg))
    agg = with_client_values(agg, SERVER, placeholder)
    ctx = AggContext(round=0, seed=seed, client_id=SERVER, state=init_state(agg))
    return agg.prepare(update, 1.0, ctx)


def server_context(info: RoundInfo) -> AggContext:
    """The aggregation context of the server in round ``info`` (with the round's state)."""
    return round_context(info, SERVER)


def round_context(info: RoundInfo, client_id: int) -> AggContext:
    """The aggregation context of ``client_id`` (or ``SERVER``) in round ``info``: the round,
    seed, aggregator state and cohort every aggregation step of the round shares."""
    return AggContext(
        round=info.round,
        seed=info.seed,
        client_id=client_id,
        state=info.agg_state,
        cohort=info.cohort,
    )


def evaluate_client(
    model: nn.Module,
    client_id: int,
    data: ClientData,
    params: Params,
    algorithm: Algorithm[Any, Any, Any, Any] | None = None,
    state: Any = None,
    *,
    batch_size: int = 1000,
    loaded: bool = False,
    info: RoundInfo | None = None,
) -> ClientEval | None:
    """Score the global ``params`` on the client's local test split and, when ``algorithm``
    gives the client a personal model (``personal_params(params, state, local)``), that model too.

    With ``info`` (the evaluated round), the method gets :func:`personal_access` and may train
    the personal model on the client's training split. With ``loaded``, ``model`` already holds
    ``params`` (a caller scoring many clients loads them once); the model holds ``params`` again
    on return. ``None`` when the client has no test data.
    """
    if data.x_test is None or data.y_test is None or data.y_test.shape[0] == 0:
        return None
    if not loaded:
        load_params(model, params)
    result = evaluate(model, data.x_test, data.y_test, batch_size=batch_size)
    personal = None
    own = None
    if algorithm is not None:
        local = None if info is None else personal_access(model, client_id, data, info)
        own = algorithm.personal_params(params, state, local)
    if own is not None:
        load_params(model, own)
        personal = evaluate(model, data.x_test, data.y_test, batch_size=batch_size)
        load_params(model, params)
    return ClientEval(client_id=client_id, result=result, personal=personal)


def personal_access(
    model: nn.Module, client_id: int, data: ClientData, info: RoundInfo
) -> PersonalAccess:
    """What personal evaluation of ``client_id`` in round ``info`` lends the method: the resident
    model, the stream ``(seed, round, client_id, "personal-eval")`` and the training split only."""
    ctx = ClientContext(
        client_id=client_id,
        info=info,
        model=model,
        generator=generator(info.seed, info.round, client_id, PERSONAL_EVAL_STREAM),
    )
    return PersonalAccess(ctx=ctx, data=ClientData(x_train=data.x_train, y_train=data.y_train))


def evaluate_clients(
    model: nn.Module,
    host: ClientHost,
    clients: Sequence[int],
    params: Params,
    algorithm: Algorithm[Any, Any, Any, Any] | None = None,
    *,
    batch_size: int = 1000,
    mine: Callable[[int, int], bool] | None = None,
    info: RoundInfo | None = None,
) -> Iterator[tuple[int, ClientEval]]:
    """:func:`evaluate_client` over ``clients`` held by ``host`` (``params`` loaded once).

    Yields ``(position in clients, evaluation)`` for clients with test data; ``mine(position,
    client_id)`` selects this process's share when several split the list.
    """
    load_params(model, params)
    for i, cid in enumerate(clients):
        if mine is not None and not mine(i, cid):
            continue
        state = host.get_state(cid) if algorithm is not None else None
        e = evaluate_client(
            model,
            cid,
            host.data(cid),
            params,
            algorithm,
            state,
            batch_size=batch_size,
            loaded=True,
            info=info,
        )
        if e is not None:
            yield i, e
