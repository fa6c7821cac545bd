"""``Chunk``: decoded samples as numpy arrays, the unit readers pass between decode and batching.

A chunk holds ``n`` consecutive samples: labels ``(n, L)`` float32, dense ``(n, D)`` float32 and,
per sparse input, the flat int64 keys (sample-major, then slot, then key) with the number of keys
of every (sample, slot) pair, ``lengths`` ``(n, S)`` int64. Readers decode files into chunks;
:class:`~terarec.data.readers.base.Reader` slices and concatenates them into batches.

Fixed hotness (every sample has the same number of keys in every slot, e.g. one-hot Criteo) is
represented without per-sample bookkeeping: ``lengths`` is then a zero-stride broadcast view of one
row (:func:`fixed_lengths`), slicing is O(1), and :meth:`Chunk.to_batch` builds the CSR offsets
with ``torch.arange`` instead of a cumulative sum. Keys and dense values are handed to torch with
``torch.from_numpy`` (no copy) whenever they are already contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from terarec.data.batch import Batch
from terarec.data.schema import DataSchema
from terarec.errors import DataError
from terarec.sparse import SparseInput


def fixed_row(lengths: np.ndarray) -> np.ndarray | None:
    """The common row of a fixed-hotness ``lengths`` (zero-stride view), else None."""
    if lengths.ndim == 2 and lengths.shape[0] and lengths.strides[0] == 0:
        return lengths[0]
    return None


@dataclass
class Chunk:
    labels: np.ndarray
    dense: np.ndarray
    keys: list[np.ndarray]
    lengths: list[np.ndarray]
    _cums: list[np.ndarray | None] = field(default_factory=list, repr=False)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _cum(self, i: int) -> np.ndarray:
        """Start of every sample's keys in ``keys[i]`` (n + 1 entries)."""
        if len(self._cums) != len(self.keys):
            self._cums = [None] * len(self.keys)
        c = self._cums[i]
        if c is None:
            row = fixed_row(self.lengths[i])
            if row is not None:
                c = np.arange(len(self) + 1, dtype=np.int64) * int(row.sum())
            else:
                c = np.zeros(len(self) + 1, dtype=np.int64)
                np.cumsum(self.lengths[i].sum(axis=1), out=c[1:])
            self._cums[i] = c
        return c

    def slice(self, a: int, b: int) -> Chunk:
        keys = []
        for i, k in enumerate(self.keys):
            row = fixed_row(self.lengths[i])
            if row is not None:
                K = int(row.sum())
                keys.append(k[a * K : b * K])
            else:
                c = self._cum(i)
                keys.append(k[c[a] : c[b]])
        return Chunk(self.labels[a:b], self.dense[a:b], keys, [ln[a:b] for ln in self.lengths])

    def take(self, idx: np.ndarray) -> Chunk:
        """Samples ``idx`` in that order (used to shuffle within a chunk)."""
        keys, lens = [], []
        for i, k in enumerate(self.keys):
            row = fixed_row(self.lengths[i])
            if row is not None:
                K = int(row.sum())
                keys.append(k.reshape(len(self), K)[idx].reshape(-1) if K else k[:0])
                lens.append(fixed_lengths(len(idx), row))
                continue
            c = self._cum(i)
            tot = c[idx + 1] - c[idx]
            starts = np.repeat(c[idx] - np.concatenate(([0], np.cumsum(tot)[:-1])), tot)
            keys.append(k[starts + np.arange(int(tot.sum()), dtype=np.int64)])
            lens.append(self.lengths[i][idx])
        return Chunk(self.labels[idx], self.dense[idx], keys, lens)

    @staticmethod
    def concat(chunks: list[Chunk]) -> Chunk:
        if len(chunks) == 1:
            return chunks[0]
        n_sparse = len(chunks[0].keys)
        n = sum(len(c) for c in chunks)
        lens = []
        for i in range(n_sparse):
            rows = [fixed_row(c.lengths[i]) for c in chunks]
            if all(r is not None for r in rows) and all(np.array_equal(rows[0], r) for r in rows):
                lens.append(fixed_lengths(n, rows[0]))
            else:
                lens.append(np.concatenate([c.lengths[i] for c in chunks]))
        return Chunk(
            np.concatenate([c.labels for c in chunks]),
            np.concatenate([c.dense for c in chunks]),
            [np.concatenate([c.keys[i] for c in chunks]) for i in range(n_sparse)],
            lens,
        )

    def to_batch(self, schema: DataSchema) -> Batch:
        sparse = {}
        n = len(self)
        for spec, k, ln in zip(schema.sparse, self.keys, self.lengths):
            row = fixed_row(ln)
            if row is not None:
                off = _fixed_offsets(n, row)
            else:
                o = np.zeros(ln.size + 1, dtype=np.int64)
                np.cumsum(ln.reshape(-1), out=o[1:])
                off = torch.from_numpy(o)
            sparse[spec.name] = SparseInput(
                torch.from_numpy(np.ascontiguousarray(k, dtype=np.int64)), off, spec.slot_num)
        return Batch(
            torch.from_numpy(np.ascontiguousarray(self.labels, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(self.dense, dtype=np.float32)),
            sparse,
        )


def _fixed_offsets(n: int, row: np.ndarray) -> torch.Tensor:
    """CSR offsets of ``n`` samples that all have ``row[s]`` keys in slot ``s``.

    Built with numpy (single-threaded, GIL released) rather than torch ops, whose intra-op thread
    pool would oversubscribe the cores next to the reader's own worker threads.
    """
    S = row.size
    if S and (row == row[0]).all():
        off = np.arange(n * S + 1, dtype=np.int64)
        if int(row[0]) != 1:
            off *= int(row[0])
        return torch.from_numpy(off)
    K = int(row.sum())
    within = np.concatenate(([0], np.cumsum(row)[:-1])).astype(np.int64)
    off = np.empty(n * S + 1, dtype=np.int64)
    np.add(np.arange(n, dtype=np.int64)[:, None] * K, within[None, :], out=off[:-1].reshape(n, S))
    off[-1] = n * K
    return torch.from_numpy(off)


def fixed_lengths(n: int, nnz: list[int] | np.ndarray) -> np.ndarray:
    """``lengths`` of ``n`` samples with ``nnz[s]`` keys in slot ``s`` (read-only, no memory)."""
    return np.broadcast_to(np.asarray(nnz, dtype=np.int64), (n, len(nnz)))


def split_slots(schema: DataSchema, keys: np.ndarray, lengths: np.ndarray) -> tuple[
    list[np.ndarray], list[np.ndarray]
]:
    """Split keys/lengths of all ``schema.total_slots`` slots into one entry per sparse input.

    ``keys`` is sample-major over all slots of all inputs; ``lengths`` is ``(n, total_slots)``.
    """
    if len(schema.sparse) == 1:
        return [keys], [lengths]
    n = lengths.shape[0]
    row = fixed_row(lengths)
    if row is not None:  # fixed hotness: a column block of the (n, K) key matrix per input
        mat = keys.reshape(n, int(row.sum()))
        out_k, out_l, s0, c0 = [], [], 0, 0
        for spec in schema.sparse:
            r = row[s0 : s0 + spec.slot_num]
            k = int(r.sum())
            out_k.append(np.ascontiguousarray(mat[:, c0 : c0 + k]).reshape(-1))
            out_l.append(fixed_lengths(n, r))
            s0, c0 = s0 + spec.slot_num, c0 + k
        return out_k, out_l
    per_sample = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths.sum(axis=1), out=per_sample[1:])
    out_k, out_l = [], []
    s0 = 0
    for spec in schema.sparse:
        ln = np.ascontiguousarray(lengths[:, s0 : s0 + spec.slot_num])
        before = lengths[:, :s0].sum(axis=1)
        tot = ln.sum(axis=1)
        excl = np.concatenate(([0], np.cumsum(tot)[:-1]))
        starts = np.repeat(per_sample[:-1] + before - excl, tot)
        out_k.append(keys[starts + np.arange(int(tot.sum()), dtype=np.int64)])
        out_l.append(ln)
        s0 += spec.slot_num
    return out_k, out_l


