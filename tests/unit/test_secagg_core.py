"""Secure aggregation's building blocks: fixed-point encoding and its error bound, Shamir
sharing over GF(2^521 − 1), the ChaCha20 mask generator, X25519 agreement, share encryption and
the SecAgg+ graph — hand-computed cases and Hypothesis properties."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedkit.privacy.secagg import shamir
from fedkit.privacy.secagg.crypto import (
    DerivedEntropy,
    agree,
    decrypt,
    encrypt,
    expand_mask,
    private_key,
    public_bytes,
)
from fedkit.privacy.secagg.errors import SecAggError
from fedkit.privacy.secagg.fixedpoint import FixedPoint
from fedkit.privacy.secagg.graph import neighbourhoods, ring_order
from fedkit.privacy.secagg.round import RoundSetup, threshold_of

# -- fixed point ---------------------------------------------------------------------------------


def test_encoding_of_two_values_by_hand() -> None:
    """bits = 32, n = 3, W = 1, B = 1: s = 2^30 / 3 = 357 913 941.33…
    e(0.5) = round(178 956 970.67) = 178 956 971; e(−0.25) = round(−89 478 485.33) =
    −89 478 485 ≡ 2^32 − 89 478 485 = 4 205 488 811. Their sum mod 2^32 is 89 478 486, which
    decodes to 89 478 486 · 3 / 2^30 = 268 435 458 / 2^30 = 0.25 + 2/2^30 (an error of
    1.86e−9: the two roundings, +0.33 and +0.33 of a unit, in units of 1/s = 3/2^30); the bound
    ε_sum = 3/(2s) + 3·2^−50 = 9/2^31 + 3·2^−50 ≈ 4.19e−9 covers it."""
    fp = FixedPoint(bits=32, clip_range=1.0, max_weight=1.0, clients=3)
    assert fp.scale == pytest.approx(2**30 / 3, rel=1e-15)
    enc = fp.encode(torch.tensor([0.5, -0.25]), 1.0)
    assert enc.tolist() == [178_956_971, 4_205_488_811]
    total = enc.sum() % 2**32
    assert int(total) == 89_478_486
    assert float(fp.decode(total)) == pytest.approx(89_478_486 * 3 / 2**30, rel=1e-15)
    assert fp.sum_error() == pytest.approx(9 / 2**31 + 3 * 2**-50, rel=1e-12)
    assert abs(float(fp.decode(total)) - 0.25) <= fp.sum_error()
    assert float(fp.decode(total)) - 0.25 == pytest.approx(2 / 2**30, rel=1e-6)
    # weights: s_w = 2^30 / 3; e(1) = round(357 913 941.33) = 357 913 941
    assert int(fp.encode_weight(1.0)) == 357_913_941


def test_values_beyond_the_clip_range_are_clamped_not_wrapped() -> None:
    fp = FixedPoint(bits=20, clip_range=0.5, max_weight=2.0, clients=4)
    enc = fp.encode(torch.tensor([3.0, -7.0]), 2.0)
    assert fp.decode(enc).tolist() == pytest.approx([1.0, -1.0], abs=fp.sum_error())


@settings(max_examples=60, deadline=None)
@given(
    bits=st.integers(20, 62),
    n=st.integers(1, 12),
    data=st.data(),
)
def test_decoded_sum_is_within_the_bound(bits: int, n: int, data: st.DataObject) -> None:
    """Any cohort, including every client at ±B with the largest weight (the sum must not
    wrap): the decoded weighted sum and weight are within ε_sum and ε_w of the exact ones."""
    fp = FixedPoint(bits=bits, clip_range=1.5, max_weight=3.0, clients=n)
    vals = st.floats(-1.5, 1.5, allow_nan=False)
    xs = [torch.tensor(data.draw(st.lists(vals, min_size=4, max_size=4))) for _ in range(n)]
    ws = [data.draw(st.sampled_from([0.0, 0.5, 3.0]) | st.floats(0.0, 3.0)) for _ in range(n)]
    if data.draw(st.booleans()):  # the extreme: every coordinate at +B, every weight W
        xs = [torch.full((4,), 1.5) for _ in range(n)]
        ws = [3.0] * n
    total = torch.zeros(4, dtype=torch.int64)
    wsum = torch.zeros((), dtype=torch.int64)
    for x, w in zip(xs, ws, strict=True):
        total = (total + fp.encode(x, w)) % fp.modulus
        wsum = (wsum + fp.encode_weight(w)) % fp.modulus
    exact = sum(x.double() * w for x, w in zip(xs, ws, strict=True))
    assert (fp.decode(total) - exact).abs().max() <= fp.sum_error()
    assert abs(fp.decode_weight(wsum) - sum(ws)) <= fp.weight_error()


def test_encoding_refuses_what_would_wrap() -> None:
    with pytest.raises(ValueError, match=r"bits must be in 16\.\.62"):
        FixedPoint(bits=63, clip_range=1.0, max_weight=1.0, clients=2)
    with pytest.raises(ValueError, match=r"bits must be in 16\.\.62"):
        FixedPoint(bits=15, clip_range=1.0, max_weight=1.0, clients=2)
    with pytest.raises(ValueError, match="bits > log2"):  # n = 2^(16-3) = 8192 is one too many
        FixedPoint(bits=16, clip_range=1.0, max_weight=1.0, clients=8192)
    FixedPoint(bits=16, clip_range=1.0, max_weight=1.0, clients=8191)
    fp = FixedPoint(bits=32, clip_range=1.0, max_weight=2.0, clients=2)
    with pytest.raises(ValueError, match="max_weight"):
        fp.encode(torch.zeros(2), 2.5)
    with pytest.raises(ValueError, match="max_weight"):
        fp.encode_weight(-0.1)
    for bad in (0.0, -1.0, math.inf, math.nan, True):
        with pytest.raises(ValueError, match="clip_range"):
            FixedPoint(bits=32, clip_range=bad, max_weight=1.0, clients=2)


# -- Shamir --------------------------------------------------------------------------------------


def test_shamir_by_hand() -> None:
    """t = 2, secret 7, the coefficient a₁ = 5 (its 82 random bytes encode 5): f(x) = 7 + 5x,
    shares at x = 1, 2, 3 are 12, 17, 22. From (1, 12) and (3, 22), Lagrange at 0:
    12 · 3/(3 − 1) + 22 · 1/(1 − 3) = 18 − 11 = 7."""
    shares = shamir.split(7, 2, [1, 2, 3], (5).to_bytes(82, "big"))
    assert [(s.x, s.y) for s in shares] == [(1, 12), (2, 17), (3, 22)]
    assert shamir.reconstruct([shares[0], shares[2]], 2) == 7
    assert shamir.reconstruct([shares[2], shares[1]], 2) == 7


@settings(max_examples=25, deadline=None)
@given(
    secret=st.integers(0, 2**256 - 1),
    n=st.integers(1, 7),
    data=st.data(),
    randomness=st.binary(min_size=82 * 6, max_size=82 * 6),
)
def test_any_t_shares_reconstruct_and_t_minus_1_are_refused(
    secret: int, n: int, data: st.DataObject, randomness: bytes
) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 10**6), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, t, xs, randomness[: 82 * (t - 1)])
    for subset in itertools.combinations(shares, t):
        assert shamir.reconstruct(list(subset), t) == secret
    if t > 1:
        with pytest.raises(shamir.ShamirError, match="cannot reconstruct"):
            shamir.reconstruct(shares[: t - 1], t)


def test_t_minus_1_shares_fit_every_secret() -> None:
    """With t = 3, the two shares at x = 1, 2 of secret 7 are consistent with secret 8 too:
    the degree-2 polynomial through (0, 8), (1, y₁), (2, y₂) gives the same two shares, so
    t − 1 shares say nothing about the secret."""
    a = shamir.split(7, 3, [1, 2, 3], bytes(82) + (9).to_bytes(82, "big"))  # f = 7 + 9x²
    y1, y2 = a[0].y, a[1].y
    # g(x) = 8 + b x + c x² through (1, 16) and (2, 43): b + c = 8, 2b + 4c = 35 (mod p)
    inv2 = pow(2, -1, shamir.PRIME)
    c = (35 - 16) * inv2 % shamir.PRIME
    b = (8 - c) % shamir.PRIME
    g = [shamir.Share(x, (8 + b * x + c * x * x) % shamir.PRIME) for x in (1, 2)]
    assert (y1, y2) == (16, 43) == (g[0].y, g[1].y)


def test_shamir_refuses_hostile_shares() -> None:
    good = shamir.split(5, 2, [1, 2], (3).to_bytes(82, "big"))
    with pytest.raises(shamir.ShamirError, match="repeat"):
        shamir.reconstruct([good[0], good[0]], 2)
    with pytest.raises(shamir.ShamirError, match=r"outside 1\.\.p-1"):
        shamir.reconstruct([shamir.Share(0, 1), good[1]], 2)
    with pytest.raises(shamir.ShamirError, match=r"outside 1\.\.p-1"):
        shamir.reconstruct([shamir.Share(shamir.PRIME, 1), good[1]], 2)
    with pytest.raises(shamir.ShamirError, match="outside the field"):
        shamir.reconstruct([shamir.Share(1, shamir.PRIME), good[1]], 2)
    with pytest.raises(shamir.ShamirError, match="threshold"):
        shamir.split(5, 3, [1, 2], bytes(164))
    with pytest.raises(shamir.ShamirError, match="random bytes"):
        shamir.split(5, 2, [1, 2], bytes(10))
    with pytest.raises(shamir.ShamirError, match="not a field element"):
        shamir.split(shamir.PRIME, 1, [1], b"")


# -- crypto --------------------------------------------------------------------------------------


def test_mask_is_the_chacha20_keystream() -> None:
    """RFC 7539 A.1, test vector 1: ChaCha20 with the zero key, zero nonce and counter 0 begins
    76 b8 e0 ad a0 f1 3d 90 | 40 5d 6a e5 53 86 bd 28; read as little-endian 64-bit words and
    reduced mod 2^62."""
    words = expand_mask(bytes(32), 2, 62)
    expected = [
        int.from_bytes(bytes.fromhex("76b8e0ada0f13d90"), "little") % 2**62,
        int.from_bytes(bytes.fromhex("405d6ae55386bd28"), "little") % 2**62,
    ]
    assert words.tolist() == expected
    assert expand_mask(bytes(32), 2, 16).tolist() == [e % 2**16 for e in expected]


def test_masks_look_uniform() -> None:
    """200 000 words mod 2^16 in 16 bins of their top 4 bits: χ²(15) below 50 (p ≈ 1e-5)."""
    words = expand_mask(DerivedEntropy(bytes(32)).take("x", 32), 200_000, 16)
    counts = torch.bincount(words >> 12, minlength=16).double()
    chi2 = float(((counts - 12_500) ** 2 / 12_500).sum())
    assert chi2 < 50
    assert int(words.min()) >= 0 and int(words.max()) < 2**16


def test_agreement_is_symmetric_and_labelled() -> None:
    a, b = private_key(bytes(range(32))), private_key(bytes(range(1, 33)))
    k_ab = agree(a, public_bytes(b), b"l1")
    assert k_ab == agree(b, public_bytes(a), b"l1")
    assert k_ab != agree(a, public_bytes(b), b"l2")
    with pytest.raises(SecAggError, match="32 bytes"):
        agree(a, public_bytes(b)[:31], b"l1")
    with pytest.raises(SecAggError, match="not usable"):
        agree(a, bytes(32), b"l1")  # the zero point: a low-order key
    with pytest.raises(SecAggError, match="32 bytes"):
        private_key(bytes(31))


def test_share_encryption_authenticates() -> None:
    key = bytes(range(32))
    ct = encrypt(key, 4, b"hello", b"ad")
    assert decrypt(key, 4, ct, b"ad") == b"hello"
    for bad_key, sender, text, ad in (
        (key, 5, ct, b"ad"),  # another sender's nonce
        (key, 4, ct, b"xx"),  # another round or pair
        (key, 4, bytes([ct[0] ^ 1]) + ct[1:], b"ad"),  # altered
        (bytes(32), 4, ct, b"ad"),
    ):
        with pytest.raises(SecAggError, match="failed authentication"):
            decrypt(bad_key, sender, text, ad)


def test_derived_entropy_is_reproducible_and_labelled() -> None:
    e = DerivedEntropy(bytes(32))
    assert e.take("a", 40) == e.take("a", 40)
    assert e.take("a", 40) != e.take("b", 40)
    assert e.take("a", 40) != DerivedEntropy(bytes(31) + b"\x01").take("a", 40)


# -- graph and round -----------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(n=st.integers(3, 40), half=st.integers(1, 6), seed=st.binary(min_size=32, max_size=32))
def test_harary_graph_is_k_regular_and_symmetric(n: int, half: int, seed: bytes) -> None:
    k = 2 * half
    cohort = list(range(100, 100 + n))
    graph = neighbourhoods(cohort, k, seed)
    want = min(k, n - 1)
    for u, near in graph.items():
        assert u not in near and len(near) == want
        for v in near:
            assert u in graph[v]
    assert sorted(ring_order(cohort, seed)) == cohort


def test_all_pairs_and_refusals() -> None:
    g = neighbourhoods([3, 1, 2], None, bytes(32))
    assert g == {3: (1, 2), 1: (2, 3), 2: (1, 3)}
    with pytest.raises(ValueError, match="even"):
        neighbourhoods(list(range(10)), 3, bytes(32))
    with pytest.raises(ValueError, match="32 bytes"):
        ring_order([1, 2], bytes(5))
    # the order depends on the public seed (and only on it)
    orders = {tuple(ring_order(list(range(20)), bytes([i]) * 32)) for i in range(4)}
    assert len(orders) == 4
    assert ring_order(list(range(20)), bytes(32)) == ring_order(list(range(20)), bytes(32))


def test_threshold_by_hand() -> None:
    """t = ⌊f·h⌋ + 1, capped at h: h = 10, f = 0.5 → 6; h = 5 (k = 4 SecAgg+), f = 0.5 → 3;
    f = 0 → 1; f = 0.99, h = 3 → 3."""
    assert threshold_of(0.5, 10) == 6
    assert threshold_of(0.5, 5) == 3
    assert threshold_of(0.0, 7) == 1
    assert threshold_of(0.99, 3) == 3
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError, match="threshold"):
            threshold_of(bad, 3)


def test_round_setup_refuses_bad_cohorts() -> None:
    def setup(cohort: tuple[int, ...], **kw: object) -> RoundSetup:
        args: dict[str, object] = {
            "round": 0,
            "cohort": cohort,
            "degree": None,
            "threshold": 0.5,
            "bits": 32,
            "length": 3,
            "public_seed": bytes(32),
        }
        args.update(kw)
        return RoundSetup(**args)  # type: ignore[arg-type]

    s = setup((5, 2, 9))
    assert [s.index(u) for u in (2, 5, 9)] == [1, 2, 3]
    assert s.holders(5) == (2, 5, 9) and s.t == 2
    with pytest.raises(ValueError, match="twice"):
        setup((1, 1))
    with pytest.raises(ValueError, match=r"0\.\.2\^63-1"):
        setup((1, -2))
    with pytest.raises(ValueError, match="empty"):
        setup(())
    with pytest.raises(ValueError, match="public seed"):
        setup((1, 2), public_seed=b"x")
    assert setup((1, 2)).context != setup((1, 2), round=1).context
    assert setup((1, 2)).context != setup((1, 3)).context
