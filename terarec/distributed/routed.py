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

from dataclasses import dataclass

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


def first_positions(inverse: torch.Tensor, num_unique: int) -> torch.Tensor:
    """Position of the first occurrence of each distinct value, given ``torch.unique``'s
    ``inverse`` (values in sorted order)."""
    n = inverse.numel()
    first = torch.full((num_unique,), n, dtype=torch.int64, device=inverse.device)
    return first.scatter_reduce_(0, inverse, torch.arange(n, device=inverse.device),
                                 reduce="amin")


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


@dataclass
class SendPlan:
    """This rank's requests of one batch before the exchange (see ``plan_send``)."""

    sparse: SparseInput
    send: torch.Tensor  # [n, 2] (key, slot), grouped by owner rank
    counts: torch.Tensor  # [world] requests per owner
    key_to_send: torch.Tensor  # position in ``send`` of every key of ``sparse``


class ExchangePool(torch.autograd.Function):
    """forward: vectors back to the samples' rank + pooling; backward: gradients to owners +
    the owner's fused optimizer step (``table._exchange_and_pool`` / ``table._backward``: the
    routed tables and the column-wise blocks)."""

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
    :meth:`owner` (and :attr:`owner_by_key`)."""

    fusable = True

    @property
    def owner_by_key(self) -> bool:
        """Whether the owner of a key never depends on its slot (then one request per key)."""
        return False

    def owner(self, keys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Owner rank of each key (seen in ``slots``)."""
        raise NotImplementedError

    def owns(self, keys: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        if slots is None:
            slots = torch.zeros_like(keys)
        return self.owner(keys, slots) == self.rank

    # ------------------------------------------------------------------ phases
    def plan_send(self, sparse: SparseInput) -> SendPlan:
        """The local half of ``input_dist`` (no communication): this rank's distinct
        (owner, key) requests grouped by owner, each with the slot of its first occurrence
        here (the fused collection packs many tables' plans into one exchange)."""
        sparse = sparse.to(self.device)
        keys = sparse.keys.to(torch.int64)
        slots = slots_of_keys(sparse)
        if self.owner_by_key:  # one request per distinct key
            uniq, inv = torch.unique(keys, return_inverse=True)
            first = first_positions(inv, uniq.numel())
            u_owner = self.owner(uniq, slots[first])
        else:  # one request per distinct (owner, key)
            owners = self.owner(keys, slots)
            _, key_inv = torch.unique(keys, return_inverse=True)
            pairs, inv = torch.unique(key_inv * self.world + owners, return_inverse=True)
            first = first_positions(inv, pairs.numel())
            u_owner = owners[first]
        if len(self.placement.ranks) > 1:
            perm = torch.argsort(u_owner, stable=True)
            inv_perm = torch.empty_like(perm)
            inv_perm[perm] = torch.arange(perm.numel(), device=perm.device)
            first, inv = first[perm], inv_perm[inv]
        send = torch.stack([keys[first], slots[first]], 1)
        counts = torch.bincount(u_owner, minlength=self.world)
        return SendPlan(sparse, send, counts, inv)

    @staticmethod
    def context(plan: SendPlan, send_counts: list[int], recv_counts: list[int],
                recv: torch.Tensor, batch_sizes: list[int]) -> LookupContext:
        """The lookup context of a plan once its keys were exchanged."""
        return LookupContext(
            sparse=plan.sparse, send_keys=plan.send[:, 0], send_slots=plan.send[:, 1],
            key_to_send=plan.key_to_send, send_counts=send_counts, recv_counts=recv_counts,
            recv_keys=recv[:, 0], recv_slots=recv[:, 1], batch_sizes=batch_sizes)

    def input_dist(self, sparse: SparseInput) -> LookupContext:
        plan = self.plan_send(sparse)
        header = torch.stack([plan.counts, torch.full_like(plan.counts,
                                                           plan.sparse.batch_size)], 1)
        got = comm.all_to_all_counts(header, self.group)
        both = torch.cat([header, got]).tolist()  # one host sync for both directions
        send_counts = [int(c) for c, _ in both[: self.world]]
        recv_counts = [int(c) for c, _ in both[self.world:]]
        recv = comm.all_to_all_rows(plan.send, send_counts, recv_counts, self.group)
        return self.context(plan, send_counts, recv_counts, recv,
                            [int(b) for _, b in both[self.world:]])

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
        return ExchangePool.apply(anchor, self, ctx, vectors)

    # ------------------------------------------------------------------ helpers
    def _exchange_and_pool(self, ctx: LookupContext, vectors: torch.Tensor) -> torch.Tensor:
        back = comm.all_to_all_rows(vectors.contiguous(), ctx.recv_counts, ctx.send_counts,
                                    self.group)
        return self.pool_received(ctx, back)

    def pool_received(self, ctx: LookupContext, back: torch.Tensor) -> torch.Tensor:
        """Pool the vectors of this rank's requests (``back``, aligned with ``send_keys``)
        per (sample, slot): ``[batch, slot_num, dim]``."""
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
        per_send = self.send_gradients(ctx, grad_out)
        return comm.all_to_all_rows(per_send, ctx.send_counts, ctx.recv_counts, self.group)

    def send_gradients(self, ctx: LookupContext, grad_out: torch.Tensor) -> torch.Tensor:
        """Gradient of every requested key (aligned with ``send_keys``), scaled by
        ``B_local / B_global``; no communication."""
        sp = ctx.sparse
        dim = self.config.dim
        grad = grad_out.reshape(-1, dim).to(torch.float32)
        per_key = key_gradients(grad, sp.offsets, sp.keys.numel(), self.config.combiner)
        per_send = torch.zeros(ctx.send_keys.numel(), dim, dtype=grad.dtype, device=grad.device)
        per_send.index_put_((ctx.key_to_send,), per_key, accumulate=True)
        per_send *= ctx.grad_weight
        return per_send

    def _apply_gradients(self, ctx: LookupContext, got: torch.Tensor) -> None:
        """The owner's fused optimizer step on the received gradients."""
        if self.shard is None or self.frozen:
            return
        assert ctx.rows is not None  # noqa: S101 - lookup ran
        uniq, summed = sum_per_row(ctx.rows, got)
        self.shard.optimizer.update(self.shard.weight, uniq, summed.to(self.shard.weight.dtype),
                                    self.shard.index.row_extent)
