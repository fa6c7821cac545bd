"""Writers of HugeCTR's binary/columnar formats (Norm, Raw, RawAsync, Parquet) — vectorised numpy.

Each writer takes a :class:`~terarec.data.readers.chunk.Chunk` whose single sparse entry holds the
keys of *all* slots (``keys[0]`` sample-major, ``lengths[0]`` of shape (n, total_slots)), exactly
the bytes the matching reader decodes (per-slot ids for Raw/RawAsync/Parquet, global ids for Norm).
Used by the synthetic data generator and by preprocessing. ``WRITERS`` maps format -> writer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import numpy as np

from terarec.data.readers.chunk import Chunk
from terarec.utils.registry import Registry

WRITERS: Registry[Callable[..., None]] = Registry("data writer format")


def _excl(x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.size, dtype=np.int64)
    if x.size > 1:
        np.cumsum(x[:-1], out=out[1:])
    return out


def _key_words(keys: np.ndarray, i64: bool) -> np.ndarray:
    if not i64:
        return keys.astype(np.uint32).view(np.int32)
    return keys.astype("<i8").view("<i4")  # lo, hi pairs


@WRITERS.register("Norm")
def write_norm(path: str, c: Chunk, *, check_type: str = "Sum", i64_input_key: bool = False,
               **_: object) -> None:
    """Norm file (§15.2): header + samples; ``check_type`` "Sum" adds HugeCTR's record framing."""
    labels, dense, keys, ln = c.labels, c.dense, c.keys[0], c.lengths[0]
    n, L = labels.shape
    D, S = dense.shape[1], ln.shape[1]
    kw = 2 if i64_input_key else 1
    words = L + D + S + ln.sum(axis=1) * kw
    wstart = _excl(words)
    out = np.empty(int(words.sum()), dtype=np.int32)
    ld = np.ascontiguousarray(np.hstack([labels, dense]).astype(np.float32)).view(np.int32)
    out[wstart[:, None] + np.arange(L + D)] = ld
    cum_ln = np.zeros_like(ln)
    if S > 1:
        cum_ln[:, 1:] = np.cumsum(ln[:, :-1], axis=1)
    nnz_pos = wstart[:, None] + L + D + np.arange(S) + kw * cum_ln
    out[nnz_pos] = ln
    tot = ln.reshape(-1)
    idx = np.repeat(nnz_pos.reshape(-1) + 1 - _excl(tot) * kw, tot) + np.arange(keys.size) * kw
    kwds = _key_words(keys, i64_input_key)
    if kw == 1:
        out[idx] = kwds
    else:
        out[idx], out[idx + 1] = kwds[0::2], kwds[1::2]
    header = np.array([1 if check_type == "Sum" else 0, n, L, D, S, 0, 0, 0], dtype="<i8")
    if check_type != "Sum":
        with open(path, "wb") as fh:
            fh.write(header.tobytes())
            fh.write(out.tobytes())
        return
    payload = out.view(np.uint8)
    lens = words * 4
    rec = 69 + _excl(lens + 5)
    buf = np.empty(69 + int((lens + 5).sum()), dtype=np.uint8)
    hb = header.view(np.uint8)
    buf[:4] = np.array([64], "<i4").view(np.uint8)
    buf[4:68] = hb
    buf[68] = int(hb.sum()) & 0xFF
    buf[rec[:, None] + np.arange(4)] = lens.astype("<i4").view(np.uint8).reshape(n, 4)
    pexcl = _excl(lens)
    buf[np.repeat(rec + 4 - pexcl, lens) + np.arange(payload.size)] = payload
    if n:
        buf[rec + 4 + lens] = (np.add.reduceat(payload, pexcl, dtype=np.uint64) & 0xFF).astype(
            np.uint8)
    buf.tofile(path)


@WRITERS.register("Raw")
def write_raw(path: str, c: Chunk, *, float_label_dense: bool = False, append: bool = False,
              **_: object) -> None:
    """Legacy one-hot Raw (§15.3): int32 (or float32) label+dense, one uint32 key per slot."""
    ln = c.lengths[0]
    if (ln != 1).any():
        raise ValueError("Raw is one-hot: every slot needs exactly one key")
    n = len(c)
    if float_label_dense:
        ld = np.hstack([c.labels, c.dense]).astype(np.float32).view(np.int32)
    else:
        ld = np.hstack([c.labels, c.dense]).astype(np.int32)
    rows = np.hstack([ld, c.keys[0].astype(np.uint32).view(np.int32).reshape(n, -1)])
    with open(path, "ab" if append else "wb") as fh:
        fh.write(np.ascontiguousarray(rows, dtype="<i4").tobytes())


