"""Secure aggregation as a stage of the aggregator chain: ``SecureSum`` (Bonawitz et al. 2017;
SecAgg+ of Bell et al. 2020 with ``neighbours = k``), simulated in-process.

``prepare`` (on the client, innermost, after clipping and any distributed-DP noise) encodes the
update and its weight in fixed point (:mod:`~fedkit.privacy.secagg.fixedpoint`) and masks them
(:class:`~fedkit.privacy.secagg.client.ClientSession`): what leaves the client is a
:class:`MaskedUpdate` of int64 words uniform modulo ``2^bits``. ``add``/``merge`` sum masked
updates modulo ``2^bits`` (one model's worth of memory, any order, any number of ranks), and
``result`` plays the unmasking round: the server
(:class:`~fedkit.privacy.secagg.server.ServerSession`) removes the masks of dropped and
surviving clients from Shamir shares, decodes, and hands the inner plain mean the weighted sum,
total weight and count (:meth:`SecureSum.open`). Below the threshold it raises
:class:`~fedkit.privacy.secagg.errors.SecAggAbort`, and the run loop does not commit the round.

**Simulation.** Clients run one at a time and never talk to each other, so the rounds before
masking (AdvertiseKeys, ShareKeys) are replayed from each client's derived secrets: every
party's entropy derives from one 32-byte root by HKDF on (round, client id) — from the run's
seed when ``randomness = "seeded"`` (reproducible; no secrecy against whoever knows the seed,
like seeded DP noise) or from ``os.urandom`` drawn when the stage is built when it is ``"os"``
(``"auto"``: ``"os"`` unless the simulation runner resolves it to ``"seeded"``). The
messages, checks, encryption, Shamir sharing and unmasking are the protocol's own; what the
simulation adds is that one process plays every client. ``unmask_dropout`` is the probability
that a client whose masked input arrived does not answer the unmasking round (drawn from the
server's seeded stream), for studies of dropout; clients the executor drops never send a masked
input, and their pairwise masks are removed through their reconstructed keys.

The round's cohort must reach every client and the server (``AggContext.cohort``, set by the
run loop); executors that do not carry it yet (gloo ranks) are refused with an error.

**Deployment.** :func:`with_wire` binds the stage to a :class:`SecAggWire`: then no round is
replayed. A worker's ``prepare`` masks with the :class:`ClientSession` that its own process
ran through rounds 0 and 1 over the network (OS-random secrets), and the coordinator's
``open`` hands the masked sum to the wire, which plays the unmasking round with the workers
(:mod:`fedkit.net.secagg_worker`, :mod:`fedkit.net.secagg_coordinator`).

**On the wire** the masked words are packed to ``⌈bits / 8⌉`` bytes each
(:mod:`~fedkit.privacy.secagg.packing`): a :class:`MaskedUpdate`'s leaves are ``uint8`` with a
trailing byte dimension, unpacked (and range-checked) by ``add``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any, ClassVar, Literal, Protocol

import torch
from torch import Tensor

from fedkit.aggregate import AggContext, Collective, MeanAcc, Stage, WeightedMean, gather_merge
from fedkit.params import tree_leaves, tree_map, tree_unflatten
from fedkit.privacy.secagg.client import ClientSession
from fedkit.privacy.secagg.crypto import KEY_BYTES, hkdf
from fedkit.privacy.secagg.errors import SecAggError
from fedkit.privacy.secagg.packing import pack, unpack, word_bytes
from fedkit.privacy.secagg.round import RoundSetup
from fedkit.privacy.secagg.server import ServerSession
from fedkit.privacy.secagg.simulate import (
    SecAggSettings,
    Transcript,
    client_entropy,
    encode_input,
    public_seed,
    round_root,
    run_setup,
)
from fedkit.rng import SERVER

__all__ = [
    "MaskedUpdate",
    "Randomness",
    "SecAggAcc",
    "SecAggWire",
    "SecureSum",
    "find_secure_sum",
    "with_wire",
]

Randomness = Literal["auto", "seeded", "os"]
RANDOMNESS: tuple[str, ...] = ("auto", "seeded", "os")
DROPOUT_STREAM = "secagg/unmask-dropout"


class SecAggWire(Protocol):
    """Where a deployed stage's protocol rounds run (see the module docstring)."""

    def session(self, round_: int, client: int) -> ClientSession:
        """Client side: ``client``'s session of round ``round_``, through rounds 0 and 1 and
        holding its inbox (:class:`SecAggError` when there is none)."""
        ...

    def unmask(self, round_: int, total: Tensor, senders: Sequence[int]) -> tuple[Tensor, int]:
        """Server side: the unmasked sum ``Σ x_u mod 2^bits`` of ``senders``' inputs whose
        masked sum is ``total``, and the round's cohort size (the encoding's ``n``).

        Raises:
            SecAggAbort: fewer than ``t`` clients answer.
        """
        ...


