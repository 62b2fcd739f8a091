"""The messages of secure aggregation on the wire (Bonawitz et al. 2017, Fig. 4; the protocol's
own types are :mod:`fedkit.privacy.secagg.messages`).

Every step travels as a ``SECAGG`` task and its result (docs/protocol.md, "Secure
aggregation"): a safetensors payload with one 1-D ``uint8`` tensor ``body`` and the metadata
``secagg:step`` (``advertise``, ``share``, ``inbox`` or ``unmask``) and ``secagg:round``. The
body is a fixed binary layout, integers big-endian, ids 8 bytes:

==========  ========================================  ==========================================
step        coordinator → worker (task)               worker → coordinator (result)
==========  ========================================  ==========================================
advertise   public seed (32), then the cohort's ids   ``c_pk`` (32), ``s_pk`` (32)
share       per advertised neighbour: id, ``c_pk``,   per neighbour: receiver id, ciphertext
            ``s_pk`` (72 bytes)                       (8 + :data:`CIPHERTEXT_BYTES`)
inbox       per share addressed to it: sender id,     empty (an acknowledgement)
            ciphertext
unmask      the dropped ids, then the survivors'      per share: kind (0: ``s_sk``, 1: ``b``),
            (``secagg:dropped`` says how many)        owner id, index ``x`` (8), value ``y`` (66)
==========  ========================================  ==========================================

The advertise task's metadata also carry the round's public settings (``secagg:length``,
``secagg:bits``, ``secagg:degree``, ``secagg:threshold`` as an exact hex float), which a worker
compares with its own experiment file's, and ``secagg:committed``: the number of rounds whose
model is committed (a worker keeps a client's new state pending until its round is below it).
The sender of a result is the authenticated client the
result is for, never a field of the body. Every parser checks the metadata, the body's length
against the record size and the bounds given (at most one record per cohort member), and
raises :class:`~fedkit.privacy.secagg.errors.SecAggError`; the protocol's own checks (cohort
membership, neighbours, repeats, field range, authentication) follow in the sessions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from fedkit.net.codec import Buffer, decode, encode
from fedkit.net.errors import NetError
from fedkit.privacy.secagg.crypto import KEY_BYTES
from fedkit.privacy.secagg.errors import SecAggError
from fedkit.privacy.secagg.messages import (
    CIPHERTEXT_BYTES,
    AdvertiseKeys,
    EncryptedShare,
    OwnerShare,
    ShareKeys,
    UnmaskRequest,
    UnmaskResponse,
)
from fedkit.privacy.secagg.round import MAX_CLIENT_ID
from fedkit.privacy.secagg.shamir import FIELD_BYTES

__all__ = [
    "STEPS",
    "Message",
    "Setup",
    "advert_body",
    "body_of",
    "inbox_body",
    "message",
    "parse_advert",
    "parse_inbox",
    "parse_roster",
    "parse_setup",
    "parse_share_keys",
    "parse_unmask_request",
    "parse_unmask_response",
    "roster_body",
    "setup_message",
    "share_keys_body",
    "unmask_request_message",
    "unmask_response_body",
]

STEPS = ("advertise", "share", "inbox", "unmask")
_ID = 8
ROSTER_RECORD = _ID + 2 * KEY_BYTES
SHARE_RECORD = _ID + CIPHERTEXT_BYTES
RESPONSE_RECORD = 1 + _ID + _ID + FIELD_BYTES
_BODY = "body"
_STEP = "secagg:step"
_ROUND = "secagg:round"


@dataclasses.dataclass(frozen=True)
class Message:
    """A decoded step: its name, round, body and metadata."""

    step: str
    round: int
    body: bytes
    meta: Mapping[str, str]


def message(step: str, round_: int, body: bytes, extra: Mapping[str, str] | None = None) -> bytes:
    """A step's payload (safetensors: the ``body`` tensor and the metadata)."""
    if step not in STEPS:
        raise ValueError(f"unknown secure-aggregation step {step!r}")
    tensor = torch.frombuffer(bytearray(body), dtype=torch.uint8) if body else torch.zeros(0)
    meta = {_STEP: step, _ROUND: str(round_), **(extra or {})}
    return encode({_BODY: tensor.to(torch.uint8)}, meta)


