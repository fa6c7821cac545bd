"""``Model.get_incremental_model()``: the rows of every table that changed since the last call.

HugeCTR (ETC, <= 23.08) returns, per embedding table, ``(keys int64 [n], vectors float32
[n, dim])`` of the keys touched since the previous call, for pushing deltas to a serving
store. terarec keeps no per-step bookkeeping for it (nothing on the training hot path): each
call exports the table (as ``save_params_to_files`` does; collective on several ranks, every
rank gets the whole list) and compares a 64-bit digest of every row's bytes with the digests
of the previous call, so a row counts when it is new or its vector changed. The first call
returns every row (all of them are new to it). Rows that were looked up but came out bitwise
unchanged (a zero gradient) are not returned: a serving store already holds them.
Memory: one ``uint64`` per row between calls, plus the exported table during a call.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# odd 64-bit multipliers, one per 32-bit word of a row (enough for dim <= 4096; repeated past)
_MULTIPLIERS = (np.random.default_rng(0x7E4A).integers(1, 2**63, 4096, dtype=np.uint64)
                | np.uint64(1))


def row_digests(vectors: np.ndarray) -> np.ndarray:
    """``uint64 [n]``: a digest of each row's float32 bytes (wrapping multiply-add of its
    32-bit words by fixed odd multipliers, then a final mix)."""
    words = np.ascontiguousarray(vectors, dtype=np.float32).view(np.uint32).astype(np.uint64)
    mult = np.resize(_MULTIPLIERS, words.shape[1])
    with np.errstate(over="ignore"):
        h = (words * mult[None, :]).sum(axis=1, dtype=np.uint64)
        h ^= h >> np.uint64(31)
        h *= np.uint64(0x9E3779B97F4A7C15)
    return h


class IncrementalTracker:
    """Per table: the sorted keys and row digests of the previous call."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def changed(self, name: str, keys: np.ndarray, vectors: np.ndarray,
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(keys, vectors)`` of the rows of table ``name`` that are new or changed since
        the previous call for it; remembers the current state."""
        keys = np.asarray(keys, dtype=np.int64)
        digests = row_digests(vectors)
        order = np.argsort(keys, kind="stable")
        prev = self._seen.get(name)
        if prev is None or prev[0].size == 0:
            pick = np.ones(keys.size, dtype=bool)
        else:
            prev_keys, prev_digests = prev
            pos = np.minimum(np.searchsorted(prev_keys, keys), prev_keys.size - 1)
            pick = (prev_keys[pos] != keys) | (prev_digests[pos] != digests)
        self._seen[name] = (keys[order], digests[order])
        return keys[pick], np.asarray(vectors, dtype=np.float32)[pick]


def incremental_model(tables: dict[str, Any], tracker: IncrementalTracker,
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
    """One ``(keys, vectors)`` pair per table, in the model's table order."""
    out = []
    for name, table in tables.items():
        keys, vectors, _ = table.export()
        out.append(tracker.changed(name, np.asarray(keys), np.asarray(vectors)))
    return out
