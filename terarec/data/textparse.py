"""Vectorised (numpy) parsing of delimited text: split lines into fields, parse ints, hex, floats
and fixed-width byte strings, with exact line/field locations for bad input.

Shared by the Criteo TSV reader and the preprocessing tools; no per-row Python loops.
Quoted CSV fields are not supported (no RecSys data set in scope uses them).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from terarec.errors import DataError

_HEX = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX[_c] = 10 + _i


@dataclass
class Fields:
    """Field byte ranges of the good lines of a block: ``starts``/``ends`` (n, F)."""

    buf: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    lines: np.ndarray  # 1-based line number of every good row
    bad_lines: np.ndarray  # 1-based line numbers of rows with the wrong field count
    bad_counts: np.ndarray  # their field counts


def split_fields(buf: np.ndarray, sep: int, n_fields: int, first_line: int = 1) -> Fields:
    """Split ``buf`` (uint8, whole lines) into ``n_fields`` fields per line."""
    if buf.size and buf[-1] != 10:
        buf = np.append(buf, np.uint8(10))
    is_nl = buf == 10
    nl = np.flatnonzero(is_nl)
    seps = np.flatnonzero(is_nl | (buf == sep))
    n_lines = nl.size
    sep_line = np.cumsum(is_nl[seps]) - is_nl[seps]  # line index of every separator
    counts = np.bincount(sep_line, minlength=n_lines)
    good = counts == n_fields
    line_no = np.arange(n_lines, dtype=np.int64) + first_line
    if good.all():
        ends = seps.reshape(n_lines, n_fields)
    else:
        ends = seps[good[sep_line]].reshape(-1, n_fields)
    starts = np.empty_like(ends)
    if ends.size:
        starts[:, 1:] = ends[:, :-1] + 1
        line_start = np.concatenate(([0], nl[:-1] + 1))
        starts[:, 0] = line_start[good]
        # tolerate CRLF line endings
        last = ends[:, -1]
        cr = (last > starts[:, -1]) & (buf[np.maximum(last - 1, 0)] == 13)
        ends[cr, -1] -= 1
    return Fields(buf, starts, ends, line_no[good], line_no[~good], counts[~good])


def gather(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, width: int | None = None,
           right: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Bytes of each field into an (N, width) matrix (zero padded) and a validity mask."""
    w = (ends - starts).reshape(-1)
    s = starts.reshape(-1)
    e = ends.reshape(-1)
    width = int(w.max()) if width is None and w.size else (width or 0)
    W = max(width, 1)
    j = np.arange(W, dtype=np.int64)
    # Pad the buffer by W bytes on both sides so every index is in range (no clipping pass);
    # the mask compares only field widths: right-aligned byte j is inside iff width-w <= j < width.
    padded = np.concatenate((np.zeros(W, np.uint8), buf, np.zeros(W, np.uint8)))
    base = (e - width + W) if right else (s + W)
    idx_dtype = np.int32 if padded.size < (1 << 31) else np.int64
    idx = base.astype(idx_dtype)[:, None] + j.astype(idx_dtype)
    valid = ((j[None, :] >= (width - w)[:, None]) & (j[None, :] < width)) if right else \
        (j[None, :] < w[:, None])
    mat = padded[idx]
    mat[~valid] = 0
    return mat, valid


