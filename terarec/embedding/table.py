"""``EmbeddingTable``: one single-process sparse embedding table with a fused sparse optimizer.

Owns lookup + pooling (``forward``) and the fused backward: a custom autograd Function whose
backward sums the gradient of every key per unique row and applies the table's optimizer to
those rows in place right there. The table weight is not an ``nn.Parameter`` and no dense
gradient of it is ever built; the dense optimizer never sees it.

Rows are created on first sight of a key (training and evaluation alike, as HugeCTR's hash
table does) and initialised by :mod:`terarec.embedding.init`. A hash table whose config has an
:class:`~terarec.embedding.config.EvictionPolicy` (terarec extension) instead admits, evicts
and counts rows in training lookups only, always on this reference path
(:mod:`terarec.embedding.eviction`); its keys without a row pool as zero vectors.
One optimizer step is applied per backward through the table; set the learning rate
(:meth:`set_learning_rate`) and loss ``scaler`` before the backward.

Saving and loading (HugeCTR's ``key`` / ``emb_vector`` / ``slot_id`` arrays and optimizer
states) is in :mod:`terarec.embedding.table_io`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from terarec.embedding import eviction as evict
from terarec.embedding import fast_path, fast_path_hash, table_io
from terarec.embedding.config import TableConfig
from terarec.embedding.hash_index import INDEX_TYPES, RecyclingHashIndex
from terarec.embedding.init import draw_seed, init_vectors, slots_of_positions
from terarec.embedding.sparse_optimizer import SparseOptimizer
from terarec.embedding.types import KeyIndex
from terarec.errors import ConfigError
from terarec.sparse import SparseInput

_MIN_ROWS = 1024
# Embedding types whose keys HugeCTR requires to be row numbers already (no hash table).
DIRECT_TYPES = ("LocalizedSlotSparseEmbeddingOneHot",)


def pool(weight: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
         combiner: str, key_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pool ``weight[rows]`` per CSR row: ``[len(offsets)-1, dim]``; empty rows give zeros.
    ``key_weights``: a weighted ``sum`` instead of ``combiner`` (see ``eviction.drop_missing``)."""
    if key_weights is not None:
        return F.embedding_bag(rows, weight, offsets, mode="sum", include_last_offset=True,
                               per_sample_weights=key_weights.to(weight.dtype))
    return F.embedding_bag(rows, weight, offsets, mode=combiner, include_last_offset=True)


def key_gradients(grad_out: torch.Tensor, offsets: torch.Tensor, nnz: int,
                  combiner: str) -> torch.Tensor:
    """Gradient of each looked-up key ``[nnz, dim]`` from the pooled gradient ``[rows, dim]``."""
    lengths = offsets[1:] - offsets[:-1]
    if combiner == "mean":
        grad_out = grad_out / lengths.clamp(min=1).to(grad_out.dtype).unsqueeze(1)
    if not offsets.is_cuda and nnz == lengths.numel() and bool((lengths == 1).all()):
        return grad_out  # one key per bag: the pooled gradient is the key gradient
    seg = torch.repeat_interleave(
        torch.arange(lengths.numel(), device=offsets.device), lengths, output_size=nnz
    )
    return grad_out[seg]


