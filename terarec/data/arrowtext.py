"""Fast path for delimited text blocks: pyarrow.csv's C++ parser (the ``parquet`` extra).

Owns the pyarrow side of text parsing; :mod:`terarec.data.textparse` (numpy) stays the reference.
Callers try :func:`read_block` first and fall back to the numpy parser whenever it returns None:
pyarrow is not installed, ``TERAREC_TEXT_PARSER=numpy`` is set, or the block holds anything the
fast path would not decode exactly like the numpy parser (a wrong field count, an empty line, a
stray CR, a value pyarrow cannot convert). The numpy parser then decodes the block or reports the
problem with file, line and field, so outputs and errors do not depend on pyarrow.

Integer columns are read as bytes and checked here (only ``-`` and digits, at most 18 digits)
before they are converted, because pyarrow's integer parser accepts more than the numpy one
(blanks, ``0x`` prefixes, 19 digits). Categorical columns stay bytes; :func:`pack_short` turns
values of at most 8 bytes into big-endian ``uint64`` whose order equals the bytes' order.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

_OK_INT = np.zeros(256, dtype=bool)
_OK_INT[list(b"0123456789-")] = True


def available() -> bool:
    """pyarrow.csv importable and not disabled by ``TERAREC_TEXT_PARSER=numpy``."""
    if os.environ.get("TERAREC_TEXT_PARSER", "").lower() == "numpy":
        return False
    try:
        import pyarrow.csv  # noqa: F401
    except ImportError:
        return False
    return True


def read_block(data: bytes | np.ndarray, names: list[str], floats: list[str],
               include: list[str], sep: str = "\t", use_threads: bool = False,
               n_lines: int | None = None) -> Any | None:
    """Parse whole lines of ``data`` (every line ``len(names)`` fields) into a pyarrow Table of
    the ``include`` columns: ``floats`` as float64 (empty -> null), all others as binary.

    Returns None when the fast path does not apply (see module docstring).
    """
    if not available():
        return None
    import pyarrow as pa
    import pyarrow.csv as pcsv

    raw = memoryview(data).cast("B")
    if not raw.nbytes:
        return None
    if n_lines is None:
        arr = np.frombuffer(raw, np.uint8)
        n_lines = int(np.count_nonzero(arr == 10)) + (0 if arr[-1] == 10 else 1)
    types = {c: (pa.float64() if c in floats else pa.binary()) for c in include}
    try:
        table = pcsv.read_csv(
            pa.py_buffer(raw),
            read_options=pcsv.ReadOptions(column_names=names, use_threads=use_threads,
                                          block_size=max(1 << 20, raw.nbytes + 1)),
            parse_options=pcsv.ParseOptions(delimiter=sep, quote_char=False, double_quote=False,
                                            escape_char=False, newlines_in_values=False,
                                            ignore_empty_lines=False),
            convert_options=pcsv.ConvertOptions(column_types=types, include_columns=include,
                                                null_values=[""], strings_can_be_null=False,
                                                quoted_strings_can_be_null=False,
                                                check_utf8=False),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError):
        return None
    if table.num_rows != n_lines:  # a stray CR splits a line: let the numpy parser decide
        return None
    return table


def _array(table: Any, name: str) -> Any:
    col = table.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def values(arr: Any, dtype: Any) -> np.ndarray:
    """The value buffer of a primitive array as numpy (no copy; entries under nulls undefined).

    Reads the buffer directly: ``Array.to_numpy`` (and ``pa.array(numpy)``) import pandas, which
    costs every preprocessing worker process ~0.5 s."""
    return np.frombuffer(arr.buffers()[1], dtype, count=len(arr) + arr.offset)[arr.offset:]


def nulls(arr: Any) -> np.ndarray:
    """Null mask of an array (bool numpy array)."""
    if not arr.null_count:
        return np.zeros(len(arr), bool)
    bits = np.frombuffer(arr.buffers()[0], np.uint8)
    return np.unpackbits(bits, count=len(arr) + arr.offset, bitorder="little")[arr.offset:] == 0


def binary_parts(arr: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(data bytes, starts, ends) of a binary array (no copy of the data)."""
    bufs = arr.buffers()
    off = np.frombuffer(bufs[1], dtype=np.int32, count=len(arr) + 1 + arr.offset)[arr.offset:]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else \
        np.zeros(0, np.uint8)
    off = off.astype(np.int64)
    return data, off[:-1], off[1:]


def floats(table: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values float64 with nulls as NaN, null mask) of a float column."""
    arr = _array(table, name)
    vals = values(arr, np.float64)
    miss = nulls(arr)
    if arr.null_count:
        vals = np.where(miss, np.nan, vals)
    return vals, miss


def ints(table: Any, names: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """(n, len(names)) int64 values (missing -> 0) and missing mask of integer columns read as
    bytes, or None when any value is not exactly what the numpy parser accepts."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = table.num_rows
    vals = np.zeros((n, len(names)), np.int64)
    miss = np.zeros((n, len(names)), bool)
    for j, name in enumerate(names):
        arr = _array(table, name)
        data, s, e = binary_parts(arr)
        w = e - s
        if w.size and int(w.max()) > 18:
            return None
        used = data[int(s[0]) : int(e[-1])] if w.size else data[:0]
        if used.size and not _OK_INT[used].all():
            return None
        m = w == 0
        try:
            v = pc.cast(arr, pa.int64(), safe=True) if not m.any() else \
                pc.cast(pc.if_else(pc.equal(pc.binary_length(arr), 0),
                                   pa.scalar(b"0", pa.binary()), arr), pa.int64())
        except (pa.ArrowInvalid, ValueError):
            return None  # e.g. "-" alone or "1-2"
        vals[:, j] = values(v, np.int64)
        miss[:, j] = m
    return vals, miss


def pack_short(arr: Any, out: np.ndarray | None = None) -> np.ndarray | None:
    """Values of a binary array as big-endian uint64 (``b""`` -> 0, zero padded on the right),
    or None if a value is longer than 8 bytes. Order and equality match numpy ``S`` strings.
    ``out``: a uint64 array of ``len(arr)`` to write into (returned)."""
    from terarec.data.textparse import gather

    data, s, e = binary_parts(arr)
    w = e - s
    if out is None:
        out = np.empty(w.size, np.uint64)
    if not w.size:
        return out
    if int(w.max()) > 8:
        return None
    used = data[int(s[0]) : int(e[-1])]
    if used.size == 8 * w.size:  # every value 8 bytes
        out[:] = used.view(">u8")
        return out
    full = w == 8
    if used.size == 8 * np.count_nonzero(full):  # e.g. Criteo: 8 hex digits or empty
        out.fill(0)
        out[full] = used.view(">u8")
        return out
    mat, _ = gather(data, s, e, 8)
    out[:] = mat.view(">u8").reshape(-1)
    return out


def unpack_short(v: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_short` as numpy ``S8`` strings."""
    return np.ascontiguousarray(v, dtype=">u8").view("S8")


def binary_column(table: Any, name: str) -> Any:
    return _array(table, name)
