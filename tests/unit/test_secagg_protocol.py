"""The four rounds of secure aggregation played in-process (simulate_round and the client and
server sessions): the sum within the fixed-point bound, recovery with dropouts up to the
threshold, typed refusal below it, what the server sees, reproducibility, and hostile messages."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.privacy.secagg import AbortReason, SecAggAbort, SecAggError, SecAggSettings
from fedkit.privacy.secagg.client import ClientSession
from fedkit.privacy.secagg.crypto import DerivedEntropy
from fedkit.privacy.secagg.messages import (
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    OwnerShare,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedkit.privacy.secagg.round import RoundSetup
from fedkit.privacy.secagg.server import ServerSession
from fedkit.privacy.secagg.simulate import simulate_round


def _updates(n: int, d: int = 50, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(d, generator=g) * 2 - 1 for _ in range(n)]


def _plain(updates: list[torch.Tensor], weights: list[float], ids: set[int]) -> torch.Tensor:
    return sum(
        (u.double() * w for i, (u, w) in enumerate(zip(updates, weights, strict=True)) if i in ids),
        torch.zeros_like(updates[0], dtype=torch.float64),
    )


def test_sum_equals_the_plain_weighted_sum_within_the_bound_by_hand() -> None:
    """n = 5, bits = 24, B = 1, W = 4: s = 2^22 / (5·4·1) = 209 715.2, so the bound on each sum
    coordinate is ε_sum = 5/(2s) + 5·4·2^−50 = 1.1920929e−5 (+1.8e−14); the weight's is
    ε_w = 5 / (2 · 2^22/20) = 1.1920929e−5."""
    ups = _updates(5)
    ws = [1.0, 4.0, 0.5, 2.0, 3.0]
    cfg = SecAggSettings(bits=24, clip_range=1.0, max_weight=4.0)
    out = simulate_round(ups, ws, settings=cfg, seed=7)
    bound = 5 / (2 * 2**22 / 20) + 20 * 2**-50
    assert out.encoding.sum_error() == pytest.approx(bound, rel=1e-12)
    err = (out.weighted_sum - _plain(ups, ws, set(range(5)))).abs().max()
    assert err <= bound
    assert err > 0  # 24 bits do round: the check is not vacuous
    assert abs(out.total_weight - 10.5) <= 5 / (2 * 2**22 / 20) + 20 * 2**-50
    assert out.included == (0, 1, 2, 3, 4)


@settings(max_examples=12, deadline=None)
@given(
    n=st.integers(3, 8),
    bits=st.integers(24, 62),
    neighbours=st.sampled_from(["all", 2, 4]),
    seed=st.integers(0, 2**31),
)
def test_sum_is_recovered_for_any_cohort(n: int, bits: int, neighbours: Any, seed: int) -> None:
    ups = _updates(n, d=7, seed=seed)
    ws = [float(1 + i % 3) for i in range(n)]
    cfg = SecAggSettings(bits=bits, max_weight=3.0, neighbours=neighbours)
    out = simulate_round(ups, ws, settings=cfg, seed=seed, clients=[3 * i + 1 for i in range(n)])
    assert (out.weighted_sum - _plain(ups, ws, set(range(n)))).abs().max() <= (
        out.encoding.sum_error()
    )


@pytest.mark.parametrize(
    ("neighbours", "before", "after"), [("all", {1, 6}, {0, 8}), (4, {6}, {0})]
)
def test_threshold_worth_of_dropouts_is_recovered(
    neighbours: Any, before: set[int], after: set[int]
) -> None:
    """n = 9, all pairs: t = ⌊0.5·9⌋ + 1 = 5; two clients drop before their masked input
    (their pairwise masks are removed through their reconstructed keys) and two after it
    (their inputs stay in the sum): exactly 5 = t answer. SecAgg+ with k = 4: h = 5 holders,
    t = 3; with one drop of each kind every client keeps at least 5 − 2 = 3 = t holders."""
    ups, ws = _updates(9), [1.0] * 9
    cfg = SecAggSettings(bits=40, neighbours=neighbours)
    out = simulate_round(
        ups, ws, settings=cfg, seed=3, dropped_before_masking=before, dropped_after_masking=after
    )
    included = set(range(9)) - before
    assert set(out.included) == included
    assert (out.weighted_sum - _plain(ups, ws, included)).abs().max() <= out.encoding.sum_error()
    assert abs(out.total_weight - len(included)) <= out.encoding.weight_error()


def test_exactly_t_survivors_recover_and_t_minus_1_abort() -> None:
    """n = 6, all pairs, t = 4: with 2 dropped after masking, 4 answer → the sum; with 3, only 3
    answer → SecAggAbort(TOO_FEW_SURVIVORS), no sum."""
    ups, ws = _updates(6), [1.0] * 6
    cfg = SecAggSettings(bits=32)
    out = simulate_round(ups, ws, settings=cfg, seed=1, dropped_after_masking={2, 5})
    assert (out.weighted_sum - _plain(ups, ws, set(range(6)))).abs().max() <= (
        out.encoding.sum_error()
    )
    with pytest.raises(SecAggAbort, match="TOO_FEW_SURVIVORS") as err:
        simulate_round(ups, ws, settings=cfg, seed=1, dropped_after_masking={2, 4, 5})
    assert err.value.reason is AbortReason.TOO_FEW_SURVIVORS
    with pytest.raises(SecAggAbort, match="TOO_FEW_MASKED"):
        simulate_round(ups, ws, settings=cfg, seed=1, dropped_before_masking={0, 1, 2})


def test_the_server_sees_no_input_in_the_clear() -> None:
    """Everything the server received: each masked input is uniform mod 2^bits (χ² of its top 4
    bits), uncorrelated with the client's update, equal to the encoded input in no more
    positions than chance; a client whose update is all zeros sends no zeros; the encoded
    input's bytes appear in no message."""
    n, d, bits = 6, 4000, 32
    ups = _updates(n, d=d)
    ups[0] = torch.zeros(d)
    cfg = SecAggSettings(bits=bits)
    out = simulate_round(ups, [1.0] * n, settings=cfg, seed=11)
    fp = out.encoding
    blobs = b"".join(
        [a.c_pk + a.s_pk for a in out.view.adverts]
        + [s.ciphertext for m in out.view.shares for s in m.shares]
    )
    for m in out.view.masked:
        y = m.masked[:-1]
        enc = fp.encode(ups[m.sender], 1.0)
        counts = torch.bincount(y >> (bits - 4), minlength=16).double()
        chi2 = float(((counts - d / 16) ** 2 / (d / 16)).sum())
        assert chi2 < 50  # χ²(15) beyond 50 has p ≈ 1e-5
        centred = y.double() - y.double().mean()
        u = ups[m.sender].double() - ups[m.sender].double().mean()
        if float(u.norm()) > 0:
            corr = float(centred @ u / (centred.norm() * u.norm()))
            assert abs(corr) < 5 / d**0.5
        assert int((y == enc).sum()) <= 2  # chance: d / 2^32 ≈ 1e-6 expected
        assert enc[:8].numpy().tobytes() not in blobs
    zero_client = next(m for m in out.view.masked if m.sender == 0)
    assert int((zero_client.masked[:-1] == 0).sum()) <= 2


