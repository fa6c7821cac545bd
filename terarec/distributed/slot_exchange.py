"""``SlotExchange``: the fixed-size all-to-all of a slot-wise sharded one-hot table.

Owns one step of a ``table_wise`` table whose keys are row numbers (HugeCTR's
``LocalizedSlotSparseEmbeddingOneHot`` with its ``slot_size_array``, the MLPerf DLRM table)
whose input declares one key per slot (``TableConfig.hotness == 1``, from the
``DataReaderSparseParam``), when every rank's local batch size is known without communicating
(``SparseInput.rank_batch_sizes``, set by the data-parallel split).
Slot ``s`` lives on ``ranks[s mod len(ranks)]``, so what each rank sends to each owner is known
from the batch sizes alone: no (owner, key) de-duplication, no count exchange and no host
synchronisation, only three all-to-alls of fixed sizes per training step:

1. keys: rank ``r`` sends owner ``p`` the keys of ``p``'s slots for its ``b_r`` samples
   (sample-major, ``b_r x k_p`` keys);
2. vectors: each owner reads one row per received key (the fused Triton lookup on CUDA) and
   sends the vectors back in the same order; the sample's rank scatters them into
   ``[b, slot_num, dim]`` (bf16 on the wire under mixed precision);
3. gradients (backward): the same positions gathered from the output gradient go to the
   owners, which run their shard's sparse optimizer step once on everything they received
   (repeated keys across ranks are summed, as one process would).

Keys outside their slot's range (whole table on one rank: outside the table) are an error
(:class:`~terarec.errors.CapacityError`): at once on CPU, from a device flag checked every
``fast_path.CHECK_EVERY`` steps on CUDA (as the one-process fast path does). The reference twin
(plain torch: lazy row creation by ``insert_keys``, gather, ``sum_per_row`` + the optimizer's
update) runs wherever the fused kernels do not (CPU / gloo, other optimizers); both send the
same messages.

Opt-in (``TERAREC_SLOT_MAJOR_EXCHANGE=1``): the slot-major layout. Keys travel per owner as
``[slot][sample]``; the owner's vectors come back as point-to-point blocks
(:func:`~terarec.distributed.comm.exchange_blocks`) straight into a ``[slot_num, b, dim]``
buffer that the forward returns as its ``[b, slot_num, dim]`` view (the Triton interaction
reads it in place and writes its gradient in the same layout), so neither the gather of the
received vectors into (sample, slot) order nor the gather of the gradients into send order
runs; the gradients go to the owners as the same blocks. In a world of one
(``TERAREC_EXCHANGE_AT_ONE_RANK``) the owner's lookup writes that buffer itself.

Opt-in (``TERAREC_REPLICATE_SLOT_ROWS=<max rows>``): the slots with at most that many rows are
replicated on every rank (:class:`~terarec.distributed.slot_replica.SlotReplica`, for rules
whose zero-gradient step is a no-op); the all-to-alls then carry only the other slots and the
replicated slots' gradients go through one dense all-reduce.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
import torch.distributed as dist

from terarec.distributed import comm, overlap
from terarec.distributed.slot_replica import SlotReplica, replicated_slots
from terarec.embedding import fast_path
from terarec.embedding.table import DIRECT_TYPES, sum_per_row
from terarec.errors import CapacityError, ConfigError
from terarec.sparse import SparseInput

if TYPE_CHECKING:
    from terarec.distributed.table_wise import TableWiseTable

SLOT_MAJOR_ENV = "TERAREC_SLOT_MAJOR_EXCHANGE"


def slot_major_enabled() -> bool:
    """``TERAREC_SLOT_MAJOR_EXCHANGE`` set to anything but ``0`` (see module docstring)."""
    return os.environ.get(SLOT_MAJOR_ENV, "0").strip() not in ("", "0")


class _Step:
    """What one step keeps between forward and backward."""

    def __init__(self, batch: int, sizes: tuple[int, ...],
                 index: tuple[torch.Tensor, torch.Tensor], rows: torch.Tensor | None,
                 fast: bool) -> None:
        self.batch = batch
        self.sizes = sizes
        self.index, self.inverse = index  # send position <-> flat (sample, slot) position
        self.rows = rows  # local rows of the received keys (owner)
        self.fast = fast
        self.rep_rows: torch.Tensor | None = None  # replica rows of the replicated slots
        self.keys_ahead: comm.PendingRows | None = None  # the keys exchange, issued ahead


class _Layout(NamedTuple):
    """Static data of every received key position: its slot, its slot's key range
    ``[lo, hi)`` and the shift from key to local row."""

    slots: torch.Tensor
    lo: torch.Tensor
    hi: torch.Tensor
    shift: torch.Tensor


class _ExchangeFn(torch.autograd.Function):
    """forward: the pooled ``[b*slot_num, dim]``; backward: gradients to the owners + update."""

    @staticmethod
    def forward(fctx, anchor, exchange, step, keys):  # noqa: ANN001, ANN205
        fctx.exchange, fctx.step = exchange, step
        return exchange.forward_pass(step, keys)

    @staticmethod
    def backward(fctx, grad_out):  # noqa: ANN001, ANN205
        fctx.exchange.backward_pass(fctx.step, grad_out)
        return None, None, None, None


class SlotExchange:
    """The fixed-size exchange of one slot-wise ``TableWiseTable`` (see module docstring)."""

    def __init__(self, table: TableWiseTable, group: dist.ProcessGroup | None = None) -> None:
        cfg = table.config
        self.table = table
        self.group = group
        self.world = table.world
        self.rank = table.rank
        self.slot_num = cfg.slot_num
        self.dim = cfg.dim
        ranks = table.placement.ranks
        rep = replicated_slots(table)
        # the replicated slots (opt-in) never travel: the all-to-alls carry the others
        self.replica = SlotReplica(table, rep, group) if rep else None
        self.slots_of = [[s for s in range(cfg.slot_num)
                          if ranks[s % len(ranks)] == p and s not in rep]
                         for p in range(self.world)]
        owned = [s for s in range(cfg.slot_num) if ranks[s % len(ranks)] == self.rank]
        mine = self.slots_of[self.rank]
        sizes = [int(n) for n in cfg.slot_size_array]
        starts = [sum(sizes[:s]) for s in range(len(sizes))]
        dev = table.device
        self.mine = torch.tensor(mine, dtype=torch.int64, device=dev)
        self.starts = torch.tensor([starts[s] for s in mine], dtype=torch.int64, device=dev)
        self.sizes = torch.tensor([sizes[s] for s in mine], dtype=torch.int64, device=dev)
        mapped = getattr(table.shard.index, "to_local", None) if table.shard is not None \
            else None
        # local row of key k in my j-th slot = k - starts[j] + bases[j]
        if mapped is not None:  # the shard stacks the key ranges of all my slots
            owned_sizes = [sizes[s] for s in owned]
            self.bases = torch.tensor([sum(owned_sizes[:owned.index(s)]) for s in mine],
                                      dtype=torch.int64, device=dev)
        else:  # whole table on this rank: rows are keys, any key below the capacity (as in
            # the unsharded table)
            self.starts.zero_()
            self.sizes.fill_(int(cfg.max_vocabulary_size))
            self.bases = self.starts.clone()
        self._index: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._aranges: dict[int, torch.Tensor] = {}
        self._layouts: dict[int, _Layout] = {}
        self._oob: torch.Tensor | None = None
        self._steps = 0
        self._pending: tuple[overlap.InputKey, comm.PendingRows] | None = None
        self.slot_major = slot_major_enabled()  # opt-in layout (see module docstring)
        self._rep_index: dict[tuple[int, torch.device], torch.Tensor] = {}

    # ------------------------------------------------------------------ eligibility
    @staticmethod
    def eligible(table: Any) -> bool:
        """Whether ``table`` (a strategy module) is slot-wise one-hot: a direct-mapped table
        whose input declares one key per slot (``TableConfig.hotness == 1``), so every rank
        takes the same path whatever its batch holds."""
        cfg = table.config
        return ((table.world > 1 or not table.local_only)
                and table.placement.kind == "table_wise"
                and cfg.embedding_type in DIRECT_TYPES and cfg.hotness == 1
                and bool(cfg.slot_size_array) and len(cfg.slot_size_array) == cfg.slot_num)

    def applies(self, sparse: SparseInput) -> bool:
        """Whether every rank's batch size is known (then every rank takes this path); an
        input that breaks the declared one-hot layout is an error (on CUDA: at the next
        check of the device flag)."""
        sizes = sparse.rank_batch_sizes
        b = sparse.batch_size
        if sizes is None or len(sizes) != self.world or sizes[self.rank] != b \
                or sparse.slot_num != self.slot_num:
            return False
        one_hot = sparse.keys.numel() == b * self.slot_num
        if one_hot and sparse.offsets.device.type == "cpu":  # exact check, free on the host
            one_hot = bool(torch.equal(sparse.offsets, torch.arange(
                sparse.offsets.numel(), dtype=sparse.offsets.dtype)))
        if not one_hot:
            raise ConfigError(f"SparseEmbedding {self.table.name!r} input "
                              f"{self.table.config.input_name!r}",
                              "exactly one key per slot (its DataReaderSparseParam declares "
                              "nnz_per_slot=1, is_fixed_length=True)",
                              f"{sparse.keys.numel()} keys for {b} samples x "
                              f"{self.slot_num} slots")
        return True

    def _fast(self) -> bool:
        shard = self.table.shard
        return shard is not None and fast_path.rule_applies(shard)

    # ------------------------------------------------------------------ static layout
    def _send_index(self, b: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat (sample, slot) positions in send order (by owner, then sample, then slot; slot-
        major: by owner, then slot, then sample) and its inverse (send position of every flat
        position)."""
        got = self._index.get(b)
        if got is None:
            base = torch.arange(b, dtype=torch.int64, device=device).unsqueeze(1) * self.slot_num
            groups = [*self.slots_of, self.replica.slots if self.replica is not None else []]
            if self.slot_major:  # by owner, then slot, then sample
                base = base.reshape(1, -1)
            parts = [(base + torch.tensor(s, dtype=torch.int64, device=device).reshape(
                -1 if self.slot_major else 1, 1 if self.slot_major else -1)).reshape(-1)
                for s in groups if s]
            idx = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64,
                                                             device=device)
            inverse = torch.empty_like(idx)
            inverse[idx] = torch.arange(idx.numel(), dtype=torch.int64, device=device)
            got = self._index[b] = (idx, inverse)
        return got

    def _gather_rows(self, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``src[index]`` of ``[n, dim]`` rows: the Triton row gather of the one-hot lookup
        where it runs (bandwidth-bound), else ``index_select`` (its twin)."""
        from terarec.kernels import backend_for, pooled_lookup

        if backend_for(src) != "triton" or index.numel() == 0:
            return src.index_select(0, index)
        return pooled_lookup(src.contiguous(), index, self._arange(index.numel() + 1), False,
                             src.dtype, hotness=1)

    def _counts(self, step: _Step) -> tuple[list[int], list[int]]:
        send = [step.batch * len(s) for s in self.slots_of]
        recv = [n * int(self.mine.numel()) for n in step.sizes]
        return send, recv

    def _arange(self, n: int) -> torch.Tensor:
        """``arange(n)`` on the table's device (one-hot CSR offsets, the one-hot check)."""
        got = self._aranges.get(n)
        if got is None:
            got = self._aranges[n] = torch.arange(n, dtype=torch.int64,
                                                  device=self.table.device)
        return got

    def _layout(self, n: int, sizes: tuple[int, ...]) -> _Layout:
        """Per-position slot data of ``n`` received keys (from each rank ``r``, its ``sizes[r]``
        samples over my slots: sample-major, or slot-major in the slot-major layout)."""
        key = (n, sizes) if self.slot_major else n
        got = self._layouts.get(key)
        if got is None:
            k = max(1, int(self.mine.numel()))
            if self.slot_major:
                cols = torch.cat([self._arange(k).repeat_interleave(b) for b in sizes]) \
                    if n else self._arange(0)
            else:
                cols = self._arange(n) % k
            lo = self.starts[cols]
            got = self._layouts[key] = _Layout(self.mine[cols], lo, lo + self.sizes[cols],
                                               self.bases[cols] - lo)
        return got

    # ------------------------------------------------------------------ phases
    def __call__(self, sparse: SparseInput) -> torch.Tensor:
        """Pooled ``[b, slot_num, dim]`` of this rank's samples (collective)."""
        table = self.table
        sparse = sparse.to(table.device)
        b = sparse.batch_size
        fast = self._fast()
        step = _Step(b, tuple(int(n) for n in sparse.rank_batch_sizes or ()),
                     self._send_index(b, table.device), None, fast)
        if sparse.offsets.is_cuda:  # one-hot contract on the device (flag, no sync)
            self._flag((sparse.offsets != self._arange(sparse.offsets.numel())).any())
        keys = sparse.keys.to(torch.int64)
        step.keys_ahead = self._take_pending(sparse)
        if table.frozen or not torch.is_grad_enabled():
            out = self.forward_pass(step, keys)
        else:
            anchor = torch.empty(0, device=table.device, requires_grad=True)
            out = _ExchangeFn.apply(anchor, self, step, keys)
        self.count_step()
        if self.slot_major:  # the [slot_num, b, dim] buffer seen as [b, slot_num, dim]
            return out.view(self.slot_num, b, self.dim).permute(1, 0, 2)
        return out.view(b, self.slot_num, self.dim)

    # ------------------------------------------------------------------ overlap
    def prefetch(self, sparse: SparseInput) -> None:
        """Issue the keys all-to-all of ``sparse`` (a later batch, for which :meth:`applies`
        holds) without waiting; the forward of exactly this input uses it (see
        :mod:`~terarec.distributed.overlap`). Collective: every rank calls it at the same
        point."""
        self.drop_pending()
        key = overlap.input_key(sparse)
        sparse = sparse.to(self.table.device)
        b = sparse.batch_size
        step = _Step(b, tuple(int(n) for n in sparse.rank_batch_sizes or ()),
                     self._send_index(b, self.table.device), None, False)
        send_c, recv_c = self._counts(step)
        send = sparse.keys.to(torch.int64).index_select(0, step.index[:sum(send_c)])
        self._pending = (key, comm.all_to_all_rows_async(send, send_c, recv_c, self.group))

    def _take_pending(self, sparse: SparseInput) -> comm.PendingRows | None:
        if self._pending is None or not overlap.same_input(self._pending[0], sparse):
            return None  # another batch (eval, a batch passed by hand): synchronous path
        pending, self._pending = self._pending[1], None
        return pending

    def drop_pending(self) -> None:
        """Forget a keys exchange issued ahead and never used (waits for it first)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending[1].wait()

    def count_step(self) -> None:
        """One more step (also for a CUDA-graph replay); every ``fast_path.CHECK_EVERY`` steps
        the device error flag is read (outside a capture)."""
        self._steps += 1
        if self._steps % fast_path.CHECK_EVERY == 0 \
                and not torch.cuda.is_current_stream_capturing():
            self.check_errors()

    def forward_pass(self, step: _Step, keys: torch.Tensor) -> torch.Tensor:
        send_c, recv_c = self._counts(step)
        n_send = sum(send_c)
        send_idx = step.index[:n_send]
        rep_vec = None
        if self.replica is not None:  # replicated slots: local rows, no exchange
            rows, bad = self.replica.rows_of(keys.index_select(0, step.index[n_send:]),
                                             step.batch if self.slot_major else None)
            self._flag(bad)
            step.rep_rows = rows
            if self.slot_major:  # looked up straight into the slot-major buffer, below
                self.replica.ensure_fresh()
            else:
                rep_vec = self.replica.lookup(rows, self._wire_dtype())
        if step.keys_ahead is not None:  # issued with the previous step (prefetch)
            recv_keys, step.keys_ahead = step.keys_ahead.wait(), None
        else:
            recv_keys = comm.all_to_all_rows(keys.index_select(0, send_idx), send_c, recv_c,
                                             self.group)
        vectors = self._lookup(step, recv_keys)
        if self.slot_major:
            return self._vectors_to_slots(step, vectors, step.rep_rows)
        back = comm.all_to_all_rows(vectors.contiguous(), recv_c, send_c, self.group)
        if rep_vec is not None:
            back = torch.cat([back, rep_vec.to(back.dtype)])
        return self._gather_rows(back, step.inverse)  # back in (sample, slot) order

    def _blocks(self, step: _Step, buf: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """The owner's ``[rank][my slot][sample]`` rows of ``buf``, one ``[b_r, dim]`` block per
        (rank, slot), in that order."""
        k = int(self.mine.numel())
        out, pos = [], 0
        for r, b in enumerate(step.sizes):
            for _ in range(k):
                out.append((r, buf[pos:pos + b]))
                pos += b
        return out

    def _slot_blocks(self, step: _Step, buf: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """This rank's ``[slot_num, b, dim]`` buffer as one ``[b, dim]`` block per (owner,
        owner's slot), in that order."""
        return [(p, buf[s]) for p, slots in enumerate(self.slots_of) for s in slots]

    def _vectors_to_slots(self, step: _Step, vectors: torch.Tensor,
                          rep_rows: torch.Tensor | None) -> torch.Tensor:
        """Slot-major: every owner's vectors (and the replicated slots' own rows ``rep_rows``,
        ``[slot][sample]``, looked up in place) into this rank's ``[slot_num * b, dim]``
        buffer."""
        if self.world == 1 and rep_rows is None:  # my lookup is that buffer
            return vectors
        out = vectors.new_empty((self.slot_num, step.batch, self.dim))
        comm.exchange_blocks(self._blocks(step, vectors), self._slot_blocks(step, out),
                             self.group)
        flat = out.view(-1, self.dim)
        if rep_rows is not None:
            assert self.replica is not None  # noqa: S101 - rep_rows come from it
            self.replica.lookup(rep_rows, flat.dtype, out=flat,
                                out_rows=self._rep_pos(step.batch, out.device))
        return flat

    def _rep_pos(self, batch: int, device: torch.device) -> torch.Tensor:
        """Row of every replicated lookup (``[replicated slot][sample]``) in the slot-major
        ``[slot_num * batch, dim]`` buffer; made once per batch size (eagerly, before any
        capture of the same step; the slot numbers' host copy once per device)."""
        key = (batch, device)
        got = self._rep_index.get(key)
        if got is None:
            assert self.replica is not None  # noqa: S101 - callers check
            slots = self._rep_index.get((-1, device))
            if slots is None:
                slots = self._rep_index[(-1, device)] = torch.tensor(
                    self.replica.slots, dtype=torch.int64, device=device)
            got = (slots[:, None] * batch
                   + torch.arange(batch, dtype=torch.int64, device=device)[None, :]).reshape(-1)
            self._rep_index[key] = got
        return got

    def _grads_to_owners(self, step: _Step, grad: torch.Tensor) -> torch.Tensor:
        """Slot-major: the ``[slot_num * b, dim]`` gradient's blocks to their owners; returns
        what this rank owns, ``[rank][my slot][sample]`` (each sender's share scaled by
        ``b_r / total`` for uneven batch sizes)."""
        grad = grad.reshape(self.slot_num, step.batch, self.dim)  # no copy from the kernel
        if self.world == 1 and self.replica is None:
            return grad.reshape(-1, self.dim)
        got = grad.new_empty((sum(step.sizes) * int(self.mine.numel()), self.dim))
        blocks = self._blocks(step, got)
        comm.exchange_blocks(self._slot_blocks(step, grad), blocks, self.group)
        total = sum(step.sizes)
        if len(set(step.sizes)) != 1:
            for r, block in blocks:
                block.mul_(step.sizes[r] / total if total else 0.0)
        return got

    def _wire_dtype(self) -> torch.dtype:
        return fast_path._out_dtype(self.table.device)

    def _lookup(self, step: _Step, recv_keys: torch.Tensor) -> torch.Tensor:
        """The owner's vectors of the received keys (``[n, dim]``, in the wire dtype)."""
        shard = self.table.shard
        dtype = self._wire_dtype()
        if shard is None or recv_keys.numel() == 0:
            return torch.zeros(0, self.dim, dtype=dtype, device=self.table.device)
        rows = self._rows(recv_keys, step.sizes)  # range check (on the host: raises at once)
        if not step.fast:
            slots = self._layout(recv_keys.numel(), step.sizes).slots
            step.rows = shard.insert_keys(recv_keys, slots=slots)
            return shard.weight[step.rows].to(dtype)
        if not getattr(shard, "_fast_ready", False):
            fast_path.init_all_rows(shard)
        step.rows = rows
        shard.index.mark_used(rows)
        from terarec.kernels import pooled_lookup

        return pooled_lookup(shard.weight, step.rows, self._arange(recv_keys.numel() + 1), False,
                             dtype, hotness=1)

    def _rows(self, keys: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
        """Local rows of the received keys of my slots, range checked."""
        lay = self._layout(keys.numel(), sizes)
        self._flag(((keys < lay.lo) | (keys >= lay.hi)).any())
        rows = keys + lay.shift
        return rows.clamp_(0, self.table.shard.weight.shape[0] - 1)  # type: ignore[union-attr]

    def _flag(self, bad: torch.Tensor) -> None:
        if self._oob is None:
            self._oob = torch.zeros((), dtype=torch.bool, device=bad.device)
        self._oob |= bad
        if bad.device.type == "cpu":
            self.check_errors()

    def check_errors(self) -> None:
        """Raise the error recorded on the device, if any (one host sync)."""
        if self._oob is not None and bool(self._oob):
            self._oob.zero_()
            sizes = self.table.config.slot_size_array
            raise CapacityError(
                f"embedding table {self.table.name!r} is one-hot with slot_size_array={sizes}: "
                f"every sample needs exactly one key per slot, and slot s's key in "
                f"[sum(slot_size_array[:s]), sum(slot_size_array[:s+1])), but an input broke "
                f"that. Check the slot offsets and hotness of the input, or use a hash "
                f"embedding type.")

    @torch.no_grad()
    def backward_pass(self, step: _Step, grad_out: torch.Tensor) -> None:
        send_c, recv_c = self._counts(step)
        total = sum(step.sizes)
        uniform = len(set(step.sizes)) == 1
        if self.slot_major:
            got = self._grads_to_owners(step, grad_out)
            shard = self.table.shard
            before = shard.optimizer.t if shard is not None else None
            self._update(step, got, 1.0 / self.world if uniform else 1.0)
            if self.replica is not None:  # [slot][sample] rows, as rows_of read the keys
                scale = 1.0 / self.world if uniform else (step.batch / total if total else 0.0)
                self.replica.backward(step.rep_rows, grad_out.reshape(-1, self.dim), scale,
                                      before, self._rep_pos(step.batch, grad_out.device))
            return
        send = self._gather_rows(grad_out.reshape(-1, self.dim), step.index)
        rep_grad = None
        if self.replica is not None:
            n_send = sum(send_c)
            send, rep_grad = send[:n_send].contiguous(), send[n_send:]
        if not uniform:  # each sender weighs its own samples (B_local / B_global)
            send.mul_(step.batch / total if total else 0.0)
        got = comm.all_to_all_rows(send, send_c, recv_c, self.group)
        weight = 1.0 / self.world if uniform else 1.0
        shard = self.table.shard
        before = shard.optimizer.t if shard is not None else None
        self._update(step, got, weight)
        if self.replica is not None:  # one all-reduce, the same update on every rank
            scale = 1.0 / self.world if uniform else (step.batch / total if total else 0.0)
            self.replica.backward(step.rep_rows, rep_grad, scale, before)

    def _update(self, step: _Step, got: torch.Tensor, weight: float) -> None:
        """The owner's optimizer step on the received gradients."""
        shard = self.table.shard
        if shard is None or self.table.frozen:
            return
        if step.fast and got.shape[0]:
            fast_path.apply_fused_gradient(shard, step.rows, self._arange(got.shape[0] + 1), got,
                                           hotness=1, grad_weight=weight)
            return
        rows = step.rows if step.rows is not None else \
            torch.zeros(0, dtype=torch.int64, device=got.device)
        uniq, summed = sum_per_row(rows, got.to(torch.float32) * weight)
        shard.optimizer.update(shard.weight, uniq, summed.to(shard.weight.dtype),
                               shard.index.row_extent)
