"""Shared, backend-free helpers of the kernels: argument checks, optimizer codes, CSR lengths.

Both the torch twins (:mod:`terarec.kernels.reference`) and the Triton versions use these, so
the two agree on what a valid input is and on how optimizer names map to update rules.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

# Update rules of hugectr_reference.md §5.2; the codes are the Triton kernels' constexpr OPT.
SGD, MOMENTUM, NESTEROV, ADAGRAD, ADAM, FTRL = 1, 2, 3, 4, 5, 6
OPT_CODES = {
    "sgd": SGD, "momentumsgd": MOMENTUM, "momentum": MOMENTUM, "nesterov": NESTEROV,
    "adagrad": ADAGRAD, "adam": ADAM, "ftrl": FTRL,
}
N_STATES = {SGD: 0, MOMENTUM: 1, NESTEROV: 1, ADAGRAD: 1, ADAM: 2, FTRL: 2}


def opt_code(name: str) -> int:
    """Rule code of an optimizer name (HugeCTR ``Optimizer_t`` names, case-insensitive)."""
    code = OPT_CODES.get(name.lower().replace("_", ""))
    if code is None:
        raise ValueError(f"optimizer: expected one of {sorted(OPT_CODES)}. Received: {name!r}")
    return code


def rule_scalars(code: int, lr: float, momentum_factor: float, beta1: float, beta2: float,
                 epsilon: float, lambda1: float, lambda2: float,
                 step: int) -> tuple[float, float, float, float]:
    """(lr', h1, h2, h3): the four scalars a rule reads (Adam's lr' is bias-corrected)."""
    if code in (MOMENTUM, NESTEROV):
        return lr, momentum_factor, 0.0, 0.0
    if code == ADAGRAD:
        return lr, epsilon, 0.0, 0.0
    if code == ADAM:
        if step < 1:
            raise ValueError(f"adam step: expected an integer >= 1. Received: {step!r}")
        alpha = lr * math.sqrt(1.0 - beta2**step) / (1.0 - beta1**step)
        return alpha, beta1, beta2, epsilon
    if code == FTRL:
        return lr, lambda1, lambda2, 0.0
    return lr, 0.0, 0.0, 0.0


def check_states(code: int, states: Sequence[torch.Tensor], weight: torch.Tensor) -> None:
    """Every rule gets exactly its states, each float32 and shaped like ``weight``."""
    if len(states) != N_STATES[code]:
        raise ValueError(f"optimizer states: expected {N_STATES[code]}. Received: {len(states)}")
    for s in states:
        if s.shape != weight.shape or s.dtype != torch.float32 or s.device != weight.device:
            raise ValueError("optimizer state: expected float32 shaped and placed like weight. "
                             f"Received: {tuple(s.shape)} {s.dtype} {s.device}")


def check_csr(rows: torch.Tensor, offsets: torch.Tensor) -> None:
    """``rows`` int64 [nnz], ``offsets`` int64 [N+1] (N >= 0)."""
    if rows.dim() != 1 or offsets.dim() != 1 or offsets.numel() < 1:
        raise ValueError("rows/offsets: expected 1-D tensors, offsets with N+1 >= 1 entries. "
                         f"Received: {tuple(rows.shape)}, {tuple(offsets.shape)}")
    if rows.dtype != torch.int64 or offsets.dtype != torch.int64:
        raise ValueError(f"rows/offsets: expected int64. Received: {rows.dtype}, {offsets.dtype}")


def check_lookup_out(out: torch.Tensor | None, out_rows: torch.Tensor | None, n: int,
                     dim: int) -> None:
    """``out``: 2-D ``[M, dim]`` with unit stride along dim; ``out_rows``: int64 ``[n]`` (only
    with ``out``); without ``out_rows`` ``M >= n``."""
    if out is None:
        if out_rows is not None:
            raise ValueError("pooled_lookup: out_rows needs out")
        return
    if out.dim() != 2 or out.shape[1] != dim or out.stride(1) != 1:
        raise ValueError(f"pooled_lookup: expected out of shape [M, {dim}] with unit stride along "
                         f"the embedding dimension. Received: {tuple(out.shape)}, stride "
                         f"{tuple(out.stride())}")
    if out_rows is None:
        if out.shape[0] < n:
            raise ValueError(f"pooled_lookup: out has {out.shape[0]} rows for {n} CSR rows")
        return
    check_grad_rows(out_rows, n)


def check_grad_rows(index: torch.Tensor, n: int) -> None:
    """A row index: int64 ``[n]``."""
    if index.dim() != 1 or index.dtype != torch.int64 or index.numel() != n:
        raise ValueError(f"expected an int64 row index of {n} entries. Received: "
                         f"{index.dtype} {tuple(index.shape)}")


def check_relu_bias(grad: torch.Tensor, y: torch.Tensor) -> None:
    """``grad`` and ``y``: the same 2-D shape and dtype, on one device."""
    if grad.dim() != 2 or grad.shape != y.shape or grad.dtype != y.dtype \
            or grad.device != y.device:
        raise ValueError("relu_bias_backward: expected grad and y of one [B, N] shape, dtype and "
                         f"device. Received: {tuple(grad.shape)} {grad.dtype} {grad.device}, "
                         f"{tuple(y.shape)} {y.dtype} {y.device}")


def check_dgrad(grad: torch.Tensor, weight: torch.Tensor, y: torch.Tensor) -> None:
    """``grad`` [M, N], ``weight`` [K, N], ``y`` [M, K]: one dtype, one device."""
    ok = grad.dim() == 2 and weight.dim() == 2 and y.dim() == 2 \
        and weight.shape[1] == grad.shape[1] and y.shape == (grad.shape[0], weight.shape[0]) \
        and grad.dtype == weight.dtype == y.dtype and grad.device == weight.device == y.device
    if not ok:
        raise ValueError("linear_relu_dgrad: expected grad [M, N], weight [K, N] and y [M, K] of "
                         f"one dtype and device. Received: {tuple(grad.shape)} {grad.dtype} "
                         f"{grad.device}, {tuple(weight.shape)} {weight.dtype} "
                         f"{weight.device}, {tuple(y.shape)} {y.dtype} {y.device}")


def check_update(weight: torch.Tensor, rows: torch.Tensor, grad: torch.Tensor) -> None:
    """``weight`` [R, D] contiguous, ``rows`` int64 [U], ``grad`` [U, D]."""
    if weight.dim() != 2 or not weight.is_contiguous():
        raise ValueError(f"weight: expected a contiguous [R, D] tensor. Received: {weight.shape}")
    if rows.dtype != torch.int64 or rows.dim() != 1:
        raise ValueError(f"rows: expected int64 [U]. Received: {rows.dtype} {tuple(rows.shape)}")
    if grad.shape != (rows.numel(), weight.shape[1]):
        raise ValueError(f"grad: expected [{rows.numel()}, {weight.shape[1]}]. "
                         f"Received: {tuple(grad.shape)}")


def lengths_of(offsets: torch.Tensor) -> torch.Tensor:
    """Number of entries of each CSR row, int64 [N]."""
    return offsets[1:] - offsets[:-1]


def fixed_hotness(offsets: torch.Tensor, nnz: int) -> int:
    """The common row length if ``offsets`` is ``arange(N+1) * h`` (checked), else 0.

    The check costs one small device comparison and a host sync; callers that know the
    hotness skip it by passing ``hotness=``.
    """
    n = offsets.numel() - 1
    if n == 0 or nnz % n or nnz == 0:
        return 0
    h = nnz // n
    ref = torch.arange(0, nnz + 1, h, device=offsets.device, dtype=offsets.dtype)
    return h if bool(torch.equal(offsets, ref)) else 0


def mean_flags(mean: bool | Sequence[bool] | torch.Tensor, tables: int,
               device: torch.device) -> torch.Tensor:
    """Per-table combiner flags as int32 [T] (1 = mean, 0 = sum)."""
    if isinstance(mean, bool):
        return torch.full((tables,), int(mean), dtype=torch.int32, device=device)
    flags = torch.as_tensor(mean, device=device).to(torch.int32).reshape(-1)
    if flags.numel() != tables:
        raise ValueError(f"mean: expected a bool or {tables} flags. Received: {flags.numel()}")
    return flags


POISON = False  # tests set this: every output the kernels allocate starts as NaN / -1


def new_empty(shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``torch.empty`` for kernel outputs (filled with NaN when :data:`POISON` is set)."""
    out = torch.empty(tuple(shape), dtype=dtype, device=device)
    if POISON:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (2 elsewhere: the interpreter then walks
    several blocks per program too)."""
    if device.type != "cuda":
        return 2
    return torch.cuda.get_device_properties(device).multi_processor_count


def interpreting() -> bool:
    """True under Triton's CPU interpreter (which rejects ``range(tensor)``; the GPU compiler
    fails on some ``while`` loops, so the kernels take a constexpr to pick the loop form)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def random_seed() -> int:
    """A seed for stochastic rounding drawn from torch's default CPU generator (no sync)."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


def check_mark(used: torch.Tensor, rows: torch.Tensor) -> None:
    """Arguments of ``mark_rows``: a bool vector and int64 rows on its device."""
    if used.dtype != torch.bool or used.dim() != 1 or not used.is_contiguous():
        raise ValueError(f"used: expected a contiguous bool vector. Received: "
                         f"{tuple(used.shape)} {used.dtype}")
    if rows.dtype != torch.int64 or rows.device != used.device:
        raise ValueError(f"rows: expected int64 on {used.device}. Received: {rows.dtype} on "
                         f"{rows.device}")
