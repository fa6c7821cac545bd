"""``terarec env``: versions, devices and optional extras, for bug reports."""

from __future__ import annotations

import argparse
import platform
from typing import Any

from terarec.utils.imports import is_available

EXTRAS = {"pyarrow": "parquet", "tqdm": "progress", "tensorboard": "tensorboard",
          "rocksdict": "kv", "redis": "redis", "starlette": "serve", "uvicorn": "serve",
          "onnx": "onnx", "onnxruntime": "onnx", "triton": "(GPU kernels, ships with torch)"}


def register(sub: Any) -> None:
    p = sub.add_parser("env", help="print versions, devices and optional extras")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import numpy
    import torch

    import terarec

    print(f"terarec {terarec.__version__}  python {platform.python_version()}  "
          f"{platform.platform()}")
    print(f"torch {torch.__version__}  numpy {numpy.__version__}")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            print(f"cuda:{i} {torch.cuda.get_device_name(i)}")
    else:
        print("no CUDA device: terarec runs on the CPU")
    for pkg, extra in EXTRAS.items():
        print(f"  {pkg:12s} {'yes' if is_available(pkg) else 'no ':3s}  (extra: {extra})")
    return 0