@dataclasses.dataclass(frozen=True)
class MaskedUpdate:
    """What a client sends: its masked update (the update's tree, each leaf's words packed to
    ``uint8`` with a trailing dimension of ``⌈bits / 8⌉`` bytes), its masked weight (one packed
    word), its id and the id of the key root it used (equal for every client of a run; 0 in
    deployment)."""

    masked: Any
    weight: Tensor
    sender: Tensor
    key_id: Tensor


@dataclasses.dataclass
class SecAggAcc:
    """The server's running sum of masked updates modulo ``2^bits``, and who sent them."""

    total: Any
    weight: Tensor
    senders: Tensor
    key_ids: Tensor


@functools.lru_cache(maxsize=4)
def _transcript(root: bytes, setup: RoundSetup) -> Transcript:
    """Rounds 0 and 1 of a simulated round (a pure function of its arguments, memoised so
    that the cohort's clients and the server replay them once)."""
    sessions = {
        u: ClientSession(u, setup, client_entropy(root, setup.round, u)) for u in setup.cohort
    }
    return run_setup(setup, sessions, ServerSession(setup))


def _replay(root: bytes, setup: RoundSetup, transcript: Transcript, u: int) -> ClientSession:
    """Client ``u``'s session replayed through rounds 0 and 1 of ``transcript``."""
    session = ClientSession(u, setup, client_entropy(root, setup.round, u))
    session.advertise()
    session.share_keys(transcript.rosters[u])
    return session


def _flat(tree: Any) -> Tensor:
    leaves = [t.reshape(-1) for _, t in tree_leaves(tree)]
    return torch.cat(leaves) if leaves else torch.zeros(0)


def _split(flat: Tensor, like: Any) -> Any:
    like = tree_map(lambda t: torch.empty(t.shape, dtype=flat.dtype), like)
    out, off = {}, 0
    for path, t in tree_leaves(like):
        out[path] = flat[off : off + t.numel()].reshape(t.shape)
        off += t.numel()
    return tree_unflatten(like, out)


