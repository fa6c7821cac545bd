"""GPU fast path of :class:`~terarec.embedding.table.EmbeddingTable`: fused Triton kernels.

Owns the lookup + fused backward/optimizer step of one-hot, direct-mapped tables on CUDA
(HugeCTR's ``LocalizedSlotSparseEmbeddingOneHot``, the MLPerf DLRM table), with no host
synchronisation in the step:

* rows = keys (direct index); every row of the table is initialised once, up front, with
  :func:`~terarec.embedding.init.init_vectors` and the slot its key range belongs to -- the
  same values the lazy first-sight initialisation of the reference path gives to a key of that
  slot (init is a pure function of key, slot and seed). "Used" rows are marked on the device
  (:meth:`~terarec.embedding.hash_index.DirectIndex.mark_used`), so ``num_keys`` and the
  exported keys are those of the reference path.
* forward: :func:`terarec.kernels.pooled_lookup` with hotness 1 (HugeCTR's one-hot contract:
  ``nnz == batch * slot_num``; other inputs take the reference path), writing bf16 directly
  under bf16 autocast.
* backward: :func:`terarec.kernels.fused_backward_update` -- per-row gradient sums and the
  optimizer rule in one pass, in place (SGD, MomentumSGD, Nesterov, AdaGrad, Adam, Ftrl with
  ``Local`` updates, and ``Global`` for rules whose zero-gradient step is a no-op).
* out-of-range keys (and rows without exactly one key) are clamped for the memory access and
  recorded in a device flag, raised as :class:`~terarec.errors.CapacityError` at the next
  check (every ``CHECK_EVERY`` steps, and when ``num_keys`` or ``export`` of the table is
  read).

The reference path (plain torch, :mod:`terarec.embedding.table`) stays the oracle; set
``TERAREC_KERNELS=torch`` (or ``use_triton(False)``) to force it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from terarec.errors import CapacityError

if TYPE_CHECKING:
    from terarec.embedding.table import EmbeddingTable

CHECK_EVERY = 64
# Tests may set this to run the path on CPU tensors through Triton's interpreter
# (TRITON_INTERPRET=1 and use_triton(True)).
ALLOW_CPU = False
_INIT_CHUNK = 1 << 19
# HugeCTR optimizer type -> fused kernel rule name.
_KERNEL_RULES = {"SGD": "sgd", "MomentumSGD": "momentumsgd", "Nesterov": "nesterov",
                 "AdaGrad": "adagrad", "Adam": "adam", "Ftrl": "ftrl"}


def rule_applies(table: EmbeddingTable) -> bool:
    """True when ``table``'s storage and optimizer run on the fused kernels (fp32 rows on a
    Triton device, a kernel rule, no lazy state), whatever its index or input."""
    if table.device.type != "cuda" and not ALLOW_CPU:
        return False
    if table.weight.dtype != torch.float32 or not table.config.slot_size_array:
        return False
    opt = table.optimizer
    if opt.config.type not in _KERNEL_RULES or opt.lazy:
        return False
    if opt.config.update_type == "Global" and opt.rule.zero_step_changes:
        return False
    from terarec.kernels import backend_for

    return backend_for(table.weight) == "triton"


def applies(table: EmbeddingTable, sparse: Any) -> bool:
    """True when ``table`` can run this input on the fused-kernel path."""
    if table.index_kind != "direct":
        return False
    from terarec.embedding.table import EmbeddingTable

    if type(table).insert_keys is not EmbeddingTable.insert_keys:  # subclasses own row creation
        return False
    if table.config.embedding_type != "LocalizedSlotSparseEmbeddingOneHot":  # one-hot contract
        return False
    if sparse.keys.numel() != sparse.offsets.numel() - 1:  # not one-hot: reference path
        return False
    return rule_applies(table)


@torch.no_grad()
def init_all_rows(table: EmbeddingTable) -> None:
    """Initialise every row (and its slot) as a first sight in its slot's key range would.

    Rows are keys, or for a shard of a sharded table (an index with ``to_global``) the rows
    of the global keys ``to_global(row)``, so a shard starts from the unsharded values."""
    from terarec.embedding.init import init_vectors

    dev = table.device
    sizes = torch.tensor(table.config.slot_size_array, dtype=torch.int64, device=dev)
    ends = torch.cumsum(sizes, 0)
    index = table.index
    to_global = getattr(index, "to_global", None)
    cap = table.weight.shape[0]
    for start in range(0, cap, _INIT_CHUNK):
        rows = torch.arange(start, min(cap, start + _INIT_CHUNK), device=dev)
        keys = rows if to_global is None else to_global(rows)
        slots = torch.searchsorted(ends, keys, right=True).clamp(max=sizes.numel() - 1)
        used = index._used[rows]  # rows the reference path already created keep their values
        fresh = init_vectors(keys, slots, table._bounds, table.config.dim, table.seed,
                             table.weight.dtype)
        table.weight[rows] = torch.where(used.unsqueeze(1), table.weight[rows], fresh)
        table.row_slots[rows] = torch.where(used, table.row_slots[rows], slots)
    table._fast_ready = True


def check_errors(table: EmbeddingTable) -> None:
    """Raise the out-of-range key error recorded on the device, if any (one host sync)."""
    flag = getattr(table, "_fast_oob", None)
    if flag is not None and bool(flag.any()):
        flag.zero_()
        raise CapacityError(
            f"embedding table {table.name!r} is one-hot and direct-mapped (exactly one key per "
            f"slot, keys in [0, {table.weight.shape[0]})) but got an input breaking that. "
            f"Check the slot offsets and hotness of the input, or enlarge the slot_size_array "
            f"/ use a hash embedding type.")


def _rows_of(table: EmbeddingTable, keys: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    keys = keys.to(device=table.device, dtype=torch.int64)
    cap = table.weight.shape[0]
    one_hot = torch.arange(offsets.numel(), device=offsets.device, dtype=torch.int64)
    bad = ((keys < 0) | (keys >= cap)).any() | (offsets != one_hot).any()
    if getattr(table, "_fast_oob", None) is None:
        table._fast_oob = torch.zeros((), dtype=torch.bool, device=table.device)
    table._fast_oob |= bad
    rows = keys.clamp(0, cap - 1)
    table.index.mark_used(rows)
    table._fast_steps = getattr(table, "_fast_steps", 0) + 1
    if table._fast_steps % CHECK_EVERY == 0 and not torch.cuda.is_current_stream_capturing():
        check_errors(table)
    return rows


def _out_dtype(device: torch.device) -> torch.dtype:
    if device.type == "cuda" and torch.is_autocast_enabled("cuda") \
            and torch.get_autocast_dtype("cuda") == torch.bfloat16:
        return torch.bfloat16
    return torch.float32


class FusedLookup(torch.autograd.Function):
    """forward: Triton pooled lookup; backward: Triton per-row sums + optimizer, in place.

    ``hotness``: 1 for the one-hot tables here, 0 (general CSR) for the hash tables of
    :mod:`terarec.embedding.fast_path_hash`.
    """

    @staticmethod
    def forward(ctx, anchor, table, rows, offsets, out_dtype, hotness):  # noqa: ANN001, ANN205
        from terarec.kernels import pooled_lookup

        ctx.table = table
        ctx.hotness = hotness
        ctx.save_for_backward(rows, offsets)
        return pooled_lookup(table.weight, rows, offsets, table.config.combiner == "mean",
                             out_dtype, hotness=hotness)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        rows, offsets = ctx.saved_tensors
        apply_fused_gradient(ctx.table, rows, offsets, grad_out, ctx.hotness)
        return None, None, None, None, None, None


@torch.no_grad()
def apply_fused_gradient(table: EmbeddingTable, rows: torch.Tensor, offsets: torch.Tensor,
                         grad_out: torch.Tensor, hotness: int = 1,
                         grad_weight: float = 1.0) -> None:
    """One fused backward + optimizer step of the rows looked up in the forward (no sync);
    ``grad_weight`` scales the gradient (a data-parallel rank's share of the global mean)."""
    if table.frozen:
        return
    from terarec.kernels import fused_backward_update

    opt = table.optimizer
    opt.t += 1
    cfg = opt.config
    # Under a whole-step CUDA graph the learning rate lives on the device (engine-owned
    # 0-dim float32) so that replays follow the schedule; rules with a step-dependent size
    # (Adam) are never captured that way.
    factor = getattr(table, "lr_factor", None)
    fused_backward_update(
        grad_out.reshape(-1, table.config.dim), rows, offsets,
        table.config.combiner == "mean", table.weight, opt.states,
        _KERNEL_RULES[cfg.type], 1.0 if factor is not None else opt.lr,
        momentum_factor=cfg.momentum_factor, beta1=cfg.beta1, beta2=cfg.beta2,
        epsilon=cfg.epsilon, lambda1=cfg.lambda1, lambda2=cfg.lambda2, step=opt.t,
        grad_scale=grad_weight / opt.scaler, hotness=hotness, return_unique=False, lr_factor=factor)


def forward(table: EmbeddingTable, sparse: Any) -> torch.Tensor:
    """Pooled ``[B*slots, dim]`` through the fused kernels (see :func:`applies`)."""
    if not getattr(table, "_fast_ready", False):
        init_all_rows(table)
    offsets = sparse.offsets.to(device=table.device, dtype=torch.int64)
    rows = _rows_of(table, sparse.keys, offsets)
    out_dtype = _out_dtype(table.device)
    if table.frozen or not torch.is_grad_enabled():
        from terarec.kernels import pooled_lookup

        return pooled_lookup(table.weight, rows, offsets, table.config.combiner == "mean",
                             out_dtype, hotness=1)
    anchor = torch.empty(0, device=table.device, requires_grad=True)
    return FusedLookup.apply(anchor, table, rows, offsets, out_dtype, 1)
