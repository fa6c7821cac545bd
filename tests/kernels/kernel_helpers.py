"""Helpers of the kernel tests.

Backends: torch twins on CPU always; Triton in its interpreter on a CPU machine
(TRITON_INTERPRET=1, set here before any kernel module is imported); both on CUDA (marked
``gpu``). Kernel outputs are poisoned (NaN) so unwritten elements fail the checks.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def _import_kernels() -> types.ModuleType:
    """``terarec.kernels``, also when another (unfinished) terarec package breaks ``terarec``."""
    try:
        return importlib.import_module("terarec.kernels")
    except Exception:  # noqa: BLE001 - fall back to loading the kernels package on its own
        for name in [m for m in sys.modules if m == "terarec" or m.startswith("terarec.")]:
            del sys.modules[name]
        pkg = types.ModuleType("terarec")
        pkg.__path__ = [str(Path(__file__).resolve().parents[2] / "terarec")]
        sys.modules["terarec"] = pkg
        return importlib.import_module("terarec.kernels")


K = _import_kernels()
HAS_TRITON = K.triton_available()
INTERP = os.environ.get("TRITON_INTERPRET") == "1"

BACKENDS = [
    pytest.param(("cpu", False), id="cpu-torch"),
    pytest.param(("cpu", True), id="cpu-triton-interp", marks=pytest.mark.skipif(
        HAS_CUDA or not HAS_TRITON or not INTERP,
        reason="Triton interpreter variant: needs triton importable, no CUDA, TRITON_INTERPRET=1")),
    pytest.param(("cuda", False), id="cuda-torch", marks=pytest.mark.gpu),
    pytest.param(("cuda", True), id="cuda-triton", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")]),
]


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """‖out − ref‖ / ‖ref‖ in float64 (inf when out has NaN)."""
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    if torch.isnan(out).any():
        return float("inf")
    return float((out - ref).norm() / ref.norm().clamp_min(1e-30))


def random_csr(n_rows: int, max_len: int, table_rows: int,
               gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [nnz] with repeats and offsets [n_rows+1] with some empty rows."""
    lengths = torch.randint(0, max_len + 1, (n_rows,), generator=gen)
    lengths[0] = 0
    offsets = torch.zeros(n_rows + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    rows = torch.randint(0, table_rows, (int(offsets[-1]),), generator=gen)
    return rows, offsets


def grad64(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
           mean: list[bool] | bool, rows_per_flag: int | None = None) -> dict[int, torch.Tensor]:
    """Float64 per-row gradient of a pooled lookup: {row: grad [D]}.

    ``grad_out`` here is table-major [N, D]; ``mean`` may be per block of ``rows_per_flag``
    CSR rows (one flag per table).
    """
    g = grad_out.double().cpu()
    out: dict[int, torch.Tensor] = {}
    for q in range(offsets.numel() - 1):
        a, b = int(offsets[q]), int(offsets[q + 1])
        flag = mean if isinstance(mean, bool) else mean[q // rows_per_flag]
        for r in rows[a:b].tolist():
            add = g[q] / ((b - a) if flag else 1)
            out[r] = out[r] + add if r in out else add.clone()
    return out


def rule64(opt: str, w: torch.Tensor, st: list[torch.Tensor], g: torch.Tensor, lr: float,
           hp: dict) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """hugectr_reference.md §5.2, float64, written independently of the kernels."""
    w, g = w.double(), g.double()
    st = [s.double() for s in st]
    if opt == "sgd":
        return w - lr * g, st
    if opt == "momentum":
        m = hp["momentum_factor"] * st[0] - lr * g
        return w + m, [m]
    if opt == "nesterov":
        mu = hp["momentum_factor"]
        a2 = mu * st[0] - lr * g
        return w - mu * st[0] + (1 + mu) * a2, [a2]
    if opt == "adagrad":
        s = st[0] + g * g
        return w - lr * g / (hp["epsilon"] + s.sqrt()), [s]
    if opt == "adam":
        b1, b2, t = hp["beta1"], hp["beta2"], hp["step"]
        m = b1 * st[0] + (1 - b1) * g
        v = b2 * st[1] + (1 - b2) * g * g
        alpha = lr * (1 - b2**t) ** 0.5 / (1 - b1**t)
        return w - alpha * m / (v.sqrt() + hp["epsilon"]), [m, v]
    if opt == "ftrl":
        l1, l2 = hp["lambda1"], hp["lambda2"]
        n2 = st[0] + g * g
        z = st[1] + g + (st[0].sqrt() - n2.sqrt()) * w / lr
        new_w = torch.where(z.abs() > l1, (l1 * torch.sign(z) - z) / (n2.sqrt() / lr + l2),
                            torch.zeros_like(z))
        return new_w, [n2, z]
    raise ValueError(opt)


HYPER = dict(momentum_factor=0.9, beta1=0.9, beta2=0.999, epsilon=1e-7, lambda1=0.01,
             lambda2=0.1, step=3)
N_STATES = {"sgd": 0, "momentum": 1, "nesterov": 1, "adagrad": 1, "adam": 2, "ftrl": 2}


def random_states(opt: str, shape: tuple[int, int], gen: torch.Generator) -> list[torch.Tensor]:
    """Valid optimizer states (second moments / n non-negative)."""
    out = []
    for i in range(N_STATES[opt]):
        s = torch.randn(*shape, generator=gen)
        if (opt == "adagrad") or (opt in ("adam",) and i == 1) or (opt == "ftrl" and i == 0):
            s = s.abs() + 0.1
        out.append(s)
    return out