def parse_ints(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decimal ints -> (values int64, missing mask, bad mask); shapes follow ``starts``."""
    shape = starts.shape
    w = (ends - starts).reshape(-1)
    missing = w == 0
    if not w.size:
        z = np.zeros(shape, bool)
        return np.zeros(shape, np.int64), z, z
    neg = (~missing) & (buf[np.minimum(starts.reshape(-1), buf.size - 1)] == ord("-"))
    s2 = starts.reshape(-1) + neg
    width = int((ends.reshape(-1) - s2).max())
    too_long = (ends.reshape(-1) - s2) > 18
    width = min(width, 18)
    mat, valid = gather(buf, s2, ends.reshape(-1), width, right=True)
    d = mat.astype(np.int64) - 48
    bad_digit = valid & ((d < 0) | (d > 9))
    d = np.where(valid, d, 0)
    pw = 10 ** np.arange(width - 1, -1, -1, dtype=np.int64)
    vals = (d * pw).sum(axis=1)
    vals = np.where(neg, -vals, vals)
    bad = bad_digit.any(axis=1) | too_long | (neg & (ends.reshape(-1) == s2))
    return vals.reshape(shape), missing.reshape(shape), bad.reshape(shape)


def parse_hex(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hex strings (<= 16 digits) -> (values uint64, missing mask, bad mask)."""
    shape = starts.shape
    w = (ends - starts).reshape(-1)
    missing = w == 0
    if not w.size:
        z = np.zeros(shape, bool)
        return np.zeros(shape, np.uint64), z, z
    width = min(int(w.max()), 16)
    mat, valid = gather(buf, starts, ends, width, right=True)
    nib = _HEX[mat]
    bad = ((nib == 255) & valid).any(axis=1) | (w > 16)
    nib = np.where(valid, nib, 0).astype(np.uint64)
    vals = np.zeros(nib.shape[0], dtype=np.uint64)
    for j in range(width):
        vals = (vals << np.uint64(4)) | nib[:, j]
    return vals.reshape(shape), missing.reshape(shape), bad.reshape(shape)


def parse_floats(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Decimal floats -> (values float64, missing mask, bad mask)."""
    shape = starts.shape
    w = (ends - starts).reshape(-1)
    missing = w == 0
    mat, _ = gather(buf, starts, ends)
    strs = mat.view(f"S{mat.shape[1]}").reshape(-1)
    strs = np.where(missing, b"0", strs)
    try:
        vals = strs.astype(np.float64)
        bad = np.zeros(w.size, bool)
    except ValueError:
        vals = np.zeros(w.size, np.float64)
        bad = np.zeros(w.size, bool)
        for i, s in enumerate(strs):  # only on the error path
            try:
                vals[i] = float(s)
            except ValueError:
                bad[i] = True
    return vals.reshape(shape), missing.reshape(shape), bad.reshape(shape)


def as_bytes(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Fields as a fixed-width numpy bytes array (``S<w>``), shape of ``starts``."""
    mat, _ = gather(buf, starts, ends)
    return mat.view(f"S{mat.shape[1]}").reshape(starts.shape)


def mix64(x: np.ndarray, salt: int = 0) -> np.ndarray:
    """splitmix64 finaliser of ``x + salt`` (uint64, wrapping) — a stable, well-mixed hash."""
    z = x.astype(np.uint64) + np.uint64((salt * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_bytes(strs: np.ndarray, salt: int = 0) -> np.ndarray:
    """Stable 64-bit hash of fixed-width byte strings (padding zeros ignored by construction)."""
    flat = np.ascontiguousarray(strs).reshape(-1)
    w = flat.dtype.itemsize
    mat = flat.view(np.uint8).reshape(-1, w)
    h = np.full(flat.size, 0xCBF29CE484222325 ^ salt, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(w):
            c = mat[:, j].astype(np.uint64)
            h = np.where(c != 0, (h ^ c) * np.uint64(0x100000001B3), h)
    return mix64(h).reshape(strs.shape)


def raise_first_bad(path: str, fields: Fields, bad: np.ndarray, names: list[str],
                    what: str) -> None:
    """Raise a DataError at the first True of ``bad`` (rows x columns ``names``)."""
    r, c = np.argwhere(bad)[0]
    s, e = fields.starts[r], fields.ends[r]
    col = int(c)
    text = bytes(fields.buf[s[col] : e[col]]).decode("utf-8", "replace")
    raise DataError(path, f"expected {what}, received {text!r}", row=int(fields.lines[r]),
                    field=names[col])


def raise_bad_count(path: str, fields: Fields, n_fields: int) -> None:
    raise DataError(path, f"expected {n_fields} fields, received {int(fields.bad_counts[0])} "
                    f"({len(fields.bad_lines)} such lines in this block)",
                    row=int(fields.bad_lines[0]))