def test_seeded_rounds_repeat_and_os_rounds_do_not() -> None:
    ups, ws, cfg = _updates(4), [1.0] * 4, SecAggSettings(bits=32)
    a = simulate_round(ups, ws, settings=cfg, seed=5)
    b = simulate_round(ups, ws, settings=cfg, seed=5)
    c = simulate_round(ups, ws, settings=cfg, seed=5, round_=1)
    for x, y, z in zip(a.view.masked, b.view.masked, c.view.masked, strict=True):
        assert torch.equal(x.masked, y.masked)
        assert not torch.equal(x.masked, z.masked)
    assert a.view.adverts == b.view.adverts
    o1 = simulate_round(ups, ws, settings=cfg, seed=None)
    o2 = simulate_round(ups, ws, settings=cfg, seed=None)
    assert o1.view.adverts != o2.view.adverts
    assert not torch.equal(o1.view.masked[0].masked, o2.view.masked[0].masked)
    assert torch.allclose(o1.weighted_sum, o2.weighted_sum, atol=2 * o1.encoding.sum_error())


def test_secagg_plus_costs_less_per_client() -> None:
    """n = 16: all pairs sends 15 encrypted shares per client, SecAgg+ with k = 4 sends 4."""
    ups, ws = _updates(16, d=10), [1.0] * 16
    full = simulate_round(ups, ws, settings=SecAggSettings(bits=32), seed=2)
    plus = simulate_round(ups, ws, settings=SecAggSettings(bits=32, neighbours=4), seed=2)
    assert {len(m.shares) for m in full.view.shares} == {15}
    assert {len(m.shares) for m in plus.view.shares} == {4}
    assert plus.bytes_up[0] < full.bytes_up[0]
    assert (plus.weighted_sum - full.weighted_sum).abs().max() <= 2 * full.encoding.sum_error()


