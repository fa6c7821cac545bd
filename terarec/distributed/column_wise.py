"""Column-wise sharding (HugeCTR EmbeddingCollection ``shard`` entry ``(name, k)``).

The embedding dimension is split into ``k = len(placement.ranks)`` contiguous column blocks
(:func:`column_blocks`: the first ``dim mod k`` blocks are one column wider); block ``j`` lives
on ``ranks[j]`` and holds every key of the table, columns ``[lo_j, hi_j)`` only. A block starts
from exactly the unsharded table's values (:class:`ColumnBlockTable` initialises its columns
with :func:`terarec.embedding.init.init_vectors` at the block's column offset).

Phases of one batch:

1. ``input_dist``: this rank's distinct keys (first-occurrence order, with their first slot)
   go to every block owner (one all-to-all of counts and batch sizes, one of keys).
2. ``lookup``: each owner inserts unknown keys into its block and reads its columns.
3. ``output_dist``: the blocks come back (reverse all-to-all, padded to the widest block) and
   are concatenated into whole vectors, then pooled per (sample, slot) on the sample's rank.

Backward: per distinct key gradients (scaled by ``B_local / B_global``) are split by columns and
each block's columns go to its owner, which runs its fused optimizer step. Every HugeCTR
optimizer is element-wise, so per-block updates equal the whole-row update exactly (Global and
LazyGlobal too: every block holds the same rows).

Files: a rank's shard is its block (``local_export`` is ``[N, hi - lo]`` wide); gathering
(``export`` / ``prepare_export``) stitches whole rows, and
:func:`terarec.distributed.checkpoint.load_shards` stitches a column-wise checkpoint before
loading it into any placement.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from terarec.distributed import comm, state_format
from terarec.distributed.base import Arrays, ShardedTableBase, _np_keys
from terarec.distributed.routed import ExchangePool, first_occurrence_unique, slots_of_keys
from terarec.distributed.types import STRATEGIES, LookupContext
from terarec.embedding.config import TableConfig
from terarec.embedding.init import init_vectors
from terarec.embedding.plan import TablePlacement
from terarec.embedding.table import DIRECT_TYPES, EmbeddingTable, key_gradients, pool, sum_per_row
from terarec.embedding.table_io import LAST_STEP_KEY, STEP_KEY
from terarec.errors import ConfigError
from terarec.sparse import SparseInput


def column_blocks(dim: int, k: int) -> list[tuple[int, int]]:
    """``[(lo, hi)]`` of the ``k`` column blocks of a ``dim``-wide table."""
    if not 1 <= k <= dim:
        raise ConfigError("column_wise placement", f"1..{dim} ranks (one column block each)", k)
    base, extra = divmod(dim, k)
    out, lo = [], 0
    for j in range(k):
        hi = lo + base + (1 if j < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


class ColumnBlockTable(EmbeddingTable):
    """An :class:`EmbeddingTable` holding columns ``[col_offset, col_offset + dim)`` of a wider
    table: new rows start from the wide table's values of those columns."""

    def __init__(self, config: TableConfig, device: torch.device | str | None,
                 generator: torch.Generator | None, index: str, col_offset: int) -> None:
        super().__init__(config, device, generator, index=index)
        self.col_offset = int(col_offset)

    def insert_keys(self, keys: torch.Tensor, slots: torch.Tensor | None = None,
                    offsets: torch.Tensor | None = None) -> torch.Tensor:
        keys = keys.to(device=self.device, dtype=torch.int64).reshape(-1)
        new = self.index.lookup(keys) < 0 if self.col_offset else None
        rows = super().insert_keys(keys, slots, offsets)
        if new is not None and bool(new.any()):
            r = rows[new]
            self.weight[r] = init_vectors(keys[new], self.row_slots[r], self._bounds,
                                          self.config.dim, self.seed, self.weight.dtype,
                                          col_offset=self.col_offset)
        return rows


