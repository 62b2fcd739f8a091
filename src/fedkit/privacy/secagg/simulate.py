"""Secure aggregation driven in-process: a whole round among simulated clients, for tests,
studies of dropout and the cost benchmark.

:func:`run_setup` plays rounds 0 and 1 (AdvertiseKeys, ShareKeys) between client sessions
and a server session; :func:`simulate_round` plays all four, with clients dropping before
their masked input or before unmasking, and returns the decoded weighted sum together with
everything the server received (to check that no input is in the clear) and each party's
bytes and CPU seconds.

Randomness: with ``seed=None`` every client's secrets come from the OS CSPRNG and the graph's
public seed from ``os.urandom``; with an integer seed they are derived from it
(:func:`round_root`, :class:`~fedkit.privacy.secagg.crypto.DerivedEntropy`): reproducible, and
secret only from whoever does not know the seed.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Literal, TypeVar

import torch
from torch import Tensor

from fedkit.privacy.secagg.client import ClientSession
from fedkit.privacy.secagg.crypto import KEY_BYTES, DerivedEntropy, Entropy, OsEntropy, hkdf
from fedkit.privacy.secagg.fixedpoint import FixedPoint
from fedkit.privacy.secagg.messages import (
    CIPHERTEXT_BYTES,
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedkit.privacy.secagg.round import RoundSetup, threshold_of
from fedkit.privacy.secagg.server import ServerSession
from fedkit.privacy.secagg.shamir import FIELD_BYTES

__all__ = [
    "Neighbours",
    "SecAggSettings",
    "ServerView",
    "SimulatedRound",
    "Transcript",
    "client_entropy",
    "encode_input",
    "public_seed",
    "round_root",
    "run_setup",
    "simulate_round",
]

Neighbours = Literal["all"] | int
T = TypeVar("T")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecAggSettings:
    """The settings of secure aggregation (shared by :func:`simulate_round` and the
    :class:`~fedkit.privacy.secagg.stage.SecureSum` stage).

    Attributes:
        bits: inputs are summed modulo ``2^bits`` (16..62).
        clip_range: ``B``: coordinates are clamped to ``[−B, B]`` before encoding.
        max_weight: ``W``: the largest client weight accepted (1.0 for uniform weights).
        threshold: ``t = ⌊threshold · h⌋ + 1`` of a client's ``h`` share holders must answer
            (in ``[0, 1)``; 0.5: a strict majority).
        neighbours: ``"all"`` (Bonawitz et al. 2017) or the SecAgg+ degree ``k`` (even, ≥ 2;
            Bell et al. 2020).
    """

    bits: int = 48
    clip_range: float = 1.0
    max_weight: float = 1.0
    threshold: float = 0.5
    neighbours: Neighbours = "all"

    def __post_init__(self) -> None:
        FixedPoint(
            bits=self.bits, clip_range=self.clip_range, max_weight=self.max_weight, clients=1
        )
        threshold_of(self.threshold, 1)
        k = self.neighbours
        if k != "all" and (isinstance(k, bool) or not isinstance(k, int) or k < 2 or k % 2):
            raise ValueError(f"neighbours must be 'all' or an even integer >= 2, got {k!r}")

    @property
    def degree(self) -> int | None:
        """``None`` for all pairs, else ``k``."""
        return None if self.neighbours == "all" else int(self.neighbours)

    def encoding(self, clients: int) -> FixedPoint:
        """The fixed-point encoding for a cohort of ``clients``."""
        return FixedPoint(
            bits=self.bits, clip_range=self.clip_range, max_weight=self.max_weight, clients=clients
        )

    def setup(self, round_: int, cohort: Sequence[int], length: int, seed: bytes) -> RoundSetup:
        """The round's public parameters."""
        return RoundSetup(
            round=round_,
            cohort=tuple(cohort),
            degree=self.degree,
            threshold=self.threshold,
            bits=self.bits,
            length=length,
            public_seed=seed,
        )


def round_root(seed: int) -> bytes:
    """The 32-byte root of a seeded simulation's secrets (anyone with ``seed`` has it)."""
    return hkdf(f"fedkit seed {seed}".encode(), b"fedkit/secagg/simulation-root")


