"""The ``secagg`` aggregator stage: the same mean as the plain one within the fixed-point
bound, dropouts before masking and before unmasking, refusal below the threshold through the
run loop (round not committed, model unchanged), what the server's accumulator received,
composition with clipping and distributed DP noise, seeded vs OS randomness, refusals."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.aggregate import AggContext, WeightedMean, aggregate, with_client_values
from fedkit.algorithms.fedavg import FedAvg
from fedkit.local import LocalTraining
from fedkit.params import Params, model_params, tree_leaves
from fedkit.privacy.chain import resolve
from fedkit.privacy.clip import ClipNorm
from fedkit.privacy.gaussian import GaussianNoise
from fedkit.privacy.secagg import SecAggError
from fedkit.privacy.secagg.packing import unpack
from fedkit.privacy.secagg.stage import DROPOUT_STREAM, MaskedUpdate, SecureSum, with_wire
from fedkit.rng import SERVER
from fedkit.robust.median import CoordinateMedian
from fedkit.run import RoundRecord, RunConfig, RunResult, run
from fedkit.samplers.importance import ImportanceWeighted
from fedkit.sim.serial import SerialExecutor
from tests.helpers.toy import toy_model, toy_store

LOCAL = LocalTraining(lr=0.05, epochs=1, batch_size=8)
COHORT = (2, 5, 7, 11)


def _update(i: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(i)
    return {"w": torch.rand(3, generator=g) - 0.5, "b": torch.rand(2, 2, generator=g) - 0.5}


def _prepare(agg: Any, ids: tuple[int, ...], weights: dict[int, float], round_: int = 0) -> Any:
    pairs = [
        (agg.prepare(_update(u), weights[u], AggContext(round_, 9, u, cohort=COHORT)), weights[u])
        for u in ids
    ]
    return aggregate(agg, pairs)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], tol: float) -> float:
    err = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
    assert err <= tol
    return err


def test_mean_equals_the_plain_weighted_mean_within_the_bound() -> None:
    """Weights 1, 3, 2, 3 (max_weight 3), bits 31: the secure mean is within the mean's bound
    ``(ε_sum + B·ε_w)/(Ŵ − ε_w)`` of the plain one, and also the merged accumulators (two
    halves folded apart) give it."""
    ws = {2: 1.0, 5: 3.0, 7: 2.0, 11: 3.0}
    agg = SecureSum(bits=31, max_weight=3.0, randomness="seeded")
    acc = _prepare(agg, COHORT, ws)
    ctx = AggContext(0, 9, SERVER, cohort=COHORT)
    got = agg.result(acc, ctx)
    plain = WeightedMean().result(
        aggregate(WeightedMean(), [(_update(u), ws[u]) for u in COHORT]), ctx
    )
    fp = agg.encoding(4)
    bound = fp.mean_error(9.0 - fp.weight_error())
    err = _close(got, plain, bound)
    assert err > 0  # s = 2^29/12 rounds visibly: the comparison is not with itself
    halves = agg.merge(_prepare(agg, COHORT[:2], ws), _prepare(agg, COHORT[2:], ws))
    assert all(torch.equal(halves.total[k], acc.total[k]) for k in acc.total)
    _close(agg.result(halves, ctx), plain, bound)


def test_clients_dropped_before_masking_are_left_out_and_their_masks_removed() -> None:
    """Only 2, 7 and 11 of the cohort of four send (client 5 drops before masking, as when the
    executor loses it): the mean is the plain mean of those three."""
    ws = dict.fromkeys(COHORT, 1.0)
    agg = SecureSum(bits=40, randomness="seeded")
    acc = _prepare(agg, (2, 7, 11), ws)
    ctx = AggContext(0, 9, SERVER, cohort=COHORT)
    plain = WeightedMean().result(
        aggregate(WeightedMean(), [(_update(u), 1.0) for u in (2, 7, 11)]), ctx
    )
    _close(agg.result(acc, ctx), plain, agg.encoding(4).mean_error(3.0 - 1e-9))
    opened = agg.open(_prepare(agg, (2, 7, 11), ws), ctx)
    assert int(opened.count) == 3 and abs(float(opened.weight) - 3.0) < 1e-9


def test_the_server_never_holds_an_update_in_the_clear() -> None:
    """Each prepared (masked) update: int64 words, none equal to the client's encoded value
    beyond chance, uniform over [0, 2^bits) (top-4-bit χ²), uncorrelated with the update."""
    bits, d = 32, 3000
    agg = SecureSum(bits=bits, randomness="seeded")
    for u in COHORT:
        x = torch.rand(d, generator=torch.Generator().manual_seed(u)) - 0.5
        m = agg.prepare({"w": x}, 1.0, AggContext(0, 9, u, cohort=COHORT))
        assert isinstance(m, MaskedUpdate)
        packed = m.masked["w"]  # 4 bytes per 32-bit word on the wire, not an int64's 8
        assert packed.dtype == torch.uint8 and packed.shape == (d, 4)
        y = unpack(packed, bits)
        assert y.dtype == torch.int64 and y.shape == (d,)
        enc = agg.encoding(len(COHORT)).encode(x, 1.0)
        assert int((y == enc).sum()) <= 2
        counts = torch.bincount(y >> (bits - 4), minlength=16).double()
        assert float(((counts - d / 16) ** 2 / (d / 16)).sum()) < 50
        corr = np.corrcoef(y.double().numpy(), x.double().numpy())[0, 1]
        assert abs(corr) < 5 / d**0.5


def test_distributed_noise_composes_under_secure_aggregation() -> None:
    """clip(1) → gaussian(z = 0.1, distributed, seeded) → secagg → mean releases what the same
    chain without secagg releases (the same seeded noise shares, added before masking), within
    ε_sum / k; the server adds no noise when all k report."""
    noise = {"noise_multiplier": 0.1, "clip_norm": 1.0, "expected_clients": 4}
    plain = ClipNorm(
        max_norm=1.0, inner=GaussianNoise(**noise, distributed=True, noise_source="seeded")
    )
    secure = ClipNorm(
        max_norm=1.0,
        inner=GaussianNoise(
            **noise,
            distributed=True,
            noise_source="seeded",
            inner=SecureSum(bits=48, clip_range=4.0, randomness="seeded"),
        ),
    )
    ws = dict.fromkeys(COHORT, 1.0)
    ctx = AggContext(0, 9, SERVER, cohort=COHORT)
    a = plain.result(_prepare(plain, COHORT, ws), ctx)
    b = secure.result(_prepare(secure, COHORT, ws), ctx)
    eps = SecureSum(bits=48, clip_range=4.0).encoding(4).sum_error() / 4
    _close(a, b, eps)


def test_seeded_stages_repeat_and_os_stages_differ() -> None:
    ws = dict.fromkeys(COHORT, 1.0)
    a = _prepare(SecureSum(randomness="seeded"), COHORT[:1], ws)
    b = _prepare(SecureSum(randomness="seeded"), COHORT[:1], ws)
    assert torch.equal(a.total["w"], b.total["w"])
    os1, os2 = SecureSum(randomness="os"), SecureSum(randomness="os")
    c, d = _prepare(os1, COHORT, ws), _prepare(os2, COHORT, ws)
    assert not torch.equal(c.total["w"], d.total["w"])
    ctx = AggContext(0, 9, SERVER, cohort=COHORT)
    _close(os1.result(c, ctx), os2.result(d, ctx), 2 * os1.encoding(4).mean_error(3.9))
    with pytest.raises(SecAggError, match="another key root"):
        os2.result(c, ctx)
    # the simulation runner resolves "auto" to "seeded" (and leaves an explicit "os")
    assert resolve(SecureSum(), cohort=4, seeded=True).randomness == "seeded"
    assert resolve(SecureSum(randomness="os"), cohort=4, seeded=True).randomness == "os"
    assert resolve(SecureSum(), cohort=4, seeded=False).randomness == "auto"
    inner = resolve(ClipNorm(max_norm=1.0, inner=SecureSum()), cohort=4, seeded=True).inner
    assert inner.randomness == "seeded"


def test_refusals() -> None:
    agg = SecureSum(randomness="seeded")
    with pytest.raises(SecAggError, match="needs the round's cohort"):
        agg.prepare(_update(2), 1.0, AggContext(0, 9, 2))
    with pytest.raises(SecAggError, match="client 3 is not in the round's cohort"):
        agg.prepare(_update(2), 1.0, AggContext(0, 9, 3, cohort=COHORT))
    with pytest.raises(ValueError, match="max_weight"):
        agg.prepare(_update(2), 2.0, AggContext(0, 9, 2, cohort=COHORT))
    with pytest.raises(SecAggError, match="float tensors"):
        agg.prepare(
            {"n": torch.ones(2, dtype=torch.int64)}, 1.0, AggContext(0, 9, 2, cohort=COHORT)
        )
    template = agg.prepare(_update(2), 1.0, AggContext(0, 9, SERVER))  # shapes only
    # 48-bit words: 6 bytes each
    assert template.masked["b"].shape == (2, 2, 6) and int(template.masked["b"].sum()) == 0
    acc = _prepare(agg, COHORT, dict.fromkeys(COHORT, 1.0))
    twice = agg.merge(acc, acc)
    with pytest.raises(SecAggError, match="counted twice"):
        agg.result(twice, AggContext(0, 9, SERVER, cohort=COHORT))
    for kw, match in (
        ({"inner": CoordinateMedian()}, "plain mean"),
        ({"neighbours": 3}, "even integer"),
        ({"neighbours": "some"}, "even integer"),
        ({"threshold": 1.0}, "threshold"),
        ({"randomness": "weak"}, "randomness"),
        ({"unmask_dropout": 1.5}, "unmask_dropout"),
        ({"bits": 8}, "bits"),
    ):
        with pytest.raises(ValueError, match=match):
            SecureSum(**kw)


# -- through the run loop ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Received(SecureSum):
    """The secagg stage, recording every prepared update the server's accumulator receives."""

    seen: list[MaskedUpdate] = dataclasses.field(default_factory=list, compare=False)

    def add(self, acc: Any, update: MaskedUpdate, weight: float) -> Any:
        self.seen.append(update)
        return super().add(acc, update, weight)


