"""Triton backward of the pooled lookup: per-unique-row gradient sums, optionally fused with
the optimizer update (no ``[U, D]`` gradient ever written).

Plan (torch, a handful of launches): stable sort of ``rows`` -> ``perm`` (lookup positions in
row order), ``unique_consecutive`` -> unique rows, their counts and segment starts.

Kernels:

* ``_seg_kernel``: ``BLOCK_U`` unique rows per program, walked in lock-step like the forward
  pooling: the j-th lookup of every row is gathered at once (its pooled-gradient row, scaled
  by 1/len for mean). A row with at most ``CAP`` lookups is finished here: its sum goes to the
  gradient buffer or straight into the optimizer rule (:func:`triton_optim.apply_rule`).
  A hot row (> CAP lookups) sums its first CAP lookups into a partial slot instead.
* ``_chunk_kernel``: the remaining CAP-sized chunks of hot rows, one partial slot each.
* ``_combine_kernel``: per hot row, the sum of its partial slots, then finish as above.

Every sum runs in a fixed order, so results are deterministic (no atomics).
Multi-table: ``grad_out`` is the sample-major ``[B, T*slots, D]`` output of
``pooled_lookup_multi``; rows are made global with ``table_offsets`` before the sort.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from terarec.kernels import _common as C
from terarec.kernels.triton_optim import apply_rule, state_pointers, use_sr

CAP = 32


@triton.jit
def _src_row(p, qpos_ptr, m, rows_per_table, slots, tables, HOT: tl.constexpr,
             MULTI: tl.constexpr):
    """(CSR row, grad_out row) of lookup positions ``p``."""
    if HOT > 0:
        q = p // HOT
    else:
        q = tl.load(qpos_ptr + p, mask=m, other=0)
    if MULTI:
        t = q // rows_per_table
        rr = q - t * rows_per_table
        b = rr // slots
        g_row = b * (tables * slots) + t * slots + (rr - b * slots)
    else:
        g_row = q
    return q, g_row


@triton.jit
def _finish(out_ptr, w_ptr, s1_ptr, s2_ptr, uniq_ptr, u, umask, mask, d, D, g, lr, h1, h2,
            h3, seed, OPT: tl.constexpr, SR: tl.constexpr):
    """Write gradient rows ``u`` (OPT 0) or apply rule OPT to the table rows they stand for."""
    if OPT == 0:
        tl.store(out_ptr + u[:, None] * D + d[None, :], g, mask=mask)
    else:
        row = tl.load(uniq_ptr + u, mask=umask, other=0)
        apply_rule(w_ptr, s1_ptr, s2_ptr, row[:, None] * D + d[None, :], mask, g, lr, h1, h2,
                   h3, seed, OPT=OPT, SR=SR)


@triton.jit
def _seg_add(acc, go_ptr, perm_ptr, qpos_ptr, qscale_ptr, pos, m, d, dmask, go_stride,
             rows_per_table, slots, tables, HOT: tl.constexpr, MULTI: tl.constexpr,
             SCALED: tl.constexpr):
    p = tl.load(perm_ptr + pos, mask=m, other=0)
    q, g_row = _src_row(p, qpos_ptr, m, rows_per_table, slots, tables, HOT=HOT, MULTI=MULTI)
    g = tl.load(go_ptr + g_row[:, None] * go_stride + d[None, :],
                mask=m[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    if SCALED:
        g = g * tl.load(qscale_ptr + q, mask=m, other=0.0)[:, None]
    return acc + g


@triton.jit
def _seg_kernel(go_ptr, perm_ptr, qpos_ptr, qscale_ptr, start_ptr, cnt_ptr, slot_ptr,
                part_ptr, out_ptr, w_ptr, s1_ptr, s2_ptr, uniq_ptr, n_u, D, go_stride,
                rows_per_table, slots, tables, gscale, lr, h1, h2, h3, seed,
                HOT: tl.constexpr, MULTI: tl.constexpr, SCALED: tl.constexpr,
                OPT: tl.constexpr, SR: tl.constexpr, CAP_: tl.constexpr,
                BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr, INTERP: tl.constexpr):
    u = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    umask = u < n_u
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    start = tl.load(start_ptr + u, mask=umask, other=0)
    cnt = tl.minimum(tl.load(cnt_ptr + u, mask=umask, other=0), CAP_)
    acc = tl.zeros([BLOCK_U, BLOCK_D], dtype=tl.float32)
    max_cnt = tl.max(cnt, axis=0)
    if INTERP:  # the interpreter rejects range(tensor)
        j = 0
        while j < max_cnt:
            acc = _seg_add(acc, go_ptr, perm_ptr, qpos_ptr, qscale_ptr, start + j,
                           umask & (j < cnt), d, dmask, go_stride, rows_per_table, slots,
                           tables, HOT=HOT, MULTI=MULTI, SCALED=SCALED)
            j += 1
    else:
        for j in range(0, max_cnt):
            acc = _seg_add(acc, go_ptr, perm_ptr, qpos_ptr, qscale_ptr, start + j,
                           umask & (j < cnt), d, dmask, go_stride, rows_per_table, slots,
                           tables, HOT=HOT, MULTI=MULTI, SCALED=SCALED)
    slot = tl.load(slot_ptr + u, mask=umask, other=-1)
    hot = umask & (slot >= 0)
    tl.store(part_ptr + slot[:, None] * D + d[None, :], acc,
             mask=hot[:, None] & dmask[None, :])
    done = umask & (slot < 0)
    _finish(out_ptr, w_ptr, s1_ptr, s2_ptr, uniq_ptr, u, done, done[:, None] & dmask[None, :], d,
            D, acc * gscale, lr, h1, h2, h3, seed, OPT=OPT, SR=SR)


@triton.jit
def _chunk_kernel(go_ptr, perm_ptr, qpos_ptr, qscale_ptr, start_ptr, cnt_ptr, ch_u_ptr,
                  ch_k_ptr, ch_slot_ptr, part_ptr, D, go_stride, rows_per_table, slots, tables,
                  HOT: tl.constexpr, MULTI: tl.constexpr, SCALED: tl.constexpr,
                  CAP_: tl.constexpr, BLOCK_D: tl.constexpr):
    c = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    u = tl.load(ch_u_ptr + c)
    k = tl.load(ch_k_ptr + c)
    first = tl.load(start_ptr + u) + k * CAP_
    n = tl.minimum(tl.load(cnt_ptr + u) - k * CAP_, CAP_)
    i = tl.arange(0, CAP_)
    m = i < n
    p = tl.load(perm_ptr + first + i, mask=m, other=0)
    q, g_row = _src_row(p, qpos_ptr, m, rows_per_table, slots, tables, HOT=HOT, MULTI=MULTI)
    g = tl.load(go_ptr + g_row[:, None] * go_stride + d[None, :],
                mask=m[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    if SCALED:
        g = g * tl.load(qscale_ptr + q, mask=m, other=0.0)[:, None]
    slot = tl.load(ch_slot_ptr + c)
    tl.store(part_ptr + slot * D + d, tl.sum(g, axis=0), mask=dmask)


@triton.jit
def _part_add(acc, part_ptr, first, j, nc, d, dmask, D, BLOCK_C: tl.constexpr):
    cc = j + tl.arange(0, BLOCK_C)
    return acc + tl.load(part_ptr + (first + cc)[:, None] * D + d[None, :],
                         mask=(cc < nc)[:, None] & dmask[None, :], other=0.0)


@triton.jit
def _combine_kernel(part_ptr, hot_u_ptr, slot_ptr, nch_ptr, out_ptr, w_ptr, s1_ptr, s2_ptr,
                    uniq_ptr, D, gscale, lr, h1, h2, h3, seed, OPT: tl.constexpr,
                    SR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                    INTERP: tl.constexpr):
    h = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    u = tl.load(hot_u_ptr + h + tl.arange(0, 1))
    first = tl.load(slot_ptr + u)
    nc = tl.load(nch_ptr + h + tl.arange(0, 1))
    acc = tl.zeros([BLOCK_C, BLOCK_D], dtype=tl.float32)
    nc_s = tl.max(nc, axis=0)
    first_s = tl.max(first, axis=0)
    if INTERP:
        j = 0
        while j < nc_s:
            acc = _part_add(acc, part_ptr, first_s, j, nc_s, d, dmask, D, BLOCK_C=BLOCK_C)
            j += BLOCK_C
    else:
        for j in range(0, nc_s, BLOCK_C):
            acc = _part_add(acc, part_ptr, first_s, j, nc_s, d, dmask, D, BLOCK_C=BLOCK_C)
    g = tl.sum(acc, axis=0)[None, :] * gscale
    _finish(out_ptr, w_ptr, s1_ptr, s2_ptr, uniq_ptr, u, u >= 0, dmask[None, :], d, D, g, lr,
            h1, h2, h3, seed, OPT=OPT, SR=SR)


def _run(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
         mean: bool | Sequence[bool] | torch.Tensor, multi: tuple[torch.Tensor, int] | None,
         code: int, weight: torch.Tensor | None, states: Sequence[torch.Tensor],
         scalars: tuple[float, float, float, float], gscale: float, sr: bool, seed: int,
         hotness: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    C.check_csr(rows, offsets)
    dev = grad_out.device
    dim = grad_out.shape[-1]
    go = grad_out.reshape(-1, dim)
    if go.stride(1) != 1:
        go = go.contiguous()
    n_q = offsets.numel() - 1
    nnz = rows.numel()
    hot = C.fixed_hotness(offsets, nnz) if hotness is None else hotness
    qpos = None
    if hot == 0 and nnz:
        qpos = torch.repeat_interleave(torch.arange(n_q, device=dev), C.lengths_of(offsets),
                                       output_size=nnz)
    tables, slots, rpt = 1, 1, n_q
    if multi is not None:
        table_offsets, slots = multi
        tables = table_offsets.numel()
        rpt = n_q // tables
        t_of_q = torch.arange(n_q, device=dev) // rpt
        base = table_offsets.to(dev)[t_of_q]
        rows = rows + (base[qpos] if qpos is not None else base.repeat_interleave(hot))
    scaled = not (isinstance(mean, bool) and not mean)
    qscale = None
    if scaled:
        flags = C.mean_flags(mean, tables, dev).repeat_interleave(rpt).bool()
        inv = 1.0 / C.lengths_of(offsets).clamp(min=1).to(torch.float32)
        qscale = torch.where(flags, inv, 1.0)
    # Rows of a weight with < 2**31 rows sort as int32: half the radix passes of int64.
    narrow = weight is not None and weight.shape[0] < 2**31
    sorted_rows, perm = torch.sort(rows.to(torch.int32) if narrow else rows, stable=True)
    uniq, counts = torch.unique_consecutive(sorted_rows, return_counts=True)
    uniq = uniq.to(torch.int64)
    n_u = uniq.numel()
    out = C.new_empty((n_u, dim), torch.float32, dev) if code == 0 else None
    if n_u == 0 or dim == 0:
        return uniq, out
    starts = counts.cumsum(0) - counts
    hot_u = torch.nonzero(counts > CAP).squeeze(1)
    nch = (counts[hot_u] + CAP - 1) // CAP
    slot = torch.full((n_u,), -1, dtype=torch.int64, device=dev)
    slot[hot_u] = nch.cumsum(0) - nch
    n_part = int(nch.sum()) if hot_u.numel() else 0
    part = torch.empty(max(n_part, 1), dim, dtype=torch.float32, device=dev)
    w = weight if weight is not None else go
    s1, s2 = state_pointers(states, w)
    dummy = starts
    lr, h1, h2, h3 = scalars
    block_d = min(triton.next_power_of_2(dim), 256)
    block_u = max(8, min(64, 4096 // block_d))
    common = dict(HOT=hot, MULTI=multi is not None, SCALED=scaled)
    _seg_kernel[(triton.cdiv(n_u, block_u), triton.cdiv(dim, block_d))](
        go, perm, qpos if qpos is not None else dummy, qscale if scaled else dummy, starts,
        counts, slot, part, out if out is not None else part, w, s1, s2, uniq, n_u, dim,
        go.stride(0), rpt, slots, tables, gscale, lr, h1, h2, h3, seed, OPT=code, SR=sr,
        CAP_=CAP, BLOCK_U=block_u, BLOCK_D=block_d, INTERP=C.interpreting(), num_warps=4,
        **common)
    if n_part:
        ch_u = hot_u.repeat_interleave(nch, output_size=n_part)
        ch_k = torch.arange(n_part, device=dev) - slot[ch_u]
        keep = ch_k > 0  # chunk 0 of every hot row was summed by _seg_kernel
        ch_u, ch_k = ch_u[keep], ch_k[keep]
        ch_slot = slot[ch_u] + ch_k
        if ch_u.numel():
            _chunk_kernel[(ch_u.numel(), triton.cdiv(dim, block_d))](
                go, perm, qpos if qpos is not None else dummy, qscale if scaled else dummy,
                starts, counts, ch_u, ch_k, ch_slot, part, dim, go.stride(0), rpt, slots,
                tables, CAP_=CAP, BLOCK_D=block_d, num_warps=4, **common)
        _combine_kernel[(hot_u.numel(), triton.cdiv(dim, block_d))](
            part, hot_u, slot, nch, out if out is not None else part, w, s1, s2, uniq, dim,
            gscale, lr, h1, h2, h3, seed, OPT=code, SR=sr, BLOCK_C=16, BLOCK_D=block_d,
            INTERP=C.interpreting(), num_warps=4)
    return uniq, out


def sparse_grad(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.sparse_grad`."""
    uniq, out = _run(grad_out, rows, offsets, mean, None, 0, None, [], (0.0, 0.0, 0.0, 0.0),
                     1.0, False, 0, None)
    assert out is not None  # noqa: S101 - OPT 0 always allocates
    return uniq, out


