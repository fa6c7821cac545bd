"""Raw Criteo TSV reader ("CriteoTSV"): Kaggle / 1TB day files, plain or ``.gz``, read directly.

Line = ``label \\t I1..I13 \\t C1..C26`` (40 fields). Decoding (vectorised numpy, see
:mod:`terarec.data.textparse`):

* label: integer, required.
* dense: missing -> 0, negative -> 0 (Criteo's I2 has -1..-3), then ``log(x + 1)``.
* categorical: the 8-hex-digit value ``v`` is hashed with ``mix64(v, salt=slot)``; a missing value
  gets the reserved id 0. With ``slot_size_array`` (``M_s`` per slot, each >= 2) the key is
  ``1 + h % (M_s - 1)`` plus the slot offset ``sum(M[:s])`` (like Parquet); without it the key is
  ``1 + h % (2^63 - 1)`` (``i64_input_key``) or ``1 + h % (2^32 - 1)``, salted per slot.

``source``: a file, a list of files, or a file list (§15.1, first line = count). The schema must
be label_dim 1, dense_dim 13 and 26 one-hot slots. Files are streamed in blocks of ~16 MiB; with
``world_size > 1`` block ``j`` of a file goes to rank ``j % world_size``.
A line with the wrong field count or a non-numeric / non-hex field raises a DataError naming the
file, the line (1-based) and the column.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator

import numpy as np

from terarec.data import arrowtext
from terarec.data.readers.base import FormatSource, check_files_exist, read_file_list
from terarec.data.readers.chunk import Chunk, split_slots
from terarec.data.textparse import (
    _HEX,
    mix64,
    parse_hex,
    parse_ints,
    raise_bad_count,
    raise_first_bad,
    split_fields,
)
from terarec.errors import DataError

N_DENSE, N_CAT = 13, 26
COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
BLOCK_BYTES = 16 << 20


def iter_line_blocks(path: str, block_bytes: int = BLOCK_BYTES) -> Iterator[tuple[int, bytes]]:
    """Yield ``(first_line_number, bytes of whole lines)`` blocks of a text file (``.gz`` ok)."""
    for line, block, _ in iter_counted_blocks(path, block_bytes):
        yield line, block


def iter_counted_blocks(path: str, block_bytes: int = BLOCK_BYTES
                        ) -> Iterator[tuple[int, bytes, int]]:
    """:func:`iter_line_blocks` with the number of lines of each block (counted once)."""
    opener = gzip.open if path.endswith(".gz") else open
    line = 1
    rest = b""
    with opener(path, "rb") as fh:
        while True:
            data = fh.read(block_bytes)
            if not data:
                break
            data = rest + data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                rest = data
                continue
            block, rest = data[:cut], data[cut:]
            n = block.count(b"\n")
            yield line, block, n
            line += n
    if rest:
        yield line, rest + b"\n", 1


def hash_categoricals(vals: np.ndarray, missing: np.ndarray, sizes: list[int], i64: bool
                      ) -> np.ndarray:
    """Hash hex values (n, S) to keys as described in the module docstring."""
    n, S = vals.shape
    keys = np.empty((n, S), dtype=np.int64)
    offs = np.concatenate(([0], np.cumsum(sizes)[:-1])) if sizes else None
    space = (1 << 63) - 1 if i64 else (1 << 32) - 1
    for s in range(S):
        h = mix64(vals[:, s], salt=s + 1)
        m = np.uint64(sizes[s] - 1 if sizes else space)
        k = (h % m).astype(np.int64) + 1
        k[missing[:, s]] = 0
        keys[:, s] = k + (offs[s] if sizes else 0)
    return keys


class CriteoTSVSource(FormatSource):
    counts_known = False
    block_bytes = BLOCK_BYTES

    def resolve(self, source: str | list[str]) -> list[str]:
        sch = self.schema
        if sch.label_dim != 1 or sch.dense_dim != N_DENSE or sch.total_slots != N_CAT or any(
                n != 1 for sp in sch.sparse for n in sp.nnz_per_slot):
            raise DataError(str(source), "the Criteo TSV reader needs label_dim=1, dense_dim=13 "
                            f"and 26 one-hot slots; the Input has label_dim={sch.label_dim}, "
                            f"dense_dim={sch.dense_dim}, slots={sch.total_slots}")
        sizes = self.config.slot_size_array
        if sizes and (len(sizes) != N_CAT or min(sizes) < 2):
            raise DataError(str(source), f"slot_size_array must have 26 sizes >= 2, got {sizes}")
        items = [source] if isinstance(source, str) else list(source)
        paths: list[str] = []
        for item in items:
            if item.endswith((".txt", ".list")) and _looks_like_file_list(item):
                paths += read_file_list(item)
            else:
                paths.append(item)
        check_files_exist(paths, items[0] if items else "<source>")
        return paths

    def file_num_samples(self, path: str) -> int:  # pragma: no cover - counts_known is False
        raise NotImplementedError

    def decode(self, path: str, start: int, stop: int) -> Iterator[Chunk]:
        for job in self.jobs(path, start, stop):
            yield from job()

    def jobs(self, path: str, start: int, stop: int) -> Iterator[Callable[[], list[Chunk]]]:
        """One parse job per block of this rank (blocks are read here, parsed on the workers)."""
        if os.path.getsize(path) == 0:
            raise DataError(path, "file is empty")
        for j, (line0, block) in enumerate(iter_line_blocks(path, self.block_bytes)):
            if j % self.world_size != self.rank:
                continue
            yield lambda line0=line0, block=block: [parse_criteo_block(
                path, np.frombuffer(block, np.uint8), line0, self.config.slot_size_array,
                self.config.i64_input_key, self.schema)]


def _hex_column(arr) -> tuple[np.ndarray, np.ndarray] | None:
    """(values uint64, missing) of a binary column of hex strings, None if one is not hex."""
    data, s, e = arrowtext.binary_parts(arr)
    w = e - s
    miss = w == 0
    if not w.size:
        return np.zeros(0, np.uint64), miss
    if int(w.max()) == 8 and ((w == 8) | miss).all():  # Criteo: 8 digits or empty
        nib = _HEX[data[int(s[0]) : int(e[-1])].reshape(-1, 8)]
        if (nib == 255).any():
            return None
        packed = nib[:, 0::2] << 4 | nib[:, 1::2]  # (m, 4) bytes, big-endian
        v = np.ascontiguousarray(packed).view(">u4").reshape(-1).astype(np.uint64)
        if miss.any():
            out = np.zeros(w.size, np.uint64)
            out[~miss] = v
            return out, miss
        return v, miss
    vals, m, bad = parse_hex(data, s, e)
    return None if bad.any() else (vals, m)


def _parse_fast(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """pyarrow.csv parse of a block: (ints (n, 14), int missing, hex (n, 26), hex missing), or
    None where the numpy parser must decide (see :mod:`terarec.data.arrowtext`)."""
    table = arrowtext.read_block(buf, COLUMNS, [], COLUMNS)
    if table is None:
        return None
    got = arrowtext.ints(table, COLUMNS[:14])
    if got is None:
        return None
    ints, miss = got
    n = table.num_rows
    hexv = np.empty((n, N_CAT), np.uint64)
    hmiss = np.empty((n, N_CAT), bool)
    for j, name in enumerate(COLUMNS[14:]):
        h = _hex_column(arrowtext.binary_column(table, name))
        if h is None:
            return None
        hexv[:, j], hmiss[:, j] = h
    return ints, miss, hexv, hmiss


def parse_criteo_block(path, buf, line0, sizes, i64, schema) -> Chunk:
    """One block of whole lines -> a Chunk (pyarrow.csv fast path, numpy reference path)."""
    fast = _parse_fast(buf)
    if fast is not None and not fast[1][:, 0].any():
        ints, _, hexv, hmiss = fast
        return _to_chunk(ints, hexv, hmiss, sizes, i64, schema)
    f = split_fields(buf, 9, 40, line0)
    if f.bad_lines.size:
        raise_bad_count(path, f, 40)
    ints, miss, bad = parse_ints(f.buf, f.starts[:, :14], f.ends[:, :14])
    if bad.any():
        raise_first_bad(path, f, bad, COLUMNS, "an integer")
    if miss[:, 0].any():
        raise_first_bad(path, f, np.c_[miss[:, :1], np.zeros((len(miss), 13), bool)], COLUMNS,
                        "a label (0 or 1)")
    hexv, hmiss, hbad = parse_hex(f.buf, f.starts[:, 14:], f.ends[:, 14:])
    if hbad.any():
        raise_first_bad(path, f, np.c_[np.zeros((len(hbad), 14), bool), hbad], COLUMNS,
                        "a hexadecimal categorical value")
    return _to_chunk(ints, hexv, hmiss, sizes, i64, schema)


def _to_chunk(ints, hexv, hmiss, sizes, i64, schema) -> Chunk:
    labels = ints[:, :1].astype(np.float32)
    dense = np.log1p(np.maximum(ints[:, 1:], 0).astype(np.float32))
    keys = hash_categoricals(hexv, hmiss, sizes, i64)
    n = len(labels)
    k, ln = split_slots(schema, keys.reshape(-1), np.ones((n, N_CAT), np.int64))
    return Chunk(labels, dense, k, ln)


def _looks_like_file_list(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            first = fh.readline().strip()
        return first.isdigit()
    except OSError:
        return False
