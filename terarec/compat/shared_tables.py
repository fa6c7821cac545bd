"""One embedding table looked up by several lookups of an embedding collection (reference §8.2).

A shared table is one :class:`~terarec.embedding.table.EmbeddingTable` (one set of rows, one
sparse optimizer) and one :class:`SharedLookup` per lookup. The lookups are what the engine sees
(``engine.tables`` is keyed by lookup name); each reads its own sparse input with its own
combiner, and subtracts the offset the reader added to that input's keys so that every lookup
addresses the table's own keys.

Gradients: the lookups of one training step hang off one autograd node (:class:`_Joint`).
Each lookup's backward leaves its per-key gradients with the step's :class:`_Round`; autograd
runs the joint node once after all of them, which sums the gradients per row over every
lookup and applies **one** optimizer step (as HugeCTR, and as one ``nn.EmbeddingBag`` used
twice with a dense optimizer: the summed gradient, one Adam step, not two).

Files: every lookup exports the whole table in the key space of its own input (the table's
keys plus the lookup's ``key_offset``), so each ``save_params_to_files`` sparse folder serves
its lookup on its own (an inference session, a parameter server: one table per lookup, fed
the input's keys as they are). Every lookup loads its folder into the shared rows (the folders
hold the same rows; loading them too writes the same values again); the sparse optimizer file is
written and read by the first lookup only. Freezing any lookup freezes the table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from terarec.embedding.config import TableConfig
from terarec.embedding.table import EmbeddingTable, key_gradients, pool, sum_per_row
from terarec.errors import ConfigError
from terarec.graph.spec import GraphSpec
from terarec.sparse import SparseInput

TableFactory = Callable[[list[TableConfig], torch.device, torch.Generator], dict[str, Any]]


class _Round:
    """The lookups of one shared table in one training forward: their pending gradients."""

    def __init__(self, table: EmbeddingTable) -> None:
        self.table = table
        self.seen: set[str] = set()
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        anchor = torch.empty(0, device=table.device, requires_grad=True)
        self.token = _Joint.apply(anchor, self)

    @torch.no_grad()
    def apply(self) -> None:
        """Sum the key gradients of every lookup per row; one optimizer step."""
        pending, self.pending = self.pending, []
        t = self.table
        if not pending or t.frozen:
            return
        rows = torch.cat([r for r, _ in pending])
        grads = torch.cat([g for _, g in pending])
        uniq, summed = sum_per_row(rows, grads, t.weight.shape[0])
        t.optimizer.update(t.weight, uniq, summed, t.index.row_extent)


class _Joint(torch.autograd.Function):
    """The step's shared node: its backward runs once, after every lookup's backward."""

    @staticmethod
    def forward(ctx, anchor, rnd):  # noqa: ANN001, ANN205
        ctx.rnd = rnd
        return anchor.new_zeros(0)

    @staticmethod
    def backward(ctx, _grad):  # noqa: ANN001, ANN205
        ctx.rnd.apply()
        return None, None


class _ViewLookup(torch.autograd.Function):
    """forward: one lookup's pooled vectors; backward: its key gradients to the round."""

    @staticmethod
    def forward(ctx, token, rnd, rows, offsets, combiner):  # noqa: ANN001, ANN205
        ctx.rnd, ctx.combiner = rnd, combiner
        ctx.save_for_backward(rows, offsets)
        return pool(rnd.table.weight, rows, offsets, combiner)

    @staticmethod
    def backward(ctx, grad_out):  # noqa: ANN001, ANN205
        rows, offsets = ctx.saved_tensors
        table = ctx.rnd.table
        grad = grad_out.reshape(-1, table.config.dim).to(table.weight.dtype)
        ctx.rnd.pending.append((rows, key_gradients(grad, offsets, rows.numel(), ctx.combiner)))
        return grad_out.new_zeros(0), None, None, None, None


class SharedTable:
    """One table's rows and the round of its current training forward."""

    def __init__(self, table: EmbeddingTable, lookups: list[str]) -> None:
        self.table = table
        self.lookups = list(lookups)
        self._round: _Round | None = None

    def round_for(self, lookup: str) -> _Round:
        """The round of this forward; a lookup seen twice starts the next one."""
        rnd = self._round
        if rnd is None or lookup in rnd.seen:
            rnd = self._round = _Round(self.table)
        rnd.seen.add(lookup)
        return rnd


