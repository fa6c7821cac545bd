"""``RoutedTable``: the all-to-all lookup shared by the row-wise and table-wise strategies.

Phases of one batch (every rank runs them together):

1. ``input_dist``: each key of this rank's samples gets an owner rank (the strategy's
   :meth:`RoutedTable.owner`); the distinct (owner, key) pairs, in first-occurrence order and
   grouped by owner, are sent with two ``all_to_all_single`` calls: counts (plus every rank's
   local batch size), then keys with the slot they were seen in.
2. ``lookup``: each owner inserts unknown keys into its shard (initialised exactly as the
   unsharded table would: same seed, same slot, keys arrive in global first-seen order) and
   reads one vector per requested key.
3. ``output_dist``: vectors go back by the reverse all-to-all and are pooled per (sample, slot)
   on the sample's rank, so sum and mean pooling are exactly the unsharded ones.

Backward (inside ``output_dist``'s autograd function): per-key gradients are summed per
requested key, scaled by ``B_local / B_global`` (the loss is the global-batch mean, as in
HugeCTR), sent to the owners by the same all-to-all, and each owner runs its shard's fused
sparse optimizer step once, hit rows or not, so step counters match one-process training.
"""

from __future__ import annotations

import torch

from terarec.distributed import comm
from terarec.distributed.base import ShardedTableBase
from terarec.distributed.types import LookupContext
from terarec.embedding.table import key_gradients, pool, sum_per_row
from terarec.errors import ConfigError
from terarec.sparse import SparseInput


def slots_of_keys(sparse: SparseInput) -> torch.Tensor:
    """Slot of every key of a sample-major CSR input."""
    n_rows = sparse.offsets.numel() - 1
    row_slot = torch.arange(n_rows, device=sparse.offsets.device) % sparse.slot_num
    return torch.repeat_interleave(row_slot, sparse.lengths, output_size=sparse.keys.numel())


def first_occurrence_unique(ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first, inverse)``: position of the first occurrence of each distinct id, ordered by
    that position, and for every element the index of its id in that order."""
    uniq, inv = torch.unique(ids, return_inverse=True)
    n = ids.numel()
    first = torch.full((uniq.numel(),), n, dtype=torch.int64, device=ids.device)
    first.scatter_reduce_(0, inv, torch.arange(n, device=ids.device), reduce="amin")
    order = torch.argsort(first)
    rank_of = torch.empty_like(order)
    rank_of[order] = torch.arange(order.numel(), device=ids.device)
    return first[order], rank_of[inv]


class _RoutedPool(torch.autograd.Function):
    """forward: vectors back to the samples' rank + pooling; backward: gradients to owners +
    the owner's fused optimizer step."""

    @staticmethod
    def forward(fctx, anchor, table, ctx, vectors):  # noqa: ANN001, ANN205
        fctx.table, fctx.ctx = table, ctx
        return table._exchange_and_pool(ctx, vectors)

    @staticmethod
    def backward(fctx, grad_out):  # noqa: ANN001, ANN205
        fctx.table._backward(fctx.ctx, grad_out)
        return None, None, None, None