@dataclasses.dataclass(frozen=True, kw_only=True)
class SecureSum(SecAggSettings, Stage):
    """Secure aggregation of the weighted sum (see the module docstring).

    Attributes:
        bits, clip_range, max_weight, threshold, neighbours: the protocol's settings
            (:class:`~fedkit.privacy.secagg.simulate.SecAggSettings`).
        randomness: ``"seeded"``, ``"os"`` or ``"auto"`` (see the module docstring).
        unmask_dropout: the probability that a client drops between its masked input and the
            unmasking round (simulation; in ``[0, 1]``).
        inner: the plain mean (:class:`~fedkit.aggregate.WeightedMean`), which receives the
            decoded sums; or a sum whose client-side ``prepare`` already applied the weight
            (class attribute ``weight_in_prepare``: the importance-corrected mean,
            :mod:`fedkit.samplers.importance`), whose prepared updates are then encoded with
            weight 1 (its per-client factor stays on the client; the masked weight sums to the
            count).
    """

    may_abort: ClassVar[bool] = True  # result may raise SecAggAbort: the run loop rolls back
    randomness: Randomness = "auto"
    unmask_dropout: float = 0.0
    _os_root: bytes = dataclasses.field(init=False, repr=False, compare=False, hash=False)
    _wire: SecAggWire | None = dataclasses.field(
        init=False, default=None, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        SecAggSettings.__post_init__(self)
        if self.randomness not in RANDOMNESS:
            raise ValueError(f"randomness must be one of {RANDOMNESS}, got {self.randomness!r}")
        p = self.unmask_dropout
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise ValueError(f"unmask_dropout must be in [0, 1], got {p!r}")
        if type(self.inner) is not WeightedMean and not _weight_in_prepare(self.inner):
            raise ValueError(
                "inner of the secagg stage must be the plain mean ('mean') or 'importance': "
                f"secure aggregation reveals only the sum; got {type(self.inner).__name__}"
            )
        object.__setattr__(self, "_os_root", os.urandom(KEY_BYTES))

    def _root(self, ctx: AggContext) -> bytes:
        return round_root(ctx.seed) if self.randomness == "seeded" else self._os_root

    def _key_id(self, root: bytes) -> int:
        return int.from_bytes(hkdf(root, b"fedkit/secagg/key-id")[:8], "big") >> 1

    def _setup(self, ctx: AggContext, length: int) -> RoundSetup:
        if not ctx.cohort:
            raise SecAggError(
                "secure aggregation needs the round's cohort (AggContext.cohort): this executor "
                "does not carry it yet; use the serial or vectorised simulator"
            )
        return self.setup(ctx.round, ctx.cohort, length, public_seed(self._root(ctx), ctx.round))

    def prepare(self, update: Any, weight: float, ctx: AggContext) -> MaskedUpdate:
        """Encode ``update`` and ``weight`` in fixed point and mask them (client side)."""
        update = self.inner.prepare(update, weight, ctx)
        if _weight_in_prepare(self.inner):  # Σ of the prepared updates as they are
            weight = 1.0
        for path, t in tree_leaves(update):
            if not t.is_floating_point():
                raise SecAggError(f"secure aggregation sums float tensors; {path!r} is {t.dtype}")
        like = tree_map(lambda t: torch.zeros(t.shape, dtype=torch.int64), update)
        if ctx.client_id == SERVER:  # the prepared template: shapes only
            zero = torch.zeros((), dtype=torch.int64)
            return self._packed(like, zero, SERVER, 0)
        flat = _flat(update)
        u = ctx.client_id
        if self._wire is not None:
            session = self._wire.session(ctx.round, u)
            setup = session.setup
            if setup.length != flat.numel() + 1 or setup.bits != self.bits:
                raise SecAggError(
                    f"client {u}: the round's setup is for {setup.length} words of "
                    f"{setup.bits} bits; this update needs {flat.numel() + 1} of {self.bits}"
                )
            values = encode_input(self.encoding(len(setup.cohort)), flat, weight)
            y = session.mask(values).masked
            return self._packed(_split(y[:-1], like), y[-1], u, 0)
        setup = self._setup(ctx, flat.numel() + 1)
        if u not in setup.cohort:
            raise SecAggError(f"client {u} is not in the round's cohort")
        values = encode_input(self.encoding(len(setup.cohort)), flat, weight)
        root = self._root(ctx)
        transcript = _transcript(root, setup)
        session = _replay(root, setup, transcript, u)
        y = session.masked_input(transcript.inboxes[u], values).masked
        return self._packed(_split(y[:-1], like), y[-1], u, self._key_id(root))

    def _packed(self, words: Any, weight: Tensor, sender: int, key_id: int) -> MaskedUpdate:
        return MaskedUpdate(
            masked=tree_map(lambda t: pack(t, self.bits), words),
            weight=pack(weight.clone(), self.bits),
            sender=torch.tensor([sender]),
            key_id=torch.tensor([key_id]),
        )

    def zero(self, like: MaskedUpdate) -> SecAggAcc:
        """An empty sum shaped like ``like``."""
        nb = word_bytes(self.bits)
        for _, t in tree_leaves(like.masked):
            if t.dim() < 1 or t.shape[-1] != nb:
                raise SecAggError(f"packed words must have a last dimension of {nb} bytes")
        return SecAggAcc(
            total=tree_map(lambda t: torch.zeros(t.shape[:-1], dtype=torch.int64), like.masked),
            weight=torch.zeros((), dtype=torch.int64),
            senders=torch.zeros(0, dtype=torch.int64),
            key_ids=torch.zeros(0, dtype=torch.int64),
        )

    def add(self, acc: SecAggAcc, update: MaskedUpdate, weight: float) -> SecAggAcc:
        """Add a masked update modulo ``2^bits`` (the plain ``weight`` is not used: the masked
        weight inside ``update`` is what counts).

        Raises:
            SecAggError: a packed word outside ``[0, 2^bits)`` or of the wrong byte width.
        """
        low, bits = (1 << self.bits) - 1, self.bits
        words = tree_map(lambda t: unpack(t, bits), update.masked)
        masked_weight = unpack(update.weight, bits)
        tree_map(lambda s, u: s.add_(u).bitwise_and_(low), acc.total, words)
        acc.weight.add_(masked_weight).bitwise_and_(low)
        acc.senders = torch.cat([acc.senders, update.sender])
        acc.key_ids = torch.cat([acc.key_ids, update.key_id])
        return acc

    def merge(self, a: SecAggAcc, b: SecAggAcc) -> SecAggAcc:
        """The sum of two partial sums modulo ``2^bits`` (inputs untouched)."""
        low = (1 << self.bits) - 1
        return SecAggAcc(
            total=tree_map(lambda x, y: (x + y) & low, a.total, b.total),
            weight=(a.weight + b.weight) & low,
            senders=torch.cat([a.senders, b.senders]),
            key_ids=torch.cat([a.key_ids, b.key_ids]),
        )

    def reduce(self, acc: SecAggAcc, comm: Collective) -> SecAggAcc:
        """Gather every rank's partial sum and merge them."""
        return gather_merge(self, acc, comm)

    def open(self, acc: SecAggAcc, ctx: AggContext) -> MeanAcc[Any]:
        """The unmasking round (server side): the decoded weighted sum, total weight and count
        of the clients whose masked inputs are in ``acc``.

        Raises:
            SecAggAbort: fewer than ``t`` clients answer (or sent masked inputs).
            SecAggError: a sender counted twice or outside the cohort, or masked updates made
                under different key roots (an ``"os"`` stage rebuilt in another process).
        """
        senders = [int(s) for s in acc.senders.tolist()]
        if self._wire is not None:
            flat = torch.cat([_flat(acc.total), acc.weight.view(1)])
            total, n = self._wire.unmask(ctx.round, flat, senders)
            return self._decoded(total, n, acc, len(senders))
        root = self._root(ctx)
        if any(int(k) != self._key_id(root) for k in acc.key_ids.tolist()):
            raise SecAggError(
                "masked updates were made under another key root (a secagg stage with "
                "randomness 'os' rebuilt in another process): use randomness = 'seeded' there"
            )
        flat = torch.cat([_flat(acc.total), acc.weight.view(1)])
        setup = self._setup(ctx, flat.numel())
        transcript = _transcript(root, setup)
        server = ServerSession(setup)
        server.collect_adverts(transcript.adverts)
        server.route_shares(transcript.shares)
        request = server.collect_sum(flat, senders)
        answering = list(request.survivors)
        if self.unmask_dropout > 0.0 and answering:
            draw = torch.rand(len(answering), generator=ctx.stream(DROPOUT_STREAM))
            answering = [
                u for u, d in zip(answering, draw.tolist(), strict=True) if d >= self.unmask_dropout
            ]
        responses = []
        for u in answering:
            session = _replay(root, setup, transcript, u)
            session.receive(transcript.inboxes[u])
            responses.append(session.unmask(request))
        total = server.finish(responses)
        return self._decoded(total, len(setup.cohort), acc, len(senders))

    def _decoded(self, total: Tensor, cohort: int, acc: SecAggAcc, count: int) -> MeanAcc[Any]:
        fp = self.encoding(cohort)
        return MeanAcc(
            total=_split(fp.decode(total[:-1]), acc.total),
            weight=torch.tensor(fp.decode_weight(total[-1]), dtype=torch.float64),
            count=torch.tensor(count, dtype=torch.int64),
        )

    def result(self, acc: SecAggAcc, ctx: AggContext) -> Any:
        """The inner mean of the unmasked sums (see :meth:`open`)."""
        return self.inner.result(self.open(acc, ctx), ctx)


def _weight_in_prepare(inner: Any) -> bool:
    """Whether ``inner``'s ``prepare`` applies the client's weight itself (its ``add`` sums the
    prepared updates as they are), so the secure sum must not weight them again."""
    return bool(getattr(type(inner), "weight_in_prepare", False))


def find_secure_sum(aggregator: Any) -> SecureSum | None:
    """The chain's secure-aggregation stage (following ``inner``), or ``None``."""
    stage = aggregator
    while stage is not None:
        if isinstance(stage, SecureSum):
            return stage
        stage = getattr(stage, "inner", None) if dataclasses.is_dataclass(stage) else None
    return None


def with_wire(aggregator: Any, wire: SecAggWire) -> Any:
    """``aggregator`` with its secure-aggregation stage bound to ``wire`` (the other stages
    rebuilt around it, unchanged); ``aggregator`` itself when it has none."""
    if isinstance(aggregator, SecureSum):
        bound = dataclasses.replace(aggregator)
        object.__setattr__(bound, "_wire", wire)
        return bound
    if (
        dataclasses.is_dataclass(aggregator)
        and not isinstance(aggregator, type)
        and hasattr(aggregator, "inner")
    ):
        inner = with_wire(aggregator.inner, wire)
        return (
            aggregator
            if inner is aggregator.inner
            else dataclasses.replace(aggregator, inner=inner)
        )
    return aggregator