class SharedLookup(nn.Module):
    """One lookup of a shared table: the engine's table for that lookup's output name.

    Args:
        config: this lookup's table config (its name, input and combiner).
        shared: the table and its lookups.
        key_offset: what the reader added to this input's keys (subtracted before lookup).
    """

    index_kind = "shared"  # never a fused-kernel fast path

    def __init__(self, config: TableConfig, shared: SharedTable, key_offset: int = 0) -> None:
        super().__init__()
        self.config = config
        self.key_offset = int(key_offset)
        self.owner = shared.lookups[0] == config.name
        if self.owner:  # registered once, so that .to() moves it once
            self.base = shared.table
        object.__setattr__(self, "shared", shared)

    # --- delegation to the shared table ----------------------------------------------------
    @property
    def table(self) -> EmbeddingTable:
        return self.shared.table

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def device(self) -> torch.device:
        return self.table.device

    @property
    def weight(self) -> torch.Tensor:
        return self.table.weight

    @property
    def optimizer(self) -> Any:
        return self.table.optimizer

    @property
    def index(self) -> Any:
        return self.table.index

    @property
    def num_keys(self) -> int:
        return self.table.num_keys

    @property
    def frozen(self) -> bool:
        return self.table.frozen

    @property
    def scaler(self) -> float:
        return self.table.scaler

    @scaler.setter
    def scaler(self, value: float) -> None:
        self.table.scaler = value

    def set_learning_rate(self, lr: float) -> None:
        self.table.set_learning_rate(lr)

    def check_errors(self) -> None:
        self.table.check_errors()

    def freeze(self) -> None:
        """Freezes the shared table (every lookup of it)."""
        self.table.freeze()

    def unfreeze(self) -> None:
        self.table.unfreeze()

    def reset_state(self) -> None:
        self.table.reset_state()

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, table={self.table.name!r}, combiner="
                f"{self.config.combiner}, input={self.config.input_name!r}, "
                f"key_offset={self.key_offset}, lookups={self.shared.lookups}")

    # --- lookup ----------------------------------------------------------------------------
    def forward(self, sparse: SparseInput) -> torch.Tensor:
        """Pooled vectors ``(batch, slot_num, dim)`` of this lookup's input and combiner."""
        cfg, t = self.config, self.table
        if sparse.slot_num != cfg.slot_num:
            raise ConfigError(f"embedding lookup {self.name!r} input {cfg.input_name!r}",
                              f"slot_num={cfg.slot_num}", sparse.slot_num)
        keys = sparse.keys.to(device=t.device, dtype=torch.int64)
        if self.key_offset:
            keys = keys - self.key_offset
        offsets = sparse.offsets.to(device=t.device, dtype=torch.int64)
        rows = t.insert_keys(keys, offsets=offsets)
        if t.frozen or not torch.is_grad_enabled():
            out = pool(t.weight, rows, offsets, cfg.combiner)
        else:
            rnd = self.shared.round_for(self.name)
            out = _ViewLookup.apply(rnd.token, rnd, rows, offsets, cfg.combiner)
        return out.view(sparse.batch_size, cfg.slot_num, cfg.dim)

    # --- files: every lookup the whole table in its input's key space ---------------------
    def export(self) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        keys, vectors, slot_ids = self.table.export()
        return np.asarray(keys, np.int64) + self.key_offset, vectors, slot_ids

    def load(self, keys: Any, vectors: Any, slot_ids: Any = None) -> None:
        """Overwrite the shared rows of ``keys`` (this lookup's input key space)."""
        if len(keys):
            self.table.load(np.asarray(keys, np.int64) - self.key_offset, vectors, slot_ids)

    def optimizer_state(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        return self.table.optimizer_state()

    def load_optimizer_state(self, state: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
        self.table.load_optimizer_state(state)

    def optimizer_state_bytes(self) -> bytes:
        return self.table.optimizer_state_bytes() if self.owner else b""

    def load_optimizer_state_bytes(self, data: bytes, keys: np.ndarray | None = None) -> None:
        if self.owner or data:
            self.table.load_optimizer_state_bytes(data, keys)


def shared_groups(graph: GraphSpec) -> dict[tuple[int, str], list[str]]:
    """``(collection id, table name)`` -> lookup names, for embedding-collection specs."""
    groups: dict[tuple[int, str], list[str]] = {}
    for spec in graph.embeddings:
        if "table" in spec.extra:
            key = (int(spec.extra.get("collection", 0)), str(spec.extra["table"]))
            groups.setdefault(key, []).append(spec.top)
    return groups


def has_shared_tables(graph: GraphSpec) -> bool:
    return any(len(tops) > 1 for tops in shared_groups(graph).values())


def table_factory(graph: GraphSpec) -> TableFactory:
    """The ``build_tables`` factory of a one-process model whose collections share tables:
    one :class:`EmbeddingTable` per table (built at its first lookup, so the generator is drawn
    in the order of unshared tables), one :class:`SharedLookup` per lookup of a shared table."""
    owner_of = {top: tops for tops in shared_groups(graph).values() if len(tops) > 1
                for top in tops}
    specs = {s.top: s for s in graph.embeddings}

    def build(configs: list[TableConfig], device: torch.device,
              generator: torch.Generator) -> dict[str, Any]:
        out: dict[str, Any] = {}
        shared: dict[str, SharedTable] = {}
        for cfg in configs:
            tops = owner_of.get(cfg.name)
            if tops is None:
                out[cfg.name] = EmbeddingTable(cfg, device=device, generator=generator)
                continue
            if tops[0] not in shared:
                base_cfg = dataclasses.replace(cfg, name=str(specs[cfg.name].extra["table"]))
                table = EmbeddingTable(base_cfg, device=device, generator=generator)
                shared[tops[0]] = SharedTable(table, tops)
            offset = int(specs[cfg.name].extra.get("key_offset", 0))
            out[cfg.name] = SharedLookup(cfg, shared[tops[0]], offset)
        return out

    return build
