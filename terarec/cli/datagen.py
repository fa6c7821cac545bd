"""``terarec datagen``: write synthetic data (Norm / Raw / RawAsync / Parquet) with a teacher."""

from __future__ import annotations

import argparse
import json
from typing import Any


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def register(sub: Any) -> None:
    p = sub.add_parser("datagen", help="generate synthetic CTR data with learnable labels")
    p.add_argument("out_dir")
    p.add_argument("--format", default="Parquet", choices=["Parquet", "Norm", "Raw", "RawAsync"])
    p.add_argument("--num-samples", type=int, default=100_000)
    p.add_argument("--eval-num-samples", type=int, default=None)
    p.add_argument("--slot-size-array", type=_ints, default=[1000] * 26,
                   help="comma-separated slot sizes (default: 26 x 1000)")
    p.add_argument("--nnz", type=_ints, default=[1],
                   help="keys per slot: one value for all slots or one per slot")
    p.add_argument("--dense-dim", type=int, default=13)
    p.add_argument("--label-dim", type=int, default=1)
    p.add_argument("--num-files", type=int, default=4)
    p.add_argument("--alpha", type=float, default=1.2, help="power-law exponent of key frequency")
    p.add_argument("--check-type", default="Sum", choices=["Sum", "Non"])
    p.add_argument("--i64", action="store_true", help="64-bit keys")
    p.add_argument("--no-teacher", action="store_true", help="random labels (no signal)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from terarec.data.synthetic import generate_synthetic

    nnz = args.nnz[0] if len(args.nnz) == 1 else args.nnz
    out = generate_synthetic(
        args.out_dir, args.format, args.num_samples, args.slot_size_array, args.dense_dim, nnz,
        not args.no_teacher, args.seed, eval_num_samples=args.eval_num_samples,
        label_dim=args.label_dim, num_files=args.num_files,
        i64_input_key=True if args.i64 else None, check_type=args.check_type, alpha=args.alpha,
    )
    out.pop("train_files")
    out.pop("eval_files")
    print(json.dumps(out, indent=1))
    return 0
