"""The :class:`Metric` protocol and :class:`BaseMetric`, the shared machinery of every metric.

A metric is fed one evaluation batch at a time with :meth:`Metric.update` and reports one
float with :meth:`Metric.compute`. Predictions are probabilities (after the sigmoid) shaped
``(B,)`` or ``(B, T)`` (``T`` labels per sample); labels have the same number of elements.

State stays on the device of the tensors passed in: ``update`` launches device work only and
never copies a value to the host, so an evaluation loop on a GPU does not stall once per
batch. ``compute`` is the single synchronisation point. When a ``torch.distributed`` process
group is initialised (and ``distributed=True``, the default), ``compute`` combines the states
of all ranks first (all-reduce of counters, all-gather of stored predictions), so every rank
returns the same, global value.
"""

from __future__ import annotations

import abc
from typing import Protocol, runtime_checkable

import torch
import torch.distributed as dist
from torch import Tensor

from terarec.errors import ConfigError

__all__ = ["BaseMetric", "LossLike", "Metric"]

LossLike = float | Tensor


@runtime_checkable
class Metric(Protocol):
    """What the trainer needs from an evaluation metric."""

    name: str

    def update(self, preds: Tensor, labels: Tensor, loss: LossLike | None = None) -> None:
        """Accumulate one batch (no host synchronisation)."""
        ...

    def compute(self) -> float:
        """The metric over everything accumulated since the last :meth:`reset`."""
        ...

    def reset(self) -> None:
        """Forget everything accumulated."""
        ...


class BaseMetric(abc.ABC):
    """Input checking and cross-rank reduction shared by the built-in metrics.

    Args:
        distributed: combine the states of all ranks in :meth:`compute` when a
            ``torch.distributed`` process group is initialised. Turn it off when every rank
            already evaluates the global batch.
        process_group: the group to reduce over (default: the world group).
    """

    name: str = ""

    def __init__(self, *, distributed: bool = True, process_group: object | None = None) -> None:
        self.distributed = distributed
        self.process_group = process_group

    # -- the protocol ------------------------------------------------------------------------
    @abc.abstractmethod
    def update(self, preds: Tensor, labels: Tensor, loss: LossLike | None = None) -> None: ...

    @abc.abstractmethod
    def compute(self) -> float: ...

    @abc.abstractmethod
    def reset(self) -> None: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- helpers -----------------------------------------------------------------------------
    def _check(self, preds: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Validate shapes and return detached ``(B, T)`` float predictions and labels.

        Only tensor metadata is inspected, so nothing is synchronised with the host.
        """
        where = f"{self.name or type(self).__name__}.update"
        if not isinstance(preds, Tensor) or not isinstance(labels, Tensor):
            raise ConfigError(
                where, "preds and labels as torch.Tensor", (type(preds), type(labels))
            )
        if preds.dim() not in (1, 2):
            raise ConfigError(
                f"{where}(preds)", "a tensor shaped (B,) or (B, T)", tuple(preds.shape)
            )
        p = preds.detach()
        p = p.unsqueeze(1) if p.dim() == 1 else p
        if labels.numel() != p.numel():
            raise ConfigError(
                f"{where}(labels)",
                f"as many labels as predictions ({tuple(preds.shape)})",
                tuple(labels.shape),
            )
        if not p.is_floating_point() or p.dtype in (torch.float16, torch.bfloat16):
            p = p.float()
        y = labels.detach().reshape(p.shape)
        if y.device != p.device:
            y = y.to(p.device, non_blocking=True)
        y = y.to(p.dtype) if y.dtype != p.dtype else y
        return p, y

    def _dist_world(self) -> int:
        """Number of ranks to combine (1 when not distributed)."""
        if not (self.distributed and dist.is_available() and dist.is_initialized()):
            return 1
        return int(dist.get_world_size(self.process_group))  # type: ignore[arg-type]

    def _comm_device(self, t: Tensor) -> torch.device:
        backend = str(dist.get_backend(self.process_group)).lower()  # type: ignore[arg-type]
        if backend == "gloo" and t.is_cuda:
            return torch.device("cpu")
        if backend == "nccl" and not t.is_cuda:
            return torch.device("cuda", torch.cuda.current_device())
        return t.device

    def _all_reduce_sum(self, t: Tensor) -> Tensor:
        """Sum ``t`` over all ranks (returns ``t`` itself when not distributed)."""
        if self._dist_world() == 1:
            return t
        x = t.to(self._comm_device(t)).clone()
        dist.all_reduce(x, op=dist.ReduceOp.SUM, group=self.process_group)  # type: ignore[arg-type]
        return x.to(t.device)

    def _all_gather_rows(self, t: Tensor) -> Tensor:
        """Concatenate the ``(n_rank, T)`` tensors of all ranks along dim 0, in rank order.

        Ranks may hold different numbers of rows (and a rank with no rows may not know ``T``:
        it sends a ``(0, 1)`` tensor and receives the common width).
        """
        world = self._dist_world()
        if world == 1:
            return t
        group = self.process_group
        dev = self._comm_device(t)
        x = t.to(dev)
        meta = torch.tensor([x.shape[0], x.shape[1]], dtype=torch.int64, device=dev)
        metas = [torch.zeros_like(meta) for _ in range(world)]
        dist.all_gather(metas, meta, group=group)  # type: ignore[arg-type]
        sizes = [(int(m[0]), int(m[1])) for m in torch.stack(metas).cpu()]
        width = max(w for n, w in sizes if n > 0) if any(n > 0 for n, _ in sizes) else x.shape[1]
        for n, w in sizes:
            if n > 0 and w != width:
                raise ConfigError(
                    f"{self.name}.compute",
                    "the same number of labels per sample on every rank",
                    [s[1] for s in sizes],
                )
        rows = max(n for n, _ in sizes)
        padded = torch.zeros((rows, width), dtype=x.dtype, device=dev)
        if x.shape[0] > 0:
            padded[: x.shape[0]] = x
        out = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(out, padded, group=group)  # type: ignore[arg-type]
        return torch.cat([o[:n] for o, (n, _) in zip(out, sizes)]).to(t.device)
