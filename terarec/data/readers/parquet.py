"""Parquet reader (§15.5): HugeCTR/NVTabular layout *and* plain parquet files with no side files.

``source`` may be a file list (``_file_list.txt``, §15.1), a directory (every ``*.parquet`` in
it, sorted), a single ``.parquet`` file, or a list of any of these.

Columns: when ``_metadata.json`` sits next to the first data file, its ``labels`` / ``conts`` /
``cats`` entries (by ``col_name``) give the label, dense and slot columns in order and its
``file_stats`` the row counts (checked against the files). Without it the columns are inferred
from the first file's schema, in file column order:

1. **label**: a column named ``label``, ``labels``, ``click``, ``clicked``, ``target`` or ``y``,
   or whose name starts with ``label``;
2. **dense**: a column named ``I<n>``, or any other float column (scalar or ``list<float>`` of a
   fixed width);
3. **categorical** (one slot each): a column named ``C<n>``, or any other integer column (one-hot)
   or ``list<int>`` column (multi-hot).

Any other column (e.g. strings) is an error: preprocess it first. The numbers of label, dense
and slot columns must match the schema. Keys: negative values are errors; with
``slot_size_array`` keys must be below their slot size and get the offset
``sum(slot_size_array[:s])`` (a size 0 adds no offset: the slot shares the next positive slot's
range and size); without ``i64_input_key`` keys (after offsets) must fit 32 bits.
"""

from __future__ import annotations

import functools
import json
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from terarec.data.readers.base import FormatSource, check_files_exist, read_file_list
from terarec.data.readers.chunk import (
    NO_KEY_LIMIT,
    Chunk,
    check_dense_finite,
    check_keys,
    fixed_lengths,
    slot_key_limits,
    slot_offsets,
    split_slots,
)
from terarec.errors import DataError
from terarec.utils.imports import require

LABEL_NAMES = {"label", "labels", "click", "clicked", "target", "y"}


def _pq():
    return require("pyarrow.parquet", extra="parquet", feature="The Parquet reader")


@dataclass
class Columns:
    labels: list[str]
    dense: list[str]
    cats: list[str]


def infer_columns(schema) -> Columns:
    """Split a pyarrow schema into label / dense / categorical columns (module docstring rules)."""
    import pyarrow as pa

    cols = Columns([], [], [])
    for f in schema:
        name, t = f.name, f.type
        inner = t.value_type if pa.types.is_list(t) or pa.types.is_fixed_size_list(t) else t
        if name.lower() in LABEL_NAMES or name.lower().startswith("label"):
            cols.labels.append(name)
        elif re.fullmatch(r"I\d+", name) or pa.types.is_floating(inner):
            cols.dense.append(name)
        elif re.fullmatch(r"C\d+", name) or pa.types.is_integer(inner):
            cols.cats.append(name)
        else:
            raise DataError("<parquet schema>", f"column {name!r} of type {t} is neither a label, "
                            "a dense (float) nor a categorical (int) column; preprocess it first "
                            "(terarec preprocess)", field=name)
    return cols


def resolve_parquet_source(source: str | list[str]) -> list[str]:
    items = [source] if isinstance(source, str) else list(source)
    if not items:
        raise DataError("<source>", "empty source list")
    paths: list[str] = []
    for item in items:
        if os.path.isdir(item):
            found = sorted(os.path.join(item, f) for f in os.listdir(item)
                           if f.endswith(".parquet"))
            if not found:
                raise DataError(item, "directory holds no *.parquet files")
            paths += found
        elif item.endswith(".parquet") or _is_parquet(item):
            paths.append(item)
        else:
            paths += read_file_list(item)
    check_files_exist(paths, items[0])
    return paths


