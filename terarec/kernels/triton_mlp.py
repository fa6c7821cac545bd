"""Triton backward of a fully connected layer's ReLU and bias: one pass over the gradient.

``relu_bias_backward(grad, y)``: ``g = grad * (y > 0)`` (the ReLU backward, as
``threshold_backward``) and the bias gradient ``db = g.sum(0)`` from the same read of ``grad``
and ``y``: each program owns a column block and ``ROWS`` rows, writes its ``g`` tile and a
float32 partial column sum; the partials (``[cdiv(B, ROWS), N]``) are summed by torch in a
fixed order, so the result is deterministic. Replaces threshold_backward (read 2, write 1)
plus a separate read of ``g`` for the bias gradient.

``linear_relu_dgrad(grad, weight, y)``: the same for the layer below, taken from the GEMM that
makes its gradient: ``relu_bias_backward(grad @ weight.T, y)`` with the ReLU mask and the
partial column sums in the GEMM's epilogue, so ``grad @ weight.T`` is never written and read
back (the unfused chain moves four [B, K] tensors per layer, this one two: ``y`` and ``g``).
A tiny inner size (a logit layer's 1) runs as outer products (cuBLAS ran it as gemmk1).

Imported only through :mod:`terarec.kernels.select` (needs Triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from terarec.kernels import _common as C

_ROWS = 512
_BLOCK_M = 64
_BLOCK_N = 128


@triton.jit
def _colsum_rows(acc, part_ptr, r0, R, K, k, BLOCK_R: tl.constexpr):
    r = r0 + tl.arange(0, BLOCK_R)
    return acc + tl.sum(tl.load(part_ptr + r[:, None] * K + k[None, :],
                                mask=(r < R)[:, None] & (k < K)[None, :], other=0.0), axis=0)


@triton.jit
def _colsum_kernel(part_ptr, out_ptr, R, K, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr,
                   INTERP: tl.constexpr):
    """``out[k] = sum_r part[r, k]`` (float32, rows in one fixed tree order), in out's dtype."""
    k = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_K], dtype=tl.float32)
    if INTERP:  # the interpreter rejects range(tensor)
        r0 = 0
        while r0 < R:
            acc = _colsum_rows(acc, part_ptr, r0, R, K, k, BLOCK_R=BLOCK_R)
            r0 += BLOCK_R
    else:
        for r0 in range(0, R, BLOCK_R):
            acc = _colsum_rows(acc, part_ptr, r0, R, K, k, BLOCK_R=BLOCK_R)
    tl.store(out_ptr + k, acc.to(out_ptr.dtype.element_ty), mask=k < K)


