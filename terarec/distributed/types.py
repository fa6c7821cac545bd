"""Shared types of the distributed package: the sharded-table protocol, the per-batch lookup
context and the registry of sharding strategies keyed by placement kind.

Strategies (``row_wise.py``, ``table_wise.py``, ``replicated.py``, ``column_wise.py``,
``hybrid.py``) import this module and :mod:`terarec.distributed.routed`, never each other
(``hybrid`` extends the row-wise class). A strategy is a class built as
``cls(config, placement, device, generator, group, **options)`` that exposes the same surface as the
single-process :class:`~terarec.embedding.table.EmbeddingTable` (``forward``, learning rate,
scaler, freeze, export / load and optimizer state), plus the three lookup phases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from terarec.embedding.config import TableConfig
from terarec.embedding.plan import TablePlacement
from terarec.sparse import SparseInput
from terarec.utils.registry import Registry


@dataclass
class LookupContext:
    """What one batch's ``input_dist`` hands to ``lookup`` and ``output_dist``.

    Attributes:
        sparse: this rank's keys (sample-major CSR).
        send_keys / send_slots: unique (owner, key) pairs this rank asks for, grouped by owner.
        key_to_send: for each key of ``sparse``, its position in ``send_keys``.
        send_counts / recv_counts: rows exchanged with each peer.
        recv_keys / recv_slots: keys this rank owns and must look up for the peers.
        batch_sizes: every rank's local batch size (``sum`` = the global batch).
        rows: rows of ``recv_keys`` in the local shard (set by ``lookup``).
    """

    sparse: SparseInput
    send_keys: torch.Tensor
    send_slots: torch.Tensor
    key_to_send: torch.Tensor
    send_counts: list[int]
    recv_counts: list[int]
    recv_keys: torch.Tensor
    recv_slots: torch.Tensor
    batch_sizes: list[int]
    rows: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def grad_weight(self) -> float:
        """This rank's share of the global mean: ``B_local / B_global``."""
        total = sum(self.batch_sizes)
        return self.sparse.batch_size / total if total else 0.0


class ShardedTable(Protocol):
    """What the engine, the model files and the collection need from a sharded table."""

    config: TableConfig
    placement: TablePlacement

    def forward(self, sparse: SparseInput) -> torch.Tensor: ...

    def set_learning_rate(self, lr: float) -> None: ...

    def freeze(self) -> None: ...

    def unfreeze(self) -> None: ...

    def export(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]: ...

    def load(self, keys: Any, vectors: Any, slot_ids: Any = None) -> None: ...

    def local_export(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]: ...

    def local_optimizer_state(self) -> dict[str, tuple[np.ndarray, np.ndarray]]: ...

    def owns(self, keys: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor: ...


#: placement kind -> strategy class (filled by the strategy modules on import).
STRATEGIES: Registry[type] = Registry("placement kind")
