"""Table-wise / slot-wise sharding (HugeCTR ``LocalizedSlotSparseEmbeddingHash``).

With one rank in the placement the whole table lives there. With several, whole slots are
assigned round-robin: the keys of slot ``i`` live on ``ranks[i mod len(ranks)]`` (HugeCTR's
"slot i -> GPU i mod N"). As in HugeCTR this assumes the slots of a Localized table use disjoint
keys; a key seen in two slots owned by different ranks gets one row on each. Lookups and
updates go through :mod:`terarec.distributed.routed`.

Tables whose keys are row numbers (``LocalizedSlotSparseEmbeddingOneHot`` with its
``slot_size_array``) keep a direct-mapped shard (no hash): whole, or the key ranges of the
rank's slots stacked (:func:`terarec.distributed.shard_index.slot_ranges`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from terarec.distributed.routed import RoutedTable
from terarec.distributed.shard_index import slot_ranges
from terarec.distributed.slot_exchange import SlotExchange
from terarec.distributed.types import STRATEGIES
from terarec.embedding.config import TableConfig
from terarec.embedding.plan import TablePlacement
from terarec.embedding.table import DIRECT_TYPES
from terarec.sparse import SparseInput


@STRATEGIES.register("table_wise")
class TableWiseTable(RoutedTable):
    """Whole table on ``ranks[0]``, or slot ``i`` on ``ranks[i mod len(ranks)]``."""

    def __init__(self, config: TableConfig, placement: TablePlacement,
                 device: torch.device | str | None, generator: torch.Generator | None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(config, placement, device, generator, group)
        self._ranks = torch.tensor(placement.ranks, dtype=torch.int64, device=self.device)
        n = len(placement.ranks)
        if self.rank in placement.ranks:
            if n == 1:
                index = "direct" if config.embedding_type in DIRECT_TYPES else "hash"
                self.shard = self._make_shard(config.max_vocabulary_size, index)
            else:
                mine = [s for s in range(config.slot_num)
                        if placement.ranks[s % n] == self.rank]
                cap = config.max_vocabulary_size
                if config.slot_size_array and config.embedding_type in DIRECT_TYPES:
                    to_local, to_global, cap = slot_ranges(config.slot_size_array, mine,
                                                           self.device)
                    self.shard = self._make_shard(cap, "direct", (to_local, to_global))
                else:
                    if config.slot_size_array:
                        cap = max(1, sum(config.slot_size_array[s] for s in mine))
                    self.shard = self._make_shard(cap, "hash")
        self._exchange: SlotExchange | None = None

    @property
    def exchange(self) -> SlotExchange | None:
        """The fixed-size exchange when this table is slot-wise one-hot (else None)."""
        if self._exchange is None and SlotExchange.eligible(self):
            self._exchange = SlotExchange(self, self.group)
        return self._exchange

    def fixed_exchange_applies(self, sparse: SparseInput) -> bool:
        ex = self.exchange
        return ex is not None and ex.applies(sparse)

    def forward(self, sparse: SparseInput) -> torch.Tensor:
        if not self.local_only and self.fixed_exchange_applies(sparse):
            return self.exchange(sparse)  # type: ignore[misc]
        return super().forward(sparse)

    def load(self, keys, vectors, slot_ids=None) -> None:  # noqa: ANN001
        super().load(keys, vectors, slot_ids)
        self._replica_stale()

    def load_optimizer_state(self, state) -> None:  # noqa: ANN001
        super().load_optimizer_state(state)
        self._replica_stale()

    def _replica_stale(self) -> None:
        """A load changed the owners' rows: the replicated slots (opt-in, see
        :mod:`terarec.distributed.slot_replica`) refresh at the next forward."""
        rep = self._exchange.replica if self._exchange is not None else None
        if rep is not None:
            rep.mark_stale()

    def slots_needed(self) -> bool:
        return len(self.placement.ranks) > 1

    @property
    def owner_by_key(self) -> bool:
        return len(self.placement.ranks) == 1  # slot-wise: the slot decides

    def owner(self, keys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        n = len(self.placement.ranks)
        return self._ranks[torch.remainder(slots.to(torch.int64), n)]
