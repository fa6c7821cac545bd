"""``fused_optimizer``: TorchRec's ``KeyedOptimizer`` view of terarec's fused sparse optimizers.

Owns saving and restoring the state of the optimizers that run inside the backward
(:func:`~terarec.torchrec.apply_optimizer_in_backward` / ``fused_params``) under TorchRec's
``state_dict`` layout::

    {"state": {"embedding_bags.<table>.weight": {"<table>.momentum1": Tensor, ...,
                                                  "<table>.step": Tensor}},
     "param_groups": [{"params": ["embedding_bags.<table>.weight"], "lr": ..., ...}, ...]}

State names follow FBGEMM's: the optimizer's per-element states in terarec's rule order are
``momentum1``, ``momentum2`` (Adagrad: the squared-gradient accumulator; Adam: ``m`` then ``v``;
momentum SGD: the velocity; plain SGD: none), plus ``step``, the table's step counter (Adam's
bias correction). One-process tables store them dense, ``[num_embeddings, dim]`` indexed by id;
sharded tables store this rank's rows only, with their ids in ``<table>.ids`` (see
:class:`FusedEntry`). Unlike TorchRec's, this is not a ``torch.optim.Optimizer`` subclass (no
LR schedulers); ``step()`` pushes ``param_groups[i]["lr"]`` into the tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from terarec.embedding.table import EmbeddingTable
from terarec.embedding.table_io import STEP_KEY
from terarec.errors import ConfigError, NotSupportedError


def state_alias(i: int) -> str:
    """TorchRec / FBGEMM name of the ``i``-th per-element state (``momentum1``, ...)."""
    return f"momentum{i + 1}"


@dataclass
class FusedEntry:
    """One table of a fused optimizer.

    Attributes:
        key: the TorchRec parameter key (``[<module path>.]embedding_bags.<table>.weight``).
        name: the table name.
        parts: ``(state prefix, EmbeddingTable)`` this process holds for the table (a sharded
            table: the rank's shard and, for hybrid placements, its hot-row table; none where
            the rank holds no rows of it).
        dense_rows: one-process layout: states ``[dense_rows, dim]`` indexed by id; ``None``:
            keyed layout (``<prefix>.ids`` + the rows this process holds).
        meta: what the saved state must match to load (rank, world size, placement).
        lr: learning rate of the table (the param group's ``lr``).
        optimizer: terarec's optimizer type (e.g. ``"AdaGrad"``).
    """

    key: str
    name: str
    parts: list[tuple[str, EmbeddingTable]]
    dense_rows: int | None
    lr: float
    optimizer: str
    meta: dict[str, Any] = field(default_factory=dict)


def _export(table: EmbeddingTable, prefix: str, dense_rows: int | None
            ) -> dict[str, torch.Tensor]:
    raw = table.optimizer_state()
    names = tuple(table.optimizer.state_names)
    extra = sorted(set(raw) - set(names) - {STEP_KEY})
    if extra:
        raise NotSupportedError(f"fused_optimizer.state_dict: table {table.name!r} has optimizer "
                                f"states {extra} (lazy / eviction bookkeeping) that the TorchRec "
                                f"surface does not carry; use terarec.distributed.save_shards")
    out: dict[str, torch.Tensor] = {}
    for i, n in enumerate(names):
        keys, values = raw[n]
        v = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))
        if dense_rows is not None:
            dense = torch.zeros(dense_rows, v.shape[1])
            dense[torch.from_numpy(keys)] = v
            v = dense
        elif i == 0:
            out[f"{prefix}.ids"] = torch.from_numpy(np.ascontiguousarray(keys, dtype=np.int64))
        out[f"{prefix}.{state_alias(i)}"] = v
    out[f"{prefix}.step"] = torch.tensor(int(table.optimizer.t), dtype=torch.int64)
    return out


def _import(table: EmbeddingTable, prefix: str, dense_rows: int | None,
            state: dict[str, Any], where: str) -> None:
    names = tuple(table.optimizer.state_names)
    dim = table.config.dim
    if dense_rows is not None:
        keys = np.arange(dense_rows, dtype=np.int64)
    elif names:
        keys = torch.as_tensor(state[f"{prefix}.ids"]).cpu().numpy().astype(np.int64).reshape(-1)
    raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, n in enumerate(names):
        k = f"{prefix}.{state_alias(i)}"
        v = torch.as_tensor(state[k]).detach().float().cpu()
        if tuple(v.shape) != (keys.size, dim):
            raise ConfigError(f"{where}[{k!r}]", f"a tensor of shape {(keys.size, dim)}",
                              tuple(v.shape))
        raw[n] = (keys, v.numpy())
    step = torch.as_tensor(state[f"{prefix}.step"]).reshape(-1)
    raw[STEP_KEY] = (np.zeros(0, np.int64), np.array([int(step[0])], np.int64))
    table.load_optimizer_state(raw)


def _expected_keys(entry: FusedEntry, table: EmbeddingTable, prefix: str) -> set[str]:
    names = table.optimizer.state_names
    keys = {f"{prefix}.{state_alias(i)}" for i in range(len(names))} | {f"{prefix}.step"}
    if entry.dense_rows is None and names:
        keys.add(f"{prefix}.ids")
    return keys


class FusedOptimizer:
    """TorchRec's ``fused_optimizer`` (a ``KeyedOptimizer``-like view; see the module docstring).

    The weights are updated in the backward; :meth:`step` only applies learning-rate changes
    made through :attr:`param_groups`, :meth:`zero_grad` does nothing (no ``.grad`` exists).
    """

    def __init__(self, entries: list[FusedEntry]) -> None:
        self.entries = list(entries)
        self.param_groups: list[dict[str, Any]] = [
            {"params": [e.key], "lr": e.lr, "optimizer": e.optimizer, **e.meta}
            for e in self.entries]

    def keys(self) -> list[str]:
        """The parameter keys of the tables trained by this optimizer."""
        return [e.key for e in self.entries]

    def step(self, closure: Any = None) -> None:
        """Push each group's ``lr`` into its table (the update itself ran in the backward)."""
        for e, g in zip(self.entries, self.param_groups):
            e.lr = float(g["lr"])
            for _, table in e.parts:
                table.set_learning_rate(e.lr)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to clear: fused tables never hold a ``.grad``."""

    def state_dict(self) -> dict[str, Any]:
        """A snapshot (copies) of every table's optimizer state and its param group."""
        state: dict[str, dict[str, torch.Tensor]] = {}
        for e in self.entries:
            st: dict[str, torch.Tensor] = {}
            for prefix, table in e.parts:
                st.update(_export(table, prefix, e.dense_rows))
            state[e.key] = st
        groups = [{**g, "params": list(g["params"])} for g in self.param_groups]
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` of the same tables and optimizers (for a sharded model:
        saved by the same rank of the same world size and placements). Every key must match
        (missing or unexpected ones are a :class:`ConfigError` naming them)."""
        where = "fused_optimizer.load_state_dict"
        if not isinstance(state_dict, dict) or set(state_dict) != {"state", "param_groups"}:
            raise ConfigError(where, 'a dict with "state" and "param_groups"',
                              sorted(state_dict) if isinstance(state_dict, dict)
                              else type(state_dict).__name__)
        state, groups = state_dict["state"], state_dict["param_groups"]
        mine = self.keys()
        if sorted(state) != sorted(mine):
            raise ConfigError(f"{where} state", f"the tables {sorted(mine)}", sorted(state),
                              hint=f"missing {sorted(set(mine) - set(state))}, unexpected "
                                   f"{sorted(set(state) - set(mine))}")
        by_key = {k: g for g in groups for k in g.get("params", [])}
        for e in self.entries:
            g = by_key.get(e.key)
            if g is None:
                raise ConfigError(f"{where} param_groups", f"a group for {e.key!r}", groups)
            want = {"optimizer": e.optimizer, **e.meta}
            got = {k: g.get(k) for k in want}
            if got != want:
                raise ConfigError(f"{where} param_groups[{e.key!r}]", f"{want} (the state of "
                                  f"another optimizer, rank or placement does not load here; "
                                  f"reshard with terarec.distributed.save_shards/load_shards)",
                                  got)
            st = state[e.key]
            expected: set[str] = set()
            for prefix, table in e.parts:
                expected |= _expected_keys(e, table, prefix)
            if set(st) != expected:
                raise ConfigError(f"{where} state[{e.key!r}]", f"entries {sorted(expected)}",
                                  sorted(st))
        for e in self.entries:
            for prefix, table in e.parts:
                _import(table, prefix, e.dense_rows, state[e.key], f"{where} state[{e.key!r}]")
        for g_mine in self.param_groups:
            g_mine["lr"] = float(by_key[g_mine["params"][0]]["lr"])
        self.step()

    def __repr__(self) -> str:
        return f"FusedOptimizer({', '.join(f'{e.key}: {e.optimizer}' for e in self.entries)})"
