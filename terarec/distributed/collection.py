"""``ShardedEmbeddingCollection``: the multi-rank twin of :class:`EmbeddingCollection`.

Builds one strategy module per table from the :class:`ShardingPlan` (registry
:data:`terarec.distributed.types.STRATEGIES`, keyed by placement kind) and keeps the phase
contract: ``input_dist`` (keys to owners) -> ``lookup`` (owners read their shards) ->
``output_dist`` (vectors back, pooled per sample; the backward sends gradients to the owners,
where the fused sparse update runs). ``forward`` chains them. Each rank passes its own slice
of the global batch; outputs are this rank's samples only.

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
    hybrid,
    replicated,
    row_wise,
    table_wise,
)
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
        ctxs = self.input_dist(sparse_inputs)
        return self.output_dist(ctxs, self.lookup(ctxs))
