"""Preprocessing of raw text data (Criteo TSV, libSVM/libFM, CSV) into HugeCTR formats.

One call each::

    res = preprocess_criteo("day_0.gz", "out/", eval_last_rows=100_000)   # Parquet by default
    res = preprocess_libsvm(["frappe.train.libfm"], "out/", eval_inputs=["frappe.test.libfm"])
    res = preprocess_csv("train.csv", "out/", label="click", cats=[...], dense=[...])
    reader = create_reader(res.reader_config(), res.schema(), batch_size)

``apply_preprocessing(inputs, out_dir, transform_dir)`` applies a saved transform to new data
(inference / a new day) without refitting.
"""

from __future__ import annotations

from terarec.data.preprocess.pipeline import OUTPUT_FORMATS, preprocess_text, read_header
from terarec.data.preprocess.result import PreprocessResult
from terarec.data.preprocess.spec import TextSpec
from terarec.data.preprocess.transform import Transform
from terarec.data.readers.criteo_tsv import COLUMNS as CRITEO_COLUMNS
from terarec.errors import ConfigError


def criteo_spec() -> TextSpec:
    return TextSpec("delimited", "\t", list(CRITEO_COLUMNS), ["label"], CRITEO_COLUMNS[1:14],
                    CRITEO_COLUMNS[14:])


def preprocess_criteo(inputs: str | list[str], out_dir: str, format: str = "parquet", *,
                      eval_inputs: str | list[str] | None = None, eval_last_rows: int = 0,
                      dense_mode: str = "log", freq_threshold: int = 1,
                      hash_buckets: int | None = None, **kw: object) -> PreprocessResult:
    """Criteo day files (label, I1-I13, C1-C26; plain or .gz) -> ``format`` under ``out_dir``.

    Options (also for the other entry points): ``on_error`` ("raise" | "skip"), ``num_workers``
    (default: all cores; each worker process also encodes and writes its own part files),
    ``block_bytes``, ``rows_per_file`` (about that many rows per part, in whole blocks; see
    :mod:`~terarec.data.preprocess.pipeline`), ``progress``.
    """
    return preprocess_text(inputs, out_dir, criteo_spec(), format=format,
                           eval_inputs=eval_inputs, eval_last_rows=eval_last_rows,
                           dense_mode=dense_mode, freq_threshold=freq_threshold,
                           hash_buckets=hash_buckets, **kw)  # type: ignore[arg-type]


def preprocess_libsvm(inputs: str | list[str], out_dir: str, format: str = "parquet", *,
                      num_fields: int | None = None, **kw: object) -> PreprocessResult:
    """libSVM / libFM (``label idx:val ...``, fixed number of features per line; Frappe)."""
    first = inputs if isinstance(inputs, str) else inputs[0]
    if num_fields is None:
        line = read_header(first, " ")
        num_fields = len(line) - 1
    spec = TextSpec("libsvm", " ", num_fields=num_fields, label=["label"])
    return preprocess_text(inputs, out_dir, spec, format=format, **kw)  # type: ignore[arg-type]


def preprocess_csv(inputs: str | list[str], out_dir: str, format: str = "parquet", *,
                   label: str | list[str], cats: list[str], dense: list[str] | None = None,
                   sep: str = ",", names: list[str] | None = None,
                   label_threshold: float | None = None, **kw: object) -> PreprocessResult:
    """CSV/TSV with a header line (or ``names=`` for header-less files).

    Files after the first may omit the header (a first line equal to it is skipped).
    """
    first = inputs if isinstance(inputs, str) else inputs[0]
    header = names is None
    cols = read_header(first, sep) if header else list(names or [])
    labels = [label] if isinstance(label, str) else list(label)
    for c in labels + cats + list(dense or []):
        if c not in cols:
            raise ConfigError("preprocess_csv column", f"one of the columns {cols}", c)
    spec = TextSpec("delimited", sep, cols, labels, list(dense or []), list(cats), header,
                    label_threshold)
    return preprocess_text(inputs, out_dir, spec, format=format, **kw)  # type: ignore[arg-type]


def apply_preprocessing(inputs: str | list[str], out_dir: str, transform_dir: str,
                        spec: TextSpec | None = None, format: str = "parquet",
                        **kw: object) -> PreprocessResult:
    """Apply a saved transform (``transform_dir/transform.json``) to new rows; no refit."""
    t = Transform.load(transform_dir)
    spec = spec or criteo_spec()
    return preprocess_text(inputs, out_dir, spec, format=format, transform=t,
                           **kw)  # type: ignore[arg-type]


__all__ = [
    "OUTPUT_FORMATS", "PreprocessResult", "TextSpec", "Transform", "apply_preprocessing",
    "criteo_spec", "preprocess_criteo", "preprocess_csv", "preprocess_libsvm", "preprocess_text",
]
