"""Data-parallel glue: split a global batch over ranks, average dense gradients and losses.

HugeCTR's ``batchsize`` is global. Rank ``r`` of ``W`` takes the contiguous samples
``[b*r//W, b*(r+1)//W)`` of every global batch of ``b`` samples (an uneven last batch just
gives some ranks one sample fewer). Each rank's loss is the mean over its own samples, so the
global-mean gradient is the sum over ranks of ``(B_local / B_global) * local gradient``: dense
gradients are scaled by that weight and summed with one flat all-reduce (the embeddings apply
the same weight in their own backward). Training on W ranks therefore equals training one
process on the same global batches.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from terarec.distributed import comm


def local_range(global_batch: int, rank: int, world: int) -> tuple[int, int]:
    """Samples of ``rank`` in a global batch: ``[lo, hi)``."""
    return global_batch * rank // world, global_batch * (rank + 1) // world


class DataParallel:
    """Per-step bookkeeping of one rank.

    Args:
        group: process group (default: the world).
    """

    def __init__(self, group: dist.ProcessGroup | None = None) -> None:
        self.group = group
        self.rank = comm.rank(group)
        self.world = comm.world_size(group)
        self.weight = 1.0 / self.world  # B_local / B_global of the current step

    def rank_batch_sizes(self, global_batch: int) -> tuple[int, ...]:
        """Every rank's local batch size for a global batch of ``global_batch`` samples."""
        return tuple(hi - lo for lo, hi in (local_range(global_batch, r, self.world)
                                            for r in range(self.world)))

    def split(self, batch: Any) -> Any:
        """This rank's slice of a global batch (a :class:`~terarec.data.batch.Batch`),
        tagged with every rank's local batch size (no state changes: readers may split ahead
        of the step, on their own threads). :meth:`begin_step` takes the share from the tag."""
        n = int(batch.batch_size)
        lo, hi = local_range(n, self.rank, self.world)
        return batch.slice_samples(lo, hi).with_rank_batch_sizes(self.rank_batch_sizes(n))

    def begin_step(self, batch: Any) -> Any:
        """Set this step's share of the global mean from ``batch``'s tag; an untagged batch
        (passed by the caller as this rank's part) is taken as an even split, every rank with
        the same local batch size, and gets that tag."""
        sizes = getattr(batch, "rank_batch_sizes", None)
        if sizes is None:
            sizes = (int(batch.batch_size),) * self.world
            batch = batch.with_rank_batch_sizes(sizes)
        total = sum(sizes)
        self.weight = sizes[self.rank] / total if total else 0.0
        return batch

    def set_local_batch(self, local: int, device: torch.device | None = None) -> None:
        """Learn the share from the local batch size (one all-reduce) when not split here."""
        t = torch.tensor([float(local)], device=device)
        if self.world > 1:
            dist.all_reduce(t, group=self.group)
        self.weight = local / float(t) if float(t) else 0.0

    @torch.no_grad()
    def grad_sync(self, grads: list[torch.Tensor]) -> None:
        """Scale by this rank's share and sum over ranks (the Engine's ``grad_sync`` hook)."""
        if self.world == 1:
            return
        for g in grads:
            g.mul_(self.weight)
        comm.all_reduce_sum_(grads, self.group)

    @torch.no_grad()
    def loss_sync(self, loss: torch.Tensor) -> torch.Tensor:
        """The global-batch mean of a per-rank mean loss (the Engine's ``loss_sync`` hook)."""
        if self.world == 1:
            return loss
        t = (loss.detach().float() * self.weight).reshape(1)
        dist.all_reduce(t, group=self.group)
        return t.reshape(()).to(loss.dtype)