def _column_sums(part: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Column sums of the float32 partials ``[R, K]`` in ``dtype``: one launch of programs
    that each hold a whole column block (a torch ``sum(0)`` plus cast took two kernels and
    12.6 us for [512, 1024] on an H200)."""
    r, k = part.shape
    out = torch.empty(k, dtype=dtype, device=part.device)
    block_r = min(triton.next_power_of_2(max(r, 1)), 64 if C.interpreting() else 1024)
    block_k = max(1, min(triton.next_power_of_2(max(k, 1)), 8192 // block_r))
    _colsum_kernel[(triton.cdiv(k, block_k),)](part, out, r, k, BLOCK_R=block_r,
                                              BLOCK_K=block_k, INTERP=C.interpreting(),
                                              num_warps=4)
    return out


@triton.jit
def _relu_bias_bwd_kernel(g_ptr, y_ptr, out_ptr, part_ptr, B, N, ROWS: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    pid_m = tl.program_id(0)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = n < N
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for k in range(ROWS // BLOCK_M):
        m = pid_m.to(tl.int64) * ROWS + k * BLOCK_M + tl.arange(0, BLOCK_M)
        mask = (m < B)[:, None] & nmask[None, :]
        offs = m[:, None] * N + n[None, :]
        g = tl.load(g_ptr + offs, mask=mask, other=0.0)
        y = tl.load(y_ptr + offs, mask=mask, other=0.0)
        g = tl.where(y > 0, g, tl.zeros_like(g))
        tl.store(out_ptr + offs, g, mask=mask)
        acc += tl.sum(g.to(tl.float32), axis=0)
    tl.store(part_ptr + pid_m * N + n, acc, mask=nmask)


def relu_bias_backward(grad: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.relu_bias_backward`."""
    C.check_relu_bias(grad, y)
    b, n = grad.shape
    grad, y = grad.contiguous(), y.contiguous()
    out = torch.empty_like(grad)
    n_m = triton.cdiv(max(b, 1), _ROWS)
    part = torch.empty((n_m, n), dtype=torch.float32, device=grad.device)
    if b and n:
        _relu_bias_bwd_kernel[(n_m, triton.cdiv(n, _BLOCK_N))](
            grad, y, out, part, b, n, ROWS=_ROWS, BLOCK_M=_BLOCK_M, BLOCK_N=_BLOCK_N,
            num_warps=4)
    else:
        part.zero_()
    return out, _column_sums(part, grad.dtype)


# (BLOCK_M, BLOCK_K output columns, BLOCK_N inner, warps, stages, GROUP_M) of the 16-bit GEMM
# by the inner size N: the first entry whose minimum N is reached. H200, B = 65,536, TMA
# (NOTES_train.md, session 5; cuBLAS + relu_bias_backward in brackets): N 1024 -> K 1024
# 0.283 ms (0.307), 512 -> 1024 0.182 (0.228), 256 -> 512 0.099 (0.103); 128 -> 256 0.085
# (0.066: below 256 the MLP keeps cuBLAS). Float32 runs IEEE products on smaller tiles.
DGRAD_LAUNCHES = ((512, (128, 128, 64, 4, 3, 8)), (0, (128, 128, 64, 8, 3, 8)))
DGRAD_LAUNCH: tuple[int, int, int, int, int, int] | None = None  # overrides (benchmarks)
# Tiles moved by TMA (tensor descriptors; Hopper and newer, 16-byte aligned rows).
DGRAD_TMA = True


@triton.jit
def _tile(pid, M, K, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of tile ``pid``: GROUP_M row tiles per column tile (L2 reuse)."""
    n_m = tl.cdiv(M, BLOCK_M)
    per_group = GROUP_M * tl.cdiv(K, BLOCK_K)
    first_m = (pid // per_group) * GROUP_M
    size_m = tl.minimum(n_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % size_m, (pid % per_group) // size_m


@triton.jit
def _relu_epilogue(acc, y_ptr, out_ptr, part_ptr, pid_m, rm, rk, M, K):
    """Store ``acc * (y > 0)`` (rounded) and its column sums (of the rounded values)."""
    mask = (rm < M)[:, None] & (rk < K)[None, :]
    offs = rm[:, None] * K + rk[None, :]
    y = tl.load(y_ptr + offs, mask=mask, other=0.0)
    out = tl.where(y > 0, acc, 0.0).to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offs, out, mask=mask)
    tl.store(part_ptr + pid_m * K + rk, tl.sum(out.to(tl.float32), axis=0), mask=rk < K)


@triton.jit
def _dgrad_step(acc, a_ptrs, b_ptrs, mmask, kmask, rn, n0, N, EVEN_M: tl.constexpr,
                EVEN_N: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr):
    if EVEN_M and EVEN_N:
        a = tl.load(a_ptrs)
    else:
        a = tl.load(a_ptrs, mask=mmask[:, None] & (rn[None, :] + n0 < N), other=0.0)
    if EVEN_N:
        b = tl.load(b_ptrs, mask=kmask[None, :], other=0.0)
    else:
        b = tl.load(b_ptrs, mask=kmask[None, :] & (rn[:, None] + n0 < N), other=0.0)
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    if INTERP:  # the interpreter's 16-bit dot is wrong: exact float32 products instead
        return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    return tl.dot(a, b, acc)


@triton.jit
def _dgrad_relu_kernel(g_ptr, w_ptr, y_ptr, out_ptr, part_ptr, M, N, K,
                       BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
                       GROUP_M: tl.constexpr, EVEN_M: tl.constexpr, EVEN_N: tl.constexpr,
                       IEEE: tl.constexpr, INTERP: tl.constexpr):
    """One [BLOCK_M, BLOCK_K] tile of ``out = (g @ w.T) * (y > 0)``, g [M, N], w [K, N],
    y / out [M, K]; its column sums (of the rounded values) go to ``part[pid_m]``."""
    pid_m, pid_k = _tile(tl.program_id(0), M, K, BLOCK_M, BLOCK_K, GROUP_M)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rn = tl.arange(0, BLOCK_N)
    mmask = rm < M
    kmask = rk < K
    a_ptrs = g_ptr + rm[:, None] * N + rn[None, :]
    b_ptrs = w_ptr + rk[None, :].to(tl.int64) * N + rn[:, None]  # w.T tile [BLOCK_N, BLOCK_K]
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    if INTERP:  # the interpreter rejects range(tensor)
        n0 = 0
        while n0 < N:
            acc = _dgrad_step(acc, a_ptrs + n0, b_ptrs + n0, mmask, kmask, rn, n0, N,
                              EVEN_M=EVEN_M, EVEN_N=EVEN_N, IEEE=IEEE, INTERP=INTERP)
            n0 += BLOCK_N
    else:
        for n0 in range(0, N, BLOCK_N):
            acc = _dgrad_step(acc, a_ptrs + n0, b_ptrs + n0, mmask, kmask, rn, n0, N,
                              EVEN_M=EVEN_M, EVEN_N=EVEN_N, IEEE=IEEE, INTERP=INTERP)
    _relu_epilogue(acc, y_ptr, out_ptr, part_ptr, pid_m, rm, rk, M, K)


@triton.jit
def _tma_tile(g_desc, w_desc, y_desc, out_desc, part_ptr, pid_m, pid_k, N, K,
              BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    off_m = pid_m * BLOCK_M
    off_k = pid_k * BLOCK_K
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        a = g_desc.load([off_m, n0])
        b = w_desc.load([off_k, n0])
        acc = tl.dot(a, b.T, acc)
    y = y_desc.load([off_m, off_k])  # rows past M read as zeros: no mask, no sum
    out = tl.where(y > 0, acc, 0.0).to(out_desc.dtype)
    out_desc.store([off_m, off_k], out)
    rk = off_k + tl.arange(0, BLOCK_K)
    tl.store(part_ptr + pid_m * K + rk, tl.sum(out.to(tl.float32), axis=0), mask=rk < K)


@triton.jit
def _dgrad_relu_tma_kernel(g_desc, w_desc, y_desc, out_desc, part_ptr, M, N, K,
                           BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
                           BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    """As _dgrad_relu_kernel with every tile moved by TMA (out-of-range loads: zeros)."""
    pid_m, pid_k = _tile(tl.program_id(0), M, K, BLOCK_M, BLOCK_K, GROUP_M)
    _tma_tile(g_desc, w_desc, y_desc, out_desc, part_ptr, pid_m, pid_k, N, K,
              BLOCK_M=BLOCK_M, BLOCK_K=BLOCK_K, BLOCK_N=BLOCK_N)


@triton.jit
def _dgrad_relu_outer_kernel(g_ptr, w_ptr, y_ptr, out_ptr, part_ptr, M, N, K,
                             BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, N_: tl.constexpr):
    """_dgrad_relu_kernel for a tiny inner size (N_ <= OUTER_MAX, e.g. the logit layer's 1):
    N_ float32 outer products instead of a dot, no GEMM tile padding."""
    pid_m = tl.program_id(0)
    rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_K], dtype=tl.float32)
    for j in tl.static_range(N_):
        g = tl.load(g_ptr + rm * N + j, mask=rm < M, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + rk.to(tl.int64) * N + j, mask=rk < K, other=0.0).to(tl.float32)
        acc += g[:, None] * w[None, :]
    _relu_epilogue(acc, y_ptr, out_ptr, part_ptr, pid_m, rm, rk, M, K)


OUTER_MAX = 8  # inner sizes up to this run as outer products (_dgrad_relu_outer_kernel)


def _dgrad_launch(dtype: torch.dtype, n: int) -> tuple[int, int, int, int, int, int]:
    if dtype == torch.float32:
        return (32, 32, 16, 4, 1, 8) if C.interpreting() else (64, 64, 32, 4, 2, 8)
    bm, bk, bn, warps, stages, group = DGRAD_LAUNCH or next(
        launch for least, launch in DGRAD_LAUNCHES if n >= least)
    if C.interpreting():  # small tiles: the interpreter runs every lane in numpy
        bm, bk, bn = 32, 32, 16
    return bm, bk, min(bn, max(16, triton.next_power_of_2(n))), warps, stages, group


def _tma_ok(*tensors: torch.Tensor) -> bool:
    """TMA descriptors apply: a 16-bit type, Hopper or newer, 16-byte aligned bases and rows."""
    grad = tensors[0]
    return (DGRAD_TMA and not C.interpreting() and grad.is_cuda and grad.element_size() == 2
            and torch.cuda.get_device_capability(grad.device)[0] >= 9
            and all(t.shape[-1] % 8 == 0 and t.data_ptr() % 16 == 0 for t in tensors))


def linear_relu_dgrad(grad: torch.Tensor, weight: torch.Tensor,
                      y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.linear_relu_dgrad`."""
    C.check_dgrad(grad, weight, y)
    m, n = grad.shape
    k = weight.shape[0]
    grad, weight, y = grad.contiguous(), weight.contiguous(), y.contiguous()
    out = C.new_empty((m, k), grad.dtype, grad.device)
    if 0 < n <= OUTER_MAX and m and k:
        bm, bk = (32, 32) if C.interpreting() else (64, min(256, triton.next_power_of_2(k)))
        n_m = triton.cdiv(m, bm)
        part = torch.empty((n_m, k), dtype=torch.float32, device=grad.device)
        _dgrad_relu_outer_kernel[(n_m, triton.cdiv(k, bk))](
            grad, weight, y, out, part, m, n, k, BLOCK_M=bm, BLOCK_K=bk, N_=n, num_warps=8)
        return out, _column_sums(part, grad.dtype)
    bm, bk, bn, warps, stages, group = _dgrad_launch(grad.dtype, n)
    n_m = triton.cdiv(max(m, 1), bm)
    part = torch.empty((n_m, k), dtype=torch.float32, device=grad.device)
    grid = (n_m * triton.cdiv(k, bk),)
    if not (m and k and n):
        out.zero_()
        part.zero_()
    elif _tma_ok(grad, weight, y, out):
        from triton.tools.tensor_descriptor import TensorDescriptor

        descs = (TensorDescriptor.from_tensor(grad, [bm, bn]),
                 TensorDescriptor.from_tensor(weight, [bk, bn]),
                 TensorDescriptor.from_tensor(y, [bm, bk]),
                 TensorDescriptor.from_tensor(out, [bm, bk]))
        # (A persistent walk of these tiles, 1-2 programs per SM, was slower in the step.)
        _dgrad_relu_tma_kernel[grid](*descs, part, m, n, k, BLOCK_M=bm, BLOCK_K=bk,
                                     BLOCK_N=bn, GROUP_M=group, num_warps=warps,
                                     num_stages=stages)
    else:
        _dgrad_relu_kernel[grid](
            grad, weight, y, out, part, m, n, k, BLOCK_M=bm, BLOCK_K=bk, BLOCK_N=bn,
            GROUP_M=group, EVEN_M=m % bm == 0, EVEN_N=n % bn == 0,
            IEEE=grad.dtype == torch.float32, INTERP=C.interpreting(), num_warps=warps,
            num_stages=stages)
    return out, _column_sums(part, grad.dtype)