def _run(agg: Any, rounds: int = 3, seed: int = 3) -> tuple[RunResult[Any], list[Params]]:
    after: list[Params] = []

    def keep(record: RoundRecord, params: Params) -> None:
        after.append({k: v.clone() for k, v in params.items()})

    res = run(
        FedAvg(local=LOCAL, weighting="uniform", aggregator=agg),
        SerialExecutor(toy_store(8), toy_model()),
        model_params(toy_model()),
        RunConfig(rounds=rounds, clients_per_round=6, seed=seed),
        callbacks=[keep],
    )
    return res, after


def test_a_secagg_run_gives_the_plain_model_and_the_server_sees_only_masks() -> None:
    """One round of FedAvg (server step 1): the secure model is the plain model within the
    mean's bound plus one float32 rounding; every update the accumulator received is masked."""
    spy = Received(bits=40, clip_range=2.0, randomness="seeded")
    secure, _ = _run(spy, rounds=1)
    plain, _ = _run(WeightedMean(), rounds=1)
    fp = spy.encoding(6)
    bound = fp.mean_error(6.0 - fp.weight_error())
    for k, v in plain.params.items():
        ulp = torch.from_numpy(np.spacing(v.abs().numpy())).to(torch.float64)
        assert bool(((secure.params[k].double() - v.double()).abs() <= bound + ulp).all())
    assert len(spy.seen) == 6
    for m in spy.seen:
        for _, packed in tree_leaves(m.masked):
            assert packed.dtype == torch.uint8 and packed.shape[-1] == 5  # 40 bits: 5 bytes
            y = unpack(packed, 40)
            assert int(y.min()) >= 0 and int(y.max()) < 2**40
        # the weight is masked too
        assert int(unpack(m.weight, 40)) != int(fp.encode_weight(1.0))


