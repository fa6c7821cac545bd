"""Initial values of embedding rows: a pure function of (seed, key, column, slot bound).

Owns row initialisation. A row's initial vector depends only on its key, the slot it was first
seen in and the table's seed (drawn once from the ``torch.Generator``), never on insertion
order, row number or device: hash and direct-mapped indexes, and later sharded tables, start
from identical values for the same key. Values are Uniform(-a, a) with ``a`` the slot's bound
(:meth:`terarec.embedding.config.TableConfig.slot_init_bounds`, reference §7).
"""

from __future__ import annotations

import torch

from terarec.embedding.mix import GOLDEN, mix64, uniform_from_ints

_COLUMN_STRIDE = 0x632BE59BD9B4E019


def draw_seed(generator: torch.Generator | None = None) -> int:
    """One int64 seed from ``generator`` (or torch's default generator)."""
    return int(torch.randint(-(2**62), 2**62, (1,), generator=generator))


def init_vectors(
    keys: torch.Tensor,
    slots: torch.Tensor,
    bounds: torch.Tensor,
    dim: int,
    seed: int,
    dtype: torch.dtype = torch.float32,
    col_offset: int = 0,
) -> torch.Tensor:
    """Initial vectors ``[len(keys), dim]``: Uniform(-bounds[slot], bounds[slot]) per key.

    ``col_offset``: the vectors are columns ``[col_offset, col_offset + dim)`` of the table's
    rows (a column-wise shard starts from exactly the unsharded table's values).
    """
    base = mix64(keys.to(torch.int64) * GOLDEN + seed)
    cols = (torch.arange(dim, device=keys.device, dtype=torch.int64) + col_offset) * _COLUMN_STRIDE
    u = uniform_from_ints(base.unsqueeze(1) + cols.unsqueeze(0), torch.float64)
    a = bounds.to(device=keys.device, dtype=torch.float64)[slots].unsqueeze(1)
    return ((2.0 * u - 1.0) * a).to(dtype)


def slots_of_positions(
    offsets: torch.Tensor, positions: torch.Tensor, slot_num: int
) -> torch.Tensor:
    """Slot of the keys at ``positions`` of a CSR ``keys`` array with row ``offsets``."""
    row = torch.searchsorted(offsets, positions, right=True) - 1
    return row % slot_num
