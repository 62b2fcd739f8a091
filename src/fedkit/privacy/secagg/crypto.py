"""The primitives of secure aggregation, all from ``cryptography``.

* **Key agreement**: X25519 (RFC 7748) key pairs; the shared secret of a pair is fed to
  HKDF-SHA256 (RFC 5869) with a label naming its use and the round, so the mask seed and the
  share-encryption key of one pair are independent keys (Bonawitz et al. 2017, §4: ``KA.agree``).
* **Mask expansion** (``PRG`` in the paper): the ChaCha20 keystream under a 32-byte seed, read
  as little-endian 64-bit words and reduced modulo ``2^bits``. Each word is uniform on
  ``[0, 2^64)``, so its low ``bits`` bits are uniform on ``[0, 2^bits)``. No torch, numpy or
  ``random`` generator is involved.
* **Share encryption** (``AE`` in the paper): ChaCha20-Poly1305 under a key derived from the
  pair's agreement, with the round context, sender and receiver as associated data.
* **Entropy**: where a party's secrets come from: the OS CSPRNG (:class:`OsEntropy`), or, for a
  seeded simulation only, a ChaCha20 keystream under an HKDF-derived key
  (:class:`DerivedEntropy`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Protocol

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from torch import Tensor

from fedkit.privacy.secagg.errors import SecAggError

__all__ = [
    "KEY_BYTES",
    "TAG_BYTES",
    "DerivedEntropy",
    "Entropy",
    "OsEntropy",
    "agree",
    "decrypt",
    "encrypt",
    "expand_mask",
    "hkdf",
    "private_key",
    "public_bytes",
]

KEY_BYTES = 32
"""Bytes of an X25519 key, a mask seed and a symmetric key."""
TAG_BYTES = 16
"""Bytes of a Poly1305 authentication tag."""
_ZERO_NONCE16 = bytes(16)  # ChaCha20's 16-byte nonce (counter ‖ nonce); each seed is used once


def hkdf(secret: bytes, label: bytes, length: int = KEY_BYTES) -> bytes:
    """HKDF-SHA256 of ``secret`` with ``label`` as its info (no salt), ``length`` bytes."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(secret)


def private_key(raw: bytes) -> X25519PrivateKey:
    """An X25519 private key from 32 bytes (clamped by X25519 itself)."""
    if len(raw) != KEY_BYTES:
        raise SecAggError(f"an X25519 private key has {KEY_BYTES} bytes, got {len(raw)}")
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The raw 32-byte public key of ``key``."""
    return key.public_key().public_bytes_raw()


def agree(key: X25519PrivateKey, peer_public: bytes, label: bytes) -> bytes:
    """``HKDF(X25519(key, peer_public), label)``: a 32-byte key both ends of the pair derive.

    Raises:
        SecAggError: the peer's key is not 32 bytes or is a low-order point (the agreement
            would be all zeros).
    """
    if not isinstance(peer_public, bytes) or len(peer_public) != KEY_BYTES:
        got = len(peer_public) if isinstance(peer_public, bytes) else type(peer_public).__name__
        raise SecAggError(f"an X25519 public key has {KEY_BYTES} bytes, got {got}")
    try:
        shared = key.exchange(X25519PublicKey.from_public_bytes(peer_public))
    except ValueError as e:  # all-zero shared secret: a low-order point
        raise SecAggError(f"peer public key is not usable for agreement: {e}") from e
    return hkdf(shared, label)


def expand_mask(seed: bytes, length: int, bits: int) -> Tensor:
    """``PRG(seed)``: ``length`` int64 words uniform on ``[0, 2^bits)`` from ChaCha20's
    keystream under ``seed`` (see module docstring)."""
    if len(seed) != KEY_BYTES:
        raise SecAggError(f"a mask seed has {KEY_BYTES} bytes, got {len(seed)}")
    enc = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE16), mode=None).encryptor()
    stream = bytearray(enc.update(bytes(8 * length)))
    words = (
        torch.frombuffer(stream, dtype=torch.int64) if length else torch.zeros(0, dtype=torch.int64)
    )
    return words & ((1 << bits) - 1)


def _nonce(sender: int) -> bytes:
    # one message per direction per pair per round under a key fresh each round
    return bytes(4) + sender.to_bytes(8, "big")


def encrypt(key: bytes, sender: int, plaintext: bytes, associated: bytes) -> bytes:
    """ChaCha20-Poly1305 of ``plaintext`` from ``sender`` under ``key`` (tag appended)."""
    return ChaCha20Poly1305(key).encrypt(_nonce(sender), plaintext, associated)


def decrypt(key: bytes, sender: int, ciphertext: bytes, associated: bytes) -> bytes:
    """The plaintext of :func:`encrypt`.

    Raises:
        SecAggError: the tag does not verify (a forged, altered or misrouted ciphertext).
    """
    try:
        return ChaCha20Poly1305(key).decrypt(_nonce(sender), ciphertext, associated)
    except InvalidTag as e:
        raise SecAggError(f"share from client {sender} failed authentication") from e


class Entropy(Protocol):
    """A party's source of secret bytes."""

    def take(self, label: str, n: int) -> bytes:
        """``n`` secret bytes for the use named ``label`` (each label taken once)."""
        ...


@dataclasses.dataclass(frozen=True)
class OsEntropy:
    """Secret bytes from the OS CSPRNG (``os.urandom``); the label is ignored."""

    def take(self, label: str, n: int) -> bytes:
        """``n`` bytes of ``os.urandom``."""
        return os.urandom(n)


@dataclasses.dataclass(frozen=True)
class DerivedEntropy:
    """Secret bytes derived from a 32-byte ``key``: the ChaCha20 keystream under
    ``HKDF(key, label)``. Reproducible, so only as secret as ``key`` (simulation only)."""

    key: bytes = dataclasses.field(repr=False)

    def take(self, label: str, n: int) -> bytes:
        """``n`` bytes of the keystream for ``label``."""
        seed = hkdf(self.key, b"fedkit/secagg/entropy/" + label.encode())
        enc = Cipher(algorithms.ChaCha20(seed, _ZERO_NONCE16), mode=None).encryptor()
        return enc.update(bytes(n))