# -- hostile messages ----------------------------------------------------------------------------


def _setup(n: int = 4, length: int = 3) -> RoundSetup:
    return RoundSetup(
        round=0,
        cohort=tuple(range(n)),
        degree=None,
        threshold=0.5,
        bits=32,
        length=length,
        public_seed=bytes(32),
    )


def _sessions(setup: RoundSetup) -> dict[int, ClientSession]:
    return {u: ClientSession(u, setup, DerivedEntropy(bytes([u + 1]) * 32)) for u in setup.cohort}


def _to_masking(
    setup: RoundSetup,
) -> tuple[dict[int, ClientSession], ServerSession, dict[int, tuple[EncryptedShare, ...]]]:
    cs, server = _sessions(setup), ServerSession(setup)
    rosters = server.collect_adverts([c.advertise() for c in cs.values()])
    inboxes = server.route_shares([cs[u].share_keys(rosters[u]) for u in cs])
    return cs, server, inboxes


def test_server_refuses_hostile_adverts() -> None:
    setup = _setup()
    adv = [c.advertise() for c in _sessions(setup).values()]
    cases: list[tuple[list[Any], str]] = [
        ([*adv, adv[0]], "two messages from client 0"),
        ([*adv[:3], dataclasses.replace(adv[3], sender=9)], "not in the cohort"),
        ([*adv[:3], dataclasses.replace(adv[3], c_pk=adv[3].c_pk[:31])], "c_pk must be 32"),
        ([*adv[:3], dataclasses.replace(adv[3], s_pk=adv[3].c_pk)], "must differ"),
        ([*adv[:3], dataclasses.replace(adv[3], sender=True)], "True is not a client id"),
        ([*adv[:3], "junk"], "expected AdvertiseKeys"),
    ]
    for msgs, match in cases:
        with pytest.raises(SecAggError, match=match):
            ServerSession(setup).collect_adverts(msgs)
    with pytest.raises(SecAggAbort, match="TOO_FEW_ADVERTISED"):  # t = 3 of 4
        ServerSession(setup).collect_adverts(adv[:2])