def check_dense_finite(path: str, dense: np.ndarray, row0: int) -> None:
    """Raise DataError at the first NaN/inf dense value (rows counted from ``row0``).

    The common all-finite case costs one float64 sum (finite iff every value is finite: float32
    values cannot overflow a float64 sum); the position is only searched for on failure.
    """
    if dense.size and not np.isfinite(np.add.reduce(dense, axis=None, dtype=np.float64)):
        r, c = np.argwhere(~np.isfinite(dense))[0]
        raise DataError(
            path, f"dense value is {dense[r, c]!r}; expected a finite float",
            row=row0 + int(r), field=f"dense[{int(c)}]",
        )


_LOG_TABLE_SIZE = 1 << 16
_log_table: np.ndarray | None = None


def _log1p_table() -> np.ndarray:
    global _log_table
    if _log_table is None:
        _log_table = np.log1p(np.arange(_LOG_TABLE_SIZE, dtype=np.float32))
    return _log_table


def int_dense_to_log(path: str, ints: np.ndarray, row0: int) -> np.ndarray:
    """HugeCTR's int32 dense transform ``log(x + 1)``; negative ints are an error (would be NaN).

    Values below 2^16 (almost all Criteo counts) are looked up in a table of
    ``np.log1p(float32(x))``, larger ones are computed; the result is identical to
    ``np.log1p(ints.astype(np.float32))``, contiguous ``(n, D)`` float32.
    """
    if not ints.size:
        return np.zeros(ints.shape, dtype=np.float32)
    idx = ints.astype(np.intp)  # contiguous: the reductions below are SIMD, the gather direct
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0:
        r, c = np.argwhere(ints < 0)[0]
        raise DataError(
            path, f"int32 dense value {int(ints[r, c])} is negative; log(x+1) needs x >= 0",
            row=row0 + int(r), field=f"dense[{int(c)}]",
        )
    if hi >= _LOG_TABLE_SIZE:
        return np.log1p(ints.astype(np.float32))
    return _log1p_table().take(idx)