def body_of(payload: Buffer, *, max_bytes: int) -> Message:
    """Decode a step's payload.

    Raises:
        SecAggError: not a safetensors payload of one ``uint8`` ``body``, larger than
            ``max_bytes``, or without a known step and an integer round.
    """
    try:
        decoded = decode(payload, max_bytes=max_bytes)
    except NetError as err:
        raise SecAggError(f"secure-aggregation payload: {err}") from None
    t = decoded.tensors
    if set(t) != {_BODY} or t[_BODY].dtype != torch.uint8 or t[_BODY].dim() != 1:
        raise SecAggError("a secure-aggregation payload holds one 1-D uint8 tensor 'body'")
    meta = decoded.metadata
    step, round_ = meta.get(_STEP, ""), meta.get(_ROUND, "")
    if step not in STEPS:
        raise SecAggError(f"unknown secure-aggregation step {step[:32]!r}")
    return Message(step, _int(round_, "round", 2**63 - 1), t[_BODY].numpy().tobytes(), meta)


def _int(raw: str, what: str, most: int) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 20) or int(raw) > most:
        raise SecAggError(f"{what} {raw[:24]!r} is not an integer in 0..{most}")
    return int(raw)


def _records(body: bytes, size: int, most: int, what: str) -> list[bytes]:
    if len(body) % size:
        raise SecAggError(f"{what}: {len(body)} bytes is not a whole number of {size}-byte records")
    if len(body) // size > most:
        raise SecAggError(f"{what}: {len(body) // size} records, at most {most}")
    return [body[i : i + size] for i in range(0, len(body), size)]


def _id(raw: bytes) -> int:
    v = int.from_bytes(raw, "big")
    if v > MAX_CLIENT_ID:
        raise SecAggError(f"client id {v} is outside 0..2^63-1")
    return v


# -- advertise ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Setup:
    """The round's public parameters as the coordinator sent them."""

    round: int
    cohort: tuple[int, ...]
    public_seed: bytes
    length: int
    bits: int
    degree: int | None
    threshold: float
    committed: int = 0


def setup_message(s: Setup) -> bytes:
    """The advertise task."""
    body = s.public_seed + b"".join(u.to_bytes(_ID, "big") for u in s.cohort)
    extra = {
        "secagg:length": str(s.length),
        "secagg:bits": str(s.bits),
        "secagg:degree": str(s.degree or 0),
        "secagg:threshold": float(s.threshold).hex(),
        "secagg:committed": str(s.committed),
    }
    return message("advertise", s.round, body, extra)


def parse_setup(msg: Message, *, max_cohort: int, max_length: int) -> Setup:
    """The advertise task's setup (sizes bounded; the sessions check the rest).

    Raises:
        SecAggError: another step, a malformed setting, a cohort larger than ``max_cohort``
            or a length above ``max_length``.
    """
    if msg.step != "advertise":
        raise SecAggError(f"expected the advertise step, got {msg.step!r}")
    if len(msg.body) < KEY_BYTES:
        raise SecAggError("the advertise task has no public seed")
    ids = _records(msg.body[KEY_BYTES:], _ID, max_cohort, "cohort")
    try:
        threshold = float.fromhex(msg.meta.get("secagg:threshold", "")[:64])
    except ValueError:
        raise SecAggError("secagg:threshold is not a hex float") from None
    degree = _int(msg.meta.get("secagg:degree", ""), "degree", max_cohort)
    return Setup(
        round=msg.round,
        cohort=tuple(_id(r) for r in ids),
        public_seed=msg.body[:KEY_BYTES],
        length=_int(msg.meta.get("secagg:length", ""), "length", max_length),
        bits=_int(msg.meta.get("secagg:bits", ""), "bits", 64),
        degree=degree or None,
        threshold=threshold,
        committed=_int(msg.meta.get("secagg:committed", ""), "committed rounds", msg.round),
    )


def advert_body(a: AdvertiseKeys) -> bytes:
    """A worker's advert."""
    return a.c_pk + a.s_pk


def parse_advert(sender: int, body: bytes) -> AdvertiseKeys:
    """``sender``'s advert (two 32-byte keys)."""
    if len(body) != 2 * KEY_BYTES:
        raise SecAggError(f"client {sender}: an advert is {2 * KEY_BYTES} bytes, got {len(body)}")
    return AdvertiseKeys(sender, body[:KEY_BYTES], body[KEY_BYTES:])


