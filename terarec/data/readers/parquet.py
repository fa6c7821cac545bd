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
``sum(slot_size_array[:s])``; without ``i64_input_key`` keys (after offsets) must fit 32 bits.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from terarec.data.readers.base import FormatSource, check_files_exist, read_file_list
from terarec.data.readers.chunk import (
    Chunk,
    check_dense_finite,
    check_keys,
    fixed_lengths,
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


class ParquetSource(FormatSource):
    def resolve(self, source: str | list[str]) -> list[str]:
        paths = resolve_parquet_source(source)
        self._pf_meta = {}
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

    def file_num_samples(self, path: str) -> int:
        try:
            md = _pq().ParquetFile(path).metadata
        except Exception as exc:  # pyarrow raises several types for corrupt files
            raise DataError(path, f"not a readable parquet file: {exc}") from None
        self._pf_meta[path] = md
        n = int(md.num_rows)
        want = self.meta_rows.get(os.path.basename(path))
        if want is not None and want != n:
            raise DataError(path, f"_metadata.json says {want} rows, the file has {n}",
                            field="file_stats.num_rows")
        return n

    def pieces(self, index: int, start: int, stop: int) -> list[tuple[int, int]]:
        md = self._pf_meta[self.paths[index]]
        out, base = [], 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            a, b = max(start, base), min(stop, base + n)
            if a < b:
                out.append((a, b))
            base += n
        return out

    def decode(self, path: str, start: int, stop: int) -> Iterator[Chunk]:
        pf = _pq().ParquetFile(path)
        md = pf.metadata
        base, groups, first = 0, [], 0
        for g in range(md.num_row_groups):
            n = md.row_group(g).num_rows
            if base < stop and base + n > start:
                if not groups:
                    first = base
                groups.append(g)
            base += n
        c = self.columns
        try:
            # Units already decode on num_workers threads: pyarrow's own pool on top of them
            # oversubscribes the cores (1.1M rows per CPU-s with 16 workers on 16 cores vs 1.9M
            # on 2), so one reader thread decodes its row groups by itself.
            table = pf.read_row_groups(groups, columns=c.labels + c.dense + c.cats,
                                       use_threads=self.config.num_workers <= 1)
        except Exception as exc:
            raise DataError(path, f"cannot read columns {c.labels + c.dense + c.cats}: {exc}"
                            ) from None
        table = table.slice(start - first, stop - start)
        yield self._to_chunk(path, table, start)

    def _float_block(self, path, table, names, row0) -> np.ndarray:
        """Float columns (scalar or fixed-width lists) side by side, one ``(n, width)`` array."""
        import pyarrow as pa

        n = table.num_rows
        parts = []
        for name in names:
            col = table.column(name)
            col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
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

    def _to_chunk(self, path: str, table, row0: int) -> Chunk:
        import pyarrow as pa

        c, sch = self.columns, self.schema
        n = table.num_rows
        labels = self._float_block(path, table, c.labels, row0)
        dense = self._float_block(path, table, c.dense, row0)
        if dense.shape[1] != sch.dense_dim:
            raise DataError(path, f"dense columns {c.dense} give {dense.shape[1]} values per "
                            f"sample, the Input has dense_dim {sch.dense_dim}", field="conts")
        check_dense_finite(path, dense, row0)
        sizes = self.config.slot_size_array
        S = len(c.cats)
        offs = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64) if sizes else \
            np.zeros(S, dtype=np.int64)
        lengths: np.ndarray | None = None
        per_slot: list[np.ndarray] = []
        top = 0
        for s, name in enumerate(c.cats):
            col = table.column(name)
            col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
            if col.null_count:
                raise DataError(path, "null value", row=row0 + _first_null(col), field=name)
            if pa.types.is_list(col.type):
                if lengths is None:
                    lengths = np.ones((n, S), dtype=np.int64)
                off = col.offsets.to_numpy()
                vals = col.flatten().to_numpy(zero_copy_only=False)
                lengths[:, s] = np.diff(off)
            else:
                vals = col.to_numpy(zero_copy_only=False)
            if vals.size:
                lo, hi = int(vals.min()), int(vals.max())
                if lo < 0 or (sizes and hi >= sizes[s]):
                    ln = lengths[:, s] if lengths is not None else np.ones(n, dtype=np.int64)
                    rows = np.repeat(np.arange(n), ln)
                    check_keys(path, vals.astype(np.int64), np.full(vals.size, s),
                               np.asarray(sizes) if sizes else None, rows, row0, True,
                               slot_names=c.cats)
                top = max(top, hi + int(offs[s]))
            per_slot.append(vals)
        maxnnz = np.asarray([m for sp in sch.sparse for m in sp.nnz_per_slot], dtype=np.int64)
        if lengths is None:  # all one-hot: write the (n, S) key matrix column by column
            if S and (maxnnz < 1).any() and n:
                s = int(np.flatnonzero(maxnnz < 1)[0])
                raise DataError(path, f"1 keys in one slot, nnz_per_slot allows {maxnnz[s]}",
                                row=row0, field=c.cats[s])
            mat = np.empty((n, S), dtype=np.int64)
            for s, vals in enumerate(per_slot):
                if offs[s]:
                    np.add(vals, offs[s], out=mat[:, s], casting="unsafe")
                else:
                    mat[:, s] = vals
            keys = mat.reshape(-1)
            lengths = fixed_lengths(n, [1] * S)
        else:
            over = lengths > maxnnz
            if over.any():
                r, s = np.argwhere(over)[0]
                raise DataError(path, f"{int(lengths[r, s])} keys in one slot, nnz_per_slot "
                                f"allows {maxnnz[s]}", row=row0 + int(r), field=c.cats[s])
            keys = _interleave([v.astype(np.int64, copy=False) + offs[s]
                                for s, v in enumerate(per_slot)], lengths)
        if not self.config.i64_input_key and top > 0xFFFFFFFF:
            check_keys(path, keys, None, None, None, row0, False)
        k, ln = split_slots(sch, keys, lengths)
        return Chunk(labels, dense, k, ln)


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
