"""``SlotReplica``: the small slots of a slot-wise one-hot table, replicated on every rank.

Opt-in (``TERAREC_REPLICATE_SLOT_ROWS=<max rows>``; unset or ``0``: off, no code path change).
Owns, for one :class:`~terarec.distributed.slot_exchange.SlotExchange`, the slots ``s`` of the
table with ``slot_size_array[s] <= max rows``: a copy of their rows (weights and optimizer
states) on every rank of the exchange's group, so that the three all-to-alls of the exchange
carry only the other slots, and the replicated slots' gradients are summed with ONE dense
``all_reduce`` per step (``[R, dim + 1]`` fp32: per-row gradient sums and lookup counts).

* forward: the rows of the local samples' keys of the replicated slots (the Triton one-hot
  lookup where the fused path applies, else ``weight[rows]``), in the wire dtype of the
  exchanged vectors.
* backward: per-row sums of the local gradients (the fused backward's sync-free row sums where
  the fused path applies, else a deterministic ``index_put_`` accumulate),
  scaled as the exchange scales (``1/world`` for uniform batch sizes, ``b_local/total``
  otherwise), all-reduced, then the same optimizer step on every rank over all ``R`` rows.
  This equals updating only the touched rows only when the rule's zero-gradient step is an
  exact no-op on weights and states, so replication applies only to SGD and AdaGrad with a
  Local or Global update (``not rule.zero_step_changes``). Declined: rules whose zero step
  changes the row (Adam, momentum, Nesterov, RMSProp), Ftrl (its step recomputes the weight
  from ``z`` and ``n``, which would overwrite untouched initial rows) and LazyGlobal updates
  (per-row last-step bookkeeping).
* The owner's shard stays the table's record (checkpoints, export, ``num_keys``): after each
  update every rank copies the rows it owns (weights and states) into its shard and marks
  those with a non-zero all-reduced count as used (reference path: inserts them). Lookups
  without gradient (eval) of replicated slots are not marked in the owner's shard (the
  one-process table would create those rows at first sight; their values are the initial
  ones, so only ``num_keys`` / exported keys can differ after eval-only lookups).
* Rows start from the values the one-process table gives a key at first sight
  (:func:`~terarec.embedding.fast_path.init_all_rows` over the global keys), then a collective
  refresh overwrites them with the owners' used rows: at first use, and at the next forward
  after a checkpoint load of the table (:meth:`mark_stale`; loads are not collective, every
  rank must load).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

from terarec.distributed.shard_index import slot_ranges
from terarec.embedding import fast_path

if TYPE_CHECKING:
    from terarec.distributed.table_wise import TableWiseTable

ENV = "TERAREC_REPLICATE_SLOT_ROWS"
#: rules whose zero-gradient step is an exact no-op on weights and states
_RULES = ("SGD", "AdaGrad")


def max_rows_from_env() -> int:
    """``TERAREC_REPLICATE_SLOT_ROWS`` (0 when unset / empty)."""
    raw = os.environ.get(ENV, "").strip()
    return int(raw) if raw else 0


def replicated_slots(table: TableWiseTable, max_rows: int | None = None) -> list[int]:
    """Slots of ``table`` to replicate (empty: no replication, see module docstring)."""
    max_rows = max_rows_from_env() if max_rows is None else max_rows
    if max_rows <= 0:
        return []
    opt = table.config.optimizer
    from terarec.optim.rules import get_rule

    if opt.type not in _RULES or get_rule(opt.type).zero_step_changes \
            or opt.update_type not in ("Local", "Global"):
        return []
    sizes = [int(n) for n in table.config.slot_size_array]
    return [s for s, n in enumerate(sizes) if n <= max_rows]


class SlotReplica:
    """Replicated rows of ``slots`` of a slot-wise one-hot table (see module docstring)."""

    def __init__(self, table: TableWiseTable, slots: list[int],
                 group: dist.ProcessGroup | None = None) -> None:
        cfg = table.config
        self.table = table
        self.group = group
        self.slots = list(slots)
        self.dim = cfg.dim
        dev = table.device
        sizes = [int(n) for n in cfg.slot_size_array]
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        to_local, to_global, cap = slot_ranges(sizes, self.slots, dev)
        self.replica = table._make_shard(cap, "direct", (to_local, to_global))
        self.rows = sum(sizes[s] for s in self.slots)
        self.starts = torch.tensor([offsets[s] for s in self.slots], dtype=torch.int64,
                                   device=dev)
        self.sizes = torch.tensor([sizes[s] for s in self.slots], dtype=torch.int64, device=dev)
        self.bases = torch.cumsum(self.sizes, 0) - self.sizes
        self.slot_ids = torch.tensor(self.slots, dtype=torch.int64, device=dev)
        # rows of the replicated slots this rank owns: replica rows and shard rows
        ranks = table.placement.ranks
        owned = [s for s in self.slots if ranks[s % len(ranks)] == table.rank]
        rep_rows = [torch.arange(offsets[s], offsets[s + 1], dtype=torch.int64, device=dev)
                    for s in owned]
        keys = torch.cat(rep_rows) if rep_rows else torch.zeros(0, dtype=torch.int64,
                                                                device=dev)
        self.owned_keys = keys
        self.owned_slots = torch.cat([torch.full((offsets[s + 1] - offsets[s],), s,
                                                 dtype=torch.int64, device=dev)
                                      for s in owned]) if owned else keys.clone()
        self.owned_rep = to_local(keys) if keys.numel() else keys.clone()
        shard = table.shard
        if shard is None or not keys.numel():
            self.owned_shard = keys.clone()
        else:
            m = getattr(shard.index, "to_local", None)
            self.owned_shard = m(keys) if m is not None else keys.clone()
        self.stale = True
        self._range: torch.Tensor | None = None
        self._arange_r: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------ helpers
    def fast(self) -> bool:
        return fast_path.rule_applies(self.replica)

    def mark_stale(self) -> None:
        """Refresh from the owners' shards at the next forward (after a load)."""
        self.stale = True

    def _sync_settings(self) -> None:
        rep, t = self.replica, self.table
        rep.optimizer.lr = t._lr if t.shard is None else t.shard.optimizer.lr
        rep.optimizer.scaler = t._scaler if t.shard is None else t.shard.optimizer.scaler
        factor = getattr(t.shard, "lr_factor", None) if t.shard is not None else None
        if factor is not None:
            rep.lr_factor = factor

    def _all_rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._arange_r is None:
            dev = self.table.device
            self._arange_r = (torch.arange(self.rows, dtype=torch.int64, device=dev),
                              torch.arange(self.rows + 1, dtype=torch.int64, device=dev))
        return self._arange_r

    @torch.no_grad()
    def refresh(self) -> None:
        """Collective: every rank's replica = initial values, overwritten by the owners' used
        rows (weights + optimizer states) from their shards."""
        rep = self.replica
        rep._fast_ready = False
        rep.index._used.zero_()
        fast_path.init_all_rows(rep)  # the values of a first sight of each global key
        rep.optimizer.reset()
        states = rep.optimizer.states
        d = self.dim
        width = d * (1 + len(states)) + 1
        buf = torch.zeros(self.rows, width, dtype=torch.float32, device=self.table.device)
        shard = self.table.shard
        if shard is not None and self.owned_keys.numel():
            used = shard.index._used[self.owned_shard]
            parts = [shard.weight[self.owned_shard].float()]
            parts += [s[self.owned_shard].float() for s in shard.optimizer.states]
            parts.append(torch.ones(self.owned_shard.numel(), 1, device=buf.device))
            vals = torch.cat(parts, 1) * used.unsqueeze(1).to(torch.float32)
            buf.index_copy_(0, self.owned_rep, vals)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        have = (buf[:, -1] > 0).unsqueeze(1)
        rep.weight.copy_(torch.where(have, buf[:, :d].to(rep.weight.dtype), rep.weight))
        for i, s in enumerate(states):
            s.copy_(torch.where(have, buf[:, d * (i + 1):d * (i + 2)].to(s.dtype), s))
        self.stale = False

    # ------------------------------------------------------------------ phases
    def rows_of(self, keys: torch.Tensor, slot_major_batch: int | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Replica rows of ``keys`` (sample-major over the replicated slots, or slot-major
        ``[slot][sample]`` for ``slot_major_batch`` samples) and a bool that any key is
        outside its slot's range."""
        n = len(self.slots)
        if slot_major_batch is not None:  # [slot][sample]: per-slot columns broadcast down
            k = keys.view(n, slot_major_batch)
            lo, size, base = (t[:, None] for t in (self.starts, self.sizes, self.bases))
        else:  # [sample][slot]
            k = keys.view(keys.numel() // max(1, n), n)
            lo, size, base = (t[None, :] for t in (self.starts, self.sizes, self.bases))
        bad = ((k < lo) | (k >= lo + size)).any()
        rows = (k - (lo - base)).clamp_(0, max(0, self.rows - 1))
        return rows.reshape(-1), bad

    def ensure_fresh(self) -> None:
        """Refresh now if stale (collective: every rank calls it at the same point)."""
        if self.stale:
            self.refresh()

    def lookup(self, rows: torch.Tensor, dtype: torch.dtype, out: torch.Tensor | None = None,
               out_rows: torch.Tensor | None = None) -> torch.Tensor:
        """Vectors of replica ``rows`` in ``dtype`` (refreshes first when stale), or written
        into rows ``out_rows`` of ``out`` (``[M, dim]``, which is returned)."""
        self.ensure_fresh()
        rep = self.replica
        if rows.numel() and self.fast():
            from terarec.kernels import pooled_lookup

            offsets = torch.arange(rows.numel() + 1, dtype=torch.int64, device=rows.device)
            return pooled_lookup(rep.weight, rows, offsets, False, dtype, hotness=1, out=out,
                                 out_rows=out_rows)
        vec = rep.weight[rows].to(dtype if out is None else out.dtype)
        if out is None:
            return vec
        return out.index_copy_(0, out_rows, vec) if out_rows is not None else \
            out[: vec.shape[0]].copy_(vec)

    def _local_sums(self, rows: torch.Tensor, grad: torch.Tensor, scale: float,
                    grad_rows: torch.Tensor | None = None) -> torch.Tensor:
        """``[R, dim + 1]`` float32: per replica row, ``scale`` x the sum of this rank's
        gradients (lookup i's: ``grad[i]``, or ``grad[grad_rows[i]]``) and (last column)
        whether this rank looked it up. Fused path: the sync-free per-row sums of the fused
        backward (``kernels.row_sums``: a 3-row slot's ~20k lookups per row split into chunks,
        the gradient read in place), scattered by their first ``R`` entries (at most ``R``
        distinct rows; the unused ones go to a trash row). Else the deterministic
        ``index_put_`` accumulate."""
        dev, d, n_rows = self.table.device, self.dim, self.rows
        if not (self.fast() and rows.numel()):
            if grad_rows is not None:
                grad = grad.reshape(-1, d).index_select(0, grad_rows)
            buf = torch.zeros(n_rows, d + 1, dtype=torch.float32, device=dev)
            vals = torch.cat([grad.to(torch.float32) * scale,
                              torch.ones(rows.numel(), 1, dtype=torch.float32, device=dev)], 1)
            return buf.index_put_((rows,), vals, accumulate=True)
        from terarec.kernels import row_sums

        uniq, sums, count = row_sums(grad, rows, grad_rows, num_rows=n_rows)
        m = min(uniq.numel(), n_rows)
        live = torch.arange(m, dtype=torch.int64, device=dev) < count
        dst = torch.where(live, uniq[:m], n_rows)
        vals = torch.cat([sums[:m] * scale, live.unsqueeze(1).to(torch.float32)], 1)
        ext = torch.zeros(n_rows + 1, d + 1, dtype=torch.float32, device=dev)
        return ext.index_put_((dst,), vals)[:n_rows]

    @torch.no_grad()
    def backward(self, rows: torch.Tensor, grad: torch.Tensor, scale: float,
                 step_before: int | None, grad_rows: torch.Tensor | None = None) -> None:
        """Sum the local gradients of ``rows`` per row (times ``scale``; lookup i's gradient is
        ``grad[i]``, or ``grad[grad_rows[i]]``), all-reduce, update every replica row on every
        rank, copy the owned rows into the shard. Collective."""
        d = self.dim
        buf = self._local_sums(rows, grad, scale, grad_rows)
        dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
        if self.table.frozen:
            return
        rep = self.replica
        self._sync_settings()
        if step_before is not None:
            rep.optimizer.t = step_before
        every, offsets = self._all_rows()
        g = buf[:, :d]
        if self.fast():
            fast_path.apply_fused_gradient(rep, every, offsets, g.contiguous(), hotness=1,
                                           grad_weight=1.0)
        else:
            rep.optimizer.update(rep.weight, every, g.to(rep.weight.dtype), self.rows)
        shard = self.table.shard
        if shard is None:
            return
        shard.optimizer.t = rep.optimizer.t
        if not self.owned_keys.numel():
            return
        touched = buf[:, d][self.owned_rep] > 0
        if fast_path.rule_applies(shard):
            if not getattr(shard, "_fast_ready", False):
                fast_path.init_all_rows(shard)
            shard.index._used[self.owned_shard] |= touched  # no host sync
            shard.index._stale = True
        else:
            pick = torch.nonzero(touched).squeeze(1)
            if pick.numel():
                shard.insert_keys(self.owned_keys[pick], slots=self.owned_slots[pick])
        shard.weight[self.owned_shard] = rep.weight[self.owned_rep].to(shard.weight.dtype)
        for s_dst, s_src in zip(shard.optimizer.states, rep.optimizer.states):
            s_dst[self.owned_shard] = s_src[self.owned_rep].to(s_dst.dtype)
