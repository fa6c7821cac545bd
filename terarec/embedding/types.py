"""Small shared types of the embedding package: the key index protocol and its insert result.

Implementations (:mod:`terarec.embedding.hash_index`) import this module, never each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class InsertResult:
    """What one ``insert`` call did.

    Attributes:
        rows: row of every input key (same shape as the keys).
        new_rows: rows created by this call, in creation order.
        new_first_pos: for each new row, the position in the input of its first occurrence.
    """

    rows: torch.Tensor
    new_rows: torch.Tensor
    new_first_pos: torch.Tensor


class KeyIndex(Protocol):
    """Maps int64 keys to table rows."""

    capacity: int

    @property
    def num_keys(self) -> int: ...

    @property
    def row_extent(self) -> int:
        """Rows ``[0, row_extent)`` hold every used row (what a Global update must visit)."""
        ...

    def insert(self, keys: torch.Tensor) -> InsertResult: ...

    def lookup_or_insert(self, keys: torch.Tensor) -> torch.Tensor: ...

    def lookup(self, keys: torch.Tensor) -> torch.Tensor: ...

    def keys(self) -> torch.Tensor:
        """Keys of the used rows, in row order."""
        ...

    def rows(self) -> torch.Tensor:
        """The used rows, in row order (matches :meth:`keys`)."""
        ...

    def clear(self) -> None: ...
