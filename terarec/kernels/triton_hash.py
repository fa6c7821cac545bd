"""Triton open-addressing hash index for int64 keys: lookup-or-insert of a whole batch in one
launch, and the initialisation of the rows a batch created -- no host synchronisation.

Owns the device layout of the index and the two kernels that work on it:

* ``slot_keys`` int64 ``[S + 1]`` and ``slot_rows`` int64 ``[S + 1]`` with ``S`` a power of two
  (:func:`num_slots`: ``>= 2 * capacity``, so the load factor stays <= 1/2 and the array never
  grows). An empty slot holds :data:`EMPTY_KEY` (int64 min) with row -1. The key equal to
  :data:`EMPTY_KEY` itself lives in the extra slot ``S`` (its key cell is never compared; its
  row cell is claimed with a CAS -1 -> -2 "pending").
* ``row_keys`` int64 ``[capacity]`` (the key of every row), ``counter`` int64 ``[1]`` (rows
  handed out), ``overflow`` int32 ``[1]`` (set when a batch needed more than ``capacity`` rows).

:func:`lookup_or_insert` (``_insert_kernel``): linear probing from ``mix64(key) & (S - 1)``
(splitmix64's finalizer, the same mixing as :func:`terarec.embedding.mix.mix64`); a free slot is
claimed with an atomic CAS on its key, the claiming position ("created" flag) takes a row from
the counter (one atomic add per program and probing round) and publishes it with an atomic
exchange; positions that find their key still pending re-read it in the next round. Rows are
therefore dense ``0..n-1`` but numbered in device creation order, **not** first-seen order
(the torch twin gives first-seen order; consumers rely on key -> row only). Past ``capacity``
the row is ``capacity`` (a trash row the caller allocates) and ``overflow`` is set, by every
lookup that ends there (later batches too): the caller raises it as a CapacityError at its next
check, nothing is silently merged into a real row.

:func:`init_new_rows` (``_init_kernel``): the rows created by the last insert are
``[base, counter)``; for each, ``first`` holds the batch position of its first occurrence
(``atomic_min`` in the insert kernel), from which the kernel finds the CSR row (binary search of
``offsets``), hence the slot, and writes the initial vector
(:func:`terarec.embedding.init.init_vectors`, bit for bit: same mixing, float64 maths) and the
row's slot. A fixed grid (at most 1024 x dim/128 programs) strides over the device-side count of
new rows, so a step without new keys costs one tiny launch.

Imported only through :mod:`terarec.kernels.select` (needs Triton).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from terarec.kernels import _common as C

EMPTY_KEY = -(2**63)
MIN_SLOTS = 64
# splitmix64 / init constants as signed int64 (bit-cast to uint64 in the kernels).
_M1 = 0xBF58476D1CE4E5B9 - (1 << 64)
_M2 = 0x94D049BB133111EB - (1 << 64)
_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)
_COLUMN_STRIDE = 0x632BE59BD9B4E019
_BLOCK = 512
_BLOCK_K = 16
_INIT_PROGRAMS = 1024  # fixed grid of the init kernel: no per-position program to launch


def num_slots(capacity: int) -> int:
    """Slot-array size for ``capacity`` keys: the next power of two >= 2 * capacity."""
    return max(MIN_SLOTS, 1 << max(2 * int(capacity) - 1, 1).bit_length())


@triton.jit
def _mix64(x, m1, m2):
    """splitmix64 finalizer on uint64 (multiplications wrap, shifts are logical)."""
    x = x ^ (x >> 30)
    x = x * m1
    x = x ^ (x >> 27)
    x = x * m2
    return x ^ (x >> 31)


@triton.jit
def _insert_kernel(keys_ptr, n, skeys_ptr, srows_ptr, rowkeys_ptr, counter_ptr, flag_ptr,
                   base_ptr, first_ptr, rows_ptr, created_ptr, capacity, slot_mask_, empty,
                   m1_, m2_, FIRST: tl.constexpr, BLOCK: tl.constexpr):
    slot_mask = slot_mask_.to(tl.int64)  # an int32 argument up to 2**31 - 1: no overflow below
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    key = tl.load(keys_ptr + offs, mask=m, other=0)
    m1 = m1_.to(tl.uint64, bitcast=True)
    m2 = m2_.to(tl.uint64, bitcast=True)
    n_slots = slot_mask + 1
    special = key == empty
    home = _mix64(key.to(tl.uint64, bitcast=True), m1, m2) & slot_mask.to(tl.uint64)
    pos = tl.where(special, n_slots, home.to(tl.int64, bitcast=True))
    row = tl.full([BLOCK], -1, tl.int64)
    created = tl.zeros([BLOCK], dtype=tl.int8)
    probes = tl.zeros([BLOCK], dtype=tl.int64)
    active = m
    while tl.max(active.to(tl.int32), axis=0) > 0:
        gen = active & (special == 0)
        sk = tl.load(skeys_ptr + pos, mask=gen, other=0, volatile=True)
        claim = gen & (sk == empty)
        old = sk
        if tl.max(claim.to(tl.int32), axis=0) > 0:
            # Lanes that do not claim CAS a slot that is never empty (their own filled slot or
            # the extra slot's key cell, which holds 0): the compare fails and nothing changes.
            kptr = skeys_ptr + tl.where(m & (special == 0), pos, n_slots)
            res = tl.atomic_cas(kptr, tl.full([BLOCK], 0, tl.int64) + empty, key)
            old = tl.where(claim, res, sk)
        won = claim & (old == empty)
        hit = gen & (won == 0) & (old == key)
        moved = gen & (won == 0) & (old != key)
        sp = active & special
        won_s = sp & (sp == 0)
        if tl.max(sp.to(tl.int32), axis=0) > 0:
            # Row-cell claim of the EMPTY_KEY key: -1 (free) -> -2 (pending); other lanes
            # compare against -3, which no cell ever holds.
            rptr = srows_ptr + tl.where(sp, n_slots, 0)
            res_s = tl.atomic_cas(rptr, tl.where(sp, -1, -3).to(tl.int64),
                                  tl.full([BLOCK], -2, tl.int64))
            won_s = sp & (res_s == -1)
        winners = won | won_s
        w64 = winners.to(tl.int64)
        cnt = tl.sum(w64, axis=0)
        r = w64 - 1
        if cnt > 0:  # one atomic add per program and round hands out all its new rows
            r = tl.atomic_add(counter_ptr, cnt) + tl.cumsum(w64, axis=0) - 1
        ok = r < capacity
        r = tl.where(ok, r, capacity)  # past capacity: the trash row (flagged below)
        tl.store(rowkeys_ptr + r, key, mask=winners & ok)
        tl.atomic_xchg(srows_ptr + pos, r, mask=winners)
        row = tl.where(winners, r, row)
        created = tl.where(winners, 1, created).to(tl.int8)
        want = hit | (sp & (won_s == 0))
        rr = tl.load(srows_ptr + pos, mask=want, other=-1, volatile=True)
        got = want & (rr >= 0)  # a pending row (-1 / -2) is re-read next round
        row = tl.where(got, rr, row)
        active = active & (winners == 0) & (got == 0)
        pos = tl.where(moved, (pos + 1) & slot_mask, pos)
        probes = probes + moved.to(tl.int64)
        stuck = active & (probes >= n_slots)  # only a slot array filled past capacity
        row = tl.where(stuck, capacity, row)
        pos = tl.where(stuck, n_slots, pos)  # off a possibly empty slot: its CASes must fail
        active = active & (stuck == 0)
    # Every lookup that ends on the trash row raises the flag (also in later batches).
    tl.store(flag_ptr + offs * 0, tl.full([BLOCK], 1, tl.int32), mask=m & (row >= capacity))
    tl.store(rows_ptr + offs, row, mask=m)
    tl.store(created_ptr + offs, created, mask=m)
    if FIRST:
        base = tl.load(base_ptr)
        fresh = m & (row >= base) & (row < capacity)
        tl.atomic_min(first_ptr + tl.where(fresh, row - base, 0), offs, mask=fresh)


@triton.jit
def _init_chunk(k, n_new, base, keys_ptr, offsets_ptr, first_ptr, w_ptr, slots_ptr, bounds_ptr,
                n_q, slot_num, seed, D, w_stride, m1, m2, golden, stride, ITERS: tl.constexpr,
                BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    km = k < n_new
    p = tl.load(first_ptr + k, mask=km, other=0)
    key = tl.load(keys_ptr + p, mask=km, other=0)
    # CSR row of position p: the last q with offsets[q] <= p (searchsorted right - 1).
    lo = tl.zeros([BLOCK_K], dtype=tl.int64)
    hi = tl.zeros([BLOCK_K], dtype=tl.int64) + n_q
    for _ in tl.static_range(ITERS):
        mid = (lo + hi) // 2
        right = tl.load(offsets_ptr + mid, mask=km, other=0) <= p
        lo = tl.where(right, mid, lo)
        hi = tl.where(right, hi, mid)
    slot = lo % slot_num
    row = base + k
    bound = tl.load(bounds_ptr + slot, mask=km, other=0.0).to(tl.float64)
    hbase = _mix64(key.to(tl.uint64, bitcast=True) * golden + seed, m1, m2)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dmask = d < D
    cols = d.to(tl.uint64) * stride
    bits = _mix64(hbase[:, None] + cols[None, :], m1, m2) >> 40
    u = (bits.to(tl.float64) + 0.5) / 16777216.0
    val = (2.0 * u - 1.0) * bound[:, None]
    tl.store(w_ptr + row[:, None] * w_stride + d[None, :], val.to(w_ptr.dtype.element_ty),
             mask=km[:, None] & dmask[None, :])
    if tl.program_id(1) == 0:
        tl.store(slots_ptr + row, slot, mask=km)


@triton.jit
def _init_kernel(keys_ptr, offsets_ptr, first_ptr, base_ptr, counter_ptr, w_ptr, slots_ptr,
                 bounds_ptr, n_q, slot_num, capacity, seed_, D, w_stride, m1_, m2_, golden_,
                 stride_, ITERS: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                 INTERP: tl.constexpr):
    """A fixed grid walks the new rows ``[0, n_new)`` (n_new read on the device)."""
    base = tl.load(base_ptr)
    n_new = tl.minimum(tl.load(counter_ptr), capacity) - base
    m1 = m1_.to(tl.uint64, bitcast=True)
    m2 = m2_.to(tl.uint64, bitcast=True)
    golden = golden_.to(tl.uint64, bitcast=True)
    stride = stride_.to(tl.uint64, bitcast=True)
    seed = seed_.to(tl.int64).to(tl.uint64, bitcast=True)
    step = tl.num_programs(0).to(tl.int64) * BLOCK_K
    start = tl.program_id(0).to(tl.int64) * BLOCK_K
    if INTERP:  # the interpreter rejects range(tensor)
        while start < n_new:
            _init_chunk(start + tl.arange(0, BLOCK_K), n_new, base, keys_ptr, offsets_ptr,
                        first_ptr, w_ptr, slots_ptr, bounds_ptr, n_q, slot_num, seed, D,
                        w_stride, m1, m2, golden, stride, ITERS=ITERS, BLOCK_K=BLOCK_K,
                        BLOCK_D=BLOCK_D)
            start += step
    else:
        for s in range(start, n_new, step):
            _init_chunk(s + tl.arange(0, BLOCK_K), n_new, base, keys_ptr, offsets_ptr,
                        first_ptr, w_ptr, slots_ptr, bounds_ptr, n_q, slot_num, seed, D,
                        w_stride, m1, m2, golden, stride, ITERS=ITERS, BLOCK_K=BLOCK_K,
                        BLOCK_D=BLOCK_D)


def lookup_or_insert(keys: torch.Tensor, slot_keys: torch.Tensor, slot_rows: torch.Tensor,
                     row_keys: torch.Tensor, counter: torch.Tensor, overflow: torch.Tensor,
                     base: torch.Tensor | None = None, first: torch.Tensor | None = None,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``keys`` (int64 ``[n]``), inserting the unknown ones: ``(rows, created)``.

    ``created`` (int8) is 1 at the one position that created each new row. With ``base`` (the
    counter before this call) and ``first`` (int64 ``[n]`` filled with ``n``), ``first[r-base]``
    receives the first position of every row ``r`` created here. No host synchronisation.
    """
    n = keys.numel()
    rows = torch.empty(n, dtype=torch.int64, device=keys.device)
    created = torch.empty(n, dtype=torch.int8, device=keys.device)
    if n == 0:
        return rows, created
    capacity = row_keys.numel()
    with_first = first is not None and base is not None
    grid = (triton.cdiv(n, _BLOCK),)
    _insert_kernel[grid](keys, n, slot_keys, slot_rows, row_keys, counter, overflow,
                         base if with_first else counter, first if with_first else rows, rows,
                         created, capacity, slot_keys.numel() - 2, EMPTY_KEY, _M1, _M2,
                         FIRST=with_first, BLOCK=_BLOCK, num_warps=4)
    return rows, created