def public_seed(root: bytes, round_: int) -> bytes:
    """The round's public randomness derived from ``root``."""
    return hkdf(root, f"fedkit/secagg/public/{round_}".encode())


def client_entropy(root: bytes, round_: int, client: int) -> DerivedEntropy:
    """A client's secrets in a derived (simulated) round."""
    return DerivedEntropy(hkdf(root, f"fedkit/secagg/client/{round_}/{client}".encode()))


@dataclasses.dataclass(frozen=True)
class Transcript:
    """Rounds 0 and 1 as the server saw them: adverts, shares, each client's roster and inbox."""

    adverts: tuple[AdvertiseKeys, ...]
    shares: tuple[ShareKeys, ...]
    rosters: Mapping[int, tuple[AdvertiseKeys, ...]]
    inboxes: Mapping[int, tuple[EncryptedShare, ...]]


def run_setup(
    setup: RoundSetup, sessions: Mapping[int, ClientSession], server: ServerSession
) -> Transcript:
    """Rounds 0 and 1 between ``sessions`` (every cohort member taking part) and ``server``."""
    adverts = tuple(sessions[u].advertise() for u in sorted(sessions))
    rosters = server.collect_adverts(adverts)
    shares = tuple(sessions[u].share_keys(rosters[u]) for u in sorted(sessions))
    inboxes = server.route_shares(shares)
    return Transcript(adverts, shares, rosters, inboxes)


@dataclasses.dataclass(frozen=True)
class ServerView:
    """Everything the server received from clients in a round."""

    adverts: tuple[AdvertiseKeys, ...]
    shares: tuple[ShareKeys, ...]
    masked: tuple[MaskedInput, ...]
    responses: tuple[UnmaskResponse, ...]


@dataclasses.dataclass(frozen=True)
class SimulatedRound:
    """The outcome of :func:`simulate_round`.

    Attributes:
        weighted_sum: ``Σ_{u ∈ included} w_u · clamp(x_u)`` decoded (float64).
        total_weight: ``Σ w_u`` decoded.
        included: the clients whose inputs are in the sum (those that sent a masked input).
        encoding: the fixed-point encoding (its error bounds).
        view: what the server received.
        client_seconds: each client's CPU seconds in the protocol (encoding included).
        server_seconds: the server's CPU seconds.
        bytes_up: bytes each client sent (payloads: ids, keys, ciphertexts, vectors, shares).
        bytes_down: bytes each client received.
    """

    weighted_sum: Tensor
    total_weight: float
    included: tuple[int, ...]
    encoding: FixedPoint
    view: ServerView
    client_seconds: Mapping[int, float]
    server_seconds: float
    bytes_up: Mapping[int, int]
    bytes_down: Mapping[int, int]


_ID = 8


def wire_bytes(msg: object) -> int:
    """The payload bytes of a message (ids 8 bytes, keys 32, field elements 66)."""
    if isinstance(msg, AdvertiseKeys):
        return _ID + 2 * KEY_BYTES
    if isinstance(msg, ShareKeys):
        return _ID + len(msg.shares) * (2 * _ID + CIPHERTEXT_BYTES)
    if isinstance(msg, EncryptedShare):
        return 2 * _ID + CIPHERTEXT_BYTES
    if isinstance(msg, MaskedInput):
        return _ID + 8 * msg.masked.numel()
    if isinstance(msg, UnmaskRequest):
        return _ID * (len(msg.dropped) + len(msg.survivors))
    if isinstance(msg, UnmaskResponse):
        return _ID + (len(msg.key_shares) + len(msg.seed_shares)) * (2 * _ID + FIELD_BYTES)
    raise TypeError(f"not a secure-aggregation message: {type(msg).__name__}")


class _Clock:
    """CPU seconds per party."""

    def __init__(self) -> None:
        self.seconds: dict[int, float] = {}

    def run(self, who: int, fn: Callable[[], T]) -> T:
        t0 = time.process_time()
        out = fn()
        self.seconds[who] = self.seconds.get(who, 0.0) + time.process_time() - t0
        return out


_SERVER = -1


def encode_input(fp: FixedPoint, x: Tensor, w: float) -> Tensor:
    """A client's input: its encoded update (flattened), then its encoded weight."""
    return torch.cat([fp.encode(x.reshape(-1), w), fp.encode_weight(w).view(1)])


