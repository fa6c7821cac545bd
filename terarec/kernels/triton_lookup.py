"""Triton pooled embedding lookup: one launch for one table or for all tables of a model.

Two kernels, both accumulating in float32:

* fixed hotness (offsets = arange*h, not read): one program pools ``BLOCK_Q`` CSR rows x
  ``BLOCK_D`` columns, walking the rows' lookups in lock-step (``j``-th lookup of every row at
  once, one 2-D gather);
* general CSR: one program pools a few CSR rows one after the other, each in chunks of
  ``BLOCK_J`` lookups (one ``[BLOCK_J, BLOCK_D]`` gather per chunk). Lock-step over rows of
  skewed lengths (DCNv2: 1 to 100 lookups per slot) walked every row to the longest of its
  block; per-row chunks cost ``ceil(len / BLOCK_J)`` rounds. Its loops have data-dependent
  bounds and still compile with the sizes specialised (16-divisible ``D`` -> 16-byte loads).

Multi-table: the tables are concatenated along rows (``table_offsets`` = first row of each),
the CSR is table-major and the output is written sample-major ``[B, T*slots, D]`` directly,
so the interaction reads it without a transpose.

``mark_rows``: the "row used" flags of the looked-up rows, written only where still unset: a
hot row (Criteo slots of 3 or 4 rows take 65,536 lookups a batch) is read many times but
written once, where ``scatter_`` stores every lookup to the same byte.

Imported only through :mod:`terarec.kernels.select` (needs Triton).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import triton
import triton.language as tl

from terarec.kernels import _common as C


@triton.jit
def _gather_add(acc, w_ptr, rows_ptr, pos, base, m, d, dmask, w_stride):
    r = tl.load(rows_ptr + pos, mask=m, other=0) + base
    v = tl.load(w_ptr + r[:, None] * w_stride + d[None, :], mask=m[:, None] & dmask[None, :],
                other=0.0)
    return acc + v.to(tl.float32)


@triton.jit
def _pool_kernel(w_ptr, rows_ptr, offsets_ptr, tbase_ptr, mean_ptr, out_ptr, orows_ptr,
                 n_q, rows_per_table, slots, tables, D, w_stride, out_stride,
                 HOT: tl.constexpr, MULTI: tl.constexpr, MEAN: tl.constexpr,
                 OUT_ROWS: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
    """Fixed hotness ``HOT`` (offsets = arange*HOT, not read): ``BLOCK_Q`` CSR rows in
    lock-step, the j-th lookup of every row gathered at once."""
    pid_q = tl.program_id(0)
    pid_d = tl.program_id(1)
    q = pid_q.to(tl.int64) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    qmask = q < n_q
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    start = q * HOT
    length = tl.full([BLOCK_Q], HOT, tl.int64)
    if MULTI:
        t = q // rows_per_table
        base = tl.load(tbase_ptr + t, mask=qmask, other=0)
    else:
        t = q * 0
        base = q * 0
    acc = tl.zeros([BLOCK_Q, BLOCK_D], dtype=tl.float32)
    for j in range(0, HOT):
        acc = _gather_add(acc, w_ptr, rows_ptr, start + j, base, qmask, d, dmask, w_stride)
    if MEAN == 1:
        acc = acc / tl.maximum(length, 1).to(tl.float32)[:, None]
    elif MEAN == 2:
        flag = tl.load(mean_ptr + t, mask=qmask, other=0)
        div = tl.where(flag != 0, tl.maximum(length, 1), 1).to(tl.float32)
        acc = acc / div[:, None]
    if MULTI:
        rr = q - t * rows_per_table
        b = rr // slots
        s = rr - b * slots
        out_row = b * (tables * slots) + t * slots + s
    elif OUT_ROWS:
        out_row = tl.load(orows_ptr + q, mask=qmask, other=0)
    else:
        out_row = q
    tl.store(out_ptr + out_row[:, None] * out_stride + d[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=qmask[:, None] & dmask[None, :])


@triton.jit
def _chunk_add(acc, w_ptr, rows_ptr, j, end, base, d, dmask, w_stride, BLOCK_J: tl.constexpr):
    jj = j + tl.arange(0, BLOCK_J)
    return _gather_add(acc, w_ptr, rows_ptr, jj, base, jj < end, d, dmask, w_stride)


@triton.jit
def _pool_csr_kernel(w_ptr, rows_ptr, offsets_ptr, tbase_ptr, mean_ptr, out_ptr, orows_ptr,
                     n_q, rows_per_table, slots, tables, D, w_stride, out_stride,
                     MULTI: tl.constexpr, MEAN: tl.constexpr, OUT_ROWS: tl.constexpr,
                     BAGS: tl.constexpr,
                     BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr, INTERP: tl.constexpr):
    """General CSR: ``BAGS`` CSR rows per program, one after the other; each row's lookups are
    summed ``BLOCK_J`` at a time (one ``[BLOCK_J, BLOCK_D]`` gather), so a program works
    ``ceil(len / BLOCK_J)`` rounds per row whatever the lengths of its neighbours."""
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    for i in tl.static_range(BAGS):
        q = tl.program_id(0).to(tl.int64) * BAGS + i
        if q < n_q:
            start = tl.load(offsets_ptr + q)
            end = tl.load(offsets_ptr + q + 1)
            if MULTI:
                t = q // rows_per_table
                base = tl.load(tbase_ptr + t)
            else:
                t = q * 0
                base = q * 0
            acc = tl.zeros([BLOCK_J, BLOCK_D], dtype=tl.float32)
            if INTERP:  # the interpreter rejects range(tensor)
                j = start
                while j < end:
                    acc = _chunk_add(acc, w_ptr, rows_ptr, j, end, base, d, dmask, w_stride,
                                     BLOCK_J=BLOCK_J)
                    j += BLOCK_J
            else:
                for j in range(start, end, BLOCK_J):
                    acc = _chunk_add(acc, w_ptr, rows_ptr, j, end, base, d, dmask, w_stride,
                                     BLOCK_J=BLOCK_J)
            total = tl.sum(acc, axis=0)
            length = end - start
            if MEAN == 1:
                total = total / tl.maximum(length, 1).to(tl.float32)
            elif MEAN == 2:
                flag = tl.load(mean_ptr + t)
                total = total / tl.where(flag != 0, tl.maximum(length, 1), 1).to(tl.float32)
            if MULTI:
                rr = q - t * rows_per_table
                b = rr // slots
                out_row = b * (tables * slots) + t * slots + (rr - b * slots)
            elif OUT_ROWS:
                out_row = tl.load(orows_ptr + q)
            else:
                out_row = q
            tl.store(out_ptr + out_row * out_stride + d, total.to(out_ptr.dtype.element_ty),
                     mask=dmask)


def _blocks(dim: int) -> tuple[int, int, int]:
    block_d = min(triton.next_power_of_2(max(dim, 1)), 256)
    block_q = max(8, min(128, 4096 // block_d))
    num_warps = 4 if block_q * block_d <= 4096 else 8
    return block_q, block_d, num_warps


_CSR_BAGS = 4  # CSR rows per program of the general-CSR kernel


def _csr_blocks(dim: int, nnz: int, n_q: int) -> tuple[int, int, int]:
    """(BLOCK_J, BLOCK_D, num_warps) of the general-CSR kernel: a lookup chunk about the mean
    row length (from the sizes, no sync), tiles of at most 2048 elements."""
    block_d = min(triton.next_power_of_2(max(dim, 1)), 256)
    mean_len = max(1, nnz // max(n_q, 1))
    block_j = max(2, min(triton.next_power_of_2(mean_len), 32, max(2, 2048 // block_d)))
    warps = max(1, min(4, block_j * block_d // 512))
    return block_j, block_d, warps


def _launch(weight: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
            tbase: torch.Tensor, flags: torch.Tensor, out: torch.Tensor, mean_mode: int,
            multi: bool, rows_per_table: int, slots: int, tables: int, hot: int,
            out_rows: torch.Tensor | None = None) -> None:
    n_q = offsets.numel() - 1
    dim = weight.shape[1]
    if n_q == 0 or dim == 0:
        return
    if rows.numel() == 0:
        if out_rows is not None:
            out.index_fill_(0, out_rows, 0)
        else:
            out[:n_q].zero_()
        return
    orows = out_rows if out_rows is not None else offsets
    if weight.stride(1) != 1:
        raise ValueError("weight: expected unit stride along the embedding dimension")
    if hot > 0:
        block_q, block_d, warps = _blocks(dim)
        grid = (triton.cdiv(n_q, block_q), triton.cdiv(dim, block_d))
        _pool_kernel[grid](weight, rows, offsets, tbase, flags, out, orows, n_q,
                           rows_per_table, slots, tables, dim, weight.stride(0), out.stride(-2),
                           HOT=hot, MULTI=multi, MEAN=mean_mode, OUT_ROWS=out_rows is not None,
                           BLOCK_Q=block_q, BLOCK_D=block_d, num_warps=warps)
        return
    block_j, block_d, warps = _csr_blocks(dim, rows.numel(), n_q)
    grid = (triton.cdiv(n_q, _CSR_BAGS), triton.cdiv(dim, block_d))
    _pool_csr_kernel[grid](weight, rows, offsets, tbase, flags, out, orows, n_q,
                           rows_per_table, slots, tables, dim, weight.stride(0), out.stride(-2),
                           MULTI=multi, MEAN=mean_mode, OUT_ROWS=out_rows is not None,
                           BAGS=_CSR_BAGS, BLOCK_J=block_j, BLOCK_D=block_d,
                           INTERP=C.interpreting(), num_warps=warps)


def _hotness(hotness: int | None, offsets: torch.Tensor, nnz: int) -> int:
    if hotness is None:
        return C.fixed_hotness(offsets, nnz)
    return hotness


def pooled_lookup(weight: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor, mean: bool,
                  out_dtype: torch.dtype | None = None, hotness: int | None = None,
                  out: torch.Tensor | None = None,
                  out_rows: torch.Tensor | None = None) -> torch.Tensor:
    """Triton twin of :func:`terarec.kernels.reference.pooled_lookup`.

    ``hotness``: pass the fixed number of lookups per CSR row when known (0 = general CSR);
    None checks ``offsets`` (one small comparison and a host sync). ``out_rows``: each pooled
    row is stored straight at its row of ``out`` (no copy after the lookup).
    """
    C.check_csr(rows, offsets)
    n_q = offsets.numel() - 1
    C.check_lookup_out(out, out_rows, n_q, weight.shape[1])
    if out is None:
        out = C.new_empty((n_q, weight.shape[1]), out_dtype or weight.dtype, weight.device)
    hot = _hotness(hotness, offsets, rows.numel())
    _launch(weight, rows, offsets, offsets, offsets, out, 1 if mean else 0, False, n_q, 1, 1,
            hot, out_rows)
    return out


def pooled_lookup_multi(weight: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
                        table_offsets: torch.Tensor, mean: bool | Sequence[bool] | torch.Tensor,
                        slots: int = 1, out_dtype: torch.dtype | None = None,
                        hotness: int | None = None) -> torch.Tensor:
    """Triton twin of :func:`terarec.kernels.reference.pooled_lookup_multi` (one launch)."""
    C.check_csr(rows, offsets)
    tables = table_offsets.numel()
    n_q = offsets.numel() - 1
    if tables == 0 or n_q % (tables * slots):
        raise ValueError(f"offsets: expected T*B*slots+1 entries (T={tables}, slots={slots}). "
                         f"Received: {offsets.numel()}")
    b = n_q // (tables * slots)
    out = C.new_empty((b, tables * slots, weight.shape[1]), out_dtype or weight.dtype,
                      weight.device)
    if isinstance(mean, bool):
        mode, flags = (1 if mean else 0), offsets
    else:
        mode, flags = 2, C.mean_flags(mean, tables, weight.device)
    tbase = table_offsets.to(device=weight.device, dtype=torch.int64)
    hot = _hotness(hotness, offsets, rows.numel())
    _launch(weight, rows, offsets, tbase, flags, out, mode, True, b * slots, slots, tables, hot)
    return out


_MARK_BLOCK = 1024


@triton.jit
def _mark_kernel(used_ptr, rows_ptr, n, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    r = tl.load(rows_ptr + i, mask=m, other=0)
    u = tl.load(used_ptr + r, mask=m, other=1)
    tl.store(used_ptr + r, tl.full([BLOCK], 1, tl.uint8), mask=m & (u == 0))


def mark_rows(used: torch.Tensor, rows: torch.Tensor) -> None:
    """Triton twin of :func:`terarec.kernels.reference.mark_rows`."""
    C.check_mark(used, rows)
    rows = rows.contiguous()
    n = rows.numel()
    if n:
        _mark_kernel[(triton.cdiv(n, _MARK_BLOCK),)](used.view(torch.uint8), rows, n,
                                                      BLOCK=_MARK_BLOCK, num_warps=4)
