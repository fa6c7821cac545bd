"""A CSR inference request moved to the device once, validated there without per-key host work.

Owns :class:`DeviceCsr` and its two constructors: :func:`to_device_csr` (the raw
``(dense_feature, embeddingcolumns, row_ptrs)`` of a request as numpy arrays, lists or torch
tensors already on the device) and :func:`device_csr_from_batch` (a host :class:`CsrBatch`, as
the HTTP server and the reader-driven ``predict`` build them). The layout rules are those of
:mod:`terarec.inference.csr`.

Host inputs are copied with one pinned, non-blocking H2D copy per array (int32 stays int32 on
the wire and is widened on the device). Shape checks and each table's first/last offset (2 x T
numbers) are checked on the host; the per-row rule (non-decreasing offsets) is checked on the
device and reported in :attr:`DeviceCsr.valid`, which the session reads with its single
per-batch sync. Kernels only ever see sanitised offsets (clamped, made non-decreasing), so a bad
request cannot read out of bounds before it is rejected. For a device ``row_ptrs`` with more
than one table the 2 x T boundary offsets are read with one small D2H copy (a sync), because the
tables' key segments must be known on the host to slice the keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from terarec.errors import ConfigError
from terarec.inference.csr import CsrBatch


@dataclass
class DeviceCsr:
    """A request on the device.

    Attributes:
        batch_size: samples ``B``.
        dense: ``(B, dense_dim)`` float32.
        keys: ``(N,)`` int64, every table's keys, table after table.
        bounds: per table ``(start, end)`` of its keys in ``keys`` (host ints).
        offsets: per table ``(B * S_t + 1,)`` int64 offsets into its own key segment,
            sanitised (start at 0, non-decreasing, at most the segment length).
        valid: ``(T,)`` bool, False where the request's offsets of that table decreased.
    """

    batch_size: int
    dense: torch.Tensor
    keys: torch.Tensor
    bounds: list[tuple[int, int]]
    offsets: list[torch.Tensor]
    valid: torch.Tensor

    def table_keys(self, t: int) -> torch.Tensor:
        lo, hi = self.bounds[t]
        return self.keys[lo:hi]

    def raise_invalid(self, valid: list[bool]) -> None:
        """Raise the ``ConfigError`` of the first table whose offsets decreased."""
        for t, ok in enumerate(valid):
            if not ok:
                raise ConfigError(f"row_ptrs of table {t}", "non-decreasing offsets starting at 0",
                                  "decreasing offsets")


def _to_device(x: Any, device: torch.device, dtype: Any = None) -> torch.Tensor:
    """One H2D copy (pinned + non-blocking for CUDA) of a numpy array, list or tensor."""
    if isinstance(x, torch.Tensor):
        t = x.detach().reshape(-1)
    else:
        arr = np.asarray(x if dtype is None else np.asarray(x, dtype=dtype)).reshape(-1)
        if arr.dtype == np.uint64:
            arr = arr.view(np.int64)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        t = t.pin_memory()
        return t.to(device, non_blocking=True)
    return t.to(device)


def _as_keys(keys: torch.Tensor, i64: bool) -> torch.Tensor:
    if keys.is_floating_point() or keys.is_complex() or keys.dtype == torch.bool:
        raise ConfigError("embeddingcolumns", "integer keys", str(keys.dtype))
    if not i64:
        keys = keys.to(torch.int32)
    return keys.to(torch.int64)


def _segments(firsts: list[int], lasts: list[int], n_keys: int) -> list[tuple[int, int, int]]:
    """Per table ``(key start, key end, first offset)``; the host checks of :func:`parse_csr`."""
    out, base = [], 0
    for t, (first, last) in enumerate(zip(firsts, lasts)):
        if first != 0 and first != base:
            raise ConfigError(f"row_ptrs of table {t}", "non-decreasing offsets starting at 0",
                              [first])
        n = last - first
        if n < 0:
            raise ConfigError(f"row_ptrs of table {t}", "non-decreasing offsets starting at 0",
                              [first, last])
        if base + n > n_keys:
            raise ConfigError(f"row_ptrs of table {t}", f"offsets within the {n_keys} keys",
                              f"segment [{base}, {base + n})")
        out.append((base, base + n, first))
        base += n
    if base != n_keys:
        raise ConfigError("embeddingcolumns", f"{base} keys (the sum of the tables' row_ptrs)",
                          f"{n_keys} keys")
    return out


def to_device_csr(dense_feature: Any, embeddingcolumns: Any, row_ptrs: Any,
                  slot_nums: list[int], dense_dim: int, device: torch.device,
                  i64_input_key: bool = True) -> DeviceCsr:
    """Move and validate a request (raises ``ConfigError`` like :func:`parse_csr`)."""
    device = torch.device(device)
    host_rp = None if isinstance(row_ptrs, torch.Tensor) else \
        np.asarray(row_ptrs).reshape(-1)
    if host_rp is not None and not np.issubdtype(host_rp.dtype, np.integer):
        host_rp = host_rp.astype(np.int64)
    keys_src = embeddingcolumns if isinstance(embeddingcolumns, torch.Tensor) else \
        np.asarray(embeddingcolumns).reshape(-1)
    if isinstance(keys_src, np.ndarray) and not np.issubdtype(keys_src.dtype, np.integer):
        if keys_src.size:
            raise ConfigError("embeddingcolumns", "integer keys", str(keys_src.dtype))
        keys_src = keys_src.astype(np.int64)
    n_rp = host_rp.size if host_rp is not None else int(row_ptrs.numel())
    n_tables, total_slots = len(slot_nums), sum(slot_nums)
    rows = n_rp - n_tables
    if rows < 0 or total_slots == 0 or rows % total_slots:
        raise ConfigError("row_ptrs", f"B*{total_slots}+{n_tables} entries "
                          f"(slot_num per table {slot_nums})", f"{n_rp} entries")
    b = rows // total_slots
    n_dense = dense_feature.numel() if isinstance(dense_feature, torch.Tensor) else \
        np.asarray(dense_feature).size
    if n_dense != b * dense_dim:
        raise ConfigError("dense_feature", f"{b}*{dense_dim}={b * dense_dim} floats "
                          f"for a batch of {b}", f"{n_dense} floats")
    starts = np.cumsum([0] + [b * s + 1 for s in slot_nums])[:-1]
    ends = starts + np.array([b * s for s in slot_nums], dtype=np.int64)
    keys = _as_keys(_to_device(keys_src, device), i64_input_key)
    rp = _to_device(host_rp if host_rp is not None else row_ptrs, device).to(torch.int64)
    n_keys = int(keys.numel())
    if host_rp is not None:
        firsts, lasts = host_rp[starts].tolist(), host_rp[ends].tolist()
    elif n_tables == 1:
        firsts, lasts = [0], [n_keys]  # checked on the device below (no sync)
    else:
        edge = rp[torch.as_tensor(np.concatenate([starts, ends]), device=device)].tolist()
        firsts, lasts = edge[:n_tables], edge[n_tables:]
    segs = _segments([int(x) for x in firsts], [int(x) for x in lasts], n_keys)
    offsets, valid = [], []
    for t, (lo, hi, first) in enumerate(segs):
        off = rp[int(starts[t]):int(ends[t]) + 1]
        if first:
            off = off - first
        ok = (off[1:] >= off[:-1]).all()
        if host_rp is None and n_tables == 1:
            ok = ok & (off[0] == 0) & (off[-1] == n_keys)
        valid.append(ok)
        # Kernels must never see a decreasing or out-of-range offset, even before the sync
        # that reports an invalid request: an invalid table's bags are all made empty. (A
        # cummax did the same but its scan cost 4.7 ms per 1.7M offsets on an H200.)
        offsets.append(torch.where(ok, off.clamp(0, hi - lo), torch.zeros_like(off)))
    dense = _to_device(dense_feature, device, np.float32).to(torch.float32).reshape(b, dense_dim)
    return DeviceCsr(b, dense, keys, [(lo, hi) for lo, hi, _ in segs], offsets,
                     torch.stack(valid) if valid else torch.ones(0, dtype=torch.bool,
                                                                  device=device))


def device_csr_from_batch(batch: CsrBatch, device: torch.device) -> DeviceCsr:
    """A parsed host :class:`CsrBatch` (already validated) on the device."""
    device = torch.device(device)
    tables = batch.tables
    keys = np.concatenate([k for k, _ in tables]) if tables else np.empty(0, np.int64)
    rp = np.concatenate([o for _, o in tables]) if tables else np.empty(0, np.int64)
    keys_t = _to_device(keys.astype(np.int64, copy=False), device)
    rp_t = _to_device(rp.astype(np.int64, copy=False), device)
    bounds, offsets, pos, base = [], [], 0, 0
    for k, o in tables:
        offsets.append(rp_t[pos:pos + o.size])
        pos += o.size
        bounds.append((base, base + int(k.size)))
        base += int(k.size)
    dense = _to_device(np.asarray(batch.dense, np.float32), device).reshape(batch.batch_size, -1)
    return DeviceCsr(batch.batch_size, dense, keys_t, bounds, offsets,
                     torch.ones(len(tables), dtype=torch.bool, device=device))
