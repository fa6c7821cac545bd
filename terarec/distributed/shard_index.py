"""Direct-mapped key indexes of one rank's shard (no hash) for tables whose keys are row numbers.

HugeCTR's ``LocalizedSlotSparseEmbeddingOneHot`` keys lie in ``[0, sum(slot_size_array))`` (per
slot offsets already added). A shard of such a table holds a known subset of those keys, so its
rows can be addressed without hashing: :class:`MappedDirectIndex` is a
:class:`~terarec.embedding.hash_index.DirectIndex` over local rows with a key -> local row map:

* :func:`strided` (row-wise over ``n`` ranks: key ``k`` on rank ``k mod n``, local row
  ``k // n``);
* :func:`slot_ranges` (slot-wise: the shard holds the key ranges of its slots, stacked).

A key outside the shard's ranges maps to ``-1`` and is rejected by the direct index with a
:class:`~terarec.errors.CapacityError` (as the unsharded direct table rejects it).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from terarec.embedding.hash_index import DirectIndex

KeyMap = Callable[[torch.Tensor], torch.Tensor]


class MappedDirectIndex(DirectIndex):
    """Direct index over local rows ``to_local(key)``; :meth:`keys` returns global keys."""

    def __init__(self, capacity: int, device: torch.device | str | None, name: str,
                 to_local: KeyMap, to_global: KeyMap) -> None:
        self.to_local, self.to_global = to_local, to_global
        super().__init__(capacity, device, name)

    def insert(self, keys: torch.Tensor):  # noqa: ANN201 - InsertResult, rows are local rows
        keys = keys.reshape(-1).to(device=self.device, dtype=torch.int64)
        return super().insert(self.to_local(keys))

    def lookup(self, keys: torch.Tensor) -> torch.Tensor:
        keys = keys.reshape(-1).to(device=self.device, dtype=torch.int64)
        return super().lookup(self.to_local(keys))

    def rows(self) -> torch.Tensor:
        return torch.nonzero(self._used).squeeze(1)

    def keys(self) -> torch.Tensor:
        return self.to_global(self.rows())


def strided(n: int, j: int) -> tuple[KeyMap, KeyMap]:
    """Key maps of rank position ``j`` of ``n`` when key ``k`` lives on position ``k mod n``."""
    def to_local(k: torch.Tensor) -> torch.Tensor:
        return torch.where(torch.remainder(k, n) == j, torch.div(k, n, rounding_mode="floor"),
                           torch.full_like(k, -1))

    def to_global(r: torch.Tensor) -> torch.Tensor:
        return r * n + j

    return to_local, to_global


def slot_ranges(slot_sizes: list[int], mine: list[int],
                device: torch.device) -> tuple[KeyMap, KeyMap, int]:
    """Key maps (and local capacity) of a shard holding the key ranges of slots ``mine`` of a
    table whose slot ``s`` owns keys ``[sum(sizes[:s]), sum(sizes[:s+1]))``."""
    offsets = [0]
    for size in slot_sizes:
        offsets.append(offsets[-1] + int(size))
    starts = torch.tensor([offsets[s] for s in mine], dtype=torch.int64, device=device)
    sizes = torch.tensor([int(slot_sizes[s]) for s in mine], dtype=torch.int64, device=device)
    bases = torch.cumsum(sizes, 0) - sizes

    def to_local(k: torch.Tensor) -> torch.Tensor:
        i = (torch.searchsorted(starts, k.contiguous(), right=True) - 1).clamp(min=0)
        inside = (k >= starts[i]) & (k < starts[i] + sizes[i])
        return torch.where(inside, k - starts[i] + bases[i], torch.full_like(k, -1))

    def to_global(r: torch.Tensor) -> torch.Tensor:
        i = (torch.searchsorted(bases, r, right=True) - 1).clamp(min=0)
        return r - bases[i] + starts[i]

    return to_local, to_global, max(1, int(sizes.sum()))