class RoutedTable(ShardedTableBase):
    """A table whose keys live on owner ranks (see module docstring); subclasses define
    :meth:`owner`."""

    def owner(self, keys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Owner rank of each key (seen in ``slots``)."""
        raise NotImplementedError

    def owns(self, keys: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        if slots is None:
            slots = torch.zeros_like(keys)
        return self.owner(keys, slots) == self.rank

    # ------------------------------------------------------------------ phases
    def input_dist(self, sparse: SparseInput) -> LookupContext:
        sparse = sparse.to(self.device)
        keys = sparse.keys.to(torch.int64)
        slots = slots_of_keys(sparse)
        owners = self.owner(keys, slots)
        _, key_inv = torch.unique(keys, return_inverse=True)
        first, to_unique = first_occurrence_unique(key_inv * self.world + owners)
        u_owner = owners[first]
        perm = torch.argsort(u_owner, stable=True)
        inv_perm = torch.empty_like(perm)
        inv_perm[perm] = torch.arange(perm.numel(), device=perm.device)
        send = torch.stack([keys[first[perm]], slots[first[perm]]], 1)
        counts = torch.bincount(u_owner, minlength=self.world)
        header = torch.stack([counts, torch.full_like(counts, sparse.batch_size)], 1)
        got = comm.all_to_all_counts(header, self.group).tolist()
        send_counts = counts.tolist()
        recv_counts = [int(c) for c, _ in got]
        recv = comm.all_to_all_rows(send, send_counts, recv_counts, self.group)
        return LookupContext(
            sparse=sparse, send_keys=send[:, 0], send_slots=send[:, 1],
            key_to_send=inv_perm[to_unique], send_counts=send_counts, recv_counts=recv_counts,
            recv_keys=recv[:, 0], recv_slots=recv[:, 1], batch_sizes=[int(b) for _, b in got])

    def lookup(self, ctx: LookupContext) -> torch.Tensor:
        if self.shard is None:
            if ctx.recv_keys.numel():
                raise ConfigError(f"sharded table {self.name!r}", "keys routed only to owners",
                                  f"{ctx.recv_keys.numel()} keys on non-owner rank {self.rank}")
            ctx.rows = ctx.recv_keys
            return torch.zeros(0, self.config.dim, device=self.device)
        ctx.rows = self.shard.insert_keys(ctx.recv_keys, slots=ctx.recv_slots)
        return self.shard.weight[ctx.rows]

    def output_dist(self, ctx: LookupContext, vectors: torch.Tensor) -> torch.Tensor:
        if self.frozen or not torch.is_grad_enabled():
            return self._exchange_and_pool(ctx, vectors)
        anchor = torch.empty(0, device=self.device, requires_grad=True)
        return _RoutedPool.apply(anchor, self, ctx, vectors)

    # ------------------------------------------------------------------ helpers
    def _exchange_and_pool(self, ctx: LookupContext, vectors: torch.Tensor) -> torch.Tensor:
        back = comm.all_to_all_rows(vectors.contiguous(), ctx.recv_counts, ctx.send_counts,
                                    self.group)
        sp = ctx.sparse
        if sp.keys.numel() == 0:
            out = back.new_zeros(sp.offsets.numel() - 1, self.config.dim)
        else:
            out = pool(back, ctx.key_to_send, sp.offsets, self.config.combiner)
        return out.view(sp.batch_size, self.config.slot_num, self.config.dim)

    @torch.no_grad()
    def _backward(self, ctx: LookupContext, grad_out: torch.Tensor) -> None:
        self._apply_gradients(ctx, self._route_gradients(ctx, grad_out))

    def _route_gradients(self, ctx: LookupContext, grad_out: torch.Tensor) -> torch.Tensor:
        """Per requested key gradient (scaled by ``B_local / B_global``), sent to the owners;
        returns the rows this rank received (aligned with ``ctx.recv_keys``)."""
        sp = ctx.sparse
        dim = self.config.dim
        grad = grad_out.reshape(-1, dim).to(torch.float32)
        per_key = key_gradients(grad, sp.offsets, sp.keys.numel(), self.config.combiner)
        per_send = torch.zeros(ctx.send_keys.numel(), dim, dtype=grad.dtype, device=grad.device)
        per_send.index_put_((ctx.key_to_send,), per_key, accumulate=True)
        per_send *= ctx.grad_weight
        return comm.all_to_all_rows(per_send, ctx.send_counts, ctx.recv_counts, self.group)

    def _apply_gradients(self, ctx: LookupContext, got: torch.Tensor) -> None:
        """The owner's fused optimizer step on the received gradients."""
        if self.shard is None or self.frozen:
            return
        assert ctx.rows is not None  # noqa: S101 - lookup ran
        uniq, summed = sum_per_row(ctx.rows, got)
        self.shard.optimizer.update(self.shard.weight, uniq, summed.to(self.shard.weight.dtype),
                                    self.shard.index.row_extent)
