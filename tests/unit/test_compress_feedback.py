"""Error feedback as client state: the residual carries what compression dropped from one round
to the next (Stich et al. 2018; Karimireddy et al. 2019), stored with the client (never in the
server state), the same under the serial and vectorised executors, checkpointed and resumed."""

from __future__ import annotations

from pathlib import Path

import torch

from fedkit.algorithm import ClientData, LocalOutcome, RoundInfo
from fedkit.algorithms.fedavg import FedAvg, ModelDelta, ModelMessage
from fedkit.client import client_context
from fedkit.compress import ErrorFeedback, FeedbackState, SignCompressor, TopK
from fedkit.local import LocalStats, LocalTraining
from fedkit.params import model_params, sha256, tree_flatten, tree_nbytes, tree_unflatten
from fedkit.run import RunConfig, run
from fedkit.sim.serial import SerialExecutor
from fedkit.sim.vectorized import VectorizedExecutor
from tests.helpers.toy import toy_model, toy_store

LOCAL = LocalTraining(lr=0.1, epochs=1, batch_size=10)


def _algorithm(fraction: float = 0.25) -> ErrorFeedback:
    return ErrorFeedback(
        inner=FedAvg(local=LOCAL, weighting="uniform"),
        aggregator=TopK(fraction=fraction, error_feedback=True),
    )


def _step(ef: ErrorFeedback, delta: list[float], state: FeedbackState | None, r: int) -> tuple:
    """One client round of ``ef`` whose local training moved ``w`` by ``delta``."""
    start = {"w": torch.zeros(len(delta))}
    info = RoundInfo(round=r, seed=0, num_clients=1, cohort_size=1)
    ctx = client_context(torch.nn.Linear(1, 1), 0, info)
    data = ClientData(torch.zeros(1, 1), torch.zeros(1, dtype=torch.int64))
    msg = ModelMessage(params=start)
    plan = ef.client_init(ctx, msg, data, state)
    outcome = LocalOutcome(
        trained={"w": torch.tensor(delta)}, stats=LocalStats(1, 1, 0.0), num_examples=1
    )
    res = ef.client_final(ctx, msg, plan, outcome)
    sent = ef.aggregator.prepare(res.update, res.weight, _ctx(r))
    return res, ef.aggregator.decompress(sent)  # type: ignore[attr-defined]


def _ctx(r: int):  # type: ignore[no-untyped-def]
    from fedkit.aggregate import AggContext

    return AggContext(round=r, seed=0, client_id=0)


def test_the_residual_by_hand() -> None:
    ef = _algorithm(fraction=0.25)  # d = 4 -> k = 1
    # round 0: Δ = [1, -3, 2, 0.5], e = 0 -> p = Δ; sent top-1 = [0, -3, 0, 0]; e = [1, 0, 2, 0.5]
    res, sent = _step(ef, [1.0, -3.0, 2.0, 0.5], None, 0)
    assert sent.delta["w"].tolist() == [0.0, -3.0, 0.0, 0.0]
    state = res.client_state
    assert isinstance(state, FeedbackState) and state.inner is None
    assert state.residual.delta["w"].tolist() == [1.0, 0.0, 2.0, 0.5]
    # round 1: Δ = [1, 0, 0, 0] -> p = [2, 0, 2, 0.5]; top-1 keeps the first of the tie at 2
    # or the other: either way p − sent is the residual and one 2 waits another round
    res, sent = _step(ef, [1.0, 0.0, 0.0, 0.0], state, 1)
    assert res.update.delta["w"].tolist() == [2.0, 0.0, 2.0, 0.5]
    assert sorted(sent.delta["w"].tolist()) == [0.0, 0.0, 0.0, 2.0]
    total = res.client_state.residual.delta["w"] + sent.delta["w"]
    assert total.tolist() == [2.0, 0.0, 2.0, 0.5]


def test_sign_with_feedback_by_hand() -> None:
    ef = ErrorFeedback(inner=FedAvg(local=LOCAL), aggregator=SignCompressor(error_feedback=True))
    # Δ = [3, -1]: scale ‖Δ‖₁ / 2 = 2 -> sent [2, -2], e = [1, 1]
    res, sent = _step(ef, [3.0, -1.0], None, 0)
    assert sent.delta["w"].tolist() == [2.0, -2.0]
    assert res.client_state.residual.delta["w"].tolist() == [1.0, 1.0]


def test_the_state_template_holds_inner_state_and_residual() -> None:
    ef = _algorithm()
    params = model_params(toy_model())
    template = ef.client_state_template(params)
    assert isinstance(template.residual, ModelDelta) and template.inner is None
    # the checkpoint and the worker's disk round-trip it through its flat tensors
    state = FeedbackState(inner=None, residual=ModelDelta({k: v + 1 for k, v in params.items()}))
    back = tree_unflatten(template, tree_flatten(state))
    assert sha256(back.residual.delta) == sha256(state.residual.delta)


def _run(executor_cls: type, tmp: Path | None = None, rounds: int = 3):  # type: ignore[no-untyped-def]
    store = toy_store(6)
    model = toy_model()
    ex = executor_cls(store, model)
    cfg = RunConfig(rounds=rounds, clients_per_round=3, seed=4, eval_every=0, checkpoint_dir=tmp)
    return run(_algorithm(), ex, model_params(model), cfg), store


def test_serial_and_vectorised_agree_and_residuals_stay_with_the_clients() -> None:
    serial, store = _run(SerialExecutor)
    vector, _ = _run(VectorizedExecutor)
    for k, v in serial.params.items():
        torch.testing.assert_close(vector.params[k], v, atol=1e-5, rtol=0)
    # the server state is FedAvg's: no residual in it
    assert set(vars(serial.state)) == {"params", "opt"}
    states = [store.get_state(c) for c in range(6)]
    ran = {c for rec in serial.history for c in rec.cohort}
    assert {c for c, s in enumerate(states) if s is not None} == ran
    for s in states:
        if s is not None:
            assert float(sum(t.abs().sum() for t in s.residual.delta.values())) > 0.0
    # bytes up: each client sent its top-25% positions (int32) and values (float32)
    d = {k: v.numel() for k, v in serial.params.items()}
    per_client = sum(max(1, -(-n // 4)) * 8 for n in d.values())
    assert all(rec.bytes_up == 3 * per_client for rec in serial.history)
    assert per_client < tree_nbytes(serial.params)  # 8 bytes per kept entry vs 4 per entry


def test_checkpointed_run_resumes_with_the_residuals(tmp_path: Path) -> None:
    straight, _ = _run(SerialExecutor, rounds=4)
    _run(SerialExecutor, tmp_path, rounds=2)
    # a fresh process' store: the residuals come back from the checkpoint's client tensors
    resumed, _ = _run(SerialExecutor, tmp_path, rounds=4)
    assert resumed.start_round == 2
    assert sha256(resumed.params) == sha256(straight.params)