#: key limit of a slot without one (size-0 slots after the last slot of positive size)
NO_KEY_LIMIT = int(np.iinfo(np.int64).max)


def slot_offsets(sizes: list[int]) -> np.ndarray:
    """HugeCTR's per-slot key offsets ``sum(slot_size_array[:s])`` (int64)."""
    return np.concatenate(([0], np.cumsum(sizes, dtype=np.int64)[:-1])).astype(np.int64)


def slot_key_limits(sizes: list[int]) -> np.ndarray:
    """Per-slot exclusive upper bound of the keys (before offsets) ``slot_size_array`` allows.

    A positive size ``n`` allows keys ``0 <= key < n``. A size 0 adds nothing to the offsets, so
    the slot's keys land in the id range of the next slot whose size is positive (HugeCTR's DIN
    and BST samples: the history item slots share the target item slot's vocabulary); they are
    bounded by that size. Size-0 slots after the last positive one have no bound
    (:data:`NO_KEY_LIMIT`).

    Example:
        >>> slot_key_limits([5, 0, 0, 3, 0]).tolist()[:4]
        [5, 3, 3, 3]
    """
    limits = np.full(len(sizes), NO_KEY_LIMIT, dtype=np.int64)
    bound = NO_KEY_LIMIT
    for s in range(len(sizes) - 1, -1, -1):
        if sizes[s] > 0:
            bound = int(sizes[s])
        limits[s] = bound
    return limits


def check_keys(
    path: str, keys: np.ndarray, slot_of_key: np.ndarray | None, sizes: np.ndarray | None,
    row_of_key: np.ndarray | None, row0: int, i64: bool, slot_names: list[str] | None = None,
) -> None:
    """Negative keys, keys beyond the slot size and (32-bit mode) keys over 2^32-1 are errors.

    ``keys`` are per-slot keys before offsets; ``sizes[slot_of_key]`` is the limit of each key
    (:func:`slot_key_limits` of the ``slot_size_array``).
    ``row_of_key`` maps a key to its sample (only used to build the message).
    """
    if keys.size == 0:
        return

    def fail(mask: np.ndarray, what: str) -> None:
        j = int(np.flatnonzero(mask)[0])
        s = int(slot_of_key[j]) if slot_of_key is not None else None
        row = row0 + int(row_of_key[j]) if row_of_key is not None else None
        name = (slot_names[s] if slot_names else f"slot {s}") if s is not None else None
        raise DataError(path, what.format(key=int(keys[j]), s=s), row=row, field=name)

    if keys.min() < 0:
        fail(keys < 0, "key {key} is negative; keys must be >= 0")
    if not i64 and keys.max() > 0xFFFFFFFF:
        fail(keys > 0xFFFFFFFF, "key {key} does not fit 32 bits; set i64_input_key=True")
    if sizes is not None and slot_of_key is not None:
        lim = sizes[slot_of_key]
        bad = keys >= lim
        if bad.any():
            j = int(np.flatnonzero(bad)[0])
            fail(bad, f"key {{key}} is beyond the slot size {int(lim[j])} "
                 "(slot_size_array); expected 0 <= key < slot size (a slot of size 0 shares "
                 "the range of the next slot of positive size)")
