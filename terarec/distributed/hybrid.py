"""Hybrid sharding (HugeCTR ``HybridSparseEmbedding``): frequent rows data-parallel, the rest
row-wise.

The table has two parts on every rank: ``hot``, a full replica of the frequent rows (as
:mod:`~terarec.distributed.replicated`), and ``shard``, this rank's row-wise slice of the other
rows (as :mod:`~terarec.distributed.row_wise`). The routed path of
:mod:`~terarec.distributed.routed` is reused by making every rank the owner of the hot keys
it looks up itself: they never leave the rank, the other keys go to their hash owner. In the
backward the hot keys' gradients (already summed per key and scaled by ``B_local / B_global``)
are all-gathered and every replica applies the same per-row sums, so replicas stay identical;
cold gradients go to their owners as in row-wise. Results equal the unsharded table exactly.

Which keys are hot (one fixed set, the same on every rank):

* ``hot_keys=[...]``: given by the user (e.g. from data statistics); hot from the first batch.
* otherwise measured: the first ``statistics_batches`` training batches run row-wise while each
  owner counts how often its keys are looked up (one extra all-to-all of counts per batch);
  before the next batch the ``max_hot`` most frequent keys (ties: smaller key first) are chosen
  and their rows, optimizer states and step move from their owners into every replica. The
  owners' old copies stay unused (not exported). This is HugeCTR's
  ``num_iterations_statistics`` / ``max_num_frequent_categories``.

The hot set does not change the numbers (each row lives in exactly one live place and gets
exactly the unsharded update), only the traffic. As in ``replicated``, a hot key first seen
by two ranks in different slots starts from the slot bound of the one it saw itself, which
matters only for per-slot init bounds (LocalizedSlot tables with ``slot_size_array``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from terarec.distributed import comm, state_format
from terarec.distributed.base import Arrays, _np_keys
from terarec.distributed.row_wise import RowWiseTable
from terarec.distributed.types import STRATEGIES, LookupContext
from terarec.embedding.config import TableConfig
from terarec.embedding.plan import TablePlacement
from terarec.embedding.table import EmbeddingTable, sum_per_row
from terarec.embedding.table_io import STEP_KEY
from terarec.errors import ConfigError
from terarec.sparse import SparseInput

#: Defaults of the measured hot set (HugeCTR's num_iterations_statistics is per job).
DEFAULT_STATISTICS_BATCHES = 20
DEFAULT_MAX_HOT = 1024


@STRATEGIES.register("hybrid")
class HybridTable(RowWiseTable):
    """Frequent keys replicated on every rank, the rest row-wise (see module docstring).

    Extra args (``ShardedEmbeddingCollection(options={name: {...}})``):
        hot_keys: the frequent keys (then nothing is measured).
        max_hot: how many keys to make hot when measuring (default :data:`DEFAULT_MAX_HOT`).
        statistics_batches: training batches counted before choosing them.
    """

    fusable = False  # its own hot-set exchange and statistics
    local_shortcut = False

    def __init__(self, config: TableConfig, placement: TablePlacement,
                 device: torch.device | str | None, generator: torch.Generator | None,
                 group: dist.ProcessGroup | None = None, hot_keys: Any = None,
                 max_hot: int | None = None,
                 statistics_batches: int = DEFAULT_STATISTICS_BATCHES) -> None:
        super().__init__(config, placement, device, generator, group)
        if sorted(placement.ranks) != list(range(self.world)):
            raise ConfigError(f"sharding plan, table {config.name!r}.ranks",
                              f"every rank 0..{self.world - 1} for a hybrid table",
                              placement.ranks)
        given = None if hot_keys is None else torch.unique(
            torch.as_tensor(_np_keys(hot_keys), device=self.device))
        self.max_hot = int(given.numel() if given is not None else (max_hot or DEFAULT_MAX_HOT))
        self.max_hot = max(1, min(self.max_hot, config.max_vocabulary_size))
        self.hot: EmbeddingTable = self._make_shard(self.max_hot, "hash")
        self.hot_keys = given if given is not None else torch.zeros(0, dtype=torch.int64,
                                                                     device=self.device)
        self._stat_left = 0 if given is not None else max(0, int(statistics_batches))
        self._choose_pending = self._stat_left == 0 and given is None
        self._counts = torch.zeros(0, dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ settings
    def set_learning_rate(self, lr: float) -> None:
        super().set_learning_rate(lr)
        self.hot.set_learning_rate(lr)

    @property
    def scaler(self) -> float:
        return self._scaler

    @scaler.setter
    def scaler(self, value: float) -> None:
        self._scaler = float(value)
        self.shard.scaler = value  # type: ignore[union-attr]
        self.hot.scaler = value

    def freeze(self) -> None:
        super().freeze()
        self.hot.freeze()

    def unfreeze(self) -> None:
        super().unfreeze()
        self.hot.unfreeze()

    def reset_state(self) -> None:
        super().reset_state()
        self.hot.reset_state()

    def set_step(self, step: int) -> None:
        """Step counter of both parts (after loading a checkpoint)."""
        self.shard.optimizer.t = int(step)  # type: ignore[union-attr]
        self.hot.optimizer.t = int(step)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", hot={self.hot_keys.numel()}/{self.max_hot}"

    # ------------------------------------------------------------------ placement
    def _is_hot(self, keys: torch.Tensor) -> torch.Tensor:
        return torch.isin(keys, self.hot_keys)

    def owner(self, keys: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        own = super().owner(keys, slots)
        return torch.where(self._is_hot(keys), torch.full_like(own, self.rank), own)

    # ------------------------------------------------------------------ phases
    def input_dist(self, sparse: SparseInput) -> LookupContext:
        if self._choose_pending:
            self._choose_hot()
        ctx = super().input_dist(sparse)
        if self._stat_left > 0 and torch.is_grad_enabled() and not self.frozen:
            hits = torch.bincount(ctx.key_to_send, minlength=ctx.send_keys.numel())
            ctx.extra["counts"] = comm.all_to_all_rows(hits, ctx.send_counts, ctx.recv_counts,
                                                       self.group)
            self._stat_left -= 1
            self._choose_pending = self._stat_left == 0
        return ctx

    def lookup(self, ctx: LookupContext) -> torch.Tensor:
        assert self.shard is not None  # noqa: S101 - every rank holds a slice
        hot = self._is_hot(ctx.recv_keys)
        cold = ~hot
        ctx.rows = self.shard.insert_keys(ctx.recv_keys[cold], slots=ctx.recv_slots[cold])
        hot_rows = self.hot.insert_keys(ctx.recv_keys[hot], slots=ctx.recv_slots[hot])
        ctx.extra["hot"] = hot
        out = self.shard.weight.new_empty(ctx.recv_keys.numel(), self.config.dim)
        out[cold] = self.shard.weight[ctx.rows]
        out[hot] = self.hot.weight[hot_rows]
        if "counts" in ctx.extra:
            if self._counts.numel() < self.shard.weight.shape[0]:
                extra = self.shard.weight.shape[0] - self._counts.numel()
                self._counts = torch.cat([self._counts, self._counts.new_zeros(extra)])
            self._counts.index_add_(0, ctx.rows, ctx.extra["counts"][cold])
        return out

    def _apply_gradients(self, ctx: LookupContext, got: torch.Tensor) -> None:
        assert self.shard is not None and ctx.rows is not None  # noqa: S101 - lookup ran
        hot = ctx.extra["hot"]
        if self.hot_keys.numel():  # collective on every rank, frozen or not
            ids = torch.stack([ctx.recv_keys[hot], ctx.recv_slots[hot]], 1)
            all_ids, sizes = comm.all_gather_rows(ids, group=self.group)
            all_grads, _ = comm.all_gather_rows(got[hot].contiguous(), sizes, self.group)
            rows = self.hot.insert_keys(all_ids[:, 0], slots=all_ids[:, 1])
            if not self.frozen:
                uniq, per_row = sum_per_row(rows, all_grads)
                self.hot.optimizer.update(self.hot.weight, uniq,
                                          per_row.to(self.hot.weight.dtype),
                                          self.hot.index.row_extent)
        if self.frozen:
            return
        uniq, summed = sum_per_row(ctx.rows, got[~hot])
        self.shard.optimizer.update(self.shard.weight, uniq, summed.to(self.shard.weight.dtype),
                                    self.shard.index.row_extent)

    # ------------------------------------------------------------------ choosing the hot set
    @torch.no_grad()
    def _choose_hot(self) -> None:
        """Collective: pick the ``max_hot`` most counted keys and move their rows into every
        replica (rows, optimizer states, LazyGlobal last steps, the step counter)."""
        self._choose_pending = False
        cold = self.shard
        assert cold is not None  # noqa: S101
        rows, keys = cold.index.rows(), cold.index.keys()
        counts = torch.zeros(rows.numel(), dtype=torch.int64, device=self.device)
        have = rows < self._counts.numel()
        counts[have] = self._counts[rows[have]]
        self._counts = self._counts[:0]
        cand = self._top(keys[counts > 0], counts[counts > 0])
        everyone, _ = comm.all_gather_rows(cand, group=self.group)
        chosen = self._top(everyone[:, 0], everyone[:, 1])[:, 0]
        self.hot_keys = torch.unique(chosen)
        mine = torch.isin(keys, self.hot_keys)
        r = rows[mine]
        opt = cold.optimizer
        ids = torch.stack([keys[mine], cold.row_slots[r]], 1)
        all_ids, sizes = comm.all_gather_rows(ids, group=self.group)
        values = [cold.weight[r], *(s[r] for s in opt.states)]
        if opt.lazy:
            values.append(opt.last_step[r].to(cold.weight.dtype).unsqueeze(1))
        flat = torch.cat(values, 1)
        all_vals, _ = comm.all_gather_rows(flat.contiguous(), sizes, self.group)
        hot_rows = self.hot.insert_keys(all_ids[:, 0], slots=all_ids[:, 1])
        dim = pos = self.config.dim
        self.hot.weight[hot_rows] = all_vals[:, :dim]
        for s in self.hot.optimizer.states:
            s[hot_rows] = all_vals[:, pos:pos + dim]
            pos += dim
        if opt.lazy:
            self.hot.optimizer.last_step[hot_rows] = all_vals[:, pos].round().to(torch.int64)
        self.hot.optimizer.t = opt.t

    def _top(self, keys: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """``[(key, count)]`` of the ``max_hot`` largest counts (ties: smaller key)."""
        k, c = keys.cpu().numpy(), counts.cpu().numpy()
        order = np.lexsort((k, -c))[: self.max_hot]
        return torch.as_tensor(np.stack([k[order], c[order]], 1).reshape(-1, 2),
                               dtype=torch.int64, device=self.device)

    # ------------------------------------------------------------------ files
    def local_export(self) -> Arrays:
        keys, vectors, slots = super().local_export()
        keep = ~np.isin(keys, self.hot_keys.cpu().numpy())
        keys, vectors, slots = keys[keep], vectors[keep], slots[keep]
        if self.rank == min(self.placement.ranks) and self.hot.num_keys:
            hk, hv, _ = self.hot.export()
            hs = self.hot.row_slots[self.hot.index.rows()].cpu().numpy().astype(np.uint64)
            keys, vectors = np.concatenate([keys, hk]), np.concatenate([vectors, hv])
            slots = np.concatenate([slots, hs])
        return keys, vectors, slots

    def local_optimizer_state(self) -> state_format.State:
        state = super().local_optimizer_state()
        keys = [v[0] for n, v in state.items() if n != STEP_KEY]
        if not keys:  # SGD: the step counter only
            return state
        state = state_format.select(state, ~np.isin(keys[0], self.hot_keys.cpu().numpy()))
        if self.rank != min(self.placement.ranks) or not self.hot.num_keys:
            return state
        hot = self.hot.optimizer_state()
        for name, (k, v) in state.items():
            if name != STEP_KEY:
                state[name] = (np.concatenate([k, hot[name][0]]),
                               np.concatenate([v, hot[name][1]]))
        return state

    def _split(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(hot, cold and owned here)`` masks of file keys."""
        k = torch.from_numpy(keys).to(self.device)
        hot = self._is_hot(k)
        owned = RowWiseTable.owner(self, k, k) == self.rank
        return hot.cpu().numpy(), (~hot & owned).cpu().numpy()

    def load(self, keys: Any, vectors: Any, slot_ids: Any = None) -> None:
        k = _np_keys(keys)
        v = vectors.detach().cpu().numpy() if torch.is_tensor(vectors) else np.asarray(vectors)
        v = v.reshape(k.size, self.config.dim)
        s = None if slot_ids is None else _np_keys(slot_ids)
        self._loaded = (k, s)
        for table, m in zip((self.hot, self.shard), self._split(k)):
            if table is not None and m.any():
                table.load(k[m], v[m], None if s is None else s[m])

    def load_optimizer_state(self, state: state_format.State) -> None:
        keys = [v[0] for n, v in state.items() if n != STEP_KEY]
        masks = self._split(_np_keys(keys[0])) if keys else (None, None)
        for table, m in zip((self.hot, self.shard), masks):
            if table is not None:
                table.load_optimizer_state(state if m is None else state_format.select(state, m))
