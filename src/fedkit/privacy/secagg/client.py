"""The client's half of one round of secure aggregation, as a state machine (Bonawitz et al.
2017, Fig. 4, client side; SecAgg+ restricts every "all other clients" to the neighbours).

``advertise`` → ``share_keys`` → ``masked_input`` → ``unmask``, each once and in that order;
every message from the server is checked before use (:class:`SecAggError`). The client:

* draws two X25519 key pairs ``(c_sk, c_pk)``, ``(s_sk, s_pk)`` and a self-mask seed ``b``;
* Shamir-shares ``s_sk`` and ``b`` (t-of-h over its holders: neighbours and itself) and sends
  each neighbour its two shares encrypted under ``HKDF(X25519(c_sk, c_pk_v))``;
* sends ``y = x + PRG(b) + Σ_{v ∈ U2 ∩ N(u)} sign(u, v) · PRG(s_uv) mod 2^bits`` with
  ``s_uv = HKDF(X25519(s_sk_u, s_pk_v))`` and ``sign = +1`` when ``u < v``, else ``−1``, over
  the neighbours whose shares reached it (``U2``); pairwise masks cancel in the sum;
* in unmasking answers with ``s_sk`` shares of dropped neighbours and ``b`` shares of surviving
  ones — never both for the same client (a server that lists a client as both, or fewer than
  ``t`` survivors, is refused): that is what keeps every survivor's input hidden.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import torch
from torch import Tensor

from fedkit.privacy.secagg import shamir
from fedkit.privacy.secagg.crypto import (
    KEY_BYTES,
    Entropy,
    agree,
    decrypt,
    encrypt,
    expand_mask,
    private_key,
    public_bytes,
)
from fedkit.privacy.secagg.errors import SecAggError
from fedkit.privacy.secagg.messages import (
    CIPHERTEXT_BYTES,
    AdvertiseKeys,
    EncryptedShare,
    MaskedInput,
    OwnerShare,
    ShareKeys,
    SharePlaintext,
    UnmaskRequest,
    UnmaskResponse,
)
from fedkit.privacy.secagg.round import RoundSetup

__all__ = ["ClientSession", "mask_label", "pair_sign", "share_label"]


def share_label(setup: RoundSetup) -> bytes:
    """The HKDF label of share-encryption keys in this round."""
    return b"fedkit/secagg/share-key/" + setup.context


def mask_label(setup: RoundSetup) -> bytes:
    """The HKDF label of pairwise mask seeds in this round."""
    return b"fedkit/secagg/mask-seed/" + setup.context


def pair_sign(u: int, v: int) -> int:
    """``+1`` when ``u < v`` (u adds the pair's mask), ``−1`` otherwise (u subtracts it)."""
    return 1 if u < v else -1


def associated_data(setup: RoundSetup, sender: int, receiver: int) -> bytes:
    """The authenticated associated data of a share: round context, sender, receiver."""
    return setup.context + sender.to_bytes(8, "big") + receiver.to_bytes(8, "big")


class _Step(enum.Enum):
    NEW = 0
    ADVERTISED = 1
    SHARED = 2
    RECEIVED = 3
    MASKED = 4
    DONE = 5


def check_advert(setup: RoundSetup, msg: object) -> AdvertiseKeys:
    """``msg`` if it is an advert from a cohort member with two distinct 32-byte keys."""
    if not isinstance(msg, AdvertiseKeys):
        raise SecAggError(f"expected AdvertiseKeys, got {type(msg).__name__}")
    if not setup.member(msg.sender):
        raise SecAggError(f"advert from {msg.sender!r}, who is not in the cohort")
    for name, key in (("c_pk", msg.c_pk), ("s_pk", msg.s_pk)):
        if not isinstance(key, bytes) or len(key) != KEY_BYTES:
            raise SecAggError(f"client {msg.sender}: {name} must be {KEY_BYTES} bytes")
    if msg.c_pk == msg.s_pk:
        raise SecAggError(f"client {msg.sender}: c_pk and s_pk must differ")
    return msg


def check_ciphertext(setup: RoundSetup, share: object) -> EncryptedShare:
    """``share`` if it is an encrypted share between two cohort members of the right size."""
    if not isinstance(share, EncryptedShare):
        raise SecAggError(f"expected EncryptedShare, got {type(share).__name__}")
    if not setup.member(share.sender) or not setup.member(share.receiver):
        raise SecAggError(f"share {share.sender!r} → {share.receiver!r} outside the cohort")
    if not isinstance(share.ciphertext, bytes) or len(share.ciphertext) != CIPHERTEXT_BYTES:
        raise SecAggError(
            f"share {share.sender} → {share.receiver}: ciphertext must be {CIPHERTEXT_BYTES} bytes"
        )
    return share


class ClientSession:
    """One client's round (see the module docstring).

    Args:
        me: the client's id (a cohort member).
        setup: the round's public parameters.
        entropy: where its secrets come from (the OS CSPRNG, or derived in a seeded
            simulation).
    """

    def __init__(self, me: int, setup: RoundSetup, entropy: Entropy) -> None:
        if not setup.member(me):
            raise SecAggError(f"client {me!r} is not in the round's cohort")
        self.me = me
        self.setup = setup
        self._entropy = entropy
        self._step = _Step.NEW
        self._c_sk = private_key(entropy.take("c_sk", KEY_BYTES))
        self._s_sk_raw = entropy.take("s_sk", KEY_BYTES)
        self._s_sk = private_key(self._s_sk_raw)
        self._peers: dict[int, AdvertiseKeys] = {}
        self._seed = b""
        self._own: SharePlaintext | None = None
        self._inbox: dict[int, EncryptedShare] = {}

    def _expect(self, step: _Step, what: str) -> None:
        if self._step is not step:
            raise SecAggError(f"client {self.me}: {what} out of order (at {self._step.name})")

    def advertise(self) -> AdvertiseKeys:
        """Round 0: the public keys."""
        self._expect(_Step.NEW, "advertise")
        self._step = _Step.ADVERTISED
        return AdvertiseKeys(self.me, public_bytes(self._c_sk), public_bytes(self._s_sk))

    def share_keys(self, roster: Sequence[AdvertiseKeys]) -> ShareKeys:
        """Round 1: given the adverts of (a subset of) its neighbours, share ``s_sk`` and
        ``b`` among the holders present and encrypt each neighbour's shares.

        Raises:
            SecAggError: an advert from a non-neighbour, a repeated sender, a malformed key, or
                fewer than ``t`` holders present (Bonawitz: abort when ``|U1| < t``).
        """
        self._expect(_Step.ADVERTISED, "share_keys")
        allowed = set(self.setup.neighbours(self.me))
        peers: dict[int, AdvertiseKeys] = {}
        for msg in roster:
            check_advert(self.setup, msg)
            if msg.sender not in allowed:
                raise SecAggError(f"client {self.me}: advert of non-neighbour {msg.sender}")
            if msg.sender in peers:
                raise SecAggError(f"client {self.me}: two adverts from client {msg.sender}")
            peers[msg.sender] = msg
        self._peers = peers
        holders = sorted((*self._peers, self.me))
        t = self.setup.t
        if len(holders) < t:
            raise SecAggError(f"client {self.me}: {len(holders)} holders present, t = {t}")
        xs = [self.setup.index(h) for h in holders]
        self._seed = self._entropy.take("b", KEY_BYTES)
        degree = t - 1
        key_shares = shamir.split(
            int.from_bytes(self._s_sk_raw, "big"),
            t,
            xs,
            self._entropy.take("poly/s_sk", shamir.sample_bytes(degree)),
        )
        seed_shares = shamir.split(
            int.from_bytes(self._seed, "big"),
            t,
            xs,
            self._entropy.take("poly/b", shamir.sample_bytes(degree)),
        )
        label = share_label(self.setup)
        out = []
        for holder, ks, bs in zip(holders, key_shares, seed_shares, strict=True):
            plain = SharePlaintext(self.me, holder, ks.y, bs.y)
            if holder == self.me:
                self._own = plain
                continue
            key = agree(self._c_sk, self._peers[holder].c_pk, label)
            ad = associated_data(self.setup, self.me, holder)
            out.append(EncryptedShare(self.me, holder, encrypt(key, self.me, plain.to_bytes(), ad)))
        self._step = _Step.SHARED
        return ShareKeys(self.me, tuple(out))

    def receive(self, inbox: Sequence[EncryptedShare]) -> None:
        """Round 2, delivery: keep the encrypted shares addressed to it (checked now,
        decrypted in unmasking, as in the paper); their senders are its ``U2`` neighbours.

        Raises:
            SecAggError: a share not addressed to it, from a neighbour without an advert, a
                repeated sender, a malformed ciphertext, or fewer than ``t − 1`` senders.
        """
        self._expect(_Step.SHARED, "receive")
        got: dict[int, EncryptedShare] = {}
        for share in inbox:
            check_ciphertext(self.setup, share)
            if share.receiver != self.me:
                raise SecAggError(f"client {self.me}: share addressed to {share.receiver}")
            if share.sender not in self._peers:
                raise SecAggError(f"client {self.me}: share from {share.sender} without advert")
            if share.sender in got:
                raise SecAggError(f"client {self.me}: two shares from client {share.sender}")
            got[share.sender] = share
        if len(got) + 1 < self.setup.t:
            raise SecAggError(
                f"client {self.me}: shares from {len(got)} neighbours; t = {self.setup.t}"
            )
        self._inbox = got
        self._step = _Step.RECEIVED

    def mask(self, values: Tensor) -> MaskedInput:
        """Round 2: ``y = x + PRG(b) + Σ_{v ∈ U2 ∩ N(u)} sign(u, v) · PRG(s_uv) mod 2^bits``.

        Args:
            values: the encoded input, int64 in ``[0, 2^bits)``, of the round's length.

        Raises:
            SecAggError: ``values`` of the wrong dtype, length or range.
        """
        self._expect(_Step.RECEIVED, "mask")
        bits, length = self.setup.bits, self.setup.length
        if values.dtype != torch.int64 or values.shape != (length,):
            raise SecAggError(f"client {self.me}: input must be int64 of shape ({length},)")
        if length and (int(values.min()) < 0 or int(values.max()) >= 1 << bits):
            raise SecAggError(f"client {self.me}: input outside [0, 2^{bits})")
        low = (1 << bits) - 1
        y = values + expand_mask(self._seed, length, bits)  # < 2^63: no int64 overflow
        label = mask_label(self.setup)
        for v in sorted(self._inbox):
            mask = expand_mask(agree(self._s_sk, self._peers[v].s_pk, label), length, bits)
            if pair_sign(self.me, v) > 0:
                y.add_(mask)
            else:
                y.sub_(mask)
            y.bitwise_and_(low)
        y.bitwise_and_(low)
        self._step = _Step.MASKED
        return MaskedInput(self.me, y)

    def masked_input(self, inbox: Sequence[EncryptedShare], values: Tensor) -> MaskedInput:
        """Round 2: :meth:`receive` the inbox, then :meth:`mask` the input."""
        self.receive(inbox)
        return self.mask(values)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Round 3: shares of the dropped neighbours' ``s_sk`` and the survivors' ``b``.

        Raises:
            SecAggError: a client listed as both dropped and surviving, an unknown or repeated
                id, itself not among the survivors, fewer than ``t`` survivors among its own
                holders, or a share that fails authentication or names the wrong pair.
        """
        if self._step not in (_Step.RECEIVED, _Step.MASKED):
            raise SecAggError(f"client {self.me}: unmask out of order (at {self._step.name})")
        dropped, survivors = list(request.dropped), list(request.survivors)
        for ids in (dropped, survivors):
            for v in ids:
                if not self.setup.member(v):
                    raise SecAggError(f"client {self.me}: unmask request names unknown {v!r}")
            if len(set(ids)) != len(ids):
                raise SecAggError(f"client {self.me}: unmask request repeats a client")
        if set(dropped) & set(survivors):
            raise SecAggError(
                f"client {self.me}: unmask request lists {sorted(set(dropped) & set(survivors))} "
                "as both dropped and surviving (it would reveal their inputs)"
            )
        if self.me not in survivors:
            raise SecAggError(f"client {self.me}: not listed among the survivors")
        mine = set(self.setup.holders(self.me))
        if len(mine & set(survivors)) < self.setup.t:
            raise SecAggError(f"client {self.me}: fewer than t = {self.setup.t} survivors")
        label = share_label(self.setup)
        key_shares, seed_shares = [], []
        x = self.setup.index(self.me)
        for owner in sorted(set(dropped) | set(survivors)):
            if owner == self.me:
                assert self._own is not None
                plain = self._own
            elif owner in self._inbox:
                plain = self._open(self._inbox[owner], label)
            else:
                continue  # not a neighbour, or its shares never reached us
            if owner in dropped:
                key_shares.append(OwnerShare(owner, x, plain.key_y))
            else:
                seed_shares.append(OwnerShare(owner, x, plain.seed_y))
        self._step = _Step.DONE
        return UnmaskResponse(self.me, tuple(key_shares), tuple(seed_shares))

    def _open(self, share: EncryptedShare, label: bytes) -> SharePlaintext:
        key = agree(self._c_sk, self._peers[share.sender].c_pk, label)
        ad = associated_data(self.setup, share.sender, self.me)
        plain = SharePlaintext.from_bytes(decrypt(key, share.sender, share.ciphertext, ad))
        if plain.sender != share.sender or plain.receiver != self.me:
            raise SecAggError(f"client {self.me}: share from {share.sender} names another pair")
        return plain