def simulate_round(
    updates: Sequence[Tensor],
    weights: Sequence[float],
    *,
    settings: SecAggSettings,
    clients: Sequence[int] | None = None,
    round_: int = 0,
    dropped_before_masking: Collection[int] = (),
    dropped_after_masking: Collection[int] = (),
    seed: int | None = None,
) -> SimulatedRound:
    """One round of secure aggregation among in-process clients.

    Args:
        updates: each client's update (float tensors of one shape).
        weights: each client's weight (``0 ≤ w ≤ max_weight``).
        settings: the protocol's settings.
        clients: the clients' ids (default ``0 .. n − 1``).
        round_: the round index (binds keys and shares to it).
        dropped_before_masking: clients that share keys but send no masked input (their
            pairwise masks are removed through their reconstructed ``s_sk``).
        dropped_after_masking: clients whose masked input arrives but who do not answer the
            unmasking round (their inputs stay in the sum).
        seed: ``None``: secrets from the OS CSPRNG; an integer: derived from it.

    Raises:
        SecAggAbort: fewer than ``t`` clients left at some round.
    """
    ids = list(range(len(updates))) if clients is None else list(clients)
    if len(ids) != len(updates) or len(weights) != len(updates):
        raise ValueError("updates, weights and clients must have the same length")
    shape = updates[0].shape
    clock = _Clock()
    fp = settings.encoding(len(ids))
    encoded: dict[int, Tensor] = {}
    for u, x, w in zip(ids, updates, weights, strict=True):
        if x.shape != shape:
            raise ValueError("every update must have the same shape")
        encoded[u] = clock.run(
            u,
            functools.partial(encode_input, fp, x, w),
        )
    length = int(shape.numel()) + 1
    if seed is None:
        pub = os.urandom(KEY_BYTES)
        entropies: dict[int, Entropy] = {u: OsEntropy() for u in ids}
    else:
        root = round_root(seed)
        pub = public_seed(root, round_)
        entropies = {u: client_entropy(root, round_, u) for u in ids}
    setup = settings.setup(round_, ids, length, pub)
    sessions = {u: ClientSession(u, setup, entropies[u]) for u in ids}
    server = ServerSession(setup)
    up = dict.fromkeys(ids, 0)
    down = dict.fromkeys(ids, 0)

    adverts = tuple(clock.run(u, sessions[u].advertise) for u in ids)
    rosters = clock.run(_SERVER, lambda: server.collect_adverts(adverts))
    shares = tuple(clock.run(u, functools.partial(sessions[u].share_keys, rosters[u])) for u in ids)
    inboxes = clock.run(_SERVER, lambda: server.route_shares(shares))
    for u, a, s in zip(ids, adverts, shares, strict=True):
        up[u] += wire_bytes(a) + wire_bytes(s)
        down[u] += sum(wire_bytes(r) for r in rosters[u]) + len(inboxes[u]) * wire_bytes(
            EncryptedShare(0, 0, b"")
        )
    before, after = set(dropped_before_masking), set(dropped_after_masking)
    senders = [u for u in ids if u not in before]
    masked = tuple(
        clock.run(u, functools.partial(sessions[u].masked_input, inboxes[u], encoded[u]))
        for u in senders
    )
    request = clock.run(_SERVER, lambda: server.collect_masked(masked))
    for m in masked:
        up[m.sender] += wire_bytes(m)
    answering = [u for u in request.survivors if u not in after]
    responses = tuple(
        clock.run(u, functools.partial(sessions[u].unmask, request)) for u in answering
    )
    for u, r in zip(answering, responses, strict=True):
        down[u] += wire_bytes(request)
        up[u] += wire_bytes(r)
    total = clock.run(_SERVER, lambda: server.finish(responses))
    return SimulatedRound(
        weighted_sum=fp.decode(total[:-1]).reshape(shape),
        total_weight=fp.decode_weight(total[-1]),
        included=request.survivors,
        encoding=fp,
        view=ServerView(adverts, shares, masked, responses),
        client_seconds={u: clock.seconds.get(u, 0.0) for u in ids},
        server_seconds=clock.seconds.get(_SERVER, 0.0),
        bytes_up=up,
        bytes_down=down,
    )