def test_below_the_threshold_the_round_is_not_committed_and_the_model_is_unchanged() -> None:
    """unmask_dropout = 0.3, cohort 6, t = 4: round r commits exactly when at least 4 of the 6
    clients answer (the same draws as the stage's, from the server's stream); an aborted round
    leaves the model as it was, a committed one moves it. Seed 0 gives 4, 2, 5, 3, 5 answers."""
    agg = SecureSum(bits=40, clip_range=2.0, randomness="seeded", unmask_dropout=0.3)
    res, after = _run(agg, rounds=5, seed=0)
    start = model_params(toy_model())
    answers = [
        int((torch.rand(6, generator=AggContext(r, 0, SERVER).stream(DROPOUT_STREAM)) >= 0.3).sum())
        for r in range(5)
    ]
    assert answers == [4, 2, 5, 3, 5]
    before = start
    for rec, params, n in zip(res.history, after, answers, strict=True):
        assert rec.committed == (n >= 4)
        same = all(torch.equal(params[k], before[k]) for k in params)
        assert same == (not rec.committed)
        before = params
    everyone_gone, _ = _run(dataclasses.replace(agg, unmask_dropout=1.0), rounds=2)
    assert [r.committed for r in everyone_gone.history] == [False, False]
    assert all(torch.equal(everyone_gone.params[k], start[k]) for k in start)