@STRATEGIES.register("column_wise")
class ColumnWiseTable(ShardedTableBase):
    """Column block ``j`` of every row on ``placement.ranks[j]``."""

    def __init__(self, config: TableConfig, placement: TablePlacement,
                 device: torch.device | str | None, generator: torch.Generator | None,
                 group: dist.ProcessGroup | None = None) -> None:
        super().__init__(config, placement, device, generator, group)
        self.blocks = column_blocks(config.dim, len(placement.ranks))
        self.width = max(hi - lo for lo, hi in self.blocks)
        self.block: tuple[int, int] | None = None
        if self.rank in placement.ranks:
            lo, hi = self.blocks[placement.ranks.index(self.rank)]
            self.block = (lo, hi)
            cfg = dataclasses.replace(config, dim=hi - lo)
            index = "direct" if config.embedding_type in DIRECT_TYPES else "hash"
            self.shard = ColumnBlockTable(cfg, self.device, torch.Generator().manual_seed(0),
                                          index, lo)
            self.shard.seed = self.seed

    def owns(self, keys: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        return torch.full_like(keys, self.shard is not None, dtype=torch.bool)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", columns={self.block}"

    # ------------------------------------------------------------------ phases
    def input_dist(self, sparse: SparseInput) -> LookupContext:
        sparse = sparse.to(self.device)
        keys = sparse.keys.to(torch.int64)
        slots = slots_of_keys(sparse)
        first, to_unique = first_occurrence_unique(keys)
        u_keys, u_slots = keys[first], slots[first]
        owners = set(self.placement.ranks)
        send_counts = [u_keys.numel() if r in owners else 0 for r in range(self.world)]
        per_owner = torch.stack([u_keys, u_slots], 1)
        send = torch.cat([per_owner] * len(owners)) if owners else per_owner[:0]
        header = torch.tensor([[c, sparse.batch_size] for c in send_counts], dtype=torch.int64,
                              device=self.device)
        got = comm.all_to_all_counts(header, self.group).tolist()
        recv_counts = [int(c) for c, _ in got]
        recv = comm.all_to_all_rows(send, send_counts, recv_counts, self.group)
        return LookupContext(
            sparse=sparse, send_keys=u_keys, send_slots=u_slots, key_to_send=to_unique,
            send_counts=send_counts, recv_counts=recv_counts, recv_keys=recv[:, 0],
            recv_slots=recv[:, 1], batch_sizes=[int(b) for _, b in got])

    def lookup(self, ctx: LookupContext) -> torch.Tensor:
        n = ctx.recv_keys.numel()
        out = torch.zeros(n, self.width, device=self.device)
        if self.shard is None:
            ctx.rows = ctx.recv_keys
            return out
        ctx.rows = self.shard.insert_keys(ctx.recv_keys, slots=ctx.recv_slots)
        out[:, : self.shard.config.dim] = self.shard.weight[ctx.rows]
        return out

    def output_dist(self, ctx: LookupContext, vectors: torch.Tensor) -> torch.Tensor:
        if self.frozen or not torch.is_grad_enabled():
            return self._exchange_and_pool(ctx, vectors)
        anchor = torch.empty(0, device=self.device, requires_grad=True)
        # the routed tables' node: _exchange_and_pool forward, _backward backward
        return ExchangePool.apply(anchor, self, ctx, vectors)

    # ------------------------------------------------------------------ helpers
    def _owner_offsets(self, ctx: LookupContext) -> list[int]:
        """Where block ``j``'s rows start in the rank-ordered exchange buffer."""
        starts = np.concatenate([[0], np.cumsum(ctx.send_counts)]).tolist()
        return [int(starts[r]) for r in self.placement.ranks]

    def _exchange_and_pool(self, ctx: LookupContext, vectors: torch.Tensor) -> torch.Tensor:
        back = comm.all_to_all_rows(vectors.contiguous(), ctx.recv_counts, ctx.send_counts,
                                    self.group)
        sp, dim, u = ctx.sparse, self.config.dim, ctx.send_keys.numel()
        whole = back.new_zeros(u, dim)
        for (lo, hi), start in zip(self.blocks, self._owner_offsets(ctx)):
            whole[:, lo:hi] = back[start:start + u, : hi - lo]
        if sp.keys.numel() == 0:
            out = back.new_zeros(sp.offsets.numel() - 1, dim)
        else:
            out = pool(whole, ctx.key_to_send, sp.offsets, self.config.combiner)
        return out.view(sp.batch_size, self.config.slot_num, dim)

    @torch.no_grad()
    def _backward(self, ctx: LookupContext, grad_out: torch.Tensor) -> None:
        sp, dim = ctx.sparse, self.config.dim
        grad = grad_out.reshape(-1, dim).to(torch.float32)
        per_key = key_gradients(grad, sp.offsets, sp.keys.numel(), self.config.combiner)
        per_u = torch.zeros(ctx.send_keys.numel(), dim, dtype=grad.dtype, device=grad.device)
        per_u.index_put_((ctx.key_to_send,), per_key, accumulate=True)
        per_u *= ctx.grad_weight
        send = per_u.new_zeros(sum(ctx.send_counts), self.width)
        for (lo, hi), start in zip(self.blocks, self._owner_offsets(ctx)):
            send[start:start + per_u.shape[0], : hi - lo] = per_u[:, lo:hi]
        got = comm.all_to_all_rows(send, ctx.send_counts, ctx.recv_counts, self.group)
        if self.shard is None or self.frozen:
            return
        assert ctx.rows is not None  # noqa: S101 - lookup ran
        uniq, summed = sum_per_row(ctx.rows, got[:, : self.shard.config.dim])
        self.shard.optimizer.update(self.shard.weight, uniq, summed.to(self.shard.weight.dtype),
                                    self.shard.index.row_extent)

    # ------------------------------------------------------------------ files
    def _widen(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros((values.shape[0], self.config.dim), np.float32)
        if self.block is not None and values.shape[0]:
            out[:, self.block[0]:self.block[1]] = values
        return out

    def _collect(self, dst: int | None) -> tuple[Arrays, bytes] | None:
        keys, vectors, slots = self.local_export()
        state = {n: (k, v if n in (STEP_KEY, LAST_STEP_KEY) else self._widen(v))
                 for n, (k, v) in self.local_optimizer_state().items()}
        got = self._gather_all((keys, self._widen(vectors), slots), state, dst)
        if got is None:
            return None
        (g_keys, g_vec, _), data = got
        g_state = state_format.from_bytes(self.config, data, g_keys, "column-wise gather")
        # every block owner sent the same keys, zero outside its columns: sum per key
        uniq, first, inv = np.unique(g_keys, return_index=True, return_inverse=True)
        merged: state_format.State = {}
        for name, (_k, v) in g_state.items():
            if name == STEP_KEY:
                merged[name] = (_k, v)
            elif name == LAST_STEP_KEY:
                merged[name] = (uniq, v[first])
            else:
                acc = np.zeros((uniq.size, self.config.dim), np.float32)
                np.add.at(acc, inv, v)
                merged[name] = (uniq, acc)
        vec = np.zeros((uniq.size, self.config.dim), np.float32)
        np.add.at(vec, inv, g_vec)
        slots_out = got[0][2][first] if got[0][2] is not None else None
        return (uniq, vec, slots_out), state_format.to_bytes(self.config, merged)

    def load(self, keys: Any, vectors: Any, slot_ids: Any = None) -> None:
        """Keep this rank's columns of whole rows (global files load on any ranks)."""
        k = _np_keys(keys)
        v = vectors.detach().cpu().numpy() if torch.is_tensor(vectors) else np.asarray(vectors)
        v = v.reshape(k.size, self.config.dim)
        s = None if slot_ids is None else _np_keys(slot_ids)
        self._loaded = (k, s)
        if self.shard is not None and self.block is not None and k.size:
            self.shard.load(k, np.ascontiguousarray(v[:, self.block[0]:self.block[1]]), s)

    def load_optimizer_state(self, state: state_format.State) -> None:
        if self.shard is None or self.block is None:
            return
        lo, hi = self.block
        self.shard.load_optimizer_state(
            {n: (k, v if n in (STEP_KEY, LAST_STEP_KEY) else np.ascontiguousarray(v[:, lo:hi]))
             for n, (k, v) in state.items()})