def _is_parquet(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == b"PAR1"
    except OSError:
        return False


@dataclass(frozen=True)
class _FilePlan:
    """How one file's row groups are converted, from its column types (once per file).

    ``fast``: every label and dense column a number, every slot column a scalar integer that
    fits int64, ``dense_dim`` dense columns and every slot allowing a key: such blocks take
    :meth:`ParquetSource._fast_chunk` unless they hold nulls. ``dense_f32`` / ``labels_f32``:
    all dense / label columns float32 (the block is then one ``to_tensor``). ``signed_keys``:
    some slot column has a signed type (negative keys possible).
    """

    fast: bool
    dense_f32: bool
    labels_f32: bool = False
    signed_keys: bool = True


class ParquetSource(FormatSource):
    """Parquet files (module docstring); one decode unit per row group (or part of one).

    Per file, once: the footer (row counts, row-group layout, the leaf columns to read) and
    whether its column types allow the fast conversion (:meth:`_plan`). Per row group: one read
    of the needed columns (:func:`_open`), then either the fast conversion (:meth:`_fast_chunk`:
    three ``to_tensor`` calls and a few whole-block numpy operations, each releasing the GIL
    once) or, for list columns, nulls or other types, the general one (:meth:`_general_chunk`).
    Both give the same chunk and the same errors. Few GIL round trips per block matter next to
    a training thread that keeps the GIL busy: there every retake of the GIL waits (up to the
    switch interval); a block took ~100 of them before (+47 ms per 62.5k-row block next to a
    busy thread, 2-core box), ~15 now (+9 ms).
    """

    def resolve(self, source: str | list[str]) -> list[str]:
        paths = resolve_parquet_source(source)
        self._pf_meta: dict = {}
        self._leaves: dict[str, list[int]] = {}  # Parquet leaf columns of the needed columns
        self._group_starts: dict[str, np.ndarray] = {}
        self._plans: dict[str, _FilePlan] = {}
        meta_path = os.path.join(os.path.dirname(paths[0]), "_metadata.json")
        self.meta_rows: dict[str, int] = {}
        if os.path.isfile(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as fh:
                    meta = json.load(fh)
                self.columns = Columns(
                    [c["col_name"] for c in meta.get("labels", [])],
                    [c["col_name"] for c in meta.get("conts", [])],
                    [c["col_name"] for c in meta.get("cats", [])],
                )
                self.meta_rows = {s["file_name"]: int(s["num_rows"])
                                  for s in meta.get("file_stats", [])}
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(meta_path, f"not a valid HugeCTR _metadata.json: {exc}") from None
            self.columns_from = meta_path
        else:
            self.columns = infer_columns(_pq().read_schema(paths[0]))
            self.columns_from = f"{paths[0]} (inferred, no _metadata.json)"
        self._check_columns_vs_schema()
        self._init_slot_limits()
        return paths

    def _check_columns_vs_schema(self) -> None:
        c, s = self.columns, self.schema
        if len(c.cats) != s.total_slots:
            raise DataError(self.columns_from, f"{len(c.cats)} categorical columns {c.cats} but "
                            f"the Input has {s.total_slots} slots", field="cats")
        if len(c.labels) != len(s.label_dims) and len(c.labels) != s.label_dim:
            raise DataError(self.columns_from, f"{len(c.labels)} label columns {c.labels} but "
                            f"the Input has label_dim {s.label_dim}", field="labels")
        sizes = self.config.slot_size_array
        if sizes and len(sizes) != len(c.cats):
            raise DataError(self.columns_from, f"slot_size_array has {len(sizes)} entries for "
                            f"{len(c.cats)} categorical columns", field="cats")

    def _init_slot_limits(self) -> None:
        """Slot sizes, slot offsets and nnz limits as arrays (used by every row group)."""
        S = len(self.columns.cats)
        sizes = self.config.slot_size_array
        # per-slot key limits (a size-0 slot: the next positive size, see slot_key_limits)
        self._sizes = slot_key_limits(sizes) if sizes else None
        self._offs = slot_offsets(sizes) if sizes else np.zeros(S, dtype=np.int64)
        # first id after each slot's range (offset + limit, saturated for unbounded slots)
        self._ends = (None if self._sizes is None else
                      self._offs + np.minimum(self._sizes, NO_KEY_LIMIT - self._offs))
        self._maxnnz = np.asarray([m for sp in self.schema.sparse for m in sp.nnz_per_slot],
                                  dtype=np.int64)

    def file_num_samples(self, path: str) -> int:
        try:
            pf = _pq().ParquetFile(path)
            md = pf.metadata
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(path, f"not a readable parquet file: {exc}") from None
        self._pf_meta[path] = md
        self._leaves[path] = _leaf_indices(pf.reader.column_paths, self._names())
        rows = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
        self._group_starts[path] = np.concatenate(([0], np.cumsum(rows))).astype(np.int64)
        n = int(md.num_rows)
        want = self.meta_rows.get(os.path.basename(path))
        if want is not None and want != n:
            raise DataError(path, f"_metadata.json says {want} rows, the file has {n}",
                            field="file_stats.num_rows")
        return n

    def pieces(self, index: int, start: int, stop: int) -> list[tuple[int, int]]:
        bounds = self._group_starts[self.paths[index]]
        out = []
        for g in range(bounds.size - 1):
            a, b = max(start, int(bounds[g])), min(stop, int(bounds[g + 1]))
            if a < b:
                out.append((a, b))
        return out

    def decode(self, path: str, start: int, stop: int) -> Iterator[Chunk]:
        yield self._to_chunk(path, self._read(path, start, stop), start)

    def _read(self, path: str, start: int, stop: int):
        """Rows ``[start, stop)`` of ``path``: one read of the row groups that hold them."""
        md = self._pf_meta.get(path)
        if md is None:  # a file this source did not list: read its footer now
            self.file_num_samples(path)
            md = self._pf_meta[path]
        bounds = self._group_starts[path]
        groups = [g for g in range(bounds.size - 1) if bounds[g] < stop and bounds[g + 1] > start]
        first = int(bounds[groups[0]]) if groups else 0
        try:
            # The footer was parsed once (file_num_samples). Without pre-buffering (pyarrow
            # reading the column chunks ahead on its I/O threads) the read costs ~13% less CPU
            # here; a memory map saved under 5% more and was left out. Units already decode on
            # num_workers threads: pyarrow's own pool on top of them oversubscribes the cores
            # (1.1M rows per CPU-s with 16 workers on 16 cores vs 1.9M on 2), so one reader
            # thread decodes its row groups by itself.
            table = _open(path, md).read_row_groups(groups, column_indices=self._leaves[path],
                                                    use_threads=self.config.num_workers <= 1)
        except Exception as exc:
            raise DataError(path, f"cannot read columns {self._names()}: {exc}") from None
        if start != first or stop - start != table.num_rows:
            table = table.slice(start - first, stop - start)
        return table

    def _names(self) -> list[str]:
        return self.columns.labels + self.columns.dense + self.columns.cats

    def _to_chunk(self, path: str, table, row0: int) -> Chunk:
        """One decoded block (rows counted from ``row0`` in error messages)."""
        plan = self._plan(path, table.schema)
        if table.num_rows and plan.fast and not any(col.null_count for col in table.columns):
            return self._fast_chunk(path, table, row0, plan)
        return self._general_chunk(path, table, row0)

    # -- fast conversion: scalar number columns, one key per slot, no nulls -------------------
    def _plan(self, path: str, schema) -> _FilePlan:
        """What ``path``'s column types allow (decided once per file)."""
        plan = self._plans.get(path)
        if plan is None:
            plan = self._plans[path] = self._plan_of(schema)
        return plan

    def _plan_of(self, schema) -> _FilePlan:
        import pyarrow as pa

        c = self.columns
        types = {f.name: f.type for f in schema}
        number = [types.get(n) for n in c.labels + c.dense]
        keys = [types.get(n) for n in c.cats]
        fast = (_to_tensor_ok()
                and all(t is not None and (pa.types.is_integer(t) or pa.types.is_floating(t))
                        for t in number)
                and all(t is not None and pa.types.is_integer(t) and t != pa.uint64()
                        for t in keys)
                # otherwise the general path reports the dense width / nnz problem
                and len(c.dense) == self.schema.dense_dim and bool((self._maxnnz >= 1).all()))
        dense_f32 = bool(c.dense) and all(types.get(n) == pa.float32() for n in c.dense)
        labels_f32 = bool(c.labels) and all(types.get(n) == pa.float32() for n in c.labels)
        signed = any(t is None or pa.types.is_signed_integer(t) for t in keys)
        return _FilePlan(fast, dense_f32, labels_f32, signed)

    def _fast_chunk(self, path: str, table, row0: int, plan: _FilePlan) -> Chunk:
        """Chunk of a block without nulls whose columns the plan allows (scalar numbers).

        Each of the three blocks (labels, dense, slot keys) is one pyarrow ``to_tensor``
        (columns of mixed number types are widened exactly: int32 and uint32 keys to int64),
        i.e. one C++ call that releases the GIL once, plus a few whole-block numpy calls: next
        to a thread that keeps the GIL busy (a training loop), every reacquisition of the GIL
        waits, so the number of calls per block matters more than their size. Labels / dense
        of other types than float32 are converted column by column.
        """
        c, sch = self.columns, self.schema
        n = table.num_rows
        labels = _float_block(table, c.labels, n, plan.labels_f32)
        dense = _float_block(table, c.dense, n, plan.dense_f32)
        check_dense_finite(path, dense, row0)
        keys = self._one_hot_keys(path, table, n, row0, plan.signed_keys)
        k, ln = split_slots(sch, keys, fixed_lengths(n, [1] * len(c.cats)))
        return Chunk(labels, dense, k, ln)

    def _one_hot_keys(self, path: str, table, n: int, row0: int, signed: bool) -> np.ndarray:
        """Sample-major int64 keys (slot offsets added) of the one-key-per-slot columns.

        One (column-major) ``to_tensor`` and one numpy add (the slot offsets broadcast over the
        rows) write the ``(n, S)`` key matrix, then column-wise max (and min, for signed keys
        with offsets) reductions check every slot at once. Only a failing check scans the slot
        for the first bad key, with the same error as the general path.
        """
        cats = self.columns.cats
        if not cats:
            return np.empty(0, dtype=np.int64)
        # column-major: pyarrow copies each column whole; numpy then transposes while it
        # widens and adds the offsets (2x faster than a row-major to_tensor: no strided writes)
        t = table.select(cats).to_tensor(row_major=False).to_numpy()
        mat = np.empty((n, len(cats)), dtype=np.int64)
        if self._sizes is None:
            np.copyto(mat, t, casting="unsafe")
            hi = _column_reduce(mat.view(np.uint64), np.maximum)  # negative: >= 2^63
            bad = hi >= np.uint64(1 << 63)
            top = hi.astype(np.int64)
        else:
            np.add(t, self._offs, out=mat, casting="unsafe")
            top = _column_reduce(mat, np.maximum)
            bad = top >= self._ends
            if signed:  # negative keys (or int64 wrap-around)
                bad |= _column_reduce(mat, np.minimum) < self._offs
        if bad.any():
            s = int(np.flatnonzero(bad)[0])
            vals = _one_chunk(table.column(cats[s])).to_numpy(zero_copy_only=False)
            self._check_slot(path, vals.astype(np.int64), s, np.arange(n), row0)
        keys = mat.reshape(-1)
        if not self.config.i64_input_key and int(top.max()) > 0xFFFFFFFF:
            check_keys(path, keys, None, None, None, row0, False)
        return keys

    def _key_matrix(self, cols: list[np.ndarray], n: int) -> np.ndarray:
        """The ``(n, S)`` int64 key matrix of one-key-per-slot columns, slot offsets added
        (one ``np.stack`` when there are none)."""
        mat = np.empty((n, len(cols)), dtype=np.int64)
        if not cols:
            return mat
        if self._sizes is None:
            np.stack(cols, axis=1, out=mat, casting="unsafe")
        else:
            for s, col in enumerate(cols):
                np.add(col, self._offs[s], out=mat[:, s], casting="unsafe")
        return mat

    def _check_slot(self, path: str, vals: np.ndarray, s: int, rows: np.ndarray,
                    row0: int) -> None:
        """Raise the DataError for the first negative or too-large key of slot ``s``."""
        check_keys(path, vals, np.full(vals.size, s), self._sizes, rows, row0, True,
                   slot_names=self.columns.cats)

    # -- general conversion: list columns, nulls, any number type ----------------------------
    def _float_block(self, path, table, names, row0) -> np.ndarray:
        """Float columns (scalar or fixed-width lists) side by side, one ``(n, width)`` array."""
        import pyarrow as pa

        n = table.num_rows
        parts = []
        for name in names:
            col = _one_chunk(table.column(name))
            if col.null_count:
                raise DataError(path, "null value", row=row0 + _first_null(col), field=name)
            if pa.types.is_list(col.type) or pa.types.is_fixed_size_list(col.type):
                vals = col.flatten().to_numpy(zero_copy_only=False)
                width = vals.size // max(len(col), 1)
                parts.append(vals.reshape(len(col), width))
            else:
                parts.append(col.to_numpy(zero_copy_only=False)[:, None])
        out = np.empty((n, sum(p.shape[1] for p in parts)), dtype=np.float32)
        c0 = 0
        for part in parts:
            out[:, c0 : c0 + part.shape[1]] = part
            c0 += part.shape[1]
        return out

    def _general_chunk(self, path: str, table, row0: int) -> Chunk:
        c, sch = self.columns, self.schema
        labels = self._float_block(path, table, c.labels, row0)
        dense = self._float_block(path, table, c.dense, row0)
        if dense.shape[1] != sch.dense_dim:
            raise DataError(path, f"dense columns {c.dense} give {dense.shape[1]} values per "
                            f"sample, the Input has dense_dim {sch.dense_dim}", field="conts")
        check_dense_finite(path, dense, row0)
        per_slot, lengths, top = self._slot_columns(path, table, row0)
        if lengths is None:
            keys, lengths = self._one_hot_matrix(path, per_slot, table.num_rows, row0)
        else:
            keys = self._multi_hot_keys(path, per_slot, lengths, row0)
        if not self.config.i64_input_key and top > 0xFFFFFFFF:
            check_keys(path, keys, None, None, None, row0, False)
        k, ln = split_slots(sch, keys, lengths)
        return Chunk(labels, dense, k, ln)

    def _slot_columns(self, path: str, table, row0: int
                      ) -> tuple[list[np.ndarray], np.ndarray | None, int]:
        """Per-slot key arrays (range-checked), ``lengths`` when a slot is a list column (else
        None) and the largest key after offsets."""
        import pyarrow as pa

        n, S = table.num_rows, len(self.columns.cats)
        lengths: np.ndarray | None = None
        per_slot: list[np.ndarray] = []
        top = 0
        for s, name in enumerate(self.columns.cats):
            col = _one_chunk(table.column(name))
            if col.null_count:
                raise DataError(path, "null value", row=row0 + _first_null(col), field=name)
            if pa.types.is_list(col.type):
                if lengths is None:
                    lengths = np.ones((n, S), dtype=np.int64)
                vals = col.flatten().to_numpy(zero_copy_only=False)
                lengths[:, s] = np.diff(col.offsets.to_numpy())
            else:
                vals = col.to_numpy(zero_copy_only=False)
            if vals.size:
                lo, hi = int(vals.min()), int(vals.max())
                if lo < 0 or (self._sizes is not None and hi >= self._sizes[s]):
                    ln = lengths[:, s] if lengths is not None else np.ones(n, dtype=np.int64)
                    self._check_slot(path, vals.astype(np.int64), s,
                                     np.repeat(np.arange(n), ln), row0)
                top = max(top, hi + int(self._offs[s]))
            per_slot.append(vals)
        return per_slot, lengths, top

    def _one_hot_matrix(self, path: str, per_slot: list[np.ndarray], n: int, row0: int
                        ) -> tuple[np.ndarray, np.ndarray]:
        """All slots one-hot: the ``(n, S)`` key matrix, written column by column."""
        S, maxnnz = len(per_slot), self._maxnnz
        if S and (maxnnz < 1).any() and n:
            s = int(np.flatnonzero(maxnnz < 1)[0])
            raise DataError(path, f"1 keys in one slot, nnz_per_slot allows {maxnnz[s]}",
                            row=row0, field=self.columns.cats[s])
        return self._key_matrix(per_slot, n).reshape(-1), fixed_lengths(n, [1] * S)

    def _multi_hot_keys(self, path: str, per_slot: list[np.ndarray], lengths: np.ndarray,
                        row0: int) -> np.ndarray:
        over = lengths > self._maxnnz
        if over.any():
            r, s = np.argwhere(over)[0]
            raise DataError(path, f"{int(lengths[r, s])} keys in one slot, nnz_per_slot "
                            f"allows {self._maxnnz[s]}", row=row0 + int(r),
                            field=self.columns.cats[s])
        return _interleave([v.astype(np.int64, copy=False) + self._offs[s]
                            for s, v in enumerate(per_slot)], lengths)


@functools.cache
def _to_tensor_ok() -> bool:
    """pyarrow has ``Table.to_tensor(row_major=...)`` (the fast path needs it)."""
    import pyarrow as pa

    try:  # (built from a buffer: pa.array / pa.scalar import pandas)
        a = pa.Array.from_buffers(pa.int32(), 1, [None, pa.py_buffer(bytes(4))])
        pa.Table.from_arrays([a], names=["a"]).to_tensor(row_major=False)
    except (AttributeError, TypeError, NotImplementedError):
        return False
    return True


#: per thread: the Parquet reader of the file it read last (``_open``)
_OPEN = threading.local()


def _open(path: str, md):
    """A Parquet file reader of ``path`` (footer ``md``), kept open for the calling thread's
    next read of the same file. It is pyarrow's low-level reader on a native file: the
    ``ParquetFile`` wrapper's filesystem resolution and column bookkeeping hold the GIL or
    release and retake it several times per call, and next to a thread that keeps the GIL busy
    (a training loop) every retake waits, so that the open cost ~10x the ~0.1 ms it costs alone.
    """
    hit = getattr(_OPEN, "file", None)
    if hit is not None and hit[0] == path and hit[1] is md:
        return hit[2]
    import pyarrow as pa

    try:
        from pyarrow._parquet import ParquetReader

        reader = ParquetReader()
        reader.open(pa.OSFile(path), metadata=md, pre_buffer=False)
    except (ImportError, TypeError):  # another pyarrow's internals: the public wrapper's reader
        reader = _pq().ParquetFile(path, metadata=md, pre_buffer=False).reader
    _OPEN.file = (path, md, reader)
    return reader


def _leaf_indices(column_paths: list[tuple[str, ...]], names: list[str]) -> list[int]:
    """Parquet leaf columns of the top-level columns ``names``, in that order (what
    ``ParquetFile.read_row_groups(columns=names)`` reads; unknown names read nothing)."""
    leaves: dict[str, list[int]] = {}
    for i, p in enumerate(column_paths):
        leaves.setdefault(p[0], []).append(i)
    return [i for name in names for i in leaves.get(name, [])]


def _float_block(table, names: list[str], n: int, f32: bool) -> np.ndarray:
    """Number columns side by side as one ``(n, len(names))`` float32 array: one
    ``to_tensor`` when all are float32, else each column cast on its own (as the general
    path does: a float64 or int64 value is rounded to float32 once)."""
    if f32:
        return table.select(names).to_tensor().to_numpy()
    cols = [_one_chunk(table.column(name)).to_numpy(zero_copy_only=False) for name in names]
    return _stack_float32(cols, n)


def _column_reduce(mat: np.ndarray, op: np.ufunc, rows: int = 64) -> np.ndarray:
    """``op.reduce(mat, axis=0)`` of a C-ordered ``(n, S)`` array, computed over
    ``(n / rows, rows * S)`` blocks first so that the inner loop runs along whole rows (2-3x
    faster than a plain axis-0 reduction for small S)."""
    n, S = mat.shape
    k = n // rows * rows
    if k == 0:
        return op.reduce(mat, axis=0)
    out = op.reduce(op.reduce(mat[:k].reshape(-1, rows * S), axis=0).reshape(rows, S), axis=0)
    return op(out, op.reduce(mat[k:], axis=0)) if k < n else out


def _stack_float32(arrays: list[np.ndarray], n: int) -> np.ndarray:
    """Columns side by side as one ``(n, len(arrays))`` float32 array (one copy)."""
    if not arrays:
        return np.zeros((n, 0), dtype=np.float32)
    return np.stack(arrays, axis=1, dtype=np.float32, casting="unsafe")


def _one_chunk(col):
    """A ChunkedArray as one Array (no copy when it already is one chunk)."""
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _first_null(col) -> int:
    return int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])


def _interleave(per_slot: list[np.ndarray], lengths: np.ndarray) -> np.ndarray:
    """Column-major per-slot keys -> sample-major flat keys."""
    n, S = lengths.shape
    if S == 0:
        return np.zeros(0, dtype=np.int64)
    if (lengths == 1).all():
        return np.stack(per_slot, axis=1).reshape(-1)
    flat_len = lengths.reshape(-1)
    dst_start = np.concatenate(([0], np.cumsum(flat_len)[:-1])).reshape(n, S)
    out = np.empty(int(flat_len.sum()), dtype=np.int64)
    for s, vals in enumerate(per_slot):
        ln = lengths[:, s]
        src_excl = np.concatenate(([0], np.cumsum(ln)[:-1]))
        idx = np.repeat(dst_start[:, s] - src_excl, ln) + np.arange(vals.size)
        out[idx] = vals
    return out
