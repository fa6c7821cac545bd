"""The whole training step as one CUDA graph: lookups, dense forward/backward, the fused sparse
backward + optimizer update of every table, and the dense optimizer step.

Owns :class:`StepGraph`: when it applies, how it is captured and replayed, and the host-side
bookkeeping a replay must redo (step counters, "rows used" flags, the periodic device-error
check of the fast path). The host then only copies the batch into the graph's static inputs
and launches one graph per step.

It applies when every table of the step runs the sync-free fused path
(:mod:`terarec.embedding.fast_path`) with an update rule whose step size is the learning rate
alone (SGD, MomentumSGD, Nesterov, AdaGrad, Ftrl), the dense optimizer is SGD (or there is
none) and the dense weights are not frozen. In a data-parallel step every table must take the
fixed-size slot exchange (:mod:`terarec.distributed.slot_exchange`: its all-to-alls have sizes
known on the host), and the graph also records the gradient all-reduce and the global loss
(NCCL collectives captured after the eager warm-up steps). That data-parallel capture is opt-in
(``TERAREC_DP_STEP_GRAPH=1``): on 2-4 H200 it gave +4% (8.29M vs 7.98M samples/s per GPU) but
its 2-GPU equivalence test did not finish on the device yet; by default a data-parallel step
keeps the dense-only graph. The ranks keep their captured graphs only if every rank captured
one (a flag all-reduced once per capture); otherwise all of them continue without. The
learning rate
lives in a 0-dim float32 device tensor that :meth:`StepGraph.set_learning_rate` fills, so
replays follow the schedule. Anything else (another batch shape, an epoch's short last batch,
Adam) runs the eager step or the dense-only graph of :class:`~terarec.training.engine.Engine`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from terarec.data.batch import Batch
from terarec.embedding import fast_path
from terarec.sparse import SparseInput

# Sparse rules whose per-step size is lr alone (Adam's also depends on the step number).
_SPARSE_RULES = {"SGD", "MomentumSGD", "Nesterov", "AdaGrad", "Ftrl"}
_DENSE_RULES = {"SGD"}
WARMUP_STEPS = 2  # eager steps of a shape before its capture (kernel compilation, row init)


def _shape_key(batch: Batch) -> tuple:
    return (tuple(batch.labels.shape), batch.labels.dtype, tuple(batch.dense.shape),
            batch.dense.dtype, batch.rank_batch_sizes,
            tuple((n, tuple(sp.keys.shape), sp.keys.dtype, tuple(sp.offsets.shape), sp.slot_num,
                   sp.rank_batch_sizes)
                  for n, sp in sorted(batch.sparse.items())))


def _local_table(table: Any) -> Any:
    """The single-device table a step updates on this rank: the table itself, the shard of a
    sharded table (None on a rank that holds no part of it)."""
    return table.shard if hasattr(table, "placement") else table


def _exchange_applies(table: Any, sparse: SparseInput) -> bool:
    """A sharded table whose step is the sync-free fixed-size slot exchange with the fused
    kernels (:mod:`terarec.distributed.slot_exchange`)."""
    check = getattr(table, "fixed_exchange_applies", None)
    if check is None or not check(sparse):
        return False
    return table.shard is None or fast_path.rule_applies(table.shard)


def _all_ranks_agree(ok: bool, device: torch.device) -> bool:
    """``ok`` on every rank of the default process group (one all-reduce; ``ok`` itself
    without a group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class StepGraph:
    """Captures and replays the full training step of an engine (see the module docstring).

    Args:
        engine: the :class:`~terarec.training.engine.Engine` whose step is captured.
        forward: ``forward(batch) -> NetworkOutput`` of the engine (embeddings + network,
            under the engine's precision), called once during the capture.
    """

    def __init__(self, engine: Any, forward: Callable[[Batch], Any]) -> None:
        self.engine = engine
        self.forward = forward
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: tuple | None = None
        self.static: Batch | None = None
        self.out: Any = None
        self.lr: torch.Tensor | None = None
        self.warm: dict[tuple, int] = {}
        self.disabled = False
        self.replays = 0
        self.fingerprint: tuple = ()
        self.reported: torch.Tensor | None = None  # the (data-parallel: global) loss

    def _local_tables(self) -> list[Any]:
        """The single-device tables the graph updates (the shard of a sharded table)."""
        tables = (_local_table(t) for t in self.engine.tables.values())
        return [t for t in tables if t is not None]

    # ------------------------------------------------------------------ eligibility
    def applies(self, batch: Batch) -> bool:
        e = self.engine
        if self.disabled or e.device.type != "cuda" or e.dense_frozen:
            return False
        opt = e.dense_optimizer
        if opt is not None and getattr(opt, "optimizer_type", None) not in _DENSE_RULES:
            return False
        if opt is not None and getattr(opt, "scaler", 1.0) != 1.0:
            return False
        data_parallel = e.grad_sync is not None or e.loss_sync is not None
        if data_parallel and os.environ.get("TERAREC_DP_STEP_GRAPH", "0") != "1":
            return False
        for name, table in e.tables.items():
            sparse = batch.sparse.get(e.table_inputs[name])
            if not isinstance(sparse, SparseInput) or not sparse.keys.is_cuda or table.frozen:
                return False
            if not (_exchange_applies(table, sparse) if data_parallel
                    else fast_path.applies(table, sparse)):
                return False
            local = _local_table(table)
            if local is not None and local.optimizer.config.type not in _SPARSE_RULES:
                return False
        return True

    def _fingerprint(self) -> tuple:
        """Addresses of every tensor the graph updates: a weight or state replaced since the
        capture (a loaded checkpoint, say) makes the graph stale."""
        e = self.engine
        ptrs = [p.data_ptr() for p in e.network.dense_weights()]
        for table in self._local_tables():
            ptrs.append(table.weight.data_ptr())
            ptrs.extend(s.data_ptr() for s in table.optimizer.states)
        if e.dense_optimizer is not None:
            ptrs.extend(t.data_ptr() for t in e.dense_optimizer.state_tensors_in_file_order())
        return tuple(ptrs)

    def set_learning_rate(self, lr: float) -> None:
        if self.lr is not None:
            self.lr.fill_(float(lr))

    # ------------------------------------------------------------------ the step
    def step(self, batch: Batch) -> torch.Tensor | None:
        """Run ``batch``'s training step through the graph; None when it does not apply (the
        caller then runs the eager step, which also serves as the capture's warm-up)."""
        if not self.applies(batch):
            return None
        key = _shape_key(batch)
        if self.graph is not None and self._fingerprint() != self.fingerprint:
            self.reset()
        if self.graph is None or key != self.key:
            seen = self.warm.get(key, 0)
            if seen < WARMUP_STEPS:
                self.warm[key] = seen + 1
                return None
            if self.graph is not None:  # one captured shape at a time
                return None
            if not self._capture(batch, key):
                return None
        else:
            self._copy_in(batch)
            self.graph.replay()
        self._after_replay()
        return self.reported.clone()

    def _copy_in(self, batch: Batch) -> None:
        assert self.static is not None  # noqa: S101 - set by _capture
        self.static.labels.copy_(batch.labels, non_blocking=True)
        self.static.dense.copy_(batch.dense, non_blocking=True)
        for name, sp in batch.sparse.items():
            dst = self.static.sparse[name]
            dst.keys.copy_(sp.keys, non_blocking=True)
            dst.offsets.copy_(sp.offsets, non_blocking=True)

    def _after_replay(self) -> None:
        """Host state a replay does not advance by itself."""
        e = self.engine
        self.replays += 1
        if self.replays == 1:  # the capture already advanced the counters once
            return
        if e.dense_optimizer is not None:
            e.dense_optimizer.t += 1
        for table in self._local_tables():
            table.optimizer.t += 1
            table.index._stale = True
            table._fast_steps = getattr(table, "_fast_steps", 0) + 1
            if table._fast_steps % fast_path.CHECK_EVERY == 0:
                fast_path.check_errors(table)
        for table in e.tables.values():
            exchange = getattr(table, "_exchange", None)
            if exchange is not None:
                exchange.count_step()

    def _capture(self, batch: Batch, key: tuple) -> bool:
        e = self.engine
        e.last_train = None  # a live autograd graph would break the capture
        self.lr = torch.full((), float(e.lr), dtype=torch.float32, device=e.device)
        opt = e.dense_optimizer
        saved_lr = [g["lr"] for g in opt.param_groups] if opt is not None else []
        for table in self._local_tables():
            table.lr_factor = self.lr
        self.static = Batch(batch.labels.clone(), batch.dense.clone(),
                            {n: SparseInput(sp.keys.clone(), sp.offsets.clone(), sp.slot_num,
                                            sp.rank_batch_sizes)
                             for n, sp in batch.sparse.items()}, batch.rank_batch_sizes)
        graph = torch.cuda.CUDAGraph()
        # step counters the capture's host code advances (restored if the graph is dropped)
        counters = [(o, o.t) for o in ([opt] if opt is not None else [])
                    + [t.optimizer for t in self._local_tables()]]
        try:
            if opt is not None:
                opt.zero_grad(set_to_none=True)
                for g in opt.param_groups:
                    g["lr"] = self.lr
            torch.cuda.synchronize(e.device)
            with torch.cuda.graph(graph):
                out = self.forward(self.static)
                loss = out.loss
                if loss.requires_grad:
                    loss.backward()
                if opt is not None:
                    if e.grad_sync is not None:  # data parallel: the all-reduce is recorded
                        e.grad_sync([p.grad for p in e.network.dense_weights()
                                     if p.grad is not None])
                    opt.step()
                reported = e.loss_sync(loss.detach()) if e.loss_sync is not None \
                    else loss.detach()
        except Exception as exc:  # noqa: BLE001 - any capture failure: stay on the eager path
            failure: Exception | None = exc
        else:
            failure = None
        finally:
            if opt is not None:
                for g, lr in zip(opt.param_groups, saved_lr):
                    g["lr"] = lr
        # Data parallel: the ranks replay their graphs (with the collectives in them) together
        # or none does: a rank whose capture failed would run eager collectives against the
        # others' replays and hang them.
        everyone = _all_ranks_agree(failure is None, e.device) \
            if e.grad_sync is not None or e.loss_sync is not None else failure is None
        if failure is not None or not everyone:
            why = failure if failure is not None else "another rank's capture failed"
            warnings.warn(f"CUDA graph capture of the whole training step failed ({why}); "
                          "training continues with the dense-only graph", stacklevel=4)
            self.disabled = True
            for table in self._local_tables():
                table.lr_factor = None
            for owner, t in counters:
                owner.t = t
            return False
        self.graph, self.key, self.out, self.reported = graph, key, out, reported
        self.fingerprint = self._fingerprint()
        graph.replay()  # the capture recorded the step; this runs it
        return True

    def reset(self) -> None:
        """Forget the captured step (network or tables changed)."""
        for table in self._local_tables():
            table.lr_factor = None
        self.graph, self.key, self.static, self.out, self.lr = None, None, None, None, None
        self.reported = None
        self.warm.clear()
        self.replays = 0
