"""Time parts of the DLRM / DCNv2 training step one by one, with their launch variants.

Exploration aid behind the numbers in ``NOTES_train.md``: each part is checked against its
reference before it is timed (``triton.testing.do_bench`` medians, CUDA events).

* ``interaction``: the Triton DLRM interaction forward for launch shapes (samples per block,
  warps, programs per SM walking the blocks, pipeline stages) and its backward (B = 65,536,
  26 tables, dim 128, bf16) against :mod:`terarec.kernels.reference`. Isolated timings flush
  the L2 between calls and can rank shapes differently from the step (see ``train``).
* ``dgrad``: ``linear_relu_dgrad`` (the MLP's dgrad GEMM with the ReLU backward in its
  epilogue) per launch shape vs cuBLAS + ``relu_bias_backward``, DLRM shapes.
* ``train``: the whole DLRM step (``train_throughput.py --config dlrm --skip-peer``, CUDA graph)
  with module constants changed per run (interaction launch shapes, the fused backward's
  chunk walk): the ranking in the step is what the defaults follow.

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
    dd, de = T.interaction_backward(go, dense, emb)
    nbytes_f = (dense.numel() + emb.numel() + ref.numel()) * 2
    nbytes_b = (dense.numel() + emb.numel()) * 4 + ref.numel() * 2
    eb = max(float(((dd.float() - rd).abs() / (rd.abs() + 1)).max()),
             float(((de.float() - re).abs() / (re.abs() + 1)).max()))
    tb = bench(lambda: T.interaction_backward(go, dense, emb))
    print(f"backward: {tb:.3f} ms, {nbytes_b / tb / 1e6:.0f} GB/s, max err {eb:.2e}")
    print("| spp | warps | programs/SM, stages | fwd ms | fwd GB/s | max err |")
    print("|---:|---:|---|---:|---:|---|")
    configs = [(1, 4, (0, 1)), (2, 2, (0, 1)), (1, 1, (0, 1)), (4, 4, (0, 1))]
    configs += [(spp, warps, (per_sm, stages)) for spp, warps in ((2, 2), (1, 1), (4, 4))
                for per_sm in (8, 16, 32) for stages in (1, 2, 3)]
    for spp, warps, persist in configs:
        kw = dict(spp=spp, warps=warps, persist=persist)
        walk = "one block each" if persist[0] == 0 else f"{persist[0]}, {persist[1]}"
        try:
            out = T.interaction_forward(dense, emb, **kw)
        except Exception as exc:  # noqa: BLE001 - report the variant that fails to compile
            print(f"| {spp} | {warps} | {walk} | failed: {type(exc).__name__}: "
                  f"{str(exc)[:80]} |")
            continue
        ef = float(((out.float() - ref).abs() / (ref.abs() + 1)).max())
        tf = bench(lambda kw=kw: T.interaction_forward(dense, emb, **kw))
        print(f"| {spp} | {warps} | {walk} | {tf:.3f} | {nbytes_f / tf / 1e6:.0f} | {ef:.2e} |")


# (BLOCK_M, BLOCK_K, BLOCK_N, warps, stages, GROUP_M) of kernels.linear_relu_dgrad
DGRAD_VARIANTS = [(128, 128, 64, 8, 3, 8), (256, 128, 64, 8, 3, 8), (128, 256, 64, 8, 3, 8),
                  (128, 128, 64, 8, 4, 8), (128, 128, 64, 4, 3, 8), (64, 128, 64, 4, 4, 8),
                  (256, 128, 64, 8, 4, 8), (128, 128, 128, 8, 2, 8)]


def dgrad(b: int) -> None:
    """``linear_relu_dgrad`` (GEMM + ReLU mask + column sums in the epilogue) vs cuBLAS mm +
    ``relu_bias_backward`` for the DLRM MLP shapes, per launch shape (isolated)."""
    from terarec.kernels import triton_mlp as T

    for tma in (True, False):
        T.DGRAD_TMA = tma
        print(f"TMA: {tma}")
        _dgrad_table(b, T)
    T.DGRAD_TMA = True


def _dgrad_table(b: int, T) -> None:  # noqa: ANN001, N803 - the kernel module
    print("| inner N -> out K | cuBLAS + relu_bias_bwd ms | " +
          " | ".join(str(v) for v in DGRAD_VARIANTS) + " |")
    for n, k in ((1024, 1024), (512, 1024), (256, 512), (128, 256)):
        g = torch.randn(b, n, device="cuda").bfloat16()
        w = (torch.randn(k, n, device="cuda") / n**0.5).bfloat16()
        y = torch.relu(torch.randn(b, k, device="cuda")).bfloat16()
        ref_g, ref_db = T.relu_bias_backward(g.mm(w.t()), y)
        row = [f"{bench(lambda g=g, w=w, y=y: T.relu_bias_backward(g.mm(w.t()), y)):.3f}"]
        saved = T.DGRAD_LAUNCH
        for launch in DGRAD_VARIANTS:
            T.DGRAD_LAUNCH = launch
            try:
                og, odb = T.linear_relu_dgrad(g, w, y)
                err = float((og.float() - ref_g.float()).norm() / ref_g.float().norm())
                t = bench(lambda g=g, w=w, y=y: T.linear_relu_dgrad(g, w, y))
                row.append(f"{t:.3f} ({err:.0e})")
            except Exception as exc:  # noqa: BLE001 - report the variant that fails
                row.append(f"failed {type(exc).__name__}")
            finally:
                T.DGRAD_LAUNCH = saved
        print(f"| {n} -> {k} | " + " | ".join(row) + " |")


def train(steps: int) -> None:
    import contextlib
    import gc
    import io
    import re
    import runpy
    import sys
    from pathlib import Path

    from terarec.kernels import triton_grad, triton_interaction, triton_mlp
    from terarec.layers import mlp

    modules = {"interaction": triton_interaction, "grad": triton_grad, "mlp": mlp,
               "mlpk": triton_mlp}
    script = str(Path(__file__).with_name("train_throughput.py"))
    # Module constants per run ("module.NAME": value); the first run of a process pays one-time
    # costs, so the defaults run first and last.
    combos: list[dict] = [{}, {"mlp.WGRAD_SIDE_STREAM": False},
                          {"interaction.BWD_ROW0_STORE": True},
                          {"grad.CHUNKS_PER_PROGRAM": 8}, {"mlp.FUSED_DGRAD_OUTER_MAX": 0},
                          {}]
    timings: list[tuple[dict, float]] = []
    for combo in combos:
        saved = {}
        for key, value in combo.items():
            mod, name = key.split(".")
            saved[key] = getattr(modules[mod], name)
            setattr(modules[mod], name, value)
        buf = io.StringIO()
        argv, sys.argv = sys.argv, [script, "--config", "dlrm", "--steps", str(steps),
                                    "--skip-peer"]
        try:
            with contextlib.redirect_stdout(buf):
                runpy.run_path(script, run_name="__main__")
        finally:
            sys.argv = argv
            for key, value in saved.items():
                mod, name = key.split(".")
                setattr(modules[mod], name, value)
            gc.collect()
            torch.cuda.empty_cache()
        lines = [ln.strip() for ln in buf.getvalue().splitlines() if "CUDA graph:" in ln]
        print(f"{combo or 'defaults'}: "
              f"{lines[-1] if lines else buf.getvalue()[-300:]}")
        found = re.search(r"([0-9.]+) ms/step", lines[-1]) if lines else None
        if found:
            timings.append((combo, float(found.group(1))))
    base = [ms for combo, ms in timings if not combo]
    if base:  # the rule the defaults follow: beat every defaults run of the same process
        wins = [f"{combo} {ms:.2f}" for combo, ms in timings if combo and ms < min(base)]
        print(f"defaults {', '.join(f'{ms:.2f}' for ms in base)} ms/step; faster than all of "
              f"them: {'; '.join(wins) or 'none'}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", nargs="*", default=["interaction", "dgrad", "train"])
    ap.add_argument("--batch", type=int, default=65536)
    ap.add_argument("--steps", type=int, default=30, help="steps of each train run")
    args = ap.parse_args()
    print(torch.cuda.get_device_name())
    for part in args.parts:
        {"interaction": lambda: interaction(args.batch), "dgrad": lambda: dgrad(args.batch),
         "train": lambda: train(args.steps)}[part]()


if __name__ == "__main__":
    main()
