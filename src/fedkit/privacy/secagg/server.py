"""The server's half of one round of secure aggregation (Bonawitz et al. 2017, Fig. 4, server
side; SecAgg+ of Bell et al. 2020 with neighbourhoods).

``collect_adverts`` → ``route_shares`` → ``collect_masked`` → ``finish``. The server relays
public keys and encrypted shares it cannot read, sums the masked inputs modulo ``2^bits`` and,
in the unmasking round, reconstructs from at least ``t`` shares each (Shamir):

* the mask key ``s_sk_v`` of every client ``v`` that shared keys but sent no masked input, and
  removes ``sign(u, v) · PRG(s_uv)`` for each of its neighbours ``u`` that did (the pairwise
  masks that no longer cancel); each reconstructed key is checked against ``v``'s advertised
  ``s_pk``;
* the self-mask seed ``b_u`` of every client that sent a masked input, and removes
  ``PRG(b_u)``.

The result is ``Σ_{u ∈ U3} x_u mod 2^bits``. Whenever fewer than ``t`` clients remain at a round
(or fewer than ``t`` holders of a secret the sum needs answered), :class:`SecAggAbort` is raised
and nothing is returned. Every message is checked: senders in the cohort and at the right
stage, no repeats, key and ciphertext sizes, vector dtype, length and range, share indices
equal to the responder's index and values in the field (:class:`SecAggError`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fedkit.privacy.secagg import shamir
from fedkit.privacy.secagg.client import (
    check_advert,
    check_ciphertext,
    mask_label,
    pair_sign,
)
from fedkit.privacy.secagg.crypto import KEY_BYTES, agree, expand_mask, private_key, public_bytes
from fedkit.privacy.secagg.errors import AbortReason, SecAggAbort, SecAggError
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

__all__ = ["ServerSession"]


def _unique_senders(msgs: Sequence[object], kind: type, stage: str) -> None:
    seen: set[int] = set()
    for m in msgs:
        if not isinstance(m, kind):
            raise SecAggError(f"{stage}: expected {kind.__name__}, got {type(m).__name__}")
        sender = m.sender  # type: ignore[attr-defined]
        if isinstance(sender, bool) or not isinstance(sender, int):
            raise SecAggError(f"{stage}: sender {sender!r} is not a client id")
        if sender in seen:
            raise SecAggError(f"{stage}: two messages from client {sender}")
        seen.add(sender)


class ServerSession:
    """The server's round (see the module docstring)."""

    def __init__(self, setup: RoundSetup) -> None:
        self.setup = setup
        self._adverts: dict[int, AdvertiseKeys] = {}
        self._shared: set[int] = set()
        self._masked: set[int] = set()
        self._dropped: tuple[int, ...] = ()
        self._total: Tensor | None = None
        self._step = 0

    def _expect(self, step: int, what: str) -> None:
        if self._step != step:
            raise SecAggError(f"server: {what} out of order")
        self._step += 1

    def _enough(self, alive: int, reason: AbortReason) -> None:
        if alive < self.setup.t:
            raise SecAggAbort(reason, f"{alive} clients left, t = {self.setup.t}")

    def collect_adverts(
        self, msgs: Sequence[AdvertiseKeys]
    ) -> dict[int, tuple[AdvertiseKeys, ...]]:
        """Round 0: check the adverts; return each advertiser's roster (its neighbours' adverts).

        Raises:
            SecAggError: a malformed advert, a sender outside the cohort, a repeat.
            SecAggAbort: fewer than ``t`` clients advertised.
        """
        self._expect(0, "collect_adverts")
        _unique_senders(msgs, AdvertiseKeys, "advertise")
        for m in msgs:
            self._adverts[check_advert(self.setup, m).sender] = m
        self._enough(len(self._adverts), AbortReason.TOO_FEW_ADVERTISED)
        return {
            u: tuple(self._adverts[v] for v in self.setup.neighbours(u) if v in self._adverts)
            for u in self._adverts
        }

    def route_shares(self, msgs: Sequence[ShareKeys]) -> dict[int, tuple[EncryptedShare, ...]]:
        """Round 1: check each client's encrypted shares (one per advertised neighbour) and
        return every client's inbox (the shares addressed to it).

        Raises:
            SecAggError: a sender that did not advertise, a repeat, a share for a non-neighbour
                or a client that did not advertise, a wrong sender field or size, a missing
                neighbour.
            SecAggAbort: fewer than ``t`` clients shared keys.
        """
        self._expect(1, "route_shares")
        _unique_senders(msgs, ShareKeys, "share keys")
        inbox: dict[int, list[EncryptedShare]] = {}
        for m in msgs:
            self.check_share_keys(m)
            self._shared.add(m.sender)
            for share in m.shares:
                inbox.setdefault(share.receiver, []).append(share)
        self._enough(len(self._shared), AbortReason.TOO_FEW_SHARED)
        return {
            u: tuple(s for s in inbox.get(u, ()) if s.sender in self._shared) for u in self._shared
        }

    def check_share_keys(self, m: ShareKeys) -> None:
        """One client's round-1 message on its own (after :meth:`collect_adverts`): a
        transport checks each arriving message with it and drops the sender of a bad one
        instead of failing the round.

        Raises:
            SecAggError: a sender that did not advertise, a share signed by another client,
                for a non-neighbour or a client that did not advertise, of the wrong size, a
                missing or repeated neighbour.
        """
        if m.sender not in self._adverts:
            raise SecAggError(f"share keys from {m.sender!r}, who did not advertise")
        expected = {v for v in self.setup.neighbours(m.sender) if v in self._adverts}
        got = []
        for share in m.shares:
            check_ciphertext(self.setup, share)
            if share.sender != m.sender:
                raise SecAggError(f"client {m.sender} sent a share signed as {share.sender}")
            got.append(share.receiver)
        if sorted(got) != sorted(expected):
            raise SecAggError(f"client {m.sender} must send one share to each advertised neighbour")

    def check_response(self, r: UnmaskResponse) -> None:
        """One unmask response on its own (after :meth:`collect_sum`), as
        :meth:`check_share_keys` is for round 1.

        Raises:
            SecAggError: see :meth:`finish`.
        """
        if self._step != 3:
            raise SecAggError("server: check_response before collect_masked")
        _unique_senders([r], UnmaskResponse, "unmask")
        self._collect([r])

    def collect_masked(self, msgs: Sequence[MaskedInput]) -> UnmaskRequest:
        """Round 2: check and sum the masked inputs modulo ``2^bits``; return the request of
        the unmasking round.

        Raises:
            SecAggError: a sender that did not share keys, a repeat, a vector of the wrong
                dtype, shape or range.
            SecAggAbort: fewer than ``t`` masked inputs.
        """
        _unique_senders(msgs, MaskedInput, "masked input")
        total = torch.zeros(self.setup.length, dtype=torch.int64)
        low = (1 << self.setup.bits) - 1
        for m in msgs:
            self._check_vector(m.masked, f"client {m.sender!r}: masked input")
            total.add_(m.masked).bitwise_and_(low)
        return self.collect_sum(total, [m.sender for m in msgs])

    def _check_vector(self, y: object, what: str) -> None:
        bits, length = self.setup.bits, self.setup.length
        if not isinstance(y, Tensor) or y.dtype != torch.int64 or y.shape != (length,):
            raise SecAggError(f"{what} must be an int64 tensor of shape ({length},)")
        if length and (int(y.min()) < 0 or int(y.max()) >= 1 << bits):
            raise SecAggError(f"{what} has values outside [0, 2^{bits})")

    def collect_sum(self, total: Tensor, senders: Sequence[int]) -> UnmaskRequest:
        """Round 2 when the masked inputs were already added up (the aggregator's ``add`` and
        ``merge`` fold them as they arrive): their sum mod ``2^bits`` and who sent them.

        Raises:
            SecAggError: a sender that did not share keys, a repeat, a malformed total.
            SecAggAbort: fewer than ``t`` senders.
        """
        self._expect(2, "collect_masked")
        if len(set(senders)) != len(senders):
            raise SecAggError("masked input: a client is counted twice")
        for u in senders:
            if u not in self._shared:
                raise SecAggError(f"masked input from {u!r}, who did not share keys")
        self._check_vector(total, "the sum of masked inputs")
        self._masked = set(senders)
        self._enough(len(self._masked), AbortReason.TOO_FEW_MASKED)
        self._total = total.clone()
        self._dropped = tuple(sorted(self._shared - self._masked))
        return UnmaskRequest(dropped=self._dropped, survivors=tuple(sorted(self._masked)))

    def _collect(
        self, responses: Sequence[UnmaskResponse]
    ) -> tuple[dict[int, list[shamir.Share]], dict[int, list[shamir.Share]]]:
        keys: dict[int, list[shamir.Share]] = {}
        seeds: dict[int, list[shamir.Share]] = {}
        for r in responses:
            if r.sender not in self._masked:
                raise SecAggError(f"unmask response from {r.sender!r}, not a survivor")
            x = self.setup.index(r.sender)
            for shares, owners, out in (
                (r.key_shares, set(self._dropped), keys),
                (r.seed_shares, self._masked, seeds),
            ):
                seen: set[int] = set()
                for s in shares:
                    if not isinstance(s, OwnerShare) or s.owner not in owners:
                        raise SecAggError(f"client {r.sender}: a share for an unexpected owner")
                    if s.owner in seen:
                        raise SecAggError(f"client {r.sender}: two shares of {s.owner}")
                    if r.sender not in self.setup.holders(s.owner):
                        raise SecAggError(f"client {r.sender} holds no share of {s.owner}")
                    if s.x != x:
                        raise SecAggError(f"client {r.sender}: share index {s.x}, expected {x}")
                    seen.add(s.owner)
                    out.setdefault(s.owner, []).append(shamir.check_share(shamir.Share(s.x, s.y)))
        return keys, seeds

    def _secret(self, shares: dict[int, list[shamir.Share]], owner: int, what: str) -> bytes:
        got = shares.get(owner, [])
        t = self.setup.t
        if len(got) < t:
            raise SecAggAbort(
                AbortReason.TOO_FEW_SURVIVORS,
                f"{len(got)} shares of client {owner}'s {what} answered, t = {t}",
            )
        value = shamir.reconstruct(got, t)
        if value >= 1 << (8 * KEY_BYTES):
            raise SecAggError(f"reconstructed {what} of client {owner} is not {KEY_BYTES} bytes")
        return value.to_bytes(KEY_BYTES, "big")

    def finish(self, responses: Sequence[UnmaskResponse]) -> Tensor:
        """Round 3: the sum of the survivors' inputs mod ``2^bits`` (int64).

        Raises:
            SecAggError: a response from a non-survivor, a repeat, a share for the wrong owner
                or at the wrong index, a value outside the field, a reconstructed mask key that
                does not match the advertised public key.
            SecAggAbort: fewer than ``t`` responses, or fewer than ``t`` shares of a secret the
                sum needs.
        """
        self._expect(3, "finish")
        _unique_senders(responses, UnmaskResponse, "unmask")
        self._enough(len(responses), AbortReason.TOO_FEW_SURVIVORS)
        keys, seeds = self._collect(responses)
        assert self._total is not None
        bits, length = self.setup.bits, self.setup.length
        low = (1 << bits) - 1
        total = self._total.clone()
        for u in sorted(self._masked):
            total.sub_(expand_mask(self._secret(seeds, u, "self-mask seed"), length, bits))
            total.bitwise_and_(low)
        label = mask_label(self.setup)
        for v in self._dropped:
            partners = [u for u in self.setup.neighbours(v) if u in self._masked]
            if not partners:
                continue
            s_sk = private_key(self._secret(keys, v, "mask key"))
            if public_bytes(s_sk) != self._adverts[v].s_pk:
                raise SecAggError(f"reconstructed mask key of client {v} does not match its s_pk")
            for u in partners:
                mask = expand_mask(agree(s_sk, self._adverts[u].s_pk, label), length, bits)
                if pair_sign(u, v) > 0:  # u added the mask: take it off
                    total.sub_(mask)
                else:
                    total.add_(mask)
                total.bitwise_and_(low)
        return total