@settings(max_examples=15, deadline=None)
@given(order=st.permutations(list(COHORT)), split=st.integers(0, 4))
def test_any_order_and_any_split_give_the_same_masked_sum(order: list[int], split: int) -> None:
    """The accumulator is a sum modulo 2^bits: folding the clients in any order, or in two
    partial accumulators merged either way round, gives the same words and the same result."""
    agg = SecureSum(bits=36, randomness="seeded")
    ws = dict.fromkeys(COHORT, 1.0)
    ref = _prepare(agg, COHORT, ws)
    parts = [tuple(order[:split]), tuple(order[split:])]
    like = agg.prepare(_update(2), 1.0, AggContext(0, 9, 2, cohort=COHORT))
    accs = [_prepare(agg, p, ws) if p else agg.zero(like) for p in parts]
    for merged in (agg.merge(accs[0], accs[1]), agg.merge(accs[1], accs[0])):
        assert all(torch.equal(merged.total[k], ref.total[k]) for k in ref.total)
        assert torch.equal(merged.weight, ref.weight)
        assert sorted(merged.senders.tolist()) == sorted(COHORT)


def test_the_run_loop_gives_every_step_the_sampled_cohort() -> None:
    """Each client's and the server's aggregation context carries the round's cohort (what
    pairwise masks need): the spy sees exactly the record's cohort every round."""
    seen: list[tuple[int, tuple[int, ...]]] = []

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Cohorts(SecureSum):
        def prepare(self, update: Any, weight: float, ctx: AggContext) -> Any:
            seen.append((ctx.round, ctx.cohort))
            return super().prepare(update, weight, ctx)

    res, _ = _run(Cohorts(bits=40, clip_range=2.0, randomness="seeded"), rounds=2)
    for rec in res.history:
        got = {c for r, c in seen if r == rec.round}
        assert got == {rec.cohort}
        assert len(rec.cohort) == 6


