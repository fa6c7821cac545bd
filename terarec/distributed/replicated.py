"""Replicated tables (data parallel): every rank holds the whole table.

Lookups are local. In the backward each rank sums the gradient of its keys per distinct key,
scales it by ``B_local / B_global``, and all ranks all-gather (key, slot, gradient) triples;
every replica then inserts any key it has not seen yet and applies the same fused optimizer
step to the same per-row sums (summed in rank order), so the replicas stay bit-identical and
equal to one-process training.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist

from terarec.distributed import comm
from terarec.distributed.base import ShardedTableBase
from terarec.distributed.routed import first_occurrence_unique, slots_of_keys
from terarec.distributed.types import STRATEGIES
from terarec.embedding.config import TableConfig
from terarec.embedding.plan import TablePlacement
from terarec.embedding.table import DIRECT_TYPES, key_gradients, pool, sum_per_row
from terarec.errors import ConfigError
from terarec.sparse import SparseInput


@dataclass
class ReplicatedContext:
    sparse: SparseInput
    rows: torch.Tensor | None = None


class _LocalPool(torch.autograd.Function):
    @staticmethod
    def forward(fctx, anchor, table, ctx):  # noqa: ANN001, ANN205
        fctx.table, fctx.ctx = table, ctx
        return pool(table.shard.weight, ctx.rows, ctx.sparse.offsets, table.config.combiner)

    @staticmethod
    def backward(fctx, grad_out):  # noqa: ANN001, ANN205
        fctx.table._backward(fctx.ctx, grad_out)
        return None, None, None


@STRATEGIES.register("replicated")
class ReplicatedTable(ShardedTableBase):
    """A full copy of the table on every rank of the group."""

    fusable = True

    def __init__(self, config: TableConfig, placement: TablePlacement,
                 device: torch.device | str | None, generator: torch.Generator | None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(config, placement, device, generator, group)
        if sorted(placement.ranks) != list(range(self.world)):
            raise ConfigError(f"sharding plan, table {config.name!r}.ranks",
                              f"every rank 0..{self.world - 1} for a replicated table",
                              placement.ranks)
        index = "direct" if config.embedding_type in DIRECT_TYPES else "hash"
        self.shard = self._make_shard(config.max_vocabulary_size, index)

    def owns(self, keys: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        return torch.ones_like(keys, dtype=torch.bool)

    def _exports(self) -> bool:
        return self.rank == min(self.placement.ranks)

    # ------------------------------------------------------------------ phases
    def input_dist(self, sparse: SparseInput) -> ReplicatedContext:  # type: ignore[override]
        return ReplicatedContext(sparse.to(self.device))

    def lookup(self, ctx: ReplicatedContext) -> torch.Tensor:  # type: ignore[override]
        assert self.shard is not None  # noqa: S101
        offsets = ctx.sparse.offsets.to(torch.int64)
        ctx.rows = self.shard.insert_keys(ctx.sparse.keys, offsets=offsets)
        if self.frozen or not torch.is_grad_enabled():
            return pool(self.shard.weight, ctx.rows, offsets, self.config.combiner)
        anchor = torch.empty(0, device=self.device, requires_grad=True)
        return _LocalPool.apply(anchor, self, ctx)

    def output_dist(self, ctx: ReplicatedContext,  # type: ignore[override]
                    pooled: torch.Tensor) -> torch.Tensor:
        sp = ctx.sparse
        return pooled.view(sp.batch_size, self.config.slot_num, self.config.dim)

    @torch.no_grad()
    def _backward(self, ctx: ReplicatedContext, grad_out: torch.Tensor) -> None:
        assert self.shard is not None and ctx.rows is not None  # noqa: S101
        sp, dim = ctx.sparse, self.config.dim
        grad = grad_out.reshape(-1, dim).to(torch.float32)
        per_key = key_gradients(grad, sp.offsets, sp.keys.numel(), self.config.combiner)
        first, to_unique = first_occurrence_unique(ctx.rows)
        summed = torch.zeros(first.numel(), dim, dtype=grad.dtype, device=grad.device)
        summed.index_put_((to_unique,), per_key, accumulate=True)
        ids = torch.stack([sp.keys[first].to(torch.int64), slots_of_keys(sp)[first]], 1)
        head = torch.tensor([ids.shape[0], sp.batch_size], dtype=torch.int64, device=self.device)
        heads, _ = comm.all_gather_rows(head.view(1, 2), [1] * self.world, self.group)
        sizes = [int(n) for n in heads[:, 0]]
        total = int(heads[:, 1].sum())
        summed *= sp.batch_size / total if total else 0.0
        all_ids, _ = comm.all_gather_rows(ids, sizes, self.group)
        all_grads, _ = comm.all_gather_rows(summed, sizes, self.group)
        rows = self.shard.insert_keys(all_ids[:, 0], slots=all_ids[:, 1])
        if self.frozen:
            return
        uniq, per_row = sum_per_row(rows, all_grads)
        self.shard.optimizer.update(self.shard.weight, uniq, per_row.to(self.shard.weight.dtype),
                                    self.shard.index.row_extent)
