"""The sparse part of a batch: keys of every (sample, slot) pair in one CSR structure.

One ``SparseInput`` holds the keys of one HugeCTR sparse input (one ``DataReaderSparseParam``):
``slot_num`` slots per sample, each slot 0..nnz keys (one-hot and multi-hot alike).

Layout (B = batch, S = slot_num)::

    row r = b * S + s          (sample-major, like HugeCTR's CSR with batch*slot_num rows)
    keys[offsets[r]:offsets[r+1]]  are the keys of sample b, slot s

``offsets`` has ``B*S + 1`` entries, starts at 0 and never decreases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from terarec.errors import ConfigError


@dataclass
class SparseInput:
    """Keys of one sparse input for a batch, in CSR form (see module docstring).

    Args:
        keys: int64 tensor of all keys, shape (nnz_total,).
        offsets: int64 tensor, shape (B*slot_num + 1,).
        slot_num: number of slots per sample.
        rank_batch_sizes: in a data-parallel step, every rank's local batch size when the
            sample split is known without communicating (set by the data-parallel split of a
            global batch); lets sharded tables exchange fixed-size messages. None otherwise.
    """

    keys: torch.Tensor
    offsets: torch.Tensor
    slot_num: int
    rank_batch_sizes: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.slot_num <= 0:
            raise ConfigError("SparseInput.slot_num", "a positive integer", self.slot_num)
        rows = self.offsets.numel() - 1
        if rows < 0 or rows % self.slot_num:
            raise ConfigError(
                "SparseInput.offsets",
                f"B*slot_num+1 entries with slot_num={self.slot_num}",
                f"{self.offsets.numel()} entries",
            )

    @property
    def batch_size(self) -> int:
        return (self.offsets.numel() - 1) // self.slot_num

    @property
    def lengths(self) -> torch.Tensor:
        """Number of keys of each (sample, slot) row, shape (B*slot_num,)."""
        return self.offsets[1:] - self.offsets[:-1]

    def is_fixed_hotness(self) -> int | None:
        """Return the common nnz if every row has the same number of keys, else None."""
        n = self.offsets.numel() - 1
        if n == 0:
            return 0
        total = int(self.offsets[-1])
        if total % n:
            return None
        nnz = total // n
        expected = torch.arange(n + 1, device=self.offsets.device, dtype=self.offsets.dtype) * nnz
        return nnz if bool(torch.equal(self.offsets, expected)) else None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseInput:
        return SparseInput(
            self.keys.to(device, non_blocking=non_blocking),
            self.offsets.to(device, non_blocking=non_blocking),
            self.slot_num,
            self.rank_batch_sizes,
        )

    def pin_memory(self) -> SparseInput:
        return SparseInput(self.keys.pin_memory(), self.offsets.pin_memory(), self.slot_num,
                           self.rank_batch_sizes)

    def slice_samples(self, start: int, stop: int) -> SparseInput:
        """Samples ``start:stop`` (used to split a global batch across ranks)."""
        s = self.slot_num
        off = self.offsets[start * s : stop * s + 1]
        keys = self.keys[int(off[0]) : int(off[-1])]
        return SparseInput(keys, off - off[0], s)

    @staticmethod
    def from_lists(rows: list[list[list[int]]]) -> SparseInput:
        """Build from ``rows[b][s] = [keys...]`` (convenient in tests and examples)."""
        if not rows:
            raise ConfigError("SparseInput.from_lists", "at least one sample", rows)
        slot_num = len(rows[0])
        flat: list[int] = []
        offsets = [0]
        for b, sample in enumerate(rows):
            if len(sample) != slot_num:
                raise ConfigError(f"SparseInput.from_lists row {b}", f"{slot_num} slots", len(sample))
            for slot_keys in sample:
                flat.extend(int(k) for k in slot_keys)
                offsets.append(len(flat))
        return SparseInput(
            torch.tensor(flat, dtype=torch.int64),
            torch.tensor(offsets, dtype=torch.int64),
            slot_num,
        )

    @staticmethod
    def from_dense(keys: torch.Tensor | np.ndarray, pad: int = -1) -> SparseInput:
        """Build from a (B, S, K) array of keys where ``pad`` marks unused positions."""
        t = torch.as_tensor(keys, dtype=torch.int64)
        if t.dim() == 2:
            t = t.unsqueeze(-1)
        b, s, _ = t.shape
        mask = t != pad
        lengths = mask.sum(-1).reshape(-1)
        offsets = torch.zeros(b * s + 1, dtype=torch.int64, device=t.device)
        offsets[1:] = torch.cumsum(lengths, 0)
        return SparseInput(t[mask], offsets, s)
