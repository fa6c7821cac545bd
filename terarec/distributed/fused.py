"""``FusedLookup``: the routed and replicated tables of a collection with one collective per phase.

Owns one step of every *fusable* table (``row_wise`` and ``table_wise``: routed; ``replicated``)
when a :class:`~terarec.distributed.collection.ShardedEmbeddingCollection` looks them up
together, instead of each table running its own collectives:

1. ``input_dist``: every routed table plans its (owner, key) requests locally
   (:meth:`RoutedTable.plan_send`, no communication); then ONE all-to-all of a small header
   (requests per table for each peer, this rank's batch size, and the distinct-key count of each
   replicated table) and ONE all-to-all of the keys of all tables, grouped by destination rank
   then table. Replicated tables look up locally.
2. ``lookup``: each owner reads its shards (per table, local).
3. ``output_dist``: ONE all-to-all of all looked-up vectors (flattened, by destination then
   table; tables may have different dims), pooled per table on the sample's rank.

Backward (one autograd node for the group): ONE all-to-all of the routed tables' per-key
gradients and, for the replicated tables, ONE all-gather of their (key, slot) ids and ONE of their
summed gradients; then every table's fused optimizer step. Every local computation is the one of
the per-table path (:mod:`~terarec.distributed.routed`, :mod:`~terarec.distributed.replicated`),
so results are identical; only the packing of the messages differs. Frozen tables take part in
the forward exchange only (as in the per-table path, they have no backward).

The split sizes of an exchange are read from the header (one host synchronisation per step for
all tables); the vector and gradient exchanges reuse them (no further synchronisation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from terarec.distributed import comm, overlap
from terarec.distributed.replicated import ReplicatedContext, ReplicatedTable
from terarec.distributed.routed import RoutedTable, SendPlan, first_positions, slots_of_keys
from terarec.distributed.types import LookupContext
from terarec.embedding.table import key_gradients, pool, sum_per_row
from terarec.sparse import SparseInput


def _starts(counts: list[int]) -> list[int]:
    out, acc = [], 0
    for c in counts:
        out.append(acc)
        acc += c
    return out


def _pack(parts: list[torch.Tensor], counts: list[list[int]]) -> torch.Tensor:
    """Flatten ``parts[t]`` (rows grouped by peer, ``counts[peer][t]`` rows each) into one 1-D
    buffer ordered by peer then table."""
    starts = [_starts([row[t] for row in counts]) for t in range(len(parts))]
    pieces = [parts[t][starts[t][p]:starts[t][p] + counts[p][t]].reshape(-1)
              for p in range(len(counts)) for t in range(len(parts))]
    return torch.cat(pieces)


def _unpack(flat: torch.Tensor, counts: list[list[int]], widths: list[int]) -> list[torch.Tensor]:
    """Inverse of :func:`_pack` on the receiving side: per table ``[sum_p counts[p][t], w_t]``."""
    out: list[list[torch.Tensor]] = [[] for _ in widths]
    pos = 0
    for row in counts:
        for t, w in enumerate(widths):
            n = row[t] * w
            out[t].append(flat[pos:pos + n].view(row[t], w))
            pos += n
    return [torch.cat(parts) if len(parts) > 1 else parts[0] for parts in out]


def _elems(counts: list[list[int]], widths: list[int]) -> list[int]:
    return [sum(row[t] * w for t, w in enumerate(widths)) for row in counts]


@dataclass
class _Step:
    """Everything one fused step keeps between forward and backward."""

    routed: list[RoutedTable]
    ctxs: list[LookupContext]
    send_counts: list[list[int]]  # [peer][table] requests this rank sent
    recv_counts: list[list[int]]  # [peer][table] requests this rank received
    vectors: list[torch.Tensor]
    repl: list[ReplicatedTable]
    rctxs: list[ReplicatedContext]
    repl_ids: list[torch.Tensor] = field(default_factory=list)  # [u, 2] (key, slot) per table
    repl_inv: list[torch.Tensor] = field(default_factory=list)  # key -> position in ids
    repl_sizes: list[list[int]] = field(default_factory=list)  # [peer][table] distinct keys
    batch_sizes: list[int] = field(default_factory=list)


@dataclass
class _Prefetched:
    """An ``input_dist`` issued ahead (:meth:`FusedLookup.prefetch`): the batch it belongs to,
    the plans, the counts (as :meth:`FusedLookup._header` returns them) and the keys in
    flight."""

    key: dict[str, overlap.InputKey]
    plans: list[SendPlan]
    send_c: list[list[int]]
    recv_c: list[list[int]]
    rest: list[list[int]]
    keys: comm.PendingRows | None


class _FusedPool(torch.autograd.Function):
    """forward: vectors back + pooling of every table; backward: all gradients in one go."""

    @staticmethod
    def forward(fctx, anchor, lookup, step):  # noqa: ANN001, ANN205
        fctx.lookup, fctx.step = lookup, step
        return tuple(lookup.exchange_and_pool(step))

    @staticmethod
    def backward(fctx, *grads):  # noqa: ANN001, ANN205
        fctx.lookup.backward(fctx.step, list(grads))
        return None, None, None


class FusedLookup:
    """Runs the fusable tables of a collection together (see module docstring).

    Args:
        tables: the fusable strategy modules, in collection order.
        group: the process group (default: the world).
    """

    def __init__(self, tables: list[torch.nn.Module], group: dist.ProcessGroup | None = None
                 ) -> None:
        self.routed = [t for t in tables if isinstance(t, RoutedTable)]
        self.repl = [t for t in tables if isinstance(t, ReplicatedTable)]
        self.group = group
        self.world = comm.world_size(group)
        self.device = (self.routed or self.repl)[0].device if (self.routed or self.repl) \
            else torch.device("cpu")
        self._pending: _Prefetched | None = None

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.routed] + [t.name for t in self.repl]

    # ------------------------------------------------------------------ forward
    def __call__(self, inputs: dict[str, SparseInput]) -> dict[str, torch.Tensor]:
        """``{table name: SparseInput}`` (every fusable table) -> ``{table name: pooled}``."""
        step = self.input_dist(inputs)
        step.vectors = [t.lookup(c) for t, c in zip(step.routed, step.ctxs)]
        train = torch.is_grad_enabled() and any(not t.frozen for t in self.routed + self.repl)
        if train:
            anchor = torch.empty(0, device=self.device, requires_grad=True)
            outs = _FusedPool.apply(anchor, self, step)
        else:
            outs = self.exchange_and_pool(step)
        return dict(zip(self.names, outs))

    def input_dist(self, inputs: dict[str, SparseInput]) -> _Step:
        pre = self._take_pending(inputs)
        if pre is not None:  # issued ahead for this very batch (see prefetch)
            plans, send_c, recv_c, rest = pre.plans, pre.send_c, pre.recv_c, pre.rest
            keys_back = pre.keys.wait() if pre.keys is not None else None
            rctxs: list[ReplicatedContext] = []
            repl_ids: list[torch.Tensor] = []
            repl_inv: list[torch.Tensor] = []
        else:
            plans = [t.plan_send(inputs[t.name]) for t in self.routed]
            rctxs, repl_ids, repl_inv = self._replicated_inputs(inputs)
            send_c, recv_c, rest = self._header(plans, repl_ids, inputs)
            keys_back = self._send_keys(comm.all_to_all_rows, plans, send_c, recv_c) \
                if plans else None
        n = len(plans)
        batch_sizes = [int(row[0]) for row in rest]
        ctxs = []
        if keys_back is not None:
            recv = _unpack(keys_back.reshape(-1), recv_c, [2] * n)
            for t, p in enumerate(plans):
                ctxs.append(RoutedTable.context(p, [r[t] for r in send_c], [r[t] for r in recv_c],
                                                recv[t], batch_sizes))
        return _Step(self.routed, ctxs, send_c, recv_c, [], self.repl, rctxs, repl_ids, repl_inv,
                     [row[1:] for row in rest], batch_sizes)

    def _replicated_inputs(self, inputs: dict[str, SparseInput]) -> tuple[
            list[ReplicatedContext], list[torch.Tensor], list[torch.Tensor]]:
        """The replicated tables' local lookups (rows inserted here) and their distinct
        (key, slot) ids."""
        rctxs, repl_ids, repl_inv = [], [], []
        for t in self.repl:
            ctx = ReplicatedContext(inputs[t.name].to(self.device))
            assert t.shard is not None  # noqa: S101 - every rank holds a replica
            ctx.rows = t.shard.insert_keys(ctx.sparse.keys,
                                           offsets=ctx.sparse.offsets.to(torch.int64))
            uniq, inv = torch.unique(ctx.rows, return_inverse=True)
            first = first_positions(inv, uniq.numel())
            sp = ctx.sparse
            repl_ids.append(torch.stack([sp.keys[first].to(torch.int64),
                                         slots_of_keys(sp)[first]], 1))
            repl_inv.append(inv)
            rctxs.append(ctx)
        return rctxs, repl_ids, repl_inv

    def _header(self, plans: list[SendPlan], repl_ids: list[torch.Tensor],
                inputs: dict[str, SparseInput]) -> tuple[list[list[int]], list[list[int]],
                                                         list[list[int]]]:
        """The one all-to-all of request counts (and batch sizes, replicated key counts) and
        its host read, the one synchronisation of the step: per peer, the counts this rank
        sends, those it receives, and the rest of the received row (batch size, then the
        replicated tables' distinct-key counts)."""
        batch = next(iter(inputs.values())).batch_size if inputs else 0
        w = self.world
        cols = [p.counts for p in plans]
        cols.append(torch.full((w,), batch, dtype=torch.int64, device=self.device))
        cols += [torch.full((w,), ids.shape[0], dtype=torch.int64, device=self.device)
                 for ids in repl_ids]
        header = torch.stack(cols, 1)
        got = comm.all_to_all_counts(header, self.group)
        both = torch.cat([header, got]).tolist()  # the one host sync of the step
        n = len(plans)
        return ([row[:n] for row in both[:w]], [row[:n] for row in both[w:]],
                [row[n:] for row in both[w:]])

    def _send_keys(self, exchange: Callable[..., Any], plans: list[SendPlan],
                   send_c: list[list[int]], recv_c: list[list[int]]) -> Any:
        """The keys all-to-all of every routed table (packed) through ``exchange``
        (``comm.all_to_all_rows``, or its ``_async`` form issued ahead)."""
        return exchange(_pack([p.send for p in plans], send_c).view(-1, 2),
                        [sum(r) for r in send_c], [sum(r) for r in recv_c], self.group)

    # ------------------------------------------------------------------ overlap
    @property
    def can_prefetch(self) -> bool:
        """Whether :meth:`prefetch` applies: routed tables only (a replicated table's
        ``input_dist`` inserts rows, which must not run before the previous update)."""
        return bool(self.routed) and not self.repl

    def prefetch(self, inputs: dict[str, SparseInput]) -> None:
        """Issue the ``input_dist`` of ``inputs`` (a later batch) ahead: the local plans, the
        counts all-to-all and the keys all-to-all without waiting. The forward of exactly
        these inputs uses it (see :mod:`~terarec.distributed.overlap`). Collective: every
        rank calls it at the same point."""
        self.drop_pending()
        if not self.can_prefetch:
            return
        plans = [t.plan_send(inputs[t.name]) for t in self.routed]
        send_c, recv_c, rest = self._header(plans, [], inputs)
        keys = self._send_keys(comm.all_to_all_rows_async, plans, send_c, recv_c)
        key = {name: overlap.input_key(sp) for name, sp in inputs.items()}
        self._pending = _Prefetched(key, plans, send_c, recv_c, rest, keys)

    def _take_pending(self, inputs: dict[str, SparseInput]) -> _Prefetched | None:
        pre = self._pending
        if pre is None or set(pre.key) != set(inputs) or not all(
                overlap.same_input(k, inputs[name]) for name, k in pre.key.items()):
            return None  # another batch (eval, a batch passed by hand): synchronous path
        self._pending = None
        return pre

    def drop_pending(self) -> None:
        """Forget an exchange issued ahead and never used (waits for it first)."""
        pre, self._pending = self._pending, None
        if pre is not None and pre.keys is not None:
            pre.keys.wait()

    def exchange_and_pool(self, step: _Step) -> list[torch.Tensor]:
        out = []
        if step.routed:
            dims = [t.config.dim for t in step.routed]
            flat = _pack([v.contiguous() for v in step.vectors], step.recv_counts)
            back = comm.all_to_all_rows(flat, _elems(step.recv_counts, dims),
                                        _elems(step.send_counts, dims), self.group)
            for t, ctx, b in zip(step.routed, step.ctxs, _unpack(back, step.send_counts, dims)):
                out.append(t.pool_received(ctx, b))
        for t, ctx in zip(step.repl, step.rctxs):
            sp = ctx.sparse
            pooled = pool(t.shard.weight, ctx.rows, sp.offsets.to(torch.int64),  # type: ignore[union-attr]
                          t.config.combiner)
            out.append(pooled.view(sp.batch_size, t.config.slot_num, t.config.dim))
        return out

    # ------------------------------------------------------------------ backward
    @torch.no_grad()
    def backward(self, step: _Step, grads: list[torch.Tensor]) -> None:
        n = len(step.routed)
        self._routed_backward(step, grads[:n])
        self._replicated_backward(step, grads[n:])

    def _routed_backward(self, step: _Step, grads: list[torch.Tensor]) -> None:
        live = [i for i, t in enumerate(step.routed) if not t.frozen]
        if not live:
            return
        per_send = [step.routed[i].send_gradients(step.ctxs[i], grads[i]) for i in live]
        send_c = [[row[i] for i in live] for row in step.send_counts]
        recv_c = [[row[i] for i in live] for row in step.recv_counts]
        dims = [step.routed[i].config.dim for i in live]
        got = comm.all_to_all_rows(_pack(per_send, send_c), _elems(send_c, dims),
                                   _elems(recv_c, dims), self.group)
        for i, g in zip(live, _unpack(got, recv_c, dims)):
            step.routed[i]._apply_gradients(step.ctxs[i], g)

    def _replicated_backward(self, step: _Step, grads: list[torch.Tensor]) -> None:
        live = [i for i, t in enumerate(step.repl) if not t.frozen]
        if not live:
            return
        total = sum(step.batch_sizes)
        ids, summed = [], []
        for i in live:
            t, ctx = step.repl[i], step.rctxs[i]
            sp, dim = ctx.sparse, t.config.dim
            grad = grads[i].reshape(-1, dim).to(torch.float32)
            per_key = key_gradients(grad, sp.offsets, sp.keys.numel(), t.config.combiner)
            s = torch.zeros(step.repl_ids[i].shape[0], dim, dtype=grad.dtype, device=grad.device)
            s.index_put_((step.repl_inv[i],), per_key, accumulate=True)
            s *= sp.batch_size / total if total else 0.0
            ids.append(step.repl_ids[i])
            summed.append(s)
        sizes = [[row[i] for i in live] for row in step.repl_sizes]
        dims = [step.repl[i].config.dim for i in live]
        all_ids, _ = comm.all_gather_rows(torch.cat(ids), [sum(r) for r in sizes], self.group)
        flat = torch.cat([s.reshape(-1) for s in summed])
        all_grads, _ = comm.all_gather_rows(flat, _elems(sizes, dims), self.group)
        id_parts = _unpack(all_ids.reshape(-1), sizes, [2] * len(live))
        grad_parts = _unpack(all_grads, sizes, dims)
        for i, idp, gp in zip(live, id_parts, grad_parts):
            t = step.repl[i]
            assert t.shard is not None  # noqa: S101
            rows = t.shard.insert_keys(idp[:, 0], slots=idp[:, 1])
            uniq, per_row = sum_per_row(rows, gp)
            t.shard.optimizer.update(t.shard.weight, uniq, per_row.to(t.shard.weight.dtype),
                                     t.shard.index.row_extent)
