"""Triton DLRM dot interaction (HugeCTR layout), forward and backward.

Blocks of ``SPP`` samples; each program walks blocks ``p, p + P, ...`` (a few programs per
SM, the walk software-pipelined). X = [dense; emb] of each sample is loaded once as an
``[SPP, NP, BLOCK_E]`` tile (NP = n = S+1 rounded up to a power of two >= 16), the Gram
matrices X X^T come from one batched ``tl.dot`` (3xTF32, float32-accurate, for float32
inputs; for bf16 inputs bf16 tensor cores: exact products, float32 sums) and their strict
lower triangles are stored straight into the output rows at ``E + i(i-1)/2 + j``. The kernel
is bound by the latency of its loads, not by the tensor cores: the pipelined walk keeps the
next block's loads in flight.
Backward (one sample per program, 2-D tiles): dX = (G + G^T) X with G the lower-triangular
gradient matrix gathered from the output gradient, again one ``tl.dot``; row 0 adds the
pass-through dense gradient.
The embedding input may be any ``[B, S, E]`` layout whose vectors are unit-stride rows (the
slot exchange's slot-major ``[S, B, E]`` buffer seen as ``[B, S, E]``); its gradient is written
in the same layout.

Imported only through :mod:`terarec.kernels.select` (needs Triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from terarec.kernels import _common as C

# Launch of the bf16 forward (float32 and the interpreter: one sample per 4-warp program):
# (samples per block, warps, programs per SM walking the blocks (0: one program per block),
# software-pipeline stages of that walk). From in-step profiles of the DLRM step on an H200
# (NOTES_train.md, session 4): 0.34 ms as one sample per 4-warp program -> 0.159 ms as the
# pipelined 1-warp walk. The backward stays one sample per 4-warp program on 2-D tiles:
# 0.32 ms in the step, where the 3-D block versions took 0.37 (2 samples, 2 warps), 0.42
# (the walk) and 1.17 ms (one sample, 4 warps).
FWD_LAUNCH = (1, 1, 16, 2)
# (warps, programs per SM, stages) of the bf16 backward (0 programs: one per sample). The 2-D
# kernel walked by 16 programs per SM with 2 stages: 4.13 -> 4.09 ms per DLRM step on an H200
# (session 5, step_parts.py --parts train).
BWD_LAUNCH = (4, 16, 2)
# The dense input's gradient (row 0 of the tile) stored by a masked store of the whole tile
# instead of a masked sum over the rows (a cross-warp reduction per sample). Not yet measured
# in the step: off (step_parts.py tries it).
BWD_ROW0_STORE = False


@triton.jit
def _load_x(dense_ptr, emb_ptr, b, B, S, E, i, e, emask, sb, ss):
    """X tiles ``[SPP, NP, BLOCK_E]`` of samples ``b`` (rows past S and samples past B: 0);
    embedding vector ``(b, s)`` at ``emb_ptr + b * sb + s * ss``."""
    bb = b[:, None, None]
    ii = i[None, :, None]
    ee = e[None, None, :]
    live = (bb < B) & emask[None, None, :]
    is_e = (ii >= 1) & (ii <= S)
    xd = tl.load(dense_ptr + bb * E + ee + 0 * ii, mask=live & (ii == 0), other=0.0)
    xe = tl.load(emb_ptr + bb * sb + (ii - 1).to(tl.int64) * ss + ee, mask=live & is_e, other=0.0)
    return xd + xe


@triton.jit
def _gram(a, bt, IEEE: tl.constexpr, INTERP: tl.constexpr):
    """``a @ bt`` batched, float32 result (see the module docstring for the precisions)."""
    if IEEE:
        return tl.dot(a.to(tl.float32), bt.to(tl.float32), input_precision="tf32x3")
    elif INTERP:  # Triton's interpreter mis-multiplies bf16 dots: same products in fp32
        return tl.dot(a.to(tl.float32), bt.to(tl.float32))
    else:  # bf16 tensor cores: exact products, float32 sums (half the registers of fp32)
        return tl.dot(a, bt, out_dtype=tl.float32)


@triton.jit
def _fwd_block(dense_ptr, emb_ptr, out_ptr, b, B, S, E, out_cols, i, e, emask, sb, ss,
               IEEE: tl.constexpr, INTERP: tl.constexpr):
    x = _load_x(dense_ptr, emb_ptr, b, B, S, E, i, e, emask, sb, ss)
    z = _gram(x, tl.permute(x, (0, 2, 1)), IEEE=IEEE, INTERP=INTERP)
    bm = b < B
    row = out_ptr + b * out_cols
    d2 = tl.load(dense_ptr + b[:, None] * E + e[None, :], mask=bm[:, None] & emask[None, :],
                 other=0.0)
    tl.store(row[:, None] + e[None, :], d2, mask=bm[:, None] & emask[None, :])
    ii = i[None, :, None]
    jj = i[None, None, :]
    tri = (jj < ii) & (ii <= S) & bm[:, None, None]
    tl.store(row[:, None, None] + E + ii * (ii - 1) // 2 + jj, z.to(out_ptr.dtype.element_ty),
             mask=tri)
    tl.store(row + out_cols - 1, tl.zeros_like(b).to(out_ptr.dtype.element_ty), mask=bm)


@triton.jit
def _fwd_kernel(dense_ptr, emb_ptr, out_ptr, B, S, E, out_cols, sb, ss, SPP: tl.constexpr,
                NP: tl.constexpr, BLOCK_E: tl.constexpr, IEEE: tl.constexpr,
                INTERP: tl.constexpr, STAGES: tl.constexpr):
    """Blocks of SPP samples, program p taking blocks p, p + P, ... (P programs)."""
    i = tl.arange(0, NP)
    e = tl.arange(0, BLOCK_E)
    emask = e < E
    nblk = tl.cdiv(B, SPP)
    if INTERP:  # the interpreter rejects range(tensor)
        blk = tl.program_id(0)
        while blk < nblk:
            b = blk.to(tl.int64) * SPP + tl.arange(0, SPP)
            _fwd_block(dense_ptr, emb_ptr, out_ptr, b, B, S, E, out_cols, i, e, emask, sb,
                       ss, IEEE=IEEE, INTERP=INTERP)
            blk += tl.num_programs(0)
    else:
        for blk in tl.range(tl.program_id(0), nblk, tl.num_programs(0), num_stages=STAGES):
            b = blk.to(tl.int64) * SPP + tl.arange(0, SPP)
            _fwd_block(dense_ptr, emb_ptr, out_ptr, b, B, S, E, out_cols, i, e, emask, sb,
                       ss, IEEE=IEEE, INTERP=INTERP)


@triton.jit
def _load_x_one(dense_ptr, emb_ptr, b, S, E, i, e, emask, sb, ss):
    is_d = i == 0
    is_e = (i >= 1) & (i <= S)
    xd = tl.load(dense_ptr + b * E + e[None, :] + 0 * i[:, None],
                 mask=is_d[:, None] & emask[None, :], other=0.0)
    xe = tl.load(emb_ptr + b * sb + (i - 1).to(tl.int64)[:, None] * ss + e[None, :],
                 mask=is_e[:, None] & emask[None, :], other=0.0)
    return xd + xe, is_e


@triton.jit
def _bwd_one(go_ptr, dense_ptr, emb_ptr, dd_ptr, de_ptr, b, S, E, out_cols, i, e, emask, sb,
             ss, IEEE: tl.constexpr, INTERP: tl.constexpr, ROW0_STORE: tl.constexpr):
    """Sample ``b`` on 2-D tiles (the embedding gradient in the embedding input's layout)."""
    x, is_e = _load_x_one(dense_ptr, emb_ptr, b, S, E, i, e, emask, sb, ss)
    ii = i[:, None]
    jj = i[None, :]
    lower = (jj < ii) & (ii <= S)
    upper = (ii < jj) & (jj <= S)
    idx = tl.where(lower, ii * (ii - 1) // 2 + jj, jj * (jj - 1) // 2 + ii)
    row = go_ptr + b * out_cols
    g = tl.load(row + E + idx, mask=lower | upper, other=0.0)
    if IEEE:
        dx = tl.dot(g.to(tl.float32), x.to(tl.float32), input_precision="tf32x3")
    elif INTERP:  # see _gram
        dx = tl.dot(g.to(x.dtype).to(tl.float32), x.to(tl.float32))
    else:  # bf16 x bf16 on tensor cores: exact products, float32 sums
        dx = tl.dot(g.to(x.dtype), x, out_dtype=tl.float32)
    if ROW0_STORE:  # row 0 of the tile stored as it is: no cross-warp reduction
        d0 = dx + tl.load(row + e, mask=emask, other=0.0).to(tl.float32)[None, :]
        tl.store(dd_ptr + b * E + e[None, :] + 0 * ii, d0.to(dd_ptr.dtype.element_ty),
                 mask=(ii == 0) & emask[None, :])
    else:
        d0 = tl.sum(tl.where(ii == 0, dx, 0.0), axis=0)
        d0 += tl.load(row + e, mask=emask, other=0.0).to(tl.float32)
        tl.store(dd_ptr + b * E + e, d0.to(dd_ptr.dtype.element_ty), mask=emask)
    tl.store(de_ptr + b * sb + (i - 1).to(tl.int64)[:, None] * ss + e[None, :],
             dx.to(de_ptr.dtype.element_ty), mask=is_e[:, None] & emask[None, :])


@triton.jit
def _bwd_kernel(go_ptr, dense_ptr, emb_ptr, dd_ptr, de_ptr, B, S, E, out_cols, sb, ss,
                NP: tl.constexpr, BLOCK_E: tl.constexpr, IEEE: tl.constexpr,
                INTERP: tl.constexpr, STAGES: tl.constexpr, ROW0_STORE: tl.constexpr):
    """One sample at a time (2-D tiles), program p taking samples p, p + P, ..."""
    i = tl.arange(0, NP)
    e = tl.arange(0, BLOCK_E)
    emask = e < E
    if INTERP:  # the interpreter rejects range(tensor)
        b = tl.program_id(0).to(tl.int64)
        while b < B:
            _bwd_one(go_ptr, dense_ptr, emb_ptr, dd_ptr, de_ptr, b, S, E, out_cols, i, e,
                     emask, sb, ss, IEEE=IEEE, INTERP=INTERP, ROW0_STORE=ROW0_STORE)
            b += tl.num_programs(0)
    else:
        for b in tl.range(tl.program_id(0), B, tl.num_programs(0), num_stages=STAGES):
            _bwd_one(go_ptr, dense_ptr, emb_ptr, dd_ptr, de_ptr, b.to(tl.int64), S, E,
                     out_cols, i, e, emask, sb, ss, IEEE=IEEE, INTERP=INTERP,
                     ROW0_STORE=ROW0_STORE)


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


def _rows_layout(emb: torch.Tensor) -> torch.Tensor:
    """``emb`` itself when its vectors are rows of unit stride with non-negative, non-
    overlapping sample / slot strides (``[B, S, E]`` contiguous, or the ``[S, B, E]`` buffer of
    the slot exchange seen as ``[B, S, E]``), else a contiguous copy."""
    if emb.stride(2) != 1 and emb.shape[2] > 1:
        return emb.contiguous()
    reach = 1  # each dimension's stride covers the ones inside it: no element read twice
    for d in sorted(range(3), key=lambda d: (emb.stride(d), d != 2)):
        if emb.shape[d] > 1:
            if emb.stride(d) < reach:
                return emb.contiguous()
            reach = emb.stride(d) * emb.shape[d]
    return emb


def _like(emb: torch.Tensor) -> torch.Tensor:
    """An empty tensor of ``emb``'s shape and dtype laid out as ``emb`` (its gradient)."""
    return torch.empty_strided(emb.shape, emb.stride(), dtype=emb.dtype, device=emb.device)


def _launch(dtype: torch.dtype, spp: int | None, warps: int | None,
            persist: tuple[int, int] | None) -> tuple[int, int, tuple[int, int]]:
    """(samples per block, warps, (programs per SM, stages)): the tuned shape for 16-bit inputs
    on hardware; one sample per 4-warp program for float32 (whose 3xTF32 tiles need the
    registers) and the interpreter. Arguments that are not None win."""
    fast = dtype != torch.float32 and not C.interpreting()
    spp_d, warps_d, per_sm, stages = FWD_LAUNCH if fast else (1, 4, 0, 1)
    return spp or spp_d, warps or warps_d, persist or (per_sm, stages)


def _grid(b: int, spp: int, device: torch.device,
          persist: tuple[int, int]) -> tuple[tuple[int], int]:
    """(grid, pipeline stages): one program per block, or ``per_sm`` programs per SM."""
    per_sm, stages = persist
    blocks = triton.cdiv(b, spp)
    if per_sm <= 0:
        return (blocks,), 1
    return (min(blocks, C.sm_count(device) * per_sm),), stages


def interaction_forward(dense: torch.Tensor, emb: torch.Tensor, *, spp: int | None = None,
                        warps: int | None = None,
                        persist: tuple[int, int] | None = None) -> torch.Tensor:
    """Triton twin of :func:`terarec.kernels.reference.interaction_forward` (``spp`` /
    ``warps`` / ``persist`` override the launch shape, for benchmarks)."""
    b, s, e, np_, be = _shape(dense, emb)
    cols = e + (s + 1) * s // 2 + 1
    out = C.new_empty((b, cols), dense.dtype, dense.device)
    spp, warps, persist = _launch(dense.dtype, spp, warps, persist)
    if b:
        emb = _rows_layout(emb)
        grid, stages = _grid(b, spp, dense.device, persist)
        _fwd_kernel[grid](
            dense.contiguous(), emb, out, b, s, e, cols, emb.stride(0), emb.stride(1),
            SPP=spp, NP=np_,
            BLOCK_E=be, IEEE=dense.dtype == torch.float32, INTERP=C.interpreting(),
            STAGES=stages, num_warps=warps)
    return out


def interaction_backward(grad_out: torch.Tensor, dense: torch.Tensor, emb: torch.Tensor, *,
                         warps: int | None = None, persist: tuple[int, int] | None = None,
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.interaction_backward` (``warps`` /
    ``persist`` override ``BWD_LAUNCH``, for benchmarks)."""
    b, s, e, np_, be = _shape(dense, emb)
    cols = e + (s + 1) * s // 2 + 1
    if grad_out.shape != (b, cols):
        raise ValueError(f"grad_out: expected [{b}, {cols}]. Received: {tuple(grad_out.shape)}")
    d_dense = C.new_empty((b, e), dense.dtype, dense.device)
    emb = _rows_layout(emb)
    d_emb = _like(emb)
    fast = dense.dtype != torch.float32 and not C.interpreting()
    warps_d, per_sm, stages = BWD_LAUNCH if fast else (4, 0, 1)
    if b:
        grid, stages = _grid(b, 1, dense.device, persist or (per_sm, stages))
        _bwd_kernel[grid](grad_out.contiguous(), dense.contiguous(), emb, d_dense, d_emb, b, s,
                          e, cols, emb.stride(0), emb.stride(1), NP=np_, BLOCK_E=be,
                          IEEE=dense.dtype == torch.float32, INTERP=C.interpreting(),
                          STAGES=stages, ROW0_STORE=BWD_ROW0_STORE, num_warps=warps or warps_d)
    return d_dense, d_emb