def sum_per_row(rows: torch.Tensor, grads: torch.Tensor,
                n_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Unique rows (ascending) and the sum of their key gradients (deterministic on CUDA too).
    ``n_rows``: rows are < n_rows; on CPU a small table then skips the sort (a row map)."""
    if not rows.is_cuda and n_rows is not None and n_rows <= 4 * rows.numel() + 65536:
        uniq, inverse = _unique_by_map(rows, n_rows)
    else:
        uniq, inverse = torch.unique(rows, return_inverse=True)
    summed = torch.zeros(uniq.numel(), grads.shape[1], dtype=grads.dtype, device=grads.device)
    if grads.is_cuda:
        summed.index_put_((inverse,), grads, accumulate=True)  # sort-based: deterministic
    else:  # CPU index_add_ is deterministic too, and ~8x faster than index_put_ there
        summed.index_add_(0, inverse, grads)
    return uniq, summed


def _unique_by_map(rows: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(rows, return_inverse=True)`` for rows in [0, n_rows) through a used-row
    map instead of a sort (CPU: O(n_rows + nnz) memory passes)."""
    used = torch.zeros(n_rows, dtype=torch.bool, device=rows.device)
    used[rows] = True
    uniq = used.nonzero().squeeze(1)
    pos = torch.empty(n_rows, dtype=torch.int64, device=rows.device)
    pos[uniq] = torch.arange(uniq.numel(), device=rows.device)
    return uniq, pos[rows]


class _LookupWithFusedUpdate(torch.autograd.Function):
    """forward: pooled lookup; backward: per-row gradient sum + in-place optimizer step."""

    @staticmethod
    def forward(ctx, anchor, table, rows, offsets, key_weights=None):  # noqa: ANN001, ANN205
        ctx.table = table
        ctx.key_weights = key_weights
        ctx.save_for_backward(rows, offsets)
        return pool(table.weight, rows, offsets, table.config.combiner, key_weights)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        rows, offsets = ctx.saved_tensors
        ctx.table.apply_gradient(rows, offsets, grad_out, ctx.key_weights)
        return None, None, None, None, None


class EmbeddingTable(nn.Module):
    """A sparse embedding table built from a :class:`TableConfig`.

    Args:
        config: what the table is.
        device: where its rows, optimizer states and index live.
        generator: seeds the per-key initial values (deterministic given the generator).
        index: ``"hash"``, ``"direct"`` or ``"auto"`` (direct only for HugeCTR's
            LocalizedSlotSparseEmbeddingOneHot, whose keys are row numbers by contract).

    Example:
        >>> from terarec.optim.config import OptimizerConfig
        >>> cfg = TableConfig("emb", "data", dim=4, slot_num=2, max_vocabulary_size=100,
        ...                   optimizer=OptimizerConfig(type="SGD"))
        >>> t = EmbeddingTable(cfg, generator=torch.Generator().manual_seed(0))
        >>> t(SparseInput.from_lists([[[1, 2], [3]]])).shape
        torch.Size([1, 2, 4])
    """

    def __init__(self, config: TableConfig, device: torch.device | str | None = None,
                 generator: torch.Generator | None = None, index: str = "auto") -> None:
        super().__init__()
        self.config = config
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        if index == "auto":
            index = "direct" if config.embedding_type in DIRECT_TYPES else "hash"
        if index not in INDEX_TYPES:
            raise ConfigError(f"EmbeddingTable {config.name!r} index", '"hash", "direct" or '
                              '"auto"', index)
        if config.eviction is not None and index != "hash":
            raise ConfigError(f"EmbeddingTable {config.name!r} index", '"hash" (or "auto") '
                              "for a table with an eviction policy", index)
        self.index_kind = index
        cap = config.max_vocabulary_size
        index_cls = RecyclingHashIndex if config.eviction is not None else INDEX_TYPES[index]
        self._index: KeyIndex = index_cls(cap, self.device, config.name)
        rows = cap if index == "direct" else min(cap, _MIN_ROWS)
        self.weight = torch.zeros(rows, config.dim, device=self.device)
        self.row_slots = torch.zeros(rows, dtype=torch.int64, device=self.device)
        self._bounds = torch.tensor(config.slot_init_bounds(), dtype=torch.float64)
        self.seed = draw_seed(generator)
        self.optimizer = SparseOptimizer(config.optimizer, config.dim, rows, self.device)
        self.eviction: evict.EvictionState | None = None
        if config.eviction is not None:
            self.eviction = evict.EvictionState(config.eviction, cap, rows, self.device)
        self.frozen = False

    # --- properties and settings -----------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def num_keys(self) -> int:
        fast_path.check_errors(self)
        return self._index.num_keys

    def check_errors(self) -> None:
        """Raise an error the GPU fast paths recorded on the device (a one-hot key out of
        range, more keys than the capacity) as :class:`~terarec.errors.CapacityError`; one
        flag read, no other work."""
        fast_path.check_errors(self)
        check = getattr(self._index, "check", None)
        if check is not None:
            check()

    @property
    def index(self) -> KeyIndex:
        return self._index

    @property
    def scaler(self) -> float:
        return self.optimizer.scaler

    @scaler.setter
    def scaler(self, value: float) -> None:
        if not value > 0:
            raise ConfigError(f"EmbeddingTable {self.name!r} scaler", "a positive number", value)
        self.optimizer.scaler = float(value)

    def set_learning_rate(self, lr: float) -> None:
        """Learning rate of the next sparse update (HugeCTR: from the solver / scheduler)."""
        self.optimizer.lr = float(lr)

    def freeze(self) -> None:
        """Stop updating the table (lookups keep working, no optimizer step)."""
        self.frozen = True

    def unfreeze(self) -> None:
        self.frozen = False

    def occupancy(self) -> dict:
        """Occupancy and admission / eviction totals (:func:`terarec.embedding.eviction.
        occupancy`): num_keys, capacity, fill, policy, step, evicted_total, admitted_total,
        rejected_lookups_total, pending_keys, pending_forgotten_total (None without a policy)."""
        return evict.occupancy(self)

    def reset_state(self) -> None:
        """Reset optimizer states and step counters; rows and keys stay."""
        self.optimizer.reset()

    def extra_repr(self) -> str:
        c = self.config
        return (f"name={c.name!r}, dim={c.dim}, combiner={c.combiner}, slots={c.slot_num}, "
                f"capacity={c.max_vocabulary_size}, optimizer={c.optimizer.type}/"
                f"{c.optimizer.update_type}, index={self.index_kind}, keys={self.num_keys}")

    # --- rows -------------------------------------------------------------------------------
    def _ensure_rows(self, n: int) -> None:
        have = self.weight.shape[0]
        if n <= have:
            return
        size = min(self.config.max_vocabulary_size, max(n, 2 * have))
        extra = size - have
        self.weight = torch.cat([self.weight, self.weight.new_zeros(extra, self.config.dim)])
        self.row_slots = torch.cat([self.row_slots, self.row_slots.new_zeros(extra)])
        self.optimizer.grow(size)
        if self.eviction is not None:
            self.eviction.grow(size)

    def insert_keys(self, keys: torch.Tensor, slots: torch.Tensor | None = None,
                    offsets: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of ``keys``; unknown keys get new initialised rows. The slot of a new key comes
        from ``slots`` (per key) or from the CSR ``offsets``; default slot 0."""
        keys = keys.to(device=self.device, dtype=torch.int64).reshape(-1)
        res = self._index.insert(keys)
        if res.new_rows.numel():
            self._ensure_rows(self._index.row_extent)
            if slots is not None:
                new_slots = slots.to(self.device, torch.int64).reshape(-1)[res.new_first_pos]
            elif offsets is not None:
                new_slots = slots_of_positions(offsets, res.new_first_pos, self.config.slot_num)
            else:
                new_slots = torch.zeros_like(res.new_rows)
            self._init_rows(res.new_rows, keys[res.new_first_pos], new_slots)
        return res.rows

    def _init_rows(self, rows: torch.Tensor, keys: torch.Tensor, slots: torch.Tensor) -> None:
        """Initial vectors of the new ``rows`` of ``keys`` first seen in ``slots``; with an
        eviction policy (rows are reused) also a fresh optimizer state and recency."""
        self.weight[rows] = init_vectors(keys, slots, self._bounds, self.config.dim, self.seed,
                                         self.weight.dtype)
        self.row_slots[rows] = slots
        if self.eviction is not None:
            self.optimizer.reset_rows(rows)
            self.eviction.reset_rows(rows)

    # --- forward / backward --------------------------------------------------------------------
    def forward(self, sparse: SparseInput) -> torch.Tensor:
        """Pooled vectors ``(batch, slot_num, dim)`` (``mean`` divides by each slot's nnz)."""
        if sparse.slot_num != self.config.slot_num:
            raise ConfigError(f"SparseEmbedding {self.name!r} input {self.config.input_name!r}",
                              f"slot_num={self.config.slot_num}", sparse.slot_num)
        key_weights = None
        if self.eviction is not None:  # reference path only (admission / eviction bookkeeping)
            offsets = sparse.offsets.to(device=self.device, dtype=torch.int64)
            rows = evict.lookup_rows(self, sparse.keys, offsets)
            rows, offsets, key_weights = evict.drop_missing(rows, offsets, self.config.combiner)
        elif fast_path.applies(self, sparse):  # CUDA: fused Triton lookup + backward/update
            out = fast_path.forward(self, sparse)
            return out.view(sparse.batch_size, self.config.slot_num, self.config.dim)
        elif fast_path_hash.applies(self, sparse):  # CUDA hash tables: Triton hash index
            out = fast_path_hash.forward(self, sparse)
            return out.view(sparse.batch_size, self.config.slot_num, self.config.dim)
        else:
            offsets = sparse.offsets.to(device=self.device, dtype=torch.int64)
            rows = self.insert_keys(sparse.keys, offsets=offsets)
        if self.frozen or not torch.is_grad_enabled():
            out = pool(self.weight, rows, offsets, self.config.combiner, key_weights)
        else:
            anchor = torch.empty(0, device=self.device, requires_grad=True)
            out = _LookupWithFusedUpdate.apply(anchor, self, rows, offsets, key_weights)
        return out.view(sparse.batch_size, self.config.slot_num, self.config.dim)

    @torch.no_grad()
    def apply_gradient(self, rows: torch.Tensor, offsets: torch.Tensor,
                       grad_out: torch.Tensor, key_weights: torch.Tensor | None = None) -> None:
        """Fused backward: per-row gradient sum and the optimizer step (called by autograd).
        ``key_weights``: the lookup was a weighted sum (see :func:`pool`)."""
        if self.frozen:
            return
        grad_out = grad_out.reshape(-1, self.config.dim).to(self.weight.dtype)
        if key_weights is None:
            grads = key_gradients(grad_out, offsets, rows.numel(), self.config.combiner)
        else:
            grads = key_gradients(grad_out, offsets, rows.numel(), "sum") \
                * key_weights.to(grad_out.dtype).unsqueeze(1)
        uniq, summed = sum_per_row(rows, grads, self.weight.shape[0])
        self.optimizer.update(self.weight, uniq, summed, self._index.row_extent)

    # --- device moves (.to / .cuda / .half act on the table's own tensors) ------------------------
    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True):  # noqa: ANN202
        super()._apply(fn, recurse)
        self.weight = fn(self.weight)
        self.row_slots = fn(self.row_slots)
        self.optimizer.apply_fn(fn)
        if self.eviction is not None:
            self.eviction.apply_fn(fn)
        for attr in ("_slot_keys", "_slot_rows", "_row_keys", "_used", "_live", "_free"):
            if hasattr(self._index, attr):
                setattr(self._index, attr, fn(getattr(self._index, attr)))
        self.device = self.weight.device
        self._index.device = self.device
        return self

    # --- files and state (see table_io) ----------------------------------------------------------
    def export(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """``(keys int64 [N], vectors float32 [N, dim], slot_ids uint64 [N] | None)`` in row
        order; ``slot_ids`` only for LocalizedSlot embeddings (HugeCTR's sparse model folder)."""
        fast_path.check_errors(self)
        return table_io.export(self)

    def load(self, keys: np.ndarray | torch.Tensor, vectors: np.ndarray | torch.Tensor,
             slot_ids: np.ndarray | torch.Tensor | None = None) -> None:
        """Overwrite the rows of ``keys`` (any order); unknown keys are inserted first."""
        table_io.load(self, keys, vectors, slot_ids)

    def optimizer_state(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{state name: (keys, values)}`` (see :func:`table_io.optimizer_state`)."""
        return table_io.optimizer_state(self)

    def load_optimizer_state(self, state: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        table_io.load_optimizer_state(self, state)

    def optimizer_state_bytes(self) -> bytes:
        """The flat ``{prefix}{i}_opt_sparse_{iter}.model`` content (implementation-defined)."""
        return table_io.optimizer_state_bytes(self)

    def load_optimizer_state_bytes(self, data: bytes, keys: np.ndarray | None = None) -> None:
        table_io.load_optimizer_state_bytes(self, data, keys)
