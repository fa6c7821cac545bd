"""HugeCTR's headerless fixed-record binary readers: legacy one-hot "Raw" (§15.3) and the
multi-hot "RawAsync" (§15.4).

Both are decoded with one ``np.fromfile`` per row range (a ``(n, words)`` int32 matrix) and column
slicing; no per-row Python. Checks are vectorised (one reduction each in the common all-valid case,
the offending row/slot is only searched for on failure); keys become one contiguous ``(n, K)``
int64 matrix handed on without a copy, and the fixed hotness is recorded as a broadcast
``lengths`` row so batches get their CSR offsets from ``torch.arange``.

* Raw: ``label[L] dense[D]`` as int32 (dense -> ``log(x+1)``) or float32 (``float_label_dense``),
  then one uint32 key per slot. Keys are per-slot ids ``0..slot_size-1`` and are returned as is
  (HugeCTR's one-hot embedding adds the slot offsets); with ``slot_size_array`` they are checked.
* RawAsync: labels int32 (cast to float), dense float32 bits (``is_dense_float``) or int32 ->
  ``log(x+1)``, then ``nnz_per_slot[s]`` keys per slot (uint32, or int64 as two words with
  ``i64_input_key``). With ``slot_size_array`` keys are checked against their slot size and the
  offset ``sum(slot_size_array[:s])`` is added.

``source`` is one binary file (a list means several files read one after the other).
``num_samples`` 0 means "all samples in the file"; otherwise the file must hold at least that many.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import numpy as np

from terarec.data.readers.base import FormatSource, ReaderConfig, check_files_exist
from terarec.data.readers.chunk import (
    Chunk,
    check_dense_finite,
    check_keys,
    fixed_lengths,
    int_dense_to_log,
    slot_key_limits,
    slot_offsets,
    split_slots,
)
from terarec.data.schema import DataSchema
from terarec.errors import DataError


class _FixedRecordSource(FormatSource):
    unit_rows = 1 << 16

    def __init__(self, config: ReaderConfig, schema: DataSchema) -> None:
        self._maps: dict[str, tuple[tuple[int, int], np.ndarray]] = {}
        self._maps_lock = threading.Lock()
        super().__init__(config, schema)

    def resolve(self, source: str | list[str]) -> list[str]:
        paths = [source] if isinstance(source, str) else list(source)
        check_files_exist(paths, "<source>")
        return paths

    # Subclasses define the record layout.
    def record_words(self) -> int:
        raise NotImplementedError

    def file_num_samples(self, path: str) -> int:
        rec = 4 * self.record_words()
        size = os.path.getsize(path)
        if size == 0:
            raise DataError(path, "file is empty")
        if size % rec:
            full = size // rec
            raise DataError(path, f"truncated or misaligned file: {size} bytes is not a multiple "
                            f"of the {rec}-byte record ({self.layout()}); the last record is "
                            "incomplete", row=full, offset=full * rec)
        n = size // rec
        want = self.config.num_samples
        if want and len(self.paths) == 1:
            if want > n:
                raise DataError(path, f"num_samples={want} but the file holds only {n} samples "
                                f"of {rec} bytes", offset=size)
            return want
        return n

    def layout(self) -> str:
        raise NotImplementedError

    def _rows(self, path: str, start: int, stop: int) -> np.ndarray:
        """Records ``[start, stop)`` as an ``(n, words)`` int32 view of a read-only memory map.

        The map of each file is made once and shared by the decode threads (no read copy; the
        decoders copy the columns out, so no chunk keeps a view of it). It is remade when the
        file's size or mtime changed since.
        """
        w = self.record_words()
        st = os.stat(path)
        key = (st.st_size, st.st_mtime_ns)
        with self._maps_lock:
            hit = self._maps.get(path)
            if hit is None or hit[0] != key:
                rec = 4 * w
                mm = np.memmap(path, dtype="<i4", mode="r", shape=(st.st_size // rec, w)) \
                    if st.st_size >= rec else np.zeros((0, w), dtype="<i4")
                hit = self._maps[path] = (key, mm)
        rows = hit[1]
        if stop > len(rows):
            raise DataError(path, f"file holds {len(rows)} records, rows up to {stop} were asked "
                            "for (changed while reading?)", offset=st.st_size)
        return rows[start:stop]

    def _labels_dense(self, path, rows, start, float_labels: bool, float_dense: bool):
        L, D = self.schema.label_dim, self.schema.dense_dim
        lab = rows[:, :L]
        labels = np.ascontiguousarray(lab).view(np.float32) if float_labels else \
            lab.astype(np.float32)
        if float_dense:
            dense = np.ascontiguousarray(rows[:, L : L + D]).view(np.float32)
            check_dense_finite(path, dense, start)
        else:
            dense = int_dense_to_log(path, rows[:, L : L + D], start)
        return labels, dense

    def _check_sizes(self, path: str, keys: np.ndarray, start: int, slot_of_col: np.ndarray,
                     raw_message: bool) -> None:
        """Keys ``(n, K)`` (before offsets) against ``slot_size_array``; error at the first bad."""
        limits = slot_key_limits(self.config.slot_size_array)
        if not keys.size or int(keys.max()) < int(limits.min()):
            return
        lim = limits[slot_of_col]
        bad = keys >= lim
        if not bad.any():
            return
        r, c = np.argwhere(bad)[0]
        if raw_message:
            raise DataError(path, f"key {int(keys[r, c])} is beyond the slot size "
                            f"{int(lim[c])} (slot_size_array)", row=start + int(r),
                            field=f"slot {int(slot_of_col[c])}")
        check_keys(path, keys[r, c:c + 1], slot_of_col[c:c + 1], limits,
                   np.array([r]), start, True)


class RawSource(_FixedRecordSource):
    def record_words(self) -> int:
        return self.schema.label_dim + self.schema.dense_dim + self.schema.total_slots

    def layout(self) -> str:
        t = "float32" if self.config.float_label_dense else "int32"
        s = self.schema
        return f"{s.label_dim} label + {s.dense_dim} dense {t} + {s.total_slots} uint32 keys"

    def decode(self, path: str, start: int, stop: int) -> Iterator[Chunk]:
        for sp in self.schema.sparse:
            if any(n != 1 for n in sp.nnz_per_slot):
                raise DataError(path, f"Raw is one-hot; sparse input {sp.name!r} has "
                                f"nnz_per_slot={sp.nnz_per_slot} (use RawAsync for multi-hot)")
        rows = self._rows(path, start, stop)
        fld = self.config.float_label_dense
        labels, dense = self._labels_dense(path, rows, start, fld, fld)
        S = self.schema.total_slots
        n = len(rows)
        keys = rows[:, rows.shape[1] - S:].view(np.uint32).astype(np.int64)
        sizes = self.config.slot_size_array
        if sizes:
            if len(sizes) != S:
                raise DataError(path, f"slot_size_array has {len(sizes)} entries, the schema has "
                                f"{S} slots")
            self._check_sizes(path, keys, start, np.arange(S), True)
        k, ln = split_slots(self.schema, keys.reshape(-1), fixed_lengths(n, [1] * S))
        yield Chunk(labels, dense, k, ln)


class RawAsyncSource(_FixedRecordSource):
    def _nnz(self) -> list[int]:
        return [n for sp in self.schema.sparse for n in sp.nnz_per_slot]

    def record_words(self) -> int:
        kw = 2 if self.config.i64_input_key else 1
        return self.schema.label_dim + self.schema.dense_dim + kw * sum(self._nnz())

    def layout(self) -> str:
        s = self.schema
        t = "float32" if self.config.is_dense_float else "int32"
        k = "int64" if self.config.i64_input_key else "uint32"
        return (f"{s.label_dim} int32 label + {s.dense_dim} {t} dense + {sum(self._nnz())} "
                f"{k} keys (nnz_per_slot)")

    def decode(self, path: str, start: int, stop: int) -> Iterator[Chunk]:
        rows = self._rows(path, start, stop)
        labels, dense = self._labels_dense(path, rows, start, False, self.config.is_dense_float)
        nnz = self._nnz()
        K = sum(nnz)
        n = len(rows)
        i64 = self.config.i64_input_key
        block = rows[:, rows.shape[1] - K * (2 if i64 else 1):]
        slot_of_col = np.repeat(np.arange(len(nnz)), nnz)
        if i64:
            keys = np.ascontiguousarray(block).view("<i8")
            if keys.size and keys.min() < 0:
                r, c = np.argwhere(keys < 0)[0]
                raise DataError(path, f"key {int(keys[r, c])} is negative", row=start + int(r),
                                field=f"slot {int(slot_of_col[c])}")
        else:
            keys = block.view(np.uint32).astype(np.int64)
        sizes = self.config.slot_size_array
        if sizes:
            if len(sizes) != len(nnz):
                raise DataError(path, f"slot_size_array has {len(sizes)} entries, the schema has "
                                f"{len(nnz)} slots")
            self._check_sizes(path, keys, start, slot_of_col, False)
            off = slot_offsets(sizes)[slot_of_col]
            if i64:
                keys = keys + off
            else:
                keys += off
        k, ln = split_slots(self.schema, keys.reshape(-1), fixed_lengths(n, nnz))
        yield Chunk(labels, dense, k, ln)
