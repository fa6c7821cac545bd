"""The plain-PyTorch reference of the session's embedding pooling (the oracle of the fast path).

Owns :func:`pool_reference`: a host :class:`CsrBatch` is pooled table after table - keys to the
device, ``torch.unique``, one parameter-server lookup of the unique keys, ``index_add`` per row,
division by the row length for the ``mean`` combiner. It is simple and obviously right, and it
syncs with the host several times per table; :mod:`terarec.inference.device_pool` is the fast
path that must agree with it (tests/inference/test_device_pool.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from terarec.errors import ConfigError
from terarec.inference.csr import CsrBatch

LookupFn = Callable[[int, Any], torch.Tensor]


def lookup_unique(lookup: LookupFn, table_id: int, spec: dict[str, Any], keys: torch.Tensor,
                  device: torch.device) -> torch.Tensor:
    """Vectors ``(n, dim)`` of ``keys`` read with one lookup of their unique values."""
    dim = int(spec["dim"])
    uniq, inv = torch.unique(keys, return_inverse=True)
    vec = lookup(table_id, uniq).to(device)
    if vec.shape[-1] != dim or vec.shape[0] != uniq.numel():
        raise ConfigError(f"embedding table {spec['table']!r}",
                          f"({uniq.numel()}, {dim}) vectors", tuple(vec.shape))
    return vec[inv]


def pool_reference(batch: CsrBatch, specs: list[dict[str, Any]], lookup: LookupFn,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """Per-table pooled embeddings ``(B, slot_num, dim)`` (sum or mean combiner)."""
    out = {}
    for t, (spec, (keys, offs)) in enumerate(zip(specs, batch.tables)):
        rows, dim = batch.batch_size * int(spec["slot_num"]), int(spec["dim"])
        lengths = torch.from_numpy(np.diff(offs)).to(device)
        pooled = torch.zeros((rows, dim), dtype=torch.float32, device=device)
        if keys.size:
            keys_t = torch.from_numpy(np.ascontiguousarray(keys, dtype=np.int64)).to(device)
            vec = lookup_unique(lookup, t, spec, keys_t, device)
            row_ids = torch.repeat_interleave(torch.arange(rows, device=device), lengths,
                                              output_size=int(keys.size))
            pooled.index_add_(0, row_ids, vec.to(pooled.dtype))
            if spec.get("combiner", "sum") == "mean":
                pooled /= lengths.clamp(min=1).unsqueeze(1).to(pooled.dtype)
        out[spec["table"]] = pooled.reshape(batch.batch_size, -1, dim)
    return out