def test_server_refuses_hostile_shares() -> None:
    setup = _setup()
    cs, server = _sessions(setup), ServerSession(setup)
    rosters = server.collect_adverts([c.advertise() for c in cs.values()])
    shares = [cs[u].share_keys(rosters[u]) for u in cs]
    s0 = shares[0]
    e = s0.shares[0]
    bad: list[tuple[ShareKeys, str]] = [
        (ShareKeys(0, s0.shares[:-1]), "one share to each"),
        (ShareKeys(0, (*s0.shares[:-1], s0.shares[0])), "one share to each"),
        (ShareKeys(0, (dataclasses.replace(e, sender=1), *s0.shares[1:])), "signed as 1"),
        (
            ShareKeys(0, (dataclasses.replace(e, ciphertext=e.ciphertext[1:]), *s0.shares[1:])),
            "ciphertext must be",
        ),
        (ShareKeys(0, (dataclasses.replace(e, receiver=77), *s0.shares[1:])), "outside the cohort"),
    ]
    for msg, match in bad:
        server = ServerSession(setup)
        server.collect_adverts(
            [
                ClientSession(u, setup, DerivedEntropy(bytes([u + 1]) * 32)).advertise()
                for u in range(4)
            ]
        )
        with pytest.raises(SecAggError, match=match):
            server.route_shares([msg, *shares[1:]])
    server = ServerSession(setup)
    server.collect_adverts(
        [ClientSession(u, setup, DerivedEntropy(bytes([u + 1]) * 32)).advertise() for u in range(4)]
    )
    with pytest.raises(SecAggError, match="two messages"):
        server.route_shares([*shares, shares[2]])


def test_server_refuses_hostile_masked_inputs_and_responses() -> None:
    setup = _setup()
    cs, server, inboxes = _to_masking(setup)
    x = torch.tensor([1, 2, 3], dtype=torch.int64)
    masked = [cs[u].masked_input(inboxes[u], x) for u in range(4)]
    for msgs, match in (
        ([*masked[:3], MaskedInput(3, torch.zeros(4, dtype=torch.int64))], "shape \\(3,\\)"),
        ([*masked[:3], MaskedInput(3, torch.zeros(3, dtype=torch.int32))], "int64"),
        ([*masked[:3], MaskedInput(3, torch.full((3,), 2**32))], "outside \\[0, 2\\^32\\)"),
        ([*masked[:3], MaskedInput(3, torch.full((3,), -1))], "outside"),
        ([*masked, masked[0]], "two messages"),
        ([*masked[:3], MaskedInput(7, masked[3].masked)], "did not share keys"),
    ):
        _, fresh, _ = _to_masking(setup)
        with pytest.raises(SecAggError, match=match):
            fresh.collect_masked(msgs)
    request = server.collect_masked(masked)
    resp = [cs[u].unmask(request) for u in range(4)]
    assert resp[0].key_shares == () and len(resp[0].seed_shares) == 4
    s = resp[1].seed_shares[0]
    for tampered, match in (
        (dataclasses.replace(resp[1], sender=9), "not a survivor"),
        (dataclasses.replace(resp[1], seed_shares=(dataclasses.replace(s, x=1),)), "index 1"),
        (dataclasses.replace(resp[1], seed_shares=(s, s)), "two shares"),
        (dataclasses.replace(resp[1], key_shares=(OwnerShare(0, 2, 5),)), "unexpected owner"),
        (dataclasses.replace(resp[1], seed_shares=(dataclasses.replace(s, y=-1),)), "field"),
    ):
        fresh_cs, fresh, fresh_in = _to_masking(setup)
        req = fresh.collect_masked([fresh_cs[u].masked_input(fresh_in[u], x) for u in range(4)])
        others = [fresh_cs[u].unmask(req) for u in (0, 2, 3)]
        with pytest.raises(SecAggError, match=match):
            fresh.finish([*others, tampered])
    with pytest.raises(SecAggAbort, match="TOO_FEW_SURVIVORS"):
        server.finish(resp[:2])


def test_a_forged_share_value_is_caught_by_the_public_key_check() -> None:
    """Client 3 drops before masking; a survivor's altered share of 3's s_sk reconstructs a key
    that does not match 3's advertised s_pk: refused, not a silently wrong sum."""
    setup = _setup()
    cs, server, inboxes = _to_masking(setup)
    x = torch.tensor([1, 2, 3], dtype=torch.int64)
    req = server.collect_masked([cs[u].masked_input(inboxes[u], x) for u in range(3)])
    assert req.dropped == (3,)
    resp = [cs[u].unmask(req) for u in range(3)]
    ks = resp[0].key_shares[0]
    forged = dataclasses.replace(resp[0], key_shares=(dataclasses.replace(ks, y=ks.y ^ 1),))
    with pytest.raises(SecAggError, match="does not match its s_pk"):
        server.finish([forged, *resp[1:]])


