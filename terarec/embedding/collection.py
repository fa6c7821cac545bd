"""``EmbeddingCollection``: several embedding tables looked up together.

Owns the mapping sparse inputs -> tables -> output tensors and the phase contract of sharded
lookups (``input_dist`` -> ``lookup`` -> ``output_dist``; ``forward`` just chains them). On a
single device the two dist phases are identities; a sharded collection replaces them with
all-to-alls without changing callers. Placements come from a :class:`ShardingPlan`; only
single-device placements are executed today.
"""

from __future__ import annotations

import torch
from torch import nn

from terarec.embedding.config import TableConfig
from terarec.embedding.plan import ShardingPlan, single_device_plan
from terarec.embedding.table import EmbeddingTable
from terarec.errors import ConfigError, NotSupportedError
from terarec.sparse import SparseInput


class TableGroupMixin:
    """What every embedding collection (single-device or sharded) does the same way."""

    configs: list[TableConfig]
    plan: ShardingPlan
    tables: nn.ModuleDict

    def describe(self) -> str:
        return self.plan.describe(self.configs)

    def set_learning_rate(self, lr: float) -> None:
        for t in self.tables.values():
            t.set_learning_rate(lr)

    def set_scaler(self, scaler: float) -> None:
        for t in self.tables.values():
            t.scaler = scaler

    @staticmethod
    def input_of(cfg: TableConfig, sparse_inputs: dict[str, SparseInput]) -> SparseInput:
        """The sparse input a table reads, or an error naming the table and the inputs."""
        if cfg.input_name not in sparse_inputs:
            raise ConfigError(f"SparseEmbedding {cfg.name!r}.bottom_name",
                              f"one of the sparse inputs {sorted(sparse_inputs)}",
                              cfg.input_name)
        return sparse_inputs[cfg.input_name]


class EmbeddingCollection(TableGroupMixin, nn.Module):
    """Tables keyed by name; ``forward({input_name: SparseInput}) -> {table_name: Tensor}``.

    Args:
        tables: table configs (unique names).
        plan: placements; default :func:`single_device_plan`.
        device: the device of rank 0.
        generator: seeds every table's init, in table order.
    """

    def __init__(self, tables: list[TableConfig], plan: ShardingPlan | None = None,
                 device: torch.device | str | None = None,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        names = [t.name for t in tables]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError("EmbeddingCollection", "unique sparse_embedding_name values", dup)
        self.configs = list(tables)
        self.plan = plan if plan is not None else single_device_plan(self.configs)
        for cfg in self.configs:
            p = self.plan[cfg.name]
            if p.ranks != [0] or p.tier != "device" or p.kind not in ("table_wise", "replicated"):
                raise NotSupportedError(
                    f"table {cfg.name!r}: placement {p.to_dict()} needs the multi-device "
                    f"collection; this single-process collection runs whole tables on rank 0's "
                    f"device only"
                )
        self.tables = nn.ModuleDict(
            {cfg.name: EmbeddingTable(cfg, device, generator) for cfg in self.configs}
        )


    def input_dist(self, sparse_inputs: dict[str, SparseInput]) -> dict[str, SparseInput]:
        """Route each table's keys to where it lives (identity on one device)."""
        return {cfg.name: self.input_of(cfg, sparse_inputs) for cfg in self.configs}

    def lookup(self, routed: dict[str, SparseInput]) -> dict[str, torch.Tensor]:
        return {name: self.tables[name](sp) for name, sp in routed.items()}

    def output_dist(self, pooled: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Bring pooled vectors back to the samples' rank (identity on one device)."""
        return pooled

    def forward(self, sparse_inputs: dict[str, SparseInput]) -> dict[str, torch.Tensor]:
        return self.output_dist(self.lookup(self.input_dist(sparse_inputs)))
