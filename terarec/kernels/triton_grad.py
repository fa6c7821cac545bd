"""Triton backward of the pooled lookup: per-unique-row gradient sums, optionally fused with
the optimizer update (no ``[U, D]`` gradient ever written).

Plan (torch, a handful of launches): stable sort of ``rows`` -> ``perm`` (lookup positions in
row order), ``unique_consecutive`` -> unique rows, their counts and segment starts.

Kernels:

* ``_seg_kernel``: ``BLOCK_U`` unique rows per program, walked in lock-step: the j-th lookup
  of every row is gathered at once (its pooled-gradient row, scaled by 1/len for mean). The
  rows are taken in the plan's ``order`` (by lookup count, capped at CAP, longest first), so
  the rows of a block have the same count and no lane idles while a block waits for its
  longest row (in unique-row order, power-law or hash-mixed keys put a 32-lookup row next to
  31 single ones: 3x the lane-rounds on DCNv2). A row with at most ``CAP`` lookups is
  finished here: its sum goes to the gradient buffer or straight into the optimizer rule
  (:func:`triton_optim.apply_rule`). A hot row (> CAP lookups) sums its first CAP lookups
  into a partial slot instead.
* ``_chunk_kernel``: the remaining CAP-sized chunks of hot rows, one partial slot each.
* ``_combine_kernel``: per hot row, the sum of its partial slots, then finish as above.

Every sum runs in a fixed order, so results are deterministic (no atomics).
General CSR (hotness 0): the CSR row of every sorted lookup is gathered once by torch
(``qpos[perm]``, int64 like ``perm``), so the kernels read it directly (as for hotness 1)
instead of a dependent ``qpos[perm[i]]`` load per lookup.
The per-row values ``_seg_kernel`` needs (start, slot, table row) are gathered into count
order by torch rather than loaded through ``order`` in the kernel: that indirection before
the lookup loop cost a dependent load per program and, with D = 128 and sum pooling, made
Triton 3.6's layout pass fail to compile the kernel on an H200.
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
CHUNKS_PER_PROGRAM = 4  # chunks walked per program (H200 DLRM step: 4 -> 3.76 ms, 16 3.78, 64 3.88)
CHUNK_STAGES = 1  # software-pipeline stages of _chunk_kernel's walk over its chunks
# Warps of a _chunk_kernel program (its [CAP, BLOCK_D] sum crosses warps through shared memory
# with 4; 1-2 keep more of it in registers). H200 DLRM step (2026-11-29): 1 -> 3.69 ms,
# 2 -> 3.70, 4 -> 3.78-3.79.
CHUNK_WARPS = 1
# Partial slots summed per step of _combine_kernel's walk: a hot row of a 3-row Criteo slot
# has ~680 partials at B = 65,536 (16 per step: 43 dependent steps, the kernel's tail).
COMBINE_BLOCK_C = 64


@triton.jit
def _src_row(p, qpos_ptr, m, rows_per_table, slots, tables, HOT: tl.constexpr,
             MULTI: tl.constexpr):
    """(CSR row, grad_out row) of lookup positions ``p``."""
    if HOT > 0:
        q = p.to(tl.int64) // HOT
    else:
        q = tl.load(qpos_ptr + p, mask=m, other=0).to(tl.int64)
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
def _seg_kernel(go_ptr, perm_ptr, qpos_ptr, qscale_ptr, order_ptr, okey_ptr, ostart_ptr,
                oslot_ptr, part_ptr, out_ptr, w_ptr, s1_ptr, s2_ptr, ouniq_ptr, nu_ptr, D,
                go_stride, rows_per_table, slots, tables, gscale, lr, lrs_ptr, h1, h2, h3, seed,
                HOT: tl.constexpr, MULTI: tl.constexpr, SCALED: tl.constexpr,
                OPT: tl.constexpr, SR: tl.constexpr, CAP_: tl.constexpr,
                BLOCK_U: tl.constexpr, BLOCK_D: tl.constexpr, INTERP: tl.constexpr):
    """Unique rows ``order[k]`` for k in this block (the plan's count order). Everything a
    row needs comes in that order, read contiguously before the lookups: its segment start,
    partial slot and table row (``ostart``, ``oslot``, ``ouniq``) and its capped count from
    the sort key (``okey``: 0 = hot, CAP + 1 - count otherwise). After the sums only the
    optimizer's own loads remain (a dependent load there costs every program its latency)."""
    n_u = tl.load(nu_ptr)
    lr = lr * tl.load(lrs_ptr)  # device-side learning-rate factor (CUDA graph replays)
    if tl.program_id(0).to(tl.int64) * BLOCK_U >= n_u:  # past the unique rows of this batch
        return
    k = tl.program_id(0).to(tl.int64) * BLOCK_U + tl.arange(0, BLOCK_U)
    umask = k < n_u
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    start = tl.load(ostart_ptr + k, mask=umask, other=0)
    key = tl.load(okey_ptr + k, mask=umask, other=CAP_ + 1).to(tl.int32)
    hot = umask & (key == 0)
    done = umask & (key != 0)
    slot = tl.load(oslot_ptr + k, mask=hot, other=0)
    if OPT != 0:
        row = tl.load(ouniq_ptr + k, mask=done, other=0)
    cnt = tl.where(hot, CAP_, CAP_ + 1 - key)  # 0 past n_u
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
    # A hot row's first CAP lookups go to its first partial slot (_combine_kernel finishes it).
    tl.store(part_ptr + slot[:, None] * D + d[None, :], acc,
             mask=hot[:, None] & dmask[None, :])
    mask = done[:, None] & dmask[None, :]
    if OPT == 0:  # the gradient buffer is in unique order
        u = tl.load(order_ptr + k, mask=done, other=0)
        tl.store(out_ptr + u[:, None] * D + d[None, :], acc * gscale, mask=mask)
    else:
        apply_rule(w_ptr, s1_ptr, s2_ptr, row[:, None] * D + d[None, :], mask, acc * gscale, lr,
                   h1, h2, h3, seed, OPT=OPT, SR=SR)


@triton.jit
def _chunk_one(go_ptr, perm_ptr, qpos_ptr, qscale_ptr, ch_first_ptr, ch_n_ptr, ch_slot_ptr,
               part_ptr, c, d, dmask, D, go_stride, rows_per_table, slots, tables,
               HOT: tl.constexpr, MULTI: tl.constexpr, SCALED: tl.constexpr,
               CAP_: tl.constexpr):
    n = tl.load(ch_n_ptr + c)  # 0: no chunk (k == 0 of a hot row is summed by _seg_kernel)
    first = tl.load(ch_first_ptr + c)
    i = tl.arange(0, CAP_)
    m = i < n
    p = tl.load(perm_ptr + first + i, mask=m, other=0)
    q, g_row = _src_row(p, qpos_ptr, m, rows_per_table, slots, tables, HOT=HOT, MULTI=MULTI)
    g = tl.load(go_ptr + g_row[:, None] * go_stride + d[None, :],
                mask=m[:, None] & dmask[None, :], other=0.0).to(tl.float32)
    if SCALED:
        g = g * tl.load(qscale_ptr + q, mask=m, other=0.0)[:, None]
    slot = tl.load(ch_slot_ptr + c)
    tl.store(part_ptr + slot * D + d, tl.sum(g, axis=0), mask=dmask & (n > 0))


@triton.jit
def _chunk_kernel(go_ptr, perm_ptr, qpos_ptr, qscale_ptr, ch_first_ptr, ch_n_ptr, ch_slot_ptr,
                  ntot_ptr, part_ptr, D, go_stride, rows_per_table, slots, tables,
                  HOT: tl.constexpr, MULTI: tl.constexpr, SCALED: tl.constexpr,
                  CAP_: tl.constexpr, PER_PROG: tl.constexpr, BLOCK_D: tl.constexpr,
                  STAGES: tl.constexpr):
    """PER_PROG chunk entries per program, each a CAP-sized chunk of a hot row -> one partial
    slot. Real chunks are the prefix [0, ntot) of the entries; programs past it exit."""
    c0 = tl.program_id(0) * PER_PROG
    if c0 >= tl.load(ntot_ptr):
        return
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    for k in tl.range(PER_PROG, num_stages=STAGES):
        _chunk_one(go_ptr, perm_ptr, qpos_ptr, qscale_ptr, ch_first_ptr, ch_n_ptr, ch_slot_ptr,
                   part_ptr, c0 + k, d, dmask, D, go_stride, rows_per_table, slots, tables,
                   HOT=HOT, MULTI=MULTI, SCALED=SCALED, CAP_=CAP_)


@triton.jit
def _part_add(acc, part_ptr, first, j, nc, d, dmask, D, BLOCK_C: tl.constexpr):
    cc = j + tl.arange(0, BLOCK_C)
    return acc + tl.load(part_ptr + (first + cc)[:, None] * D + d[None, :],
                         mask=(cc < nc)[:, None] & dmask[None, :], other=0.0)


@triton.jit
def _combine_kernel(part_ptr, hot_u_ptr, slot_ptr, nch_ptr, out_ptr, w_ptr, s1_ptr, s2_ptr,
                    uniq_ptr, D, gscale, lr, lrs_ptr, h1, h2, h3, seed, OPT: tl.constexpr,
                    SR: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                    INTERP: tl.constexpr):
    h = tl.program_id(0)
    if tl.load(hot_u_ptr + h) < 0:  # -1: no hot row for this program (upper-bound grid)
        return
    lr = lr * tl.load(lrs_ptr)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    u = tl.load(hot_u_ptr + h + tl.arange(0, 1))
    first = tl.load(slot_ptr + u, mask=u >= 0, other=0)
    nc = tl.load(nch_ptr + u, mask=u >= 0, other=0)
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
    valid = u >= 0
    _finish(out_ptr, w_ptr, s1_ptr, s2_ptr, uniq_ptr, u, valid, valid[:, None] & dmask[None, :],
            d, D, g, lr, h1, h2, h3, seed, OPT=OPT, SR=SR)


def _run(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
         mean: bool | Sequence[bool] | torch.Tensor, multi: tuple[torch.Tensor, int] | None,
         code: int, weight: torch.Tensor | None, states: Sequence[torch.Tensor],
         scalars: tuple[float, float, float, float], gscale: float, sr: bool, seed: int,
         hotness: int | None, lr_factor: torch.Tensor | None = None,
         grad_rows: torch.Tensor | None = None, num_rows: int | None = None,
         ) -> tuple[_Plan, torch.Tensor | None]:
    C.check_csr(rows, offsets)
    dev = grad_out.device
    lr_factor = _ones(dev) if lr_factor is None else lr_factor
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
    # Rows of a weight with < 2**31 rows sort as int32: half the radix passes of int64.
    bound = weight.shape[0] if weight is not None else num_rows
    narrow = bound is not None and bound < 2**31
    if multi is not None:
        table_offsets, slots = multi
        tables = table_offsets.numel()
        rpt = n_q // tables
        rows = _global_rows(rows, table_offsets.to(dev), qpos, hot, rpt, narrow)
    elif narrow:
        rows = rows.to(torch.int32)
    scaled = not (isinstance(mean, bool) and not mean)
    qscale = None
    if scaled:
        flags = C.mean_flags(mean, tables, dev).repeat_interleave(rpt).bool()
        inv = 1.0 / C.lengths_of(offsets).clamp(min=1).to(torch.float32)
        qscale = torch.where(flags, inv, 1.0)
    sorted_rows, perm = torch.sort(rows, stable=True)
    if nnz == 0 or dim == 0:
        empty = torch.empty(0, dtype=torch.int64, device=dev)
        out = C.new_empty((0, dim), torch.float32, dev) if code == 0 else None
        return _Plan(empty, torch.zeros(1, dtype=torch.int64, device=dev)), out
    plan = _plan(sorted_rows)
    src, kernel_hot = perm, hot
    if grad_rows is not None:  # lookup i's gradient is row grad_rows[i] (hotness 1)
        src = grad_rows[perm]
    elif qpos is not None:
        # CSR row of every sorted lookup, gathered once here: the kernels then read it like a
        # hotness-1 position (q = src[i]) instead of a dependent qpos[perm[i]] per lookup.
        src, kernel_hot = qpos[perm], 1
    out = C.new_empty((nnz, dim), torch.float32, dev) if code == 0 else None
    part = torch.empty(plan.max_part, dim, dtype=torch.float32, device=dev)
    w = weight if weight is not None else go
    s1, s2 = state_pointers(states, w)
    dummy = plan.starts
    lr, h1, h2, h3 = scalars
    block_d = min(triton.next_power_of_2(dim), 256)
    # 16 unique rows x 128 columns per program of _seg_kernel (H200, DCNv2 batch: 32 rows
    # were 1.4 ms slower, 8 rows 0.25 ms: programs in flight hide each one's dependent loads).
    block_u = max(8, min(64, 2048 // block_d))
    common = dict(HOT=kernel_hot, MULTI=multi is not None, SCALED=scaled)
    qpos_arg = dummy  # only read with HOT == 0: the CSR rows are in src (see above)
    qscale_arg = qscale if scaled else dummy
    # Upper-bound grids: programs past the device-side counts do nothing.
    _seg_kernel[(triton.cdiv(nnz, block_u), triton.cdiv(dim, block_d))](
        go, src, qpos_arg, qscale_arg, plan.order, plan.okey, plan.ostart, plan.oslot, part,
        out if out is not None else part, w, s1, s2, plan.uniq if code == 0 else plan.ouniq,
        plan.n_u, dim, go.stride(0), rpt,
        slots, tables, gscale, lr, lr_factor, h1, h2, h3, seed, OPT=code, SR=sr, CAP_=CAP,
        BLOCK_U=block_u, BLOCK_D=block_d, INTERP=C.interpreting(), num_warps=4, **common)
    _chunk_kernel[(plan.max_part // CHUNKS_PER_PROGRAM, triton.cdiv(dim, block_d))](
        go, src, qpos_arg, qscale_arg, plan.ch_first, plan.ch_n, plan.ch_slot, plan.n_chunks,
        part, dim, go.stride(0), rpt, slots, tables, CAP_=CAP, PER_PROG=CHUNKS_PER_PROGRAM,
        BLOCK_D=block_d, STAGES=CHUNK_STAGES, num_warps=CHUNK_WARPS, **common)
    _combine_kernel[(plan.max_hot, triton.cdiv(dim, block_d))](
        part, plan.hot_u, plan.slot, plan.nch, out if out is not None else part, w, s1, s2,
        plan.uniq, dim, gscale, lr, lr_factor, h1, h2, h3, seed, OPT=code, SR=sr,
        BLOCK_C=COMBINE_BLOCK_C, BLOCK_D=block_d, INTERP=C.interpreting(), num_warps=4)
    return plan, out


@triton.jit
def _global_rows_kernel(rows_ptr, toff_ptr, qpos_ptr, out_ptr, n, rows_per_table,
                        HOT: tl.constexpr, BLOCK: tl.constexpr):
    """``out[p] = rows[p] + table_offsets[table of lookup p]`` in out's dtype."""
    p = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = p < n
    if HOT > 0:
        q = p // HOT
    else:
        q = tl.load(qpos_ptr + p, mask=m, other=0)
    base = tl.load(toff_ptr + q // rows_per_table, mask=m, other=0)
    row = tl.load(rows_ptr + p, mask=m, other=0) + base
    tl.store(out_ptr + p, row.to(out_ptr.dtype.element_ty), mask=m)


def _global_rows(rows: torch.Tensor, table_offsets: torch.Tensor, qpos: torch.Tensor | None,
                 hot: int, rows_per_table: int, narrow: bool) -> torch.Tensor:
    """Table rows made global (one launch; was arange, divide, gather, repeat, add, cast)."""
    out = torch.empty(rows.numel(), dtype=torch.int32 if narrow else torch.int64,
                      device=rows.device)
    if rows.numel():
        _global_rows_kernel[(triton.cdiv(rows.numel(), _PLAN_BLOCK),)](
            rows, table_offsets.to(torch.int64), qpos if qpos is not None else rows, out,
            rows.numel(), rows_per_table, HOT=hot if qpos is None else 0, BLOCK=_PLAN_BLOCK)
    return out


_ONES: dict[torch.device, torch.Tensor] = {}


def _ones(device: torch.device) -> torch.Tensor:
    """A float32 [1] tensor holding 1.0 on ``device`` (the default learning-rate factor)."""
    t = _ONES.get(device)
    if t is None:
        t = _ONES[device] = torch.ones(1, dtype=torch.float32, device=device)
    return t


class _Plan:
    """Segments of the sorted rows, in buffers sized by ``nnz`` (no host sync to build).

    ``uniq[:n_u]`` are the distinct rows; ``starts``/``counts`` their segments in the sorted
    order (``counts`` is 0 past ``n_u``); ``order[:n_u]`` the unique indices by count (hot rows,
    then CAP down to 1 lookups: the blocks of ``_seg_kernel``), then the idle entries, with
    ``okey`` their sort keys (0 hot, CAP + 1 - count otherwise) and ``ostart`` / ``oslot`` /
    ``ouniq`` their starts, slots and rows in that order; ``slot`` the
    first partial slot of a hot row (> CAP lookups) or -1; ``ch_*`` one entry per possible
    extra chunk of a hot row (``ch_n`` 0 when there is none); ``hot_u`` the hot rows, padded
    with -1.
    """

    def __init__(self, uniq: torch.Tensor, n_u: torch.Tensor, **bufs: torch.Tensor) -> None:
        self.uniq = uniq
        self.n_u = n_u
        for name, buf in bufs.items():
            setattr(self, name, buf)
        self.max_part = int(bufs["ch_n"].numel()) if bufs else 0
        self.max_hot = int(bufs["hot_u"].numel()) if bufs else 0

    def unique_rows(self) -> torch.Tensor:
        """The distinct rows, exactly sized (one host sync)."""
        return self.uniq[: int(self.n_u.item())]


_PLAN_BLOCK = 1024


@triton.jit
def _is_start_kernel(sorted_ptr, is_start_ptr, n, BLOCK: tl.constexpr):
    """1 where a sorted position starts a segment of equal rows (position 0 always)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    cur = tl.load(sorted_ptr + i, mask=m, other=0)
    prev = tl.load(sorted_ptr + i - 1, mask=m & (i > 0), other=0)
    tl.store(is_start_ptr + i, ((i == 0) | (cur != prev)).to(tl.int32), mask=m)


@triton.jit
def _starts_kernel(is_start_ptr, seg_ptr, starts_ptr, n, BLOCK: tl.constexpr):
    """``starts[seg - 1] = i`` at every segment start i (``seg``: inclusive count of starts)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    first = tl.load(is_start_ptr + i, mask=m, other=0) != 0
    seg = tl.load(seg_ptr + i, mask=m & first, other=1) - 1
    tl.store(starts_ptr + seg, i, mask=m & first)


@triton.jit
def _segments_kernel(starts_ptr, sorted_ptr, counts_ptr, uniq_ptr, key_ptr, nch_ptr, n,
                     CAP_: tl.constexpr, BLOCK: tl.constexpr):
    """Per segment u (all of [0, n): ``starts[u] = n`` past the last one, count 0): its
    count, row, sort key (0 hot, CAP + 1 - count otherwise: uint8) and chunk count."""
    u = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = u < n
    st = tl.load(starts_ptr + u, mask=m, other=0)
    cnt = tl.load(starts_ptr + u + 1, mask=m, other=0) - st
    row = tl.load(sorted_ptr + tl.minimum(st, n - 1), mask=m, other=0)
    hot = cnt > CAP_
    tl.store(counts_ptr + u, cnt, mask=m)
    tl.store(uniq_ptr + u, row.to(tl.int64), mask=m)
    tl.store(key_ptr + u, tl.where(hot, 0, CAP_ + 1 - cnt).to(tl.uint8), mask=m)
    tl.store(nch_ptr + u, tl.where(hot, (cnt + CAP_ - 1) // CAP_, 0), mask=m)


@triton.jit
def _order_kernel(order_ptr, starts_ptr, uniq_ptr, nch_ptr, chunk_end_ptr, slot_ptr,
                  ostart_ptr, oslot_ptr, ouniq_ptr, n, BLOCK: tl.constexpr):
    """Entry k of the count order (segment o = order[k]): its start, first partial slot
    (hot rows; -1 otherwise) and row; ``slot[o]`` too (order is a permutation)."""
    k = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = k < n
    o = tl.load(order_ptr + k, mask=m, other=0)
    nch = tl.load(nch_ptr + o, mask=m, other=0)
    slot = tl.where(nch > 0, tl.load(chunk_end_ptr + o, mask=m, other=0) - nch, -1)
    tl.store(ostart_ptr + k, tl.load(starts_ptr + o, mask=m, other=0), mask=m)
    tl.store(ouniq_ptr + k, tl.load(uniq_ptr + o, mask=m, other=0), mask=m)
    tl.store(oslot_ptr + k, slot, mask=m)
    tl.store(slot_ptr + o, slot, mask=m)


def _plan(sorted_rows: torch.Tensor) -> _Plan:
    nnz = sorted_rows.numel()
    dev = sorted_rows.device
    i64 = torch.int64
    grid = (triton.cdiv(nnz, _PLAN_BLOCK),)
    is_start = torch.empty(nnz, dtype=torch.int32, device=dev)
    _is_start_kernel[grid](sorted_rows, is_start, nnz, BLOCK=_PLAN_BLOCK)
    seg = torch.cumsum(is_start, 0)  # segment of position i, counted from 1
    n_u = seg[-1:]
    # starts_full[k] = first sorted position of segment k; nnz for k >= n_u (one masked store
    # per segment start: a scatter_ of every position, non-starts to one trash slot, made all
    # of those hit one address).
    starts_full = torch.full((nnz + 1,), nnz, dtype=i64, device=dev)
    _starts_kernel[grid](is_start, seg, starts_full, nnz, BLOCK=_PLAN_BLOCK)
    starts = starts_full[:nnz]
    counts = torch.empty(nnz, dtype=i64, device=dev)
    uniq = torch.empty(nnz, dtype=i64, device=dev)
    key = torch.empty(nnz, dtype=torch.uint8, device=dev)
    nch = torch.empty(nnz, dtype=i64, device=dev)
    _segments_kernel[grid](starts_full, sorted_rows, counts, uniq, key, nch, nnz, CAP_=CAP,
                           BLOCK=_PLAN_BLOCK)
    # Unique rows grouped by lookup count, longest first (hot rows, then CAP, ..., 1 lookups),
    # entries past n_u (count 0) last: one uint8 key, one radix pass. Any order gives the same
    # per-row sums; this one keeps _seg_kernel's lock-step blocks free of idle lanes. The
    # kernel reads the counts from the sorted key and the starts and table rows gathered in
    # this order.
    okey, order = torch.sort(key, stable=True)
    chunk_end = torch.cumsum(nch, 0)
    slot = torch.empty(nnz, dtype=i64, device=dev)
    ostart = torch.empty(nnz, dtype=i64, device=dev)
    oslot = torch.empty(nnz, dtype=i64, device=dev)
    ouniq = torch.empty(nnz, dtype=i64, device=dev)
    _order_kernel[grid](order, starts, uniq, nch, chunk_end, slot, ostart, oslot, ouniq, nnz,
                        BLOCK=_PLAN_BLOCK)
    # Hot rows have > CAP lookups: at most nnz // (CAP + 1) of them and
    # sum(ceil(count / CAP)) <= nnz // CAP + #hot partial slots.
    max_hot = nnz // (CAP + 1) + 1
    max_part = nnz // CAP + max_hot + 1
    max_part += -max_part % CHUNKS_PER_PROGRAM
    # Hot rows come first in the count order (key 0): the h-th is order[h] (-1: none).
    hot_u = torch.where(okey[:max_hot] == 0, order[:max_hot], -1)
    # Extra chunks (k >= 1; chunk 0 of every hot row is summed by _seg_kernel).
    c = torch.arange(max_part, dtype=i64, device=dev)
    owner = torch.searchsorted(chunk_end, c, right=True).clamp(max=nnz - 1)
    k = c - (chunk_end[owner] - nch[owner])
    valid = (c < chunk_end[-1]) & (k > 0)
    ch_first = torch.where(valid, starts[owner] + k * CAP, 0)
    ch_n = torch.where(valid, (counts[owner] - k * CAP).clamp(max=CAP), 0)
    ch_slot = torch.where(valid, c, 0)
    return _Plan(uniq, n_u, order=order, okey=okey, ostart=ostart, oslot=oslot, ouniq=ouniq,
                 starts=starts, counts=counts, slot=slot, nch=nch, hot_u=hot_u,
                 ch_first=ch_first, ch_n=ch_n, ch_slot=ch_slot, n_chunks=chunk_end[-1:])


def sparse_grad(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.sparse_grad`."""
    plan, out = _run(grad_out, rows, offsets, mean, None, 0, None, [], (0.0, 0.0, 0.0, 0.0),
                     1.0, False, 0, None)
    assert out is not None  # noqa: S101 - OPT 0 always allocates
    uniq = plan.unique_rows()
    return uniq, out[: uniq.numel()]


def row_sums(grad: torch.Tensor, rows: torch.Tensor, grad_rows: torch.Tensor | None = None,
             num_rows: int | None = None,
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.row_sums` (the fused backward's plan
    and sums, no host synchronisation; ``grad_rows`` read in place, no gathered copy)."""
    offsets = torch.arange(rows.numel() + 1, dtype=torch.int64, device=rows.device)
    if grad_rows is not None:
        C.check_grad_rows(grad_rows, rows.numel())
    plan, out = _run(grad, rows, offsets, False, None, 0, None, [], (0.0, 0.0, 0.0, 0.0), 1.0,
                     False, 0, 1, grad_rows=grad_rows, num_rows=num_rows)
    assert out is not None  # noqa: S101 - OPT 0 always allocates
    return plan.uniq, out, plan.n_u


def sparse_grad_multi(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                      table_offsets: torch.Tensor, mean: bool | Sequence[bool] | torch.Tensor,
                      slots: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton twin of :func:`terarec.kernels.reference.sparse_grad_multi`."""
    plan, out = _run(grad_out, rows, offsets, mean, (table_offsets, slots), 0, None, [],
                     (0.0, 0.0, 0.0, 0.0), 1.0, False, 0, None)
    assert out is not None  # noqa: S101
    uniq = plan.unique_rows()
    return uniq, out[: uniq.numel()]


def fused_backward_update(grad_out: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                          mean: bool | Sequence[bool] | torch.Tensor, weight: torch.Tensor,
                          states: Sequence[torch.Tensor], optimizer: str, lr: float, *,
                          momentum_factor: float = 0.0, beta1: float = 0.9,
                          beta2: float = 0.999, epsilon: float = 1e-7, lambda1: float = 0.0,
                          lambda2: float = 0.0, step: int = 1, grad_scale: float = 1.0,
                          stochastic_rounding: bool = False, seed: int | None = None,
                          hotness: int | None = None,
                          table_offsets: torch.Tensor | None = None,
                          slots: int = 1, return_unique: bool = True,
                          lr_factor: torch.Tensor | None = None) -> torch.Tensor | None:
    """Triton twin of :func:`terarec.kernels.reference.fused_backward_update`.

    With ``return_unique=False`` nothing waits for the device (no host sync: the step can run
    ahead of the GPU or inside a CUDA graph) and None is returned. ``lr_factor`` (one float32 on
    the device) multiplies the step size when the kernels run, so a captured step follows
    a learning rate that changes between replays.
    """
    code = C.opt_code(optimizer)
    C.check_states(code, states, weight)
    if not weight.is_contiguous() or weight.shape[1] != grad_out.shape[-1]:
        raise ValueError("weight: expected a contiguous [R, D] tensor matching grad_out's D")
    scalars = C.rule_scalars(code, lr, momentum_factor, beta1, beta2, epsilon, lambda1,
                             lambda2, step)
    sr = use_sr(weight, stochastic_rounding)
    sd = (C.random_seed() if seed is None else seed) if sr else 0
    multi = None if table_offsets is None else (table_offsets, slots)
    plan, _ = _run(grad_out, rows, offsets, mean, multi, code, weight, states, scalars,
                   grad_scale, sr, sd, hotness, lr_factor)
    return plan.unique_rows() if return_unique else None
