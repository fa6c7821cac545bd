"""``ShardedEmbeddingCollection``: the multi-rank twin of :class:`EmbeddingCollection`.

Builds one strategy module per table from the :class:`ShardingPlan` (registry
:data:`terarec.distributed.types.STRATEGIES`, keyed by placement kind) and keeps the phase
contract: ``input_dist`` (keys to owners) -> ``lookup`` (owners read their shards) ->
``output_dist`` (vectors back, pooled per sample; the backward sends gradients to the owners,
where the fused sparse update runs). Each rank passes its own slice of the global batch;
outputs are this rank's samples only.

``forward`` runs the row-wise, table-wise and replicated tables together through
:class:`~terarec.distributed.fused.FusedLookup` (one collective per phase for all of them, not
per table), then the others (column-wise, hybrid) one by one. In a world of one every table is
its shard's plain lookup (no collectives at all). Slot-wise one-hot tables whose input
qualifies run their own fixed-size exchange (:mod:`~terarec.distributed.slot_exchange`) instead
of the fused routed one. The per-table phase methods stay available. ``prefetch`` issues the
key exchanges of a later batch ahead, which that batch's ``forward`` then waits on
(:mod:`~terarec.distributed.overlap`).

Every rank must call ``forward`` (and the backward) the same number of times in the same table
order, as with any collective.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

# Strategy modules register themselves on import.
from terarec.distributed import (  # noqa: F401
    column_wise,
    comm,
    hybrid,
    replicated,
    row_wise,
    table_wise,
)
from terarec.distributed.fused import FusedLookup
from terarec.distributed.slot_exchange import SlotExchange
from terarec.distributed.types import STRATEGIES
from terarec.embedding.collection import TableGroupMixin
from terarec.embedding.config import TableConfig
from terarec.embedding.plan import ShardingPlan
from terarec.errors import ConfigError
from terarec.sparse import SparseInput


def build_sharded_table(cfg: TableConfig, plan: ShardingPlan, device: torch.device | str | None,
                        generator: torch.Generator | None,
                        group: dist.ProcessGroup | None = None,
                        options: dict[str, Any] | None = None) -> nn.Module:
    """The strategy module of one table (draws one seed from ``generator`` on every rank);
    ``options`` are extra keyword arguments of the strategy (e.g. ``hybrid``'s ``hot_keys``)."""
    placement = plan[cfg.name]
    cls = STRATEGIES.get(placement.kind, f"sharding plan, table {cfg.name!r}.kind")
    return cls(cfg, placement, device, generator, group, **(options or {}))


class ShardedEmbeddingCollection(TableGroupMixin, nn.Module):
    """Tables keyed by name; ``forward({input_name: SparseInput}) -> {table_name: Tensor}``.

    Args:
        tables: table configs (unique names), in the order their seeds are drawn.
        plan: one placement per table (see :mod:`terarec.distributed.planner`).
        device: this rank's device.
        generator: seeds every table's init, in table order (same on every rank).
        group: process group (default: the world).
        options: table name -> extra keyword arguments of its strategy (``hybrid``:
            ``hot_keys`` / ``max_hot`` / ``statistics_batches``).
    """

    def __init__(self, tables: list[TableConfig], plan: ShardingPlan,
                 device: torch.device | str | None = None,
                 generator: torch.Generator | None = None,
                 group: dist.ProcessGroup | None = None,
                 options: dict[str, dict[str, Any]] | None = None) -> None:
        super().__init__()
        names = [t.name for t in tables]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError("ShardedEmbeddingCollection", "unique table names", dup)
        self.configs = list(tables)
        self.plan = plan
        opts = options or {}
        self.tables = nn.ModuleDict({c.name: build_sharded_table(
            c, plan, device, generator, group, opts.get(c.name)) for c in self.configs})
        self.world = comm.world_size(group)
        fusable = [self.tables[c.name] for c in self.configs if self.tables[c.name].fusable]
        self.fused = FusedLookup(fusable, group) if self.world > 1 and fusable else None
        self._subsets: dict[tuple[str, ...], FusedLookup] = {}

    def input_dist(self, sparse_inputs: dict[str, SparseInput]) -> dict[str, Any]:
        """Route each table's keys to their owners; returns one context per table."""
        return {cfg.name: self.tables[cfg.name].input_dist(self.input_of(cfg, sparse_inputs))
                for cfg in self.configs}

    def lookup(self, ctxs: dict[str, Any]) -> dict[str, torch.Tensor]:
        return {name: self.tables[name].lookup(ctx) for name, ctx in ctxs.items()}

    def output_dist(self, ctxs: dict[str, Any],
                    looked_up: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: self.tables[name].output_dist(ctxs[name], looked_up[name])
                for name in ctxs}

    def forward(self, sparse_inputs: dict[str, SparseInput]) -> dict[str, torch.Tensor]:
        """``{input name: SparseInput}`` -> ``{table name: [batch, slot_num, dim]}`` (see the
        module docstring for how the tables are grouped)."""
        out: dict[str, torch.Tensor] = {}
        fused, fused_in = self._fused_inputs(sparse_inputs, check=True)
        if fused is not None:
            out.update(fused(fused_in))
        for cfg in self.configs:
            if cfg.name not in out:
                out[cfg.name] = self.tables[cfg.name](self.input_of(cfg, sparse_inputs))
        return {cfg.name: out[cfg.name] for cfg in self.configs}

    def _fused_inputs(self, sparse_inputs: dict[str, SparseInput], check: bool
                      ) -> tuple[FusedLookup | None, dict[str, SparseInput]]:
        """The fused lookup the forward of ``sparse_inputs`` runs and its inputs (the fusable
        tables that do not take their own fixed-size exchange); ``check``: a wrong slot count
        is an error (else the table is left out)."""
        if self.fused is None:
            return None, {}
        fused_in = {}
        for name in self.fused.names:
            table = self.tables[name]
            cfg = table.config
            sp = self.input_of(cfg, sparse_inputs)
            if sp.slot_num != cfg.slot_num:
                if not check:
                    continue
                raise ConfigError(f"SparseEmbedding {name!r} input {cfg.input_name!r}",
                                  f"slot_num={cfg.slot_num}", sp.slot_num)
            if not getattr(table, "fixed_exchange_applies", lambda _: False)(sp):
                fused_in[name] = sp  # else: its own fixed-size exchange, below
        if not fused_in:
            return None, fused_in
        if len(fused_in) == len(self.fused.names):
            return self.fused, fused_in
        names = tuple(n for n in self.fused.names if n in fused_in)
        sub = self._subsets.get(names)
        if sub is None:  # kept: a pre-issued exchange (prefetch) lives on it
            sub = self._subsets[names] = FusedLookup([self.tables[n] for n in names],
                                                     self.fused.group)
        return sub, fused_in

    # ------------------------------------------------------------------ overlap
    @property
    def can_prefetch(self) -> bool:
        """Whether :meth:`prefetch` can issue anything ahead (see
        :mod:`~terarec.distributed.overlap`): routed tables without replicated ones in the
        fused group, or a slot-wise one-hot table."""
        if self.world <= 1:
            return False
        if self.fused is not None and self.fused.can_prefetch:
            return True
        return any(hasattr(t, "fixed_exchange_applies") and SlotExchange.eligible(t)
                   for t in self.tables.values())

    def prefetch(self, sparse_inputs: dict[str, SparseInput]) -> None:
        """Issue the ``input_dist`` key exchanges of a later batch now, without waiting, the
        way :meth:`forward` will route that batch; its forward then waits on them instead of
        issuing them (:mod:`~terarec.distributed.overlap`). Collective: every rank calls it
        at the same point with its part of the same global batch."""
        if self.world <= 1:
            return
        fused, fused_in = self._fused_inputs(sparse_inputs, check=False)
        if fused is not None:
            fused.prefetch(fused_in)
        for cfg in self.configs:
            table = self.tables[cfg.name]
            if cfg.name in fused_in or not getattr(table, "fusable", False):
                continue
            sp = self.input_of(cfg, sparse_inputs)
            if sp.slot_num == cfg.slot_num and \
                    getattr(table, "fixed_exchange_applies", lambda _: False)(sp):
                table.exchange.prefetch(sp)

    def drop_pending(self) -> None:
        """Forget every exchange issued ahead and not used (waits for them)."""
        for fused in [self.fused, *self._subsets.values()]:
            if fused is not None:
                fused.drop_pending()
        for table in self.tables.values():
            ex = getattr(table, "_exchange", None)
            if ex is not None:
                ex.drop_pending()
