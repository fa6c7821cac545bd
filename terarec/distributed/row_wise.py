"""Row-wise sharding (HugeCTR ``DistributedSlotSparseEmbeddingHash``).

Every key lives on exactly one of the placement's ranks, chosen by a mixed hash of the key
(``ranks[mix64(key) mod len(ranks)]``), whatever slot it appears in; a rank's shard holds about
``1/len(ranks)`` of the rows. Lookups and updates go through :mod:`terarec.distributed.routed`.

Tables whose keys are row numbers (``LocalizedSlotSparseEmbeddingOneHot``: keys in
``[0, max_vocabulary_size)``) are striped instead: key ``k`` on ``ranks[k mod n]`` at local row
``k // n`` of a direct-mapped shard (no hash insert / probe; exactly ``ceil(rows / n)`` rows).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from terarec.distributed.routed import RoutedTable
from terarec.distributed.shard_index import strided
from terarec.distributed.types import STRATEGIES
from terarec.embedding.config import TableConfig
from terarec.embedding.mix import mix64
from terarec.embedding.plan import TablePlacement
from terarec.embedding.table import DIRECT_TYPES

#: Shard capacity = ceil(capacity / ranks * SLACK) + MARGIN: hashing never splits keys perfectly
#: evenly (MARGIN covers tiny tables, whose few keys may all hash to one rank). Hash shards
#: allocate rows as keys arrive, so this only bounds them.
SLACK = 1.25
MARGIN = 64


def shard_capacity(capacity: int, n: int) -> int:
    return min(capacity, math.ceil(capacity / n * SLACK) + MARGIN) if n > 1 else capacity


@STRATEGIES.register("row_wise")
class RowWiseTable(RoutedTable):
    """Rows spread over ``placement.ranks`` by key hash."""

    def __init__(self, config: TableConfig, placement: TablePlacement,
                 device: torch.device | str | None, generator: torch.Generator | None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(config, placement, device, generator, group)
        self._ranks = torch.tensor(placement.ranks, dtype=torch.int64, device=self.device)
        n = len(placement.ranks)
        self.striped = config.embedding_type in DIRECT_TYPES
        if self.rank in placement.ranks:
            if self.striped:
                maps = strided(n, placement.ranks.index(self.rank)) if n > 1 else None
                self.shard = self._make_shard(-(-config.max_vocabulary_size // n), "direct",
                                              maps)
            else:
                cap = shard_capacity(config.max_vocabulary_size, n)
                self.shard = self._make_shard(cap, "hash")

    @property
    def owner_by_key(self) -> bool:
        return True

    def owner(self, keys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        n = len(self.placement.ranks)
        if n == 1:
            return self._ranks[torch.zeros_like(keys)]
        keys = keys.to(torch.int64)
        return self._ranks[torch.remainder(keys if self.striped else mix64(keys), n)]
