"""HugeCTR's CSR inference request and its conversion to pooled embeddings.

Owns parsing, validation and merging of ``(dense_feature, embeddingcolumns, row_ptrs)``.

Multi-table rule (the one HugeCTR's Triton backend uses): with tables t = 0..T-1 having
``S_t`` slots and a batch of B samples,

* ``embeddingcolumns`` holds the keys of table 0, then those of table 1, ...;
* ``row_ptrs`` holds, table after table, ``B * S_t + 1`` offsets each; the offsets of table t
  start at 0 and index into table t's own segment of ``embeddingcolumns`` (row ``b * S_t + s``
  is sample b, slot s). For compatibility, a table whose offsets start at the absolute position
  of its segment is accepted too;
* ``len(row_ptrs) = B * sum(S_t) + T``, so B is derived from it; ``dense_feature`` has
  ``B * dense_dim`` floats.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from terarec.errors import ConfigError


@dataclass
class CsrBatch:
    """A parsed request: ``dense (B, dense_dim)`` and per table ``(keys, offsets (B*S+1,))``."""

    batch_size: int
    dense: np.ndarray
    tables: list[tuple[np.ndarray, np.ndarray]]


def parse_csr(dense_feature: Any, embeddingcolumns: Any, row_ptrs: Any, slot_nums: list[int],
              dense_dim: int) -> CsrBatch:
    """Validate a CSR request against the model's slot counts (raises ``ConfigError``)."""
    rp = np.asarray(row_ptrs, dtype=np.int64).reshape(-1)
    keys = np.asarray(embeddingcolumns).reshape(-1)
    if keys.size and not np.issubdtype(keys.dtype, np.integer):
        raise ConfigError("embeddingcolumns", "integer keys", str(keys.dtype))
    keys = keys.astype(np.int64, copy=False)
    n_tables, total_slots = len(slot_nums), sum(slot_nums)
    rows = rp.size - n_tables
    if rows < 0 or total_slots == 0 or rows % total_slots:
        raise ConfigError("row_ptrs", f"B*{total_slots}+{n_tables} entries "
                          f"(slot_num per table {slot_nums})", f"{rp.size} entries")
    b = rows // total_slots
    dense = np.asarray(dense_feature, dtype=np.float32).reshape(-1)
    if dense.size != b * dense_dim:
        raise ConfigError("dense_feature", f"{b}*{dense_dim}={b * dense_dim} floats "
                          f"for a batch of {b}", f"{dense.size} floats")
    tables, pos, base = [], 0, 0
    for t, s in enumerate(slot_nums):
        off = rp[pos:pos + b * s + 1]
        pos += b * s + 1
        if off.size and off[0] == base and base != 0:
            off = off - base  # absolute offsets
        if off.size == 0 or off[0] != 0 or np.any(np.diff(off) < 0):
            raise ConfigError(f"row_ptrs of table {t}", "non-decreasing offsets starting at 0",
                              off[:8].tolist())
        n = int(off[-1])
        if base + n > keys.size:
            raise ConfigError(f"row_ptrs of table {t}", f"offsets within the {keys.size} keys",
                              f"segment [{base}, {base + n})")
        tables.append((keys[base:base + n], off))
        base += n
    if base != keys.size:
        raise ConfigError("embeddingcolumns", f"{base} keys (the sum of the tables' row_ptrs)",
                          f"{keys.size} keys")
    return CsrBatch(b, dense.reshape(b, dense_dim), tables)


def merge(batches: list[CsrBatch]) -> CsrBatch:
    """Concatenate requests along the batch dimension (dynamic batching)."""
    if len(batches) == 1:
        return batches[0]
    tables = []
    for t in range(len(batches[0].tables)):
        keys = np.concatenate([bt.tables[t][0] for bt in batches])
        offs, shift = [np.zeros(1, np.int64)], 0
        for bt in batches:
            offs.append(bt.tables[t][1][1:] + shift)
            shift += int(bt.tables[t][1][-1])
        tables.append((keys, np.concatenate(offs)))
    return CsrBatch(sum(bt.batch_size for bt in batches),
                    np.concatenate([bt.dense for bt in batches]), tables)


def to_csr(batch: CsrBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The inverse of :func:`parse_csr`: ``(dense_feature, embeddingcolumns, row_ptrs)``."""
    keys = np.concatenate([k for k, _ in batch.tables]) if batch.tables else np.empty(0, np.int64)
    rp = np.concatenate([o for _, o in batch.tables]) if batch.tables else np.empty(0, np.int64)
    return batch.dense.reshape(-1), keys, rp.astype(np.int32)
