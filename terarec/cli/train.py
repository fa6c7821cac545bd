"""``terarec train [config.json]``: train a legacy JSON config like ``huge_ctr --train``.

Without a config file it runs the built-in default job: synthetic Criteo-like data with a
planted teacher model, a DCN trained through the HugeCTR-compatible API, and a report of the
AUC reached against the best reachable AUC of the data.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    p = sub.add_parser("train", help="train from a HugeCTR JSON config, or the built-in demo")
    p.add_argument("config", nargs="?", help="HugeCTR full JSON config (solver/optimizer/layers)")
    p.add_argument("--model", default="dcn", choices=["dcn", "wdl", "deepfm", "dlrm"],
                   help="model of the built-in demo (no config given)")
    p.add_argument("--out", default="terarec_demo", help="folder of the demo's data and files")
    p.add_argument("--samples", type=int, default=500_000, help="demo training samples")
    p.add_argument("--batchsize", type=int, default=4096, help="demo batch size")
    p.add_argument("--iters", type=int, default=0, help="demo iterations (0 = one epoch)")
    p.add_argument("--progress", action="store_true", help="show a progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.config:
        from terarec.compat.session import train_from_config

        train_from_config(args.config, progress=args.progress or None)
        return 0
    from terarec.demo import run_demo

    run_demo(args.model, args.out, args.samples, args.batchsize, args.iters)
    return 0
