"""Time every terarec.kernels kernel (Triton) against its torch twin on one GPU.

Sizes follow a DLRM-on-Criteo-Kaggle step: 26 one-hot tables (Kaggle cardinalities capped at
``--cap`` rows), batch 65,536, dim 128, fp32 tables (bf16 where noted). Timings are medians of
``triton.testing.do_bench`` (CUDA events). GB/s counts the fewest bytes each kernel must move
(every input read once, every output written once). Prints a table; with ``$OUT`` set, also
writes ``$OUT/kernels_bench.json``.

Run on the GPU machine: ``python3 benchmarks/kernels.py``; a CPU smoke test of the script
itself: ``TRITON_INTERPRET=1 python3 benchmarks/kernels.py --smoke``.

Loads ``terarec.kernels`` without ``terarec/__init__`` (which imports the whole framework).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import torch

KAGGLE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
          14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def load_kernels() -> types.ModuleType:
    root = Path(__file__).resolve().parents[1] / "terarec"
    if "terarec" not in sys.modules:
        pkg = types.ModuleType("terarec")
        pkg.__path__ = [str(root)]
        sys.modules["terarec"] = pkg
    return importlib.import_module("terarec.kernels")


K = load_kernels()


def bench(fn: Callable[[], object], smoke: bool) -> float:
    """Median milliseconds of ``fn``."""
    if smoke:
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


ROWS: list[dict] = []


def compare(name: str, nbytes: float, fn: Callable[[], object], smoke: bool,
            note: str = "") -> None:
    """Time ``fn`` under the Triton and the torch backend; record ms, GB/s and speedup."""
    res = {}
    for backend in ("triton", "torch"):
        with K.use_triton(backend == "triton"):
            try:
                res[backend] = bench(fn, smoke)
            except Exception as exc:  # noqa: BLE001 - report and go on with the next kernel
                print(f"{name}: {backend} FAILED: {str(exc)[-300:]}", flush=True)
                res[backend] = float("nan")
    row = dict(kernel=name, triton_ms=res["triton"], torch_ms=res["torch"],
               triton_gbs=nbytes / res["triton"] / 1e6, torch_gbs=nbytes / res["torch"] / 1e6,
               speedup=res["torch"] / res["triton"], note=note)
    ROWS.append(row)
    print(f"{name:34s} triton {row['triton_ms']:8.3f} ms {row['triton_gbs']:7.0f} GB/s | "
          f"torch {row['torch_ms']:8.3f} ms {row['torch_gbs']:7.0f} GB/s | "
          f"x{row['speedup']:.2f} {note}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on CPU (interpreter)")
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--cap", type=int, default=4_000_000)
    args = ap.parse_args()
    smoke = args.smoke
    dev = torch.device("cpu" if smoke else "cuda")
    b, dim, cap = (64, 16, 1000) if smoke else (args.batch, args.dim, args.cap)
    gen = torch.Generator(device=dev).manual_seed(0)
    sizes = [min(c, cap) for c in KAGGLE]
    t = len(sizes)
    total_rows = sum(sizes)
    info = dict(device=torch.cuda.get_device_name() if not smoke else "cpu",
                torch=torch.__version__, batch=b, dim=dim, tables=t, rows=total_rows)
    print(info, flush=True)

    if not smoke:  # the copy ceiling of this card
        x = torch.empty(2**28, device=dev)
        y = torch.empty_like(x)
        ms = bench(lambda: y.copy_(x), smoke)
        info["copy_gbs"] = 2 * x.numel() * 4 / ms / 1e6
        print(f"device copy: {info['copy_gbs']:.0f} GB/s (read+write)", flush=True)
        del x, y

    table_offsets = torch.tensor([0, *sizes[:-1]], device=dev).cumsum(0)
    weight = torch.randn(total_rows, dim, device=dev, generator=gen) * 0.01
    rows = torch.cat([torch.randint(0, s, (b,), device=dev, generator=gen) for s in sizes])
    n = t * b
    offsets = torch.arange(n + 1, device=dev)
    nnz = rows.numel()
    row_bytes = dim * 4

    # 1. forward: all 26 tables in one launch, fp32 and bf16
    out_b = n * row_bytes
    compare("lookup_multi fp32 1-hot 26x", nnz * row_bytes + out_b + nnz * 8,
            lambda: K.pooled_lookup_multi(weight, rows, offsets, table_offsets, False,
                                          hotness=1), smoke)
    w16 = weight.to(torch.bfloat16)
    compare("lookup_multi bf16 1-hot 26x", nnz * row_bytes / 2 + out_b / 2 + nnz * 8,
            lambda: K.pooled_lookup_multi(w16, rows, offsets, table_offsets, False, hotness=1),
            smoke)
    w16 = None  # free
    # single table, multi-hot CSR (lengths 0..40, mean), the largest table
    big = max(sizes)
    lengths = torch.randint(0, 41, (b,), device=dev, generator=gen)
    mh_off = torch.zeros(b + 1, dtype=torch.int64, device=dev)
    mh_off[1:] = lengths.cumsum(0)
    mh_rows = torch.randint(0, big, (int(mh_off[-1]),), device=dev, generator=gen)
    wbig = weight[:big]
    compare("lookup 1 table CSR<=40 mean", mh_rows.numel() * (row_bytes + 8) + b * row_bytes,
            lambda: K.pooled_lookup(wbig, mh_rows, mh_off, True, hotness=0), smoke)

    # 2. backward: per-unique-row gradient of all tables
    go = torch.randn(b, t, dim, device=dev, generator=gen)
    uniq, _ = K.sparse_grad_multi(go, rows, offsets, table_offsets, False)
    u = uniq.numel()
    info["unique_rows"] = u
    g_bytes = nnz * row_bytes + u * row_bytes + nnz * 8
    compare("sparse_grad_multi 26x", g_bytes,
            lambda: K.sparse_grad_multi(go, rows, offsets, table_offsets, False), smoke,
            f"U={u}")

    # 3. fused backward + update, and stand-alone updates on the unique rows
    lr = 1e-4
    compare("fused bwd+SGD 26x", g_bytes + 2 * u * row_bytes,
            lambda: K.fused_backward_update(go, rows, offsets, False, weight, [], "SGD", lr,
                                            table_offsets=table_offsets, hotness=1), smoke)
    acc = torch.zeros_like(weight)
    compare("fused bwd+AdaGrad 26x", g_bytes + 4 * u * row_bytes,
            lambda: K.fused_backward_update(go, rows, offsets, False, weight, [acc], "AdaGrad",
                                            lr, table_offsets=table_offsets, hotness=1), smoke)
    acc = None  # free
    _, grad = K.sparse_grad_multi(go, rows, offsets, table_offsets, False)
    compare("sgd_update (U rows)", 3 * u * row_bytes,
            lambda: K.sgd_update(weight, uniq, grad, lr), smoke)
    m, v = torch.zeros_like(weight), torch.zeros_like(weight)
    compare("adam_update (U rows)", 7 * u * row_bytes,
            lambda: K.adam_update(weight, m, v, uniq, grad, lr, 0.9, 0.999, 1e-7, 3), smoke)
    m = v = grad = go = None  # free

    # 4. DLRM interaction, fp32 and bf16
    e, s = dim, t
    cols = e + (s + 1) * s // 2 + 1
    for dt, es in ((torch.float32, 4), (torch.bfloat16, 2)):
        dense = torch.randn(b, e, device=dev, generator=gen).to(dt)
        emb = torch.randn(b, s, e, device=dev, generator=gen).to(dt)
        gi = torch.randn(b, cols, device=dev, generator=gen).to(dt)
        tag = "fp32" if dt == torch.float32 else "bf16"
        compare(f"interaction fwd {tag}", (b * (s + 1) * e + b * cols) * es,
                lambda d=dense, x=emb: K.interaction_forward(d, x), smoke)
        compare(f"interaction bwd {tag}", (2 * b * (s + 1) * e + b * cols) * es,
                lambda d=dense, x=emb, g=gi: K.interaction_backward(g, d, x), smoke)

    # 5. exact AUC, 1M predictions (one implementation: time it once)
    p = torch.rand(100 if smoke else 1_000_000, device=dev, generator=gen)
    lab = (torch.rand(p.shape, device=dev, generator=gen) < p).float()
    p = (p * 1000).round() / 1000
    ms = bench(lambda: K.exact_auc(p, lab), smoke)
    info["auc_1m_ms"] = ms
    print(f"exact_auc 1M: {ms:.3f} ms", flush=True)

    print("\n| kernel | triton ms | GB/s | torch ms | GB/s | speedup | note |")
    print("|---|---|---|---|---|---|---|")
    for r in ROWS:
        print(f"| {r['kernel']} | {r['triton_ms']:.3f} | {r['triton_gbs']:.0f} | "
              f"{r['torch_ms']:.3f} | {r['torch_gbs']:.0f} | {r['speedup']:.2f} | {r['note']} |")
    out = os.environ.get("OUT")
    if out:
        Path(out, "kernels_bench.json").write_text(json.dumps(dict(info=info, rows=ROWS),
                                                              indent=1))


if __name__ == "__main__":
    main()