# -- share -------------------------------------------------------------------------------------


def roster_body(roster: Sequence[AdvertiseKeys]) -> bytes:
    """The share task: the adverts of a client's neighbours."""
    return b"".join(a.sender.to_bytes(_ID, "big") + a.c_pk + a.s_pk for a in roster)


def parse_roster(body: bytes, *, max_cohort: int) -> list[AdvertiseKeys]:
    """The share task's adverts."""
    out = []
    for r in _records(body, ROSTER_RECORD, max_cohort, "roster"):
        out.append(AdvertiseKeys(_id(r[:_ID]), r[_ID : _ID + KEY_BYTES], r[_ID + KEY_BYTES :]))
    return out


def share_keys_body(s: ShareKeys) -> bytes:
    """A worker's encrypted shares."""
    return b"".join(e.receiver.to_bytes(_ID, "big") + e.ciphertext for e in s.shares)


def parse_share_keys(sender: int, body: bytes, *, max_cohort: int) -> ShareKeys:
    """``sender``'s encrypted shares (one record per receiver)."""
    recs = _records(body, SHARE_RECORD, max_cohort, f"client {sender}: shares")
    return ShareKeys(sender, tuple(EncryptedShare(sender, _id(r[:_ID]), r[_ID:]) for r in recs))


# -- inbox -------------------------------------------------------------------------------------


def inbox_body(inbox: Sequence[EncryptedShare]) -> bytes:
    """The inbox task: the shares addressed to a client."""
    return b"".join(e.sender.to_bytes(_ID, "big") + e.ciphertext for e in inbox)


def parse_inbox(receiver: int, body: bytes, *, max_cohort: int) -> list[EncryptedShare]:
    """The inbox task's shares, addressed to ``receiver``."""
    recs = _records(body, SHARE_RECORD, max_cohort, "inbox")
    return [EncryptedShare(_id(r[:_ID]), receiver, r[_ID:]) for r in recs]


# -- unmask ------------------------------------------------------------------------------------


def unmask_request_message(round_: int, request: UnmaskRequest) -> bytes:
    """The unmask task."""
    ids = (*request.dropped, *request.survivors)
    body = b"".join(u.to_bytes(_ID, "big") for u in ids)
    return message("unmask", round_, body, {"secagg:dropped": str(len(request.dropped))})


def parse_unmask_request(msg: Message, *, max_cohort: int) -> UnmaskRequest:
    """The unmask task's request."""
    if msg.step != "unmask":
        raise SecAggError(f"expected the unmask step, got {msg.step!r}")
    ids = [_id(r) for r in _records(msg.body, _ID, max_cohort, "unmask request")]
    k = _int(msg.meta.get("secagg:dropped", ""), "dropped count", len(ids))
    return UnmaskRequest(dropped=tuple(ids[:k]), survivors=tuple(ids[k:]))


def unmask_response_body(r: UnmaskResponse) -> bytes:
    """A worker's shares for the unmasking."""
    out = []
    for kind, shares in ((0, r.key_shares), (1, r.seed_shares)):
        for s in shares:
            out.append(
                bytes([kind])
                + s.owner.to_bytes(_ID, "big")
                + s.x.to_bytes(_ID, "big")
                + s.y.to_bytes(FIELD_BYTES, "big")
            )
    return b"".join(out)


def parse_unmask_response(sender: int, body: bytes, *, max_cohort: int) -> UnmaskResponse:
    """``sender``'s unmask response (at most one share per cohort member)."""
    keys: list[OwnerShare] = []
    seeds: list[OwnerShare] = []
    for r in _records(body, RESPONSE_RECORD, max_cohort, f"client {sender}: unmask response"):
        if r[0] not in (0, 1):
            raise SecAggError(f"client {sender}: share kind {r[0]} is neither 0 nor 1")
        share = OwnerShare(
            owner=_id(r[1 : 1 + _ID]),
            x=int.from_bytes(r[1 + _ID : 1 + 2 * _ID], "big"),
            y=int.from_bytes(r[1 + 2 * _ID :], "big"),
        )
        (keys if r[0] == 0 else seeds).append(share)
    return UnmaskResponse(sender, tuple(keys), tuple(seeds))
