"""Triton DLRM dot interaction (HugeCTR layout), forward and backward.

One program per sample: X = [dense; emb] is loaded once as an ``[NP, BLOCK_E]`` tile (NP =
n = S+1 rounded up to a power of two >= 16), the Gram matrix X X^T comes from one ``tl.dot``
(3xTF32, float32-accurate, for float32 inputs; for bf16 inputs bf16 tensor cores: exact
products, float32 sums) and its strict lower triangle is stored straight into the
output row at ``E + i(i-1)/2 + j``.
Backward: dX = (G + G^T) X with G the lower-triangular gradient matrix gathered from the
output gradient, again one ``tl.dot``; row 0 adds the pass-through dense gradient.

Imported only through :mod:`terarec.kernels.select` (needs Triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from terarec.kernels import _common as C


@triton.jit
def _load_x(dense_ptr, emb_ptr, b, S, E, i, e, emask):
    is_d = i == 0
    is_e = (i >= 1) & (i <= S)
    xd = tl.load(dense_ptr + b * E + e[None, :] + 0 * i[:, None],
                 mask=is_d[:, None] & emask[None, :], other=0.0)
    xe = tl.load(emb_ptr + b * S * E + (i - 1)[:, None] * E + e[None, :],
                 mask=is_e[:, None] & emask[None, :], other=0.0)
    return xd + xe, is_e


@triton.jit
def _fwd_kernel(dense_ptr, emb_ptr, out_ptr, S, E, out_cols, NP: tl.constexpr,
                BLOCK_E: tl.constexpr, IEEE: tl.constexpr, INTERP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, NP)
    e = tl.arange(0, BLOCK_E)
    emask = e < E
    x, _ = _load_x(dense_ptr, emb_ptr, b, S, E, i, e, emask)
    if IEEE:
        x = x.to(tl.float32)
        z = tl.dot(x, tl.trans(x), input_precision="tf32x3")
    elif INTERP:  # Triton's interpreter mis-multiplies bf16 dots: same products in fp32
        x = x.to(tl.float32)
        z = tl.dot(x, tl.trans(x))
    else:  # bf16 tensor cores: exact products, float32 sums (half the registers of fp32)
        z = tl.dot(x, tl.trans(x), out_dtype=tl.float32)
    row = out_ptr + b * out_cols
    dense = tl.load(dense_ptr + b * E + e, mask=emask, other=0.0)
    tl.store(row + e, dense, mask=emask)
    ii = i[:, None]
    jj = i[None, :]
    tri = (jj < ii) & (ii <= S)
    tl.store(row + E + ii * (ii - 1) // 2 + jj, z.to(out_ptr.dtype.element_ty), mask=tri)
    pad = tl.arange(0, 2)
    tl.store(row + out_cols - 1 + pad, tl.zeros([2], out_ptr.dtype.element_ty), mask=pad < 1)


@triton.jit
def _bwd_kernel(go_ptr, dense_ptr, emb_ptr, dd_ptr, de_ptr, S, E, out_cols,
                NP: tl.constexpr, BLOCK_E: tl.constexpr, IEEE: tl.constexpr,
                INTERP: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, NP)
    e = tl.arange(0, BLOCK_E)
    emask = e < E
    x, is_e = _load_x(dense_ptr, emb_ptr, b, S, E, i, e, emask)
    ii = i[:, None]
    jj = i[None, :]
    lower = (jj < ii) & (ii <= S)
    upper = (ii < jj) & (jj <= S)
    idx = tl.where(lower, ii * (ii - 1) // 2 + jj, jj * (jj - 1) // 2 + ii)
    row = go_ptr + b * out_cols
    g = tl.load(row + E + idx, mask=lower | upper, other=0.0)
    if IEEE:
        dx = tl.dot(g.to(tl.float32), x.to(tl.float32), input_precision="tf32x3")
    elif INTERP:  # see _fwd_kernel
        dx = tl.dot(g.to(x.dtype).to(tl.float32), x.to(tl.float32))
    else:  # bf16 x bf16 on tensor cores: exact products, float32 sums
        dx = tl.dot(g.to(x.dtype), x, out_dtype=tl.float32)
    d0 = tl.sum(tl.where(ii == 0, dx, 0.0), axis=0)
    d0 += tl.load(row + e, mask=emask, other=0.0).to(tl.float32)
    tl.store(dd_ptr + b * E + e, d0.to(dd_ptr.dtype.element_ty), mask=emask)
    tl.store(de_ptr + b * S * E + (i - 1)[:, None] * E + e[None, :],
             dx.to(de_ptr.dtype.element_ty), mask=is_e[:, None] & emask[None, :])


def _shape(dense: torch.Tensor, emb: torch.Tensor) -> tuple[int, int, int, int, int]:
    if dense.dim() != 2 or emb.dim() != 3 or emb.shape[0] != dense.shape[0] \
            or emb.shape[2] != dense.shape[1] or emb.dtype != dense.dtype:
        raise ValueError(f"interaction: expected dense [B, E] and emb [B, S, E] of one dtype. "
                         f"Received: {tuple(dense.shape)} {dense.dtype}, "
                         f"{tuple(emb.shape)} {emb.dtype}")
    b, e = dense.shape
    s = emb.shape[1]
    n = s + 1
    return b, s, e, max(16, triton.next_power_of_2(n)), max(16, triton.next_power_of_2(e))


def interaction_forward(dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """Triton twin of :func:`terarec.kernels.reference.interaction_forward`."""
    b, s, e, np_, be = _shape(dense, emb)
    cols = e + (s + 1) * s // 2 + 1
    out = C.new_empty((b, cols), dense.dtype, dense.device)
    if b:
        _fwd_kernel[(b,)](dense.contiguous(), emb.contiguous(), out, s, e, cols, NP=np_,
                          BLOCK_E=be, IEEE=dense.dtype == torch.float32,
                          INTERP=C.interpreting(), num_warps=4)
    return out


def interaction_backward(grad_out: torch.Tensor, dense: torch.Tensor,
                         emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.interaction_backward`."""
    b, s, e, np_, be = _shape(dense, emb)
    cols = e + (s + 1) * s // 2 + 1
    if grad_out.shape != (b, cols):
        raise ValueError(f"grad_out: expected [{b}, {cols}]. Received: {tuple(grad_out.shape)}")
    d_dense = C.new_empty((b, e), dense.dtype, dense.device)
    d_emb = C.new_empty((b, s, e), emb.dtype, emb.device)
    if b:
        _bwd_kernel[(b,)](grad_out.contiguous(), dense.contiguous(), emb.contiguous(), d_dense,
                          d_emb, s, e, cols, NP=np_, BLOCK_E=be,
                          IEEE=dense.dtype == torch.float32, INTERP=C.interpreting(),
                          num_warps=4)
    return d_dense, d_emb
