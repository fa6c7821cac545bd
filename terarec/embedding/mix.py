"""Integer mixing (splitmix64 finalizer) in plain torch int64 ops, on CPU and CUDA alike.

Owns the bit mixing used to place keys in the hash index and to draw per-key initial values.
torch has no unsigned 64-bit arithmetic: multiplications wrap modulo 2**64 and right shifts are
arithmetic, so logical shifts are emulated with a mask.
"""

from __future__ import annotations

import torch

_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 values."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finalizer: a bijection of int64 with good avalanche."""
    x = x ^ _shr(x, 30)
    x = x * _M1
    x = x ^ _shr(x, 27)
    x = x * _M2
    return x ^ _shr(x, 31)


def uniform_from_ints(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map int64 values to U(0, 1) (24 random bits, never 0 or 1) after mixing."""
    bits = _shr(mix64(x), 40)
    return ((bits.to(torch.float64) + 0.5) / float(1 << 24)).to(dtype)