@WRITERS.register("RawAsync")
def write_raw_async(path: str, c: Chunk, *, i64_input_key: bool = False,
                    is_dense_float: bool = True, append: bool = False, **_: object) -> None:
    """Multi-hot RawAsync (§15.4): int32 labels, float32/int32 dense, static-hotness keys."""
    ln = c.lengths[0]
    n = len(c)
    if n and (ln != ln[0]).any():
        raise ValueError("RawAsync needs the same number of keys in a slot for every sample")
    lab = c.labels.astype(np.int32)
    dense = c.dense.astype(np.float32).view(np.int32) if is_dense_float else \
        c.dense.astype(np.int32)
    kw = _key_words(c.keys[0], i64_input_key).reshape(n, -1)
    rows = np.hstack([lab, dense, kw])
    with open(path, "ab" if append else "wb") as fh:
        fh.write(np.ascontiguousarray(rows, dtype="<i4").tobytes())


def parquet_column_names(label_dim: int, dense_dim: int, slot_num: int) -> tuple[list, list, list]:
    labels = ["label"] if label_dim == 1 else [f"label{i}" for i in range(label_dim)]
    return labels, [f"I{i + 1}" for i in range(dense_dim)], [f"C{i + 1}" for i in range(slot_num)]


@WRITERS.register("Parquet")
def write_parquet(path: str, c: Chunk, *, i64_input_key: bool = True, multi_hot: bool | None = None,
                  row_group_size: int = 1 << 17, names: tuple | None = None,
                  **_: object) -> None:
    """Parquet (§15.5): float32 label/dense columns, int cats (list<int> when multi-hot)."""
    from terarec.utils.imports import require

    pa = require("pyarrow", extra="parquet", feature="Writing Parquet")
    pq = require("pyarrow.parquet", extra="parquet", feature="Writing Parquet")
    n, L = c.labels.shape
    ln = c.lengths[0]
    S = ln.shape[1]
    lab_n, dense_n, cat_n = names or parquet_column_names(L, c.dense.shape[1], S)
    cols, fields = [], []
    for i, name in enumerate(lab_n):
        cols.append(pa.array(c.labels[:, i].astype(np.float32)))
        fields.append(name)
    for i, name in enumerate(dense_n):
        cols.append(pa.array(c.dense[:, i].astype(np.float32)))
        fields.append(name)
    kt = np.int64 if i64_input_key else np.uint32
    keys = c.keys[0]
    mh = bool((ln != 1).any()) if multi_hot is None else multi_hot
    if not mh:
        mat = keys.reshape(n, S).astype(kt)
        for s, name in enumerate(cat_n):
            cols.append(pa.array(mat[:, s]))
            fields.append(name)
    else:
        flat = ln.reshape(-1)
        row_start = _excl(flat).reshape(n, S)
        for s, name in enumerate(cat_n):
            lens = ln[:, s]
            idx = np.repeat(row_start[:, s] - _excl(lens), lens) + np.arange(int(lens.sum()))
            off = np.concatenate(([0], np.cumsum(lens))).astype(np.int32)
            cols.append(pa.ListArray.from_arrays(pa.array(off), pa.array(keys[idx].astype(kt))))
            fields.append(name)
    table = pa.Table.from_arrays(cols, names=fields)
    pq.write_table(table, path, row_group_size=row_group_size)


def write_file_list(path: str, files: list[str]) -> None:
    """HugeCTR file list (§15.1)."""
    d = os.path.dirname(path)
    if d:
        os.makedirs(d, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(f"{len(files)}\n")
        for f in files:
            fh.write(f"{f}\n")


def write_parquet_metadata(directory: str, files: list[str], rows: list[int],
                           names: tuple[list, list, list]) -> str:
    """``_metadata.json`` next to the parquet files (§15.5)."""
    labels, dense, cats = names
    idx = 0

    def entries(cols: list[str]) -> list[dict]:
        nonlocal idx
        out = [{"col_name": c, "index": idx + i} for i, c in enumerate(cols)]
        idx += len(cols)
        return out

    meta = {
        "file_stats": [{"file_name": os.path.basename(f), "num_rows": int(r)}
                       for f, r in zip(files, rows)],
        "labels": entries(labels),
        "conts": entries(dense),
        "cats": entries(cats),
    }
    path = os.path.join(directory, "_metadata.json")
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=1)
    return path
