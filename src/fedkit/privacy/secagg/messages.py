"""The messages of the four rounds of secure aggregation (Bonawitz et al. 2017, Fig. 4), as
frozen dataclasses of integers, bytes and one int64 vector: nothing is pickled.

0. AdvertiseKeys: client → server :class:`AdvertiseKeys` (two X25519 public keys); server →
   client: the adverts of its neighbours.
1. ShareKeys: client → server :class:`ShareKeys` (one :class:`EncryptedShare` per neighbour);
   server → client: the encrypted shares addressed to it (its inbox).
2. MaskedInputCollection: client → server :class:`MaskedInput`; server → client
   :class:`UnmaskRequest` (who dropped, who survived).
3. Unmasking: client → server :class:`UnmaskResponse` (shares of the dropped clients' mask keys
   and of the survivors' self-mask seeds).

The plaintext inside an :class:`EncryptedShare` is :data:`SHARE_PLAINTEXT_BYTES` bytes:
sender and receiver (8 bytes each, big-endian), then the two shares' values (66 bytes each).
"""

from __future__ import annotations

import dataclasses

from torch import Tensor

from fedkit.privacy.secagg.crypto import TAG_BYTES
from fedkit.privacy.secagg.errors import SecAggError
from fedkit.privacy.secagg.shamir import FIELD_BYTES, PRIME

__all__ = [
    "CIPHERTEXT_BYTES",
    "SHARE_PLAINTEXT_BYTES",
    "AdvertiseKeys",
    "EncryptedShare",
    "MaskedInput",
    "OwnerShare",
    "ShareKeys",
    "SharePlaintext",
    "UnmaskRequest",
    "UnmaskResponse",
]

SHARE_PLAINTEXT_BYTES = 8 + 8 + FIELD_BYTES + FIELD_BYTES
CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + TAG_BYTES


@dataclasses.dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0: a client's public keys: ``c_pk`` (share encryption), ``s_pk`` (masks)."""

    sender: int
    c_pk: bytes
    s_pk: bytes


@dataclasses.dataclass(frozen=True)
class EncryptedShare:
    """Round 1: shares of ``sender``'s secrets for ``receiver``, authenticated-encrypted."""

    sender: int
    receiver: int
    ciphertext: bytes


@dataclasses.dataclass(frozen=True)
class ShareKeys:
    """Round 1: everything a client sends: one encrypted share per neighbour."""

    sender: int
    shares: tuple[EncryptedShare, ...]


@dataclasses.dataclass(frozen=True)
class MaskedInput:
    """Round 2: ``y_u = x_u + PRG(b_u) + Σ_v ±PRG(s_uv) mod 2^bits`` (int64, 1-D)."""

    sender: int
    masked: Tensor


@dataclasses.dataclass(frozen=True)
class UnmaskRequest:
    """Round 2 → 3: the clients that sent masked inputs (``survivors``) and the ones that
    shared keys but sent none (``dropped``)."""

    dropped: tuple[int, ...]
    survivors: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class OwnerShare:
    """A share of ``owner``'s secret at index ``x`` with value ``y``."""

    owner: int
    x: int
    y: int


@dataclasses.dataclass(frozen=True)
class UnmaskResponse:
    """Round 3: shares of each dropped neighbour's ``s_sk`` and each surviving neighbour's
    (and one's own) ``b``."""

    sender: int
    key_shares: tuple[OwnerShare, ...]
    seed_shares: tuple[OwnerShare, ...]


@dataclasses.dataclass(frozen=True)
class SharePlaintext:
    """What an :class:`EncryptedShare` holds: ``sender``'s shares for ``receiver``."""

    sender: int
    receiver: int
    key_y: int
    seed_y: int

    def to_bytes(self) -> bytes:
        """The fixed layout of :data:`SHARE_PLAINTEXT_BYTES` bytes."""
        return (
            self.sender.to_bytes(8, "big")
            + self.receiver.to_bytes(8, "big")
            + self.key_y.to_bytes(FIELD_BYTES, "big")
            + self.seed_y.to_bytes(FIELD_BYTES, "big")
        )

    @classmethod
    def from_bytes(cls, raw: bytes) -> SharePlaintext:
        """Parse and check the layout (values in the field).

        Raises:
            SecAggError: wrong length or a value outside the field.
        """
        if len(raw) != SHARE_PLAINTEXT_BYTES:
            raise SecAggError(f"share plaintext has {len(raw)} bytes, not {SHARE_PLAINTEXT_BYTES}")
        key_y = int.from_bytes(raw[16 : 16 + FIELD_BYTES], "big")
        seed_y = int.from_bytes(raw[16 + FIELD_BYTES :], "big")
        if key_y >= PRIME or seed_y >= PRIME:
            raise SecAggError("share value is outside the field")
        return cls(
            sender=int.from_bytes(raw[:8], "big"),
            receiver=int.from_bytes(raw[8:16], "big"),
            key_y=key_y,
            seed_y=seed_y,
        )
