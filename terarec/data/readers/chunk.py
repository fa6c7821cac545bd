"""``Chunk``: decoded samples as numpy arrays, the unit readers pass between decode and batching.

A chunk holds ``n`` consecutive samples: labels ``(n, L)`` float32, dense ``(n, D)`` float32 and,
per sparse input, the flat int64 keys (sample-major, then slot, then key) with the number of keys
of every (sample, slot) pair, ``lengths`` ``(n, S)`` int64. Readers decode files into chunks;
:class:`~terarec.data.readers.base.Reader` slices and concatenates them into batches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from terarec.data.batch import Batch
from terarec.data.schema import DataSchema
from terarec.errors import DataError
from terarec.sparse import SparseInput


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
            c = np.zeros(len(self) + 1, dtype=np.int64)
            np.cumsum(self.lengths[i].sum(axis=1), out=c[1:])
            self._cums[i] = c
        return c

    def slice(self, a: int, b: int) -> Chunk:
        keys = []
        for i, k in enumerate(self.keys):
            c = self._cum(i)
            keys.append(k[c[a] : c[b]])
        return Chunk(self.labels[a:b], self.dense[a:b], keys, [ln[a:b] for ln in self.lengths])

    def take(self, idx: np.ndarray) -> Chunk:
        """Samples ``idx`` in that order (used to shuffle within a chunk)."""
        keys = []
        for i, k in enumerate(self.keys):
            c = self._cum(i)
            tot = c[idx + 1] - c[idx]
            starts = np.repeat(c[idx] - np.concatenate(([0], np.cumsum(tot)[:-1])), tot)
            keys.append(k[starts + np.arange(int(tot.sum()), dtype=np.int64)])
        return Chunk(self.labels[idx], self.dense[idx], keys, [ln[idx] for ln in self.lengths])

    @staticmethod
    def concat(chunks: list[Chunk]) -> Chunk:
        if len(chunks) == 1:
            return chunks[0]
        n_sparse = len(chunks[0].keys)
        return Chunk(
            np.concatenate([c.labels for c in chunks]),
            np.concatenate([c.dense for c in chunks]),
            [np.concatenate([c.keys[i] for c in chunks]) for i in range(n_sparse)],
            [np.concatenate([c.lengths[i] for c in chunks]) for i in range(n_sparse)],
        )

    def to_batch(self, schema: DataSchema) -> Batch:
        sparse = {}
        for spec, k, ln in zip(schema.sparse, self.keys, self.lengths):
            off = np.zeros(ln.size + 1, dtype=np.int64)
            np.cumsum(ln.reshape(-1), out=off[1:])
            sparse[spec.name] = SparseInput(
                torch.from_numpy(np.ascontiguousarray(k, dtype=np.int64)),
                torch.from_numpy(off),
                spec.slot_num,
            )
        return Batch(
            torch.from_numpy(np.ascontiguousarray(self.labels, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(self.dense, dtype=np.float32)),
            sparse,
        )


def split_slots(schema: DataSchema, keys: np.ndarray, lengths: np.ndarray) -> tuple[
    list[np.ndarray], list[np.ndarray]
]:
    """Split keys/lengths of all ``schema.total_slots`` slots into one entry per sparse input.

    ``keys`` is sample-major over all slots of all inputs; ``lengths`` is ``(n, total_slots)``.
    """
    if len(schema.sparse) == 1:
        return [keys], [lengths]
    n = lengths.shape[0]
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
    """Raise DataError at the first NaN/inf dense value (rows counted from ``row0``)."""
    if dense.size and not np.isfinite(dense).all():
        r, c = np.argwhere(~np.isfinite(dense))[0]
        raise DataError(
            path, f"dense value is {dense[r, c]!r}; expected a finite float",
            row=row0 + int(r), field=f"dense[{int(c)}]",
        )


def int_dense_to_log(path: str, ints: np.ndarray, row0: int) -> np.ndarray:
    """HugeCTR's int32 dense transform ``log(x + 1)``; negative ints are an error (would be NaN)."""
    if ints.size and ints.min() < 0:
        r, c = np.argwhere(ints < 0)[0]
        raise DataError(
            path, f"int32 dense value {int(ints[r, c])} is negative; log(x+1) needs x >= 0",
            row=row0 + int(r), field=f"dense[{int(c)}]",
        )
    return np.log1p(ints.astype(np.float32))


def check_keys(
    path: str, keys: np.ndarray, slot_of_key: np.ndarray | None, sizes: np.ndarray | None,
    row_of_key: np.ndarray | None, row0: int, i64: bool, slot_names: list[str] | None = None,
) -> None:
    """Negative keys, keys beyond the slot size and (32-bit mode) keys over 2^32-1 are errors.

    ``keys`` are per-slot keys before offsets; ``sizes[slot_of_key]`` is the limit of each key.
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
                 "(slot_size_array); expected 0 <= key < slot size")


def fixed_lengths(n: int, nnz: list[int]) -> np.ndarray:
    return np.tile(np.asarray(nnz, dtype=np.int64), (n, 1))
