"""``Batch``: what a reader yields and a training step consumes."""

from __future__ import annotations

import dataclasses
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
        rank_batch_sizes: every rank's local batch size when this batch is one rank's slice
            of a global batch (see :meth:`with_rank_batch_sizes`); None otherwise.
    """

    labels: torch.Tensor
    dense: torch.Tensor
    sparse: dict[str, SparseInput] = field(default_factory=dict)
    rank_batch_sizes: tuple[int, ...] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.labels.to(device, non_blocking=non_blocking),
            self.dense.to(device, non_blocking=non_blocking),
            {k: v.to(device, non_blocking=non_blocking) for k, v in self.sparse.items()},
            self.rank_batch_sizes,
        )

    def pin_memory(self) -> Batch:
        return Batch(
            self.labels.pin_memory(),
            self.dense.pin_memory(),
            {k: v.pin_memory() for k, v in self.sparse.items()},
            self.rank_batch_sizes,
        )

    def slice_samples(self, start: int, stop: int) -> Batch:
        return Batch(
            self.labels[start:stop],
            self.dense[start:stop],
            {k: v.slice_samples(start, stop) for k, v in self.sparse.items()},
        )

    def with_rank_batch_sizes(self, sizes: tuple[int, ...] | list[int]) -> Batch:
        """The same tensors tagged with every rank's local batch size (on the batch and on
        each sparse input, where the sharded tables read it)."""
        sizes = tuple(int(n) for n in sizes)
        sparse = {k: dataclasses.replace(v, rank_batch_sizes=sizes)
                  for k, v in self.sparse.items()}
        return Batch(self.labels, self.dense, sparse, sizes)