def sparse_grad_multi(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                      table_offsets: torch.Tensor, mean: bool | Sequence[bool] | torch.Tensor,
                      slots: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.sparse_grad_multi`."""
    uniq, out = _run(grad_out, rows, offsets, mean, (table_offsets, slots), 0, None, [],
                     (0.0, 0.0, 0.0, 0.0), 1.0, False, 0, None)
    assert out is not None  # noqa: S101
    return uniq, out


def fused_backward_update(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                          mean: bool | Sequence[bool] | torch.Tensor, weight: torch.Tensor,
                          states: Sequence[torch.Tensor], optimizer: str, lr: float, *,
                          momentum_factor: float = 0.0, beta1: float = 0.9,
                          beta2: float = 0.999, epsilon: float = 1e-7, lambda1: float = 0.0,
                          lambda2: float = 0.0, step: int = 1, grad_scale: float = 1.0,
                          stochastic_rounding: bool = False, seed: int | None = None,
                          hotness: int | None = None,
                          table_offsets: torch.Tensor | None = None,
                          slots: int = 1) -> torch.Tensor:
    """Triton twin of :func:`terarec.kernels.reference.fused_backward_update`."""
    code = C.opt_code(optimizer)
    C.check_states(code, states, weight)
    if not weight.is_contiguous() or weight.shape[1] != grad_out.shape[-1]:
        raise ValueError("weight: expected a contiguous [R, D] tensor matching grad_out's D")
    scalars = C.rule_scalars(code, lr, momentum_factor, beta1, beta2, epsilon, lambda1,
                             lambda2, step)
    sr = use_sr(weight, stochastic_rounding)
    sd = (C.random_seed() if seed is None else seed) if sr else 0
    multi = None if table_offsets is None else (table_offsets, slots)
    uniq, _ = _run(grad_out, rows, offsets, mean, multi, code, weight, states, scalars,
                   grad_scale, sr, sd, hotness)
    return uniq
