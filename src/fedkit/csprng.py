"""Standard normal samples from the operating system's CSPRNG (``os.urandom``).

Box–Muller, ``z = sqrt(-2 ln u₁) · cos(2π u₂)``, with ``u₁, u₂`` uniform on (0, 1] from 53
random bits each: no seed and no non-cryptographic generator (Mersenne Twister, Philox) between
the kernel's entropy and the noise. DP noise in deployment comes from here
(:mod:`fedkit.privacy.noise`, :mod:`fedkit.dpsgd`).
"""

from __future__ import annotations

import math
import os

import torch

__all__ = ["os_normal"]

_TWO_POW_53 = float(2**53)


def _os_uniform(n: int) -> torch.Tensor:
    """``n`` float64 uniforms on (0, 1] from 53 bits of ``os.urandom`` each."""
    raw = torch.frombuffer(bytearray(os.urandom(8 * n)), dtype=torch.int64)
    bits = (raw >> 11) & ((1 << 53) - 1)  # arithmetic shift, then keep the 53 low bits
    return (bits.double() + 1.0) / _TWO_POW_53


def os_normal(shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Standard normal float64 samples from the OS CSPRNG (Box–Muller, see module docstring)."""
    n = math.prod(shape)
    if n == 0:
        return torch.zeros(shape, dtype=torch.float64)
    u1, u2 = _os_uniform(n), _os_uniform(n)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
    return z.reshape(shape)
