"""Time parts of the DLRM / DCNv2 training step one by one, with their launch variants.

Exploration aid behind the numbers in ``NOTES_train.md``: each part is checked against its
reference before it is timed (``triton.testing.do_bench`` medians, CUDA events).

* ``interaction``: the Triton DLRM interaction fwd / bwd for samples-per-program x warps
  (B = 65,536, 26 tables, dim 128, bf16) against :mod:`terarec.kernels.reference`.
* ``train``: the whole DLRM step (``train_throughput.py --config dlrm --skip-peer``, CUDA graph)
  for interaction launch shapes (``FWD_LAUNCH`` / ``BWD_LAUNCH`` / ``PERSIST``): the kernels'
  ranking in the step, where their inputs come warm from the neighbouring GEMMs, is what the
  defaults follow.

Run on the GPU machine: ``python3 benchmarks/step_parts.py [--parts interaction train]``.
"""

from __future__ import annotations

import argparse

import torch


def bench(fn) -> float:  # noqa: ANN001
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median"))


def interaction(b: int) -> None:
    from terarec.kernels import reference as R
    from terarec.kernels import triton_interaction as T

    g = torch.Generator(device="cuda").manual_seed(0)
    dense = torch.randn(b, 128, device="cuda", generator=g).bfloat16()
    emb = torch.randn(b, 26, 128, device="cuda", generator=g).bfloat16()
    ref = R.interaction_forward(dense.float(), emb.float())
    go = torch.randn(ref.shape, device="cuda", generator=g).bfloat16()
    rd, re = R.interaction_backward(go.float(), dense.float(), emb.float())
    nbytes_f = (dense.numel() + emb.numel() + ref.numel()) * 2
    nbytes_b = (dense.numel() + emb.numel()) * 4 + ref.numel() * 2
    print("| spp | warps | programs/SM, stages | fwd ms | fwd GB/s | bwd ms | bwd GB/s | "
          "max err fwd / bwd |")
    print("|---:|---:|---|---:|---:|---:|---:|---|")
    configs = [(1, 4, (0, 1)), (2, 2, (0, 1)), (1, 1, (0, 1)), (4, 4, (0, 1))]
    configs += [(spp, warps, (per_sm, stages)) for spp, warps in ((2, 2), (1, 1), (4, 4))
                for per_sm in (8, 16, 32) for stages in (1, 2, 3)]
    for spp, warps, persist in configs:
        kw = dict(spp=spp, warps=warps, persist=persist)
        walk = "one block each" if persist[0] == 0 else f"{persist[0]}, {persist[1]}"
        try:
            out = T.interaction_forward(dense, emb, **kw)
            dd, de = T.interaction_backward(go, dense, emb, **kw)
        except Exception as exc:  # noqa: BLE001 - report the variant that fails to compile
            print(f"| {spp} | {warps} | {walk} | failed: {type(exc).__name__}: "
                  f"{str(exc)[:80]} |")
            continue
        ef = float(((out.float() - ref).abs() / (ref.abs() + 1)).max())
        eb = max(float(((dd.float() - rd).abs() / (rd.abs() + 1)).max()),
                 float(((de.float() - re).abs() / (re.abs() + 1)).max()))
        tf = bench(lambda kw=kw: T.interaction_forward(dense, emb, **kw))
        tb = bench(lambda kw=kw: T.interaction_backward(go, dense, emb, **kw))
        print(f"| {spp} | {warps} | {walk} | {tf:.3f} | {nbytes_f / tf / 1e6:.0f} | {tb:.3f} | "
              f"{nbytes_b / tb / 1e6:.0f} | {ef:.2e} / {eb:.2e} |")


def train(steps: int) -> None:
    import contextlib
    import gc
    import io
    import runpy
    import sys
    from pathlib import Path

    from terarec.kernels import triton_interaction as T

    script = str(Path(__file__).with_name("train_throughput.py"))
    keep = (T.FWD_LAUNCH, T.BWD_LAUNCH, T.PERSIST)
    # The first run of a process pays one-time costs: its combination repeats as the last.
    combos = [((2, 2), (2, 2), (0, 1)), ((2, 2), (2, 2), (16, 2)), ((2, 2), (2, 2), (8, 3)),
              ((1, 1), (1, 1), (16, 2)), ((2, 2), (2, 2), (0, 1))]
    for fwd, bwd, persist in combos:
        T.FWD_LAUNCH, T.BWD_LAUNCH, T.PERSIST = fwd, bwd, persist
        buf = io.StringIO()
        argv, sys.argv = sys.argv, [script, "--config", "dlrm", "--steps", str(steps),
                                    "--skip-peer"]
        try:
            with contextlib.redirect_stdout(buf):
                runpy.run_path(script, run_name="__main__")
        finally:
            sys.argv = argv
            T.FWD_LAUNCH, T.BWD_LAUNCH, T.PERSIST = keep
            gc.collect()
            torch.cuda.empty_cache()
        lines = [ln.strip() for ln in buf.getvalue().splitlines() if "CUDA graph:" in ln]
        print(f"fwd {fwd} bwd {bwd} persist {persist}: "
              f"{lines[-1] if lines else buf.getvalue()[-300:]}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", nargs="*", default=["interaction", "train"])
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=30, help="steps of each train run")
    args = ap.parse_args()
    print(torch.cuda.get_device_name())
    for part in args.parts:
        {"interaction": lambda: interaction(args.batch),
         "train": lambda: train(args.steps)}[part]()


if __name__ == "__main__":
    main()