def test_client_refuses_a_request_that_would_reveal_an_input() -> None:
    setup = _setup()
    cs, _, inboxes = _to_masking(setup)
    x = torch.zeros(3, dtype=torch.int64)
    for u in range(4):
        cs[u].masked_input(inboxes[u], x)
    for req, match in (
        (UnmaskRequest(dropped=(1,), survivors=(0, 1, 2)), "both dropped and surviving"),
        (UnmaskRequest(dropped=(), survivors=(1, 2, 3)), "not listed among the survivors"),
        (UnmaskRequest(dropped=(2, 3), survivors=(0, 1)), "fewer than t = 3"),
        (UnmaskRequest(dropped=(), survivors=(0, 1, 1, 2)), "repeats"),
        (UnmaskRequest(dropped=(9,), survivors=(0, 1, 2)), "unknown 9"),
    ):
        with pytest.raises(SecAggError, match=match):
            cs[0].unmask(req)


def test_client_refuses_hostile_server_messages() -> None:
    setup = _setup()
    cs, _, inboxes = _to_masking(setup)
    e = inboxes[0][0]
    flipped = dataclasses.replace(e, ciphertext=bytes([e.ciphertext[0] ^ 1]) + e.ciphertext[1:])
    calls: list[tuple[Callable[[], object], str]] = [
        (lambda: cs[0].receive([dataclasses.replace(e, receiver=1)]), "addressed to 1"),
        (lambda: cs[0].receive([e, e]), "two shares"),
        (lambda: cs[0].receive([e]), "shares from 1 neighbours; t = 3"),
        (lambda: cs[0].mask(torch.zeros(3, dtype=torch.int64)), "out of order"),
        (lambda: cs[0].advertise(), "out of order"),
    ]
    for call, match in calls:
        with pytest.raises(SecAggError, match=match):
            call()
    cs[0].receive([flipped, *inboxes[0][1:]])
    with pytest.raises(SecAggError, match="input must be int64"):
        cs[0].mask(torch.zeros(4, dtype=torch.int64))
    cs[0].mask(torch.zeros(3, dtype=torch.int64))
    with pytest.raises(SecAggError, match="failed authentication"):
        cs[0].unmask(UnmaskRequest(dropped=(), survivors=(0, 1, 2, 3)))
    fresh = _sessions(setup)[1]
    fresh.advertise()
    stranger = AdvertiseKeys(0, bytes(32), bytes(range(32)))
    with pytest.raises(SecAggError, match="two adverts"):
        fresh.share_keys([stranger, stranger])
    with pytest.raises(SecAggError, match="not in the round's cohort"):
        ClientSession(9, setup, DerivedEntropy(bytes(32)))


def test_an_unmask_response_for_a_client_it_holds_no_share_of_is_refused() -> None:
    """SecAgg+ (k = 2 on 6 clients): a response carrying a share of a non-neighbour."""
    setup = dataclasses.replace(_setup(6), degree=2)
    cs, server, inboxes = _to_masking(setup)
    x = torch.zeros(3, dtype=torch.int64)
    req = server.collect_masked([cs[u].masked_input(inboxes[u], x) for u in range(6)])
    resp = [cs[u].unmask(req) for u in range(6)]
    far = next(v for v in range(6) if v not in setup.holders(0))
    extra = OwnerShare(far, setup.index(0), 1)
    bad = dataclasses.replace(resp[0], seed_shares=(*resp[0].seed_shares, extra))
    with pytest.raises(SecAggError, match=f"holds no share of {far}"):
        server.finish([bad, *resp[1:]])
    ok = UnmaskResponse(0, (), resp[0].seed_shares)
    assert ok == resp[0]
