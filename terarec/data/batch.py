"""``Batch``: what a reader yields and a training step consumes."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from terarec.sparse import SparseInput


@dataclass
class Batch:
    """One batch of samples.

    Args:
        labels: float32 (B, label_dim_total) — all label columns side by side.
        dense: float32 (B, dense_dim).
        sparse: one :class:`SparseInput` per sparse input, keyed by its ``top_name``.
    """

    labels: torch.Tensor
    dense: torch.Tensor
    sparse: dict[str, SparseInput] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.labels.to(device, non_blocking=non_blocking),
            self.dense.to(device, non_blocking=non_blocking),
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.sparse.items()},
        )

    def pin_memory(self) -> Batch:
        return Batch(
            self.labels.pin_memory(),
            self.dense.pin_memory(),
            {k: v.pin_memory() for k, v in self.sparse.items()},
        )

    def slice_samples(self, start: int, stop: int) -> Batch:
        return Batch(
            self.labels[start:stop],
            self.dense[start:stop],
            {k: v.slice_samples(start, stop) for k, v in self.sparse.items()},
        )
