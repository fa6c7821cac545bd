"""Row-wise sharding (HugeCTR ``DistributedSlotSparseEmbeddingHash``).

Every key lives on exactly one of the placement's ranks, chosen by a mixed hash of the key
(``ranks[mix64(key) mod len(ranks)]``), whatever slot it appears in; a rank's shard holds about
``1/len(ranks)`` of the rows. Lookups and updates go through :mod:`terarec.distributed.routed`.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from terarec.distributed.routed import RoutedTable
from terarec.distributed.types import STRATEGIES
from terarec.embedding.config import TableConfig
from terarec.embedding.mix import mix64
from terarec.embedding.plan import TablePlacement

#: Shard capacity = ceil(capacity / ranks * SLACK): hashing never splits keys perfectly evenly.
SLACK = 1.25


def shard_capacity(capacity: int, n: int) -> int:
    return min(capacity, math.ceil(capacity / n * SLACK)) if n > 1 else capacity


@STRATEGIES.register("row_wise")
class RowWiseTable(RoutedTable):
    """Rows spread over ``placement.ranks`` by key hash."""

    def __init__(self, config: TableConfig, placement: TablePlacement,
                 device: torch.device | str | None, generator: torch.Generator | None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(config, placement, device, generator, group)
        self._ranks = torch.tensor(placement.ranks, dtype=torch.int64, device=self.device)
        if self.rank in placement.ranks:
            cap = shard_capacity(config.max_vocabulary_size, len(placement.ranks))
            self.shard = self._make_shard(cap, "hash")

    def owner(self, keys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        n = len(self.placement.ranks)
        if n == 1:
            return self._ranks[torch.zeros_like(keys)]
        return self._ranks[torch.remainder(mix64(keys.to(torch.int64)), n)]
