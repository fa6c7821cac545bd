"""Text input specs (Criteo TSV, CSV with header, libSVM/libFM) and the vectorised block parser.

A :class:`TextSpec` says which columns are labels, dense (numeric) and categorical features.
:func:`parse_block` turns a block of whole lines into a :class:`Parsed` (numpy arrays + the
1-based line numbers of good rows + the bad rows with their problem).

libSVM / libFM lines are ``label idx:val idx:val ...`` with the same number of features on every
line (Frappe: 10); feature position ``i`` is categorical slot ``i`` and the value of slot ``i`` is
the feature index string (the ``:val`` part is ignored). libSVM labels are binarised: ``> 0`` -> 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from terarec.data import arrowtext
from terarec.data.textparse import as_bytes, gather, parse_floats, split_fields


@dataclass
class TextSpec:
    kind: str  # "delimited" or "libsvm"
    sep: str = "\t"
    names: list[str] = field(default_factory=list)  # all columns of a delimited line
    label: list[str] = field(default_factory=list)
    dense: list[str] = field(default_factory=list)
    cats: list[str] = field(default_factory=list)
    header: bool = False
    label_threshold: float | None = None  # label := value >= threshold
    num_fields: int = 0  # libsvm: features per line

    def n_fields(self) -> int:
        return 1 + self.num_fields if self.kind == "libsvm" else len(self.names)


@dataclass
class Parsed:
    labels: np.ndarray  # (n, L) float32
    dense: np.ndarray  # (n, D) float64, missing -> 0
    dense_missing: np.ndarray  # (n, D) bool
    cats: np.ndarray  # (n, C) bytes ("" = missing), or uint64 packed (arrowtext.pack_short)
    lines: np.ndarray  # (n,) 1-based line numbers
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line, problem)
    n_bad: int = 0


def _mask_rows(p: Parsed, keep: np.ndarray) -> Parsed:
    return Parsed(p.labels[keep], p.dense[keep], p.dense_missing[keep], p.cats[keep],
                  p.lines[keep], p.bad, p.n_bad)


def parse_block(spec: TextSpec, buf: np.ndarray, first_line: int, max_bad: int = 100,
                n_lines: int | None = None) -> Parsed:
    """Parse whole lines; rows with a wrong field count or a non-numeric label/dense are *bad*
    (listed in ``bad`` with their line and field, and excluded).

    Delimited text goes through pyarrow.csv when it can (:func:`_parse_arrow`); any block the
    fast path declines is parsed here with numpy, which finds and reports the bad rows.
    ``n_lines``: the number of lines in ``buf`` when known (saves counting them).
    """
    if spec.kind == "delimited":
        fast = _parse_arrow(spec, buf, first_line, n_lines)
        if fast is not None:
            return fast
    sep = ord(" ") if spec.kind == "libsvm" else ord(spec.sep)
    nf = spec.n_fields()
    f = split_fields(buf, sep, nf, first_line)
    bad: list[tuple[int, str]] = []
    for ln, cnt in zip(f.bad_lines[:max_bad], f.bad_counts[:max_bad]):
        bad.append((int(ln), f"expected {nf} fields, received {int(cnt)}"))
    n_bad = int(f.bad_lines.size)
    if spec.kind == "libsvm":
        lab_idx, dense_idx, cat_idx = [0], [], list(range(1, nf))
    else:
        pos = {n: i for i, n in enumerate(spec.names)}
        lab_idx = [pos[c] for c in spec.label]
        dense_idx = [pos[c] for c in spec.dense]
        cat_idx = [pos[c] for c in spec.cats]
    n = f.starts.shape[0]
    lab, lmiss, lbad = parse_floats(f.buf, f.starts[:, lab_idx], f.ends[:, lab_idx])
    den, dmiss, dbad = parse_floats(f.buf, f.starts[:, dense_idx], f.ends[:, dense_idx])
    if dense_idx:
        dbad |= ~np.isfinite(den)
    names = ["label"] * len(lab_idx) if spec.kind == "libsvm" else spec.label
    row_bad = np.zeros(n, bool)
    for mat, cols, what in ((lbad | lmiss, names, "a number (label)"),
                            (dbad, spec.dense, "a finite number")):
        if mat.size and mat.any():
            rr, cc = np.nonzero(mat)
            row_bad[rr] = True
            for r, c in list(zip(rr, cc))[: max(0, max_bad - len(bad))]:
                s, e = f.starts[r], f.ends[r]
                idx = (lab_idx if cols is names else dense_idx)[c]
                txt = bytes(f.buf[s[idx]:e[idx]]).decode("utf-8", "replace")
                bad.append((int(f.lines[r]), f"field {cols[c]}: expected {what}, "
                            f"received {txt!r}"))
    n_bad += int(row_bad.sum())
    if spec.kind == "libsvm":
        labels = (lab > 0).astype(np.float32)
        s, e = f.starts[:, cat_idx], f.ends[:, cat_idx]
        mat, valid = gather(f.buf, s, e)
        colon = valid & (mat == ord(":"))
        cut = np.where(colon.any(1), colon.argmax(1), (e - s).reshape(-1))
        mat[np.arange(mat.shape[1])[None, :] >= cut[:, None]] = 0
        cats = mat.view(f"S{mat.shape[1]}").reshape(n, len(cat_idx))
    else:
        labels = lab.astype(np.float32)
        if spec.label_threshold is not None:
            labels = (lab >= spec.label_threshold).astype(np.float32)
        cats = as_bytes(f.buf, f.starts[:, cat_idx], f.ends[:, cat_idx]) if cat_idx else \
            np.zeros((n, 0), "S1")
    bad.sort()
    p = Parsed(labels, np.where(dmiss, 0.0, den), dmiss, cats, f.lines, bad, n_bad)
    return _mask_rows(p, ~row_bad) if row_bad.any() else p


def _parse_arrow(spec: TextSpec, buf: np.ndarray, first_line: int,
                 n_lines: int | None = None) -> Parsed | None:
    """The pyarrow.csv parse of a block with no bad row, else None (numpy decides).

    Every column is written once into a column-major block, so the ``(n, k)`` arrays of the
    result are Fortran-ordered: each column contiguous, as the transform and the Parquet part
    writer read them."""
    nums = list(spec.label) + list(spec.dense)
    include = list(dict.fromkeys(nums + list(spec.cats)))
    if len(include) != len(nums) + len(spec.cats) or len(set(spec.names)) != len(spec.names):
        return None  # a column used twice: leave it to the reference parser
    table = arrowtext.read_block(buf, spec.names, nums, include, sep=spec.sep, n_lines=n_lines)
    if table is None:
        return None
    n = table.num_rows
    lab = np.empty((len(spec.label), n), np.float64)
    for j, name in enumerate(spec.label):
        v, m = arrowtext.floats(table, name)
        if m.any():
            return None
        lab[j] = v
    den = np.empty((len(spec.dense), n), np.float64)
    dmiss = np.empty((len(spec.dense), n), bool)
    for j, name in enumerate(spec.dense):
        v, m = arrowtext.floats(table, name)
        if m.any():
            if not np.isfinite(v[~m]).all():
                return None
            np.copyto(den[j], np.where(m, 0.0, v))
        else:
            if not np.isfinite(v).all():
                return None
            den[j] = v
        dmiss[j] = m
    cols = [arrowtext.binary_column(table, c) for c in spec.cats]
    cats = np.empty((len(cols), n), np.uint64)
    if not all(arrowtext.pack_short(c, cats[j]) is not None for j, c in enumerate(cols)):
        cats = np.stack([as_bytes(*arrowtext.binary_parts(c)) for c in cols], axis=0)
    labels = lab.astype(np.float32) if spec.label_threshold is None else \
        (lab >= spec.label_threshold).astype(np.float32)
    return Parsed(labels.T, den.T, dmiss.T, cats.T, np.arange(n, dtype=np.int64) + first_line)
