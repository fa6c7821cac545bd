"""``terarec preprocess criteo|libsvm|csv``: raw text -> Parquet / Raw / Norm + saved transform."""

from __future__ import annotations

import argparse
from typing import Any


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", help="input files (plain or .gz)")
    p.add_argument("-o", "--out-dir", required=True)
    p.add_argument("--format", default="parquet", choices=["parquet", "raw", "norm"])
    p.add_argument("--eval-inputs", nargs="*", default=None, help="files for the eval split")
    p.add_argument("--eval-last-rows", type=int, default=0,
                   help="put the last N input rows into the eval split")
    p.add_argument("--dense-mode", default="log", choices=["log", "standardize", "none"])
    p.add_argument("--freq-threshold", type=int, default=1,
                   help="values seen fewer times map to the OOV id 1")
    p.add_argument("--hash-buckets", type=int, default=None,
                   help="hash categoricals to this many ids instead of building vocabularies")
    p.add_argument("--skip-bad-rows", action="store_true",
                   help="drop malformed rows and list them (default: stop with an error)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--rows-per-file", type=int, default=1 << 20)
    p.add_argument("--quiet", action="store_true")


def register(sub: Any) -> None:
    p = sub.add_parser("preprocess", help="preprocess raw Criteo / libSVM / CSV data")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    c = kinds.add_parser("criteo", help="Criteo TSV day files (label, I1-I13, C1-C26)")
    _common(c)
    s = kinds.add_parser("libsvm", help="libSVM / libFM files (e.g. Frappe)")
    _common(s)
    s.add_argument("--num-fields", type=int, default=None)
    v = kinds.add_parser("csv", help="CSV/TSV with a header (e.g. Avazu, MovieLens)")
    _common(v)
    v.add_argument("--label", required=True, help="label column(s), comma-separated")
    v.add_argument("--cats", required=True, help="categorical columns, comma-separated")
    v.add_argument("--dense", default="", help="numeric columns, comma-separated")
    v.add_argument("--sep", default=",")
    v.add_argument("--label-threshold", type=float, default=None,
                   help="binarise the label: value >= threshold -> 1")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from terarec.data import preprocess as pp

    kw = dict(format=args.format, eval_inputs=args.eval_inputs,
              eval_last_rows=args.eval_last_rows, dense_mode=args.dense_mode,
              freq_threshold=args.freq_threshold, hash_buckets=args.hash_buckets,
              on_error="skip" if args.skip_bad_rows else "raise", num_workers=args.workers,
              rows_per_file=args.rows_per_file, progress=not args.quiet)
    if args.kind == "criteo":
        res = pp.preprocess_criteo(args.inputs, args.out_dir, **kw)
    elif args.kind == "libsvm":
        res = pp.preprocess_libsvm(args.inputs, args.out_dir, num_fields=args.num_fields, **kw)
    else:
        def split(s: str) -> list[str]:
            return [x for x in s.split(",") if x]

        sep = "\t" if args.sep in ("\\t", "tab") else args.sep
        res = pp.preprocess_csv(args.inputs, args.out_dir, label=split(args.label),
                                cats=split(args.cats), dense=split(args.dense), sep=sep,
                                label_threshold=args.label_threshold, **kw)
    if args.quiet:
        print(res.summary())
    return 0