def init_new_rows(keys: torch.Tensor, offsets: torch.Tensor, first: torch.Tensor,
                  base: torch.Tensor, counter: torch.Tensor, weight: torch.Tensor,
                  row_slots: torch.Tensor, bounds: torch.Tensor, slot_num: int, seed: int,
                  capacity: int) -> None:
    """Initialise rows ``[base, min(counter, capacity))`` created by :func:`lookup_or_insert`:
    ``weight`` rows as :func:`terarec.embedding.init.init_vectors` gives them (key and slot of
    the first occurrence ``first[r - base]``) and ``row_slots``. No host synchronisation."""
    nnz = keys.numel()
    n_q = offsets.numel() - 1
    dim = weight.shape[1]
    if nnz == 0 or n_q <= 0 or dim == 0:
        return
    if weight.stride(1) != 1:
        raise ValueError("weight: expected unit stride along the embedding dimension")
    block_d = min(triton.next_power_of_2(dim), 128)
    grid = (min(triton.cdiv(nnz, _BLOCK_K), _INIT_PROGRAMS), triton.cdiv(dim, block_d))
    _init_kernel[grid](keys, offsets, first, base, counter, weight, row_slots, bounds, n_q,
                       slot_num, capacity, seed, dim, weight.stride(0), _M1, _M2, _GOLDEN,
                       _COLUMN_STRIDE, ITERS=max(1, n_q.bit_length()), BLOCK_K=_BLOCK_K,
                       BLOCK_D=block_d, INTERP=C.interpreting(), num_warps=4)
