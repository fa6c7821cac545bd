"""Admission counter of a hash table with an eviction policy: keys seen but not yet admitted.

Owns :class:`PendingKeys`, a bounded counter (plain vectorised torch, CPU and CUDA) of the
training lookups of keys that have no row yet. With ``admit_after = n`` a key gets its row at
its ``n``-th lookup (counted over the steps it was seen in, every occurrence in a batch counts).
The counter holds at most ``bound`` keys (24 bytes each: key, count, last step seen); past it the
least recently seen keys are forgotten (ties: larger key first) and start again from zero.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch


class PendingKeys:
    """Counts of not-yet-admitted keys, sorted by key.

    Args:
        bound: most keys kept (:meth:`terarec.embedding.config.EvictionPolicy.pending_bound`).
        device: where the counter tensors live.

    Example:
        >>> p = PendingKeys(bound=8)
        >>> p.observe(torch.tensor([5, 9]), torch.tensor([1, 2]), step=1, admit_after=2).tolist()
        [False, True]
        >>> p.observe(torch.tensor([5]), torch.tensor([1]), step=2, admit_after=2).tolist()
        [True]
        >>> len(p)
        0
    """

    def __init__(self, bound: int, device: torch.device | None = None) -> None:
        self.bound = int(bound)
        device = device or torch.device("cpu")
        self.keys = torch.empty(0, dtype=torch.int64, device=device)
        self.counts = torch.empty(0, dtype=torch.int64, device=device)
        self.last_seen = torch.empty(0, dtype=torch.int64, device=device)
        self.forgotten_total = 0

    def __len__(self) -> int:
        return int(self.keys.numel())

    def observe(self, keys: torch.Tensor, occurrences: torch.Tensor, step: int,
                admit_after: int) -> torch.Tensor:
        """Count ``occurrences`` lookups of the distinct ``keys`` (which have no row) at
        ``step``; returns which of them reach ``admit_after`` (they leave the counter)."""
        if admit_after <= 1:
            return torch.ones(keys.numel(), dtype=torch.bool, device=keys.device)
        found = torch.zeros(keys.numel(), dtype=torch.bool, device=keys.device)
        prior = torch.zeros_like(occurrences)
        keep = torch.ones(self.keys.numel(), dtype=torch.bool, device=keys.device)
        if self.keys.numel() and keys.numel():
            pos = torch.searchsorted(self.keys, keys).clamp(max=self.keys.numel() - 1)
            found = self.keys[pos] == keys
            prior = torch.where(found, self.counts[pos], prior)
            keep[pos[found]] = False
        total = prior + occurrences
        admitted = total >= admit_after
        still = ~admitted
        k = torch.cat([self.keys[keep], keys[still]])
        c = torch.cat([self.counts[keep], total[still]])
        last = torch.cat([self.last_seen[keep], torch.full_like(k[: int(still.sum())], step)])
        if k.numel() > self.bound:  # forget the least recently seen (ties: larger key)
            order = torch.argsort(k)
            order = order[torch.sort(-last[order], stable=True).indices][: self.bound]
            self.forgotten_total += k.numel() - self.bound
            k, c, last = k[order], c[order], last[order]
        order = torch.argsort(k)
        self.keys, self.counts, self.last_seen = k[order], c[order], last[order]
        return admitted

    def apply_fn(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.keys, self.counts, self.last_seen = fn(self.keys), fn(self.counts), fn(self.last_seen)

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """``(keys int64 [n], [count, last_seen] int64 [n, 2])``."""
        values = torch.stack([self.counts, self.last_seen], dim=1)
        return self.keys.cpu().numpy().astype(np.int64), values.cpu().numpy().astype(np.int64)

    def load_state(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Replace the counter by :meth:`state`'s arrays."""
        device = self.keys.device
        k = torch.as_tensor(np.asarray(keys, dtype=np.int64), device=device).reshape(-1)
        v = torch.as_tensor(np.asarray(values, dtype=np.int64), device=device).reshape(-1, 2)
        order = torch.argsort(k)
        self.keys, self.counts, self.last_seen = k[order], v[order, 0], v[order, 1]