def test_client_state_advances_only_with_a_committed_round() -> None:
    """SCAFFOLD under secure aggregation with the dropout of the test above (seed 0: rounds 1
    and 3 refused): after a refused round every client's control variate is what it was
    before the round (the run loop puts the states back), after a committed one the cohort's
    have moved. A stage that does not declare ``may_abort`` keeps the states of refused rounds:
    the final models differ, so the rollback is what the first run's model depends on."""
    from fedkit.algorithms.scaffold import Scaffold

    def states(agg: Any) -> tuple[list[dict[str, torch.Tensor]], RunResult[Any]]:
        store = toy_store(8)
        seen: list[dict[str, torch.Tensor]] = []

        def keep(record: RoundRecord, params: Params) -> None:
            seen.append({k: v.clone() for k, v in store.state_tensors().items()})

        res = run(
            Scaffold(local=LOCAL, aggregator=agg),
            SerialExecutor(store, toy_model()),
            model_params(toy_model()),
            RunConfig(rounds=5, clients_per_round=6, seed=0),
            callbacks=[keep],
        )
        return seen, res

    agg = SecureSum(bits=40, clip_range=2.0, randomness="seeded", unmask_dropout=0.3)
    seen, res = states(agg)
    assert [r.committed for r in res.history] == [True, False, True, False, True]
    for r in (1, 3):  # refused: every state exactly as after round r - 1
        assert seen[r].keys() == seen[r - 1].keys()
        assert all(torch.equal(seen[r][k], seen[r - 1][k]) for k in seen[r])
    for r in (2, 4):  # committed: some state moved
        prev = seen[r - 1]
        assert any(k not in prev or not torch.equal(v, prev[k]) for k, v in seen[r].items())

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class NoRollback(SecureSum):
        may_abort = False  # type: ignore[misc]

    kept, other = states(
        NoRollback(bits=40, clip_range=2.0, randomness="seeded", unmask_dropout=0.3)
    )
    assert [r.committed for r in other.history] == [True, False, True, False, True]
    assert any(not torch.equal(kept[1][k], seen[1][k]) for k in kept[1] if k in seen[1]) or (
        kept[1].keys() != seen[1].keys()
    )
    assert any(not torch.equal(other.params[k], res.params[k]) for k in res.params)


def test_importance_inner_sums_the_clients_ht_scaled_updates_with_weight_one() -> None:
    """``secagg`` over ``importance``: each client scales its update by w_k / (π_k W) before
    masking (π = 1/2, except π_5 = 1/4; W = 20; weights 1, 3, 2, 3 → factors 0.1, 0.6, 0.2,
    0.3), and the secure sum encodes those with weight 1, so the result is the
    Horvitz–Thompson sum Σ f_k u_k within the fixed-point bound ε_sum of each coordinate (not
    the weighted mean, not Σ w_k f_k u_k), and the decoded weight is the count, 4."""
    ws = {2: 1.0, 5: 3.0, 7: 2.0, 11: 3.0}
    pi = tuple(0.25 if k == 5 else 0.5 for k in range(12))
    inner = ImportanceWeighted[dict[str, torch.Tensor]](inclusion=pi, total_weight=20.0)
    agg = SecureSum(bits=31, max_weight=3.0, randomness="seeded", inner=inner)
    acc = _prepare(agg, COHORT, ws)
    ctx = AggContext(0, 9, SERVER, cohort=COHORT)
    got = agg.result(acc, ctx)
    factors = {2: 0.1, 5: 0.6, 7: 0.2, 11: 0.3}
    ht = {k: sum(factors[u] * _update(u)[k].double() for u in COHORT) for k in ("w", "b")}
    fp = agg.encoding(4)
    assert _close(got, ht, fp.sum_error()) > 0  # rounded, and within the bound
    assert float(agg.open(acc, ctx).weight) == pytest.approx(4.0, abs=fp.weight_error())
    # a per-client resolution on a worker keeps the stage's bound wire and key root
    bound = with_wire(SecureSum(bits=31, inner=ImportanceWeighted()), wire=object())  # type: ignore[arg-type]
    resolved = with_client_values(
        bound, 5, (("importance.inclusion", 0.25), ("importance.total_weight", 20.0))
    )
    assert resolved._wire is bound._wire and resolved._os_root == bound._os_root
    assert resolved.inner.inclusion == (0.25,)  # type: ignore[attr-defined]
