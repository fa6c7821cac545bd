"""Eviction bookkeeping of a hash :class:`~terarec.embedding.table.EmbeddingTable` with an
:class:`~terarec.embedding.config.EvictionPolicy` (reference path, plain torch, CPU and CUDA).

Owns :class:`EvictionState` (per-row last-used training step and lookup count, the totals) and
:func:`lookup_rows`, the rows of one lookup:

* training lookup (module in training mode, grad enabled, table not frozen), one *step*:
  the step counter advances; resident keys of the batch are touched (last used = this step,
  count += their lookups); new keys go through admission
  (:class:`~terarec.embedding.admission.PendingKeys`); ``ttl`` rows untouched for more than
  ``ttl_steps`` steps are evicted; if the admitted keys do not fit, rows are evicted by policy
  down to ``floor(target * capacity)`` rows (at least enough for them); then the admitted keys
  are inserted in first-seen order into the freed rows (lowest first) and past them. A reused
  row is initialised exactly as a fresh key's row (the table's initializer of the key and its
  slot) and its optimizer state is the fresh one. Rows used by the batch are never evicted;
  if resident + admitted keys of the batch alone exceed the capacity: CapacityError.
* any other lookup (evaluation, prediction, frozen table): keys are only looked up; nothing is
  admitted, evicted or counted.

Keys without a row (not yet admitted, or unknown at evaluation) are out-of-vocabulary: they
pool as a zero vector (``mean`` still divides by every key of the bag) and get no gradient
(:func:`drop_missing`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from terarec.embedding.admission import PendingKeys
from terarec.embedding.config import EvictionPolicy
from terarec.embedding.hash_index import _capacity_error, _first_positions
from terarec.embedding.init import slots_of_positions

if TYPE_CHECKING:
    from terarec.embedding.hash_index import RecyclingHashIndex
    from terarec.embedding.table import EmbeddingTable

# names of the eviction entries in table_io's optimizer-state dict
LAST_USED_KEY = "eviction_last_used"
COUNT_KEY = "eviction_count"
TOTALS_KEY = "__eviction__"
PENDING_KEY = "__eviction_pending__"
TOTALS = ("step", "evicted_total", "admitted_total", "rejected_lookups_total",
          "pending_forgotten_total")


class EvictionState:
    """Per-row recency and frequency of one table, the step counter and the totals.

    Args:
        policy: the table's eviction policy.
        capacity: the table's row capacity.
        rows: allocated rows (grown with :meth:`grow` as the table's weight grows).
        device: where the tensors live.
    """

    def __init__(self, policy: EvictionPolicy, capacity: int, rows: int,
                 device: torch.device) -> None:
        self.policy = policy
        self.capacity = int(capacity)
        self.last_used = torch.zeros(rows, dtype=torch.int64, device=device)
        self.counts = torch.zeros(rows, dtype=torch.int64, device=device)
        self.pending = PendingKeys(policy.pending_bound(capacity), device)
        self.step = 0
        self.evicted_total = 0
        self.admitted_total = 0
        self.rejected_lookups_total = 0

    # --- storage ---------------------------------------------------------------------------
    def grow(self, rows: int) -> None:
        extra = rows - self.last_used.numel()
        if extra > 0:
            self.last_used = torch.cat([self.last_used, self.last_used.new_zeros(extra)])
            self.counts = torch.cat([self.counts, self.counts.new_zeros(extra)])

    def apply_fn(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.last_used, self.counts = fn(self.last_used), fn(self.counts)
        self.pending.apply_fn(fn)

    def reset_rows(self, rows: torch.Tensor) -> None:
        """Rows that just got a key: last used now, no lookups yet."""
        self.last_used[rows] = self.step
        self.counts[rows] = 0

    def totals(self) -> dict[str, int]:
        return {"step": self.step, "evicted_total": self.evicted_total,
                "admitted_total": self.admitted_total,
                "rejected_lookups_total": self.rejected_lookups_total,
                "pending_forgotten_total": self.pending.forgotten_total}

    def load_totals(self, totals: dict[str, int]) -> None:
        self.step = int(totals["step"])
        self.evicted_total = int(totals["evicted_total"])
        self.admitted_total = int(totals["admitted_total"])
        self.rejected_lookups_total = int(totals["rejected_lookups_total"])
        self.pending.forgotten_total = int(totals["pending_forgotten_total"])

    # --- policy ----------------------------------------------------------------------------
    def victims(self, index: RecyclingHashIndex, protected: torch.Tensor, n_new: int,
                ) -> torch.Tensor:
        """Rows to evict before ``n_new`` keys are inserted; ``protected`` rows (the batch's)
        are never chosen. TTL expiry first, then the policy order while the table overflows."""
        live = index.rows()
        keep_out = torch.zeros(self.last_used.numel(), dtype=torch.bool, device=live.device)
        keep_out[protected] = True
        cand = live[~keep_out[live]]
        age = self.step - self.last_used[cand]
        expired = torch.empty(0, dtype=torch.int64, device=live.device)
        if self.policy.policy == "ttl":
            old = age > int(self.policy.ttl_steps or 0)
            expired, cand = cand[old], cand[~old]
        n_after = live.numel() - expired.numel()
        if n_after + n_new <= self.capacity:
            return expired
        keep = min(int(self.policy.target * self.capacity), self.capacity - n_new)
        n_evict = min(max(n_after - keep, 0), cand.numel())
        order = torch.argsort(index.keys_of(cand))  # ties: smaller key first
        order = order[torch.sort(self.last_used[cand[order]], stable=True).indices]
        if self.policy.policy == "lfu":
            order = order[torch.sort(self.counts[cand[order]], stable=True).indices]
        return torch.cat([expired, cand[order[:n_evict]]])


def drop_missing(rows: torch.Tensor, offsets: torch.Tensor, combiner: str,
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Remove out-of-vocabulary positions (row -1) from a CSR lookup.

    Returns ``(rows, offsets, key_weights)``: ``key_weights`` is None when no key is missing
    (pool with the table's combiner as usual), else the per-key weights of a ``sum`` pooling
    that gives the original combiner with the missing keys as zero vectors (``mean``: 1 / the
    bag's full key count).
    """
    valid = rows >= 0
    if bool(valid.all()):
        return rows, offsets, None
    lengths = offsets[1:] - offsets[:-1]
    bag = torch.repeat_interleave(torch.arange(lengths.numel(), device=rows.device), lengths,
                                  output_size=rows.numel())
    kept = torch.zeros_like(lengths).index_add_(0, bag[valid], torch.ones_like(bag[valid]))
    new_offsets = torch.cat([offsets[:1] * 0, torch.cumsum(kept, 0)])
    if combiner == "mean":
        weights = 1.0 / lengths[bag[valid]].clamp(min=1).to(torch.float32)
    else:
        weights = torch.ones(int(valid.sum()), dtype=torch.float32, device=rows.device)
    return rows[valid], new_offsets, weights


def is_training_lookup(table: EmbeddingTable) -> bool:
    """Whether a lookup is a training step of the table (admits, evicts and counts)."""
    return table.training and torch.is_grad_enabled() and not table.frozen


def lookup_rows(table: EmbeddingTable, keys: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Row of every key of a lookup (-1: out of vocabulary); a training step when
    :func:`is_training_lookup` (see the module docstring)."""
    keys = keys.to(device=table.device, dtype=torch.int64).reshape(-1)
    if not is_training_lookup(table):
        return table.index.lookup(keys)
    with torch.no_grad():
        return _training_rows(table, keys, offsets)


def _training_rows(table: EmbeddingTable, keys: torch.Tensor, offsets: torch.Tensor,
                   ) -> torch.Tensor:
    index: Any = table.index
    st: EvictionState = table.eviction
    st.step += 1
    uniq, inverse = torch.unique(keys, return_inverse=True)
    occ = torch.bincount(inverse, minlength=uniq.numel())
    rows_u = index.lookup(uniq)
    resident = rows_u >= 0
    new_u = torch.nonzero(~resident).squeeze(1)
    admitted = st.pending.observe(uniq[new_u], occ[new_u], st.step, st.policy.admit_after)
    st.rejected_lookups_total += int(occ[new_u[~admitted]].sum())
    new_u = new_u[admitted]
    n_resident, n_new = int(resident.sum()), new_u.numel()
    if n_resident + n_new > st.capacity:
        raise _capacity_error(table.name, st.capacity, n_resident + n_new)
    victims = st.victims(index, rows_u[resident], n_new)
    if victims.numel():
        index.remove_rows(victims)
        st.evicted_total += victims.numel()
    if n_new:
        first = _first_positions(inverse, uniq.numel())[new_u]
        first, order = torch.sort(first)
        new_u = new_u[order]
        slots = slots_of_positions(offsets.to(keys.device), first, table.config.slot_num)
        rows_u[new_u] = table.insert_keys(keys[first], slots=slots)
        st.admitted_total += n_new
    hit = rows_u >= 0
    st.last_used[rows_u[hit]] = st.step
    st.counts[rows_u[hit]] += occ[hit]
    return rows_u[inverse]


def occupancy(table: EmbeddingTable) -> dict[str, Any]:
    """Occupancy of a table: ``num_keys``, ``capacity``, ``fill`` (num_keys / capacity) and,
    with an eviction policy (else None): ``policy``, ``step`` (training lookups), the totals
    ``evicted_total``, ``admitted_total``, ``rejected_lookups_total`` (lookups of keys not yet
    admitted), ``pending_keys`` (keys counted for admission now) and
    ``pending_forgotten_total``."""
    cap = int(table.config.max_vocabulary_size)
    n = int(table.num_keys)
    out: dict[str, Any] = {"num_keys": n, "capacity": cap, "fill": n / cap if cap else 0.0}
    st: EvictionState | None = getattr(table, "eviction", None)
    if st is None:
        out.update({"policy": None, "pending_keys": None, **dict.fromkeys(TOTALS)})
    else:
        out.update({"policy": st.policy.policy, "pending_keys": len(st.pending), **st.totals()})
    return out


def state_arrays(table: EmbeddingTable) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The eviction state keyed by key (merged into :func:`table_io.optimizer_state`)."""
    st: EvictionState = table.eviction
    rows = table.index.rows()
    keys = table.index.keys().cpu().numpy().astype(np.int64)
    totals = np.array([st.totals()[k] for k in TOTALS], dtype=np.int64)
    return {
        LAST_USED_KEY: (keys, st.last_used[rows].cpu().numpy().astype(np.int64)),
        COUNT_KEY: (keys, st.counts[rows].cpu().numpy().astype(np.int64)),
        TOTALS_KEY: (np.zeros(0, dtype=np.int64), totals),
        PENDING_KEY: st.pending.state(),
    }


@torch.no_grad()
def load_state_arrays(table: EmbeddingTable,
                      state: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Restore :func:`state_arrays` (keys not in the table are skipped: they were evicted)."""
    st: EvictionState = table.eviction
    if TOTALS_KEY in state:
        st.load_totals(dict(zip(TOTALS, np.asarray(state[TOTALS_KEY][1]).reshape(-1).tolist())))
    for name, target in ((LAST_USED_KEY, st.last_used), (COUNT_KEY, st.counts)):
        if name not in state:
            continue
        keys, values = state[name]
        k = torch.as_tensor(np.asarray(keys, dtype=np.int64), device=table.device).reshape(-1)
        v = torch.as_tensor(np.asarray(values, dtype=np.int64), device=table.device).reshape(-1)
        rows = table.index.lookup(k)
        target[rows[rows >= 0]] = v[rows >= 0]
    if PENDING_KEY in state:
        st.pending.load_state(*state[PENDING_KEY])

