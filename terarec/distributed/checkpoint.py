"""Sharded checkpoints: each rank writes its own shard; any number of ranks reads them back.

Layout of :func:`save_shards` (one folder per checkpoint)::

    {folder}/meta.json                     world size, table names and placements (rank 0)
    {folder}/rank{r}/{i}_sparse.model/     key, emb_vector, slot_id of rank r's rows of table i
    {folder}/rank{r}/{i}_opt_sparse.model  its optimizer states (flat layout, same rows)

:func:`load_shards` reads every rank's files on every rank and each table keeps the keys its
placement gives it, so a checkpoint written by N ranks loads on M ranks (or one process with
plain tables); a column-wise table's rank files hold its column blocks, stitched into whole
rows first. HugeCTR's global ``key`` / ``emb_vector`` files are written by gathering to rank 0
instead (``prepare_export`` on the tables, then the usual one-process writer).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from terarec.checkpoint import hugectr_files as hf
from terarec.distributed import comm, state_format
from terarec.embedding.config import TableConfig
from terarec.errors import DataError
from terarec.utils.atomic import write_bytes_atomic


def shard_folder(prefix: str, it: int) -> str:
    """Where ``Model.save_params_to_files(prefix, it)`` puts the per-rank shards."""
    return f"{prefix}_shards_{it}"


def save_shards(tables: dict[str, Any], folder: str | Path) -> None:
    """Every rank writes the rows it holds (not collective; call on every rank)."""
    folder = Path(folder)
    me, world = comm.rank(), comm.world_size()
    mine = folder / f"rank{me}"
    for i, table in enumerate(tables.values()):
        keys, vectors, slots = table.local_export()
        hf.write_sparse_folder(mine / f"{i}_sparse.model", keys, vectors, slots)
        write_bytes_atomic(mine / f"{i}_opt_sparse.model",
                           state_format.to_bytes(table.config, table.local_optimizer_state()))
    if me == 0:
        meta = {"format": "terarec-sharded-embeddings", "version": 1, "world_size": world,
                "tables": [{"name": n, "placement": t.placement.to_dict(),
                            "config": t.config.to_dict()} for n, t in tables.items()]}
        write_bytes_atomic(folder / "meta.json", (json.dumps(meta, indent=2) + "\n").encode())


def read_meta(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / "meta.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(str(path), f"cannot read sharded checkpoint metadata: {exc}") from None


def load_shards(tables: dict[str, Any], folder: str | Path, optimizer: bool = True) -> None:
    """Load a :func:`save_shards` checkpoint into ``tables`` (sharded tables keep their own
    keys; plain :class:`EmbeddingTable` objects take every key). Not collective."""
    folder = Path(folder)
    meta = read_meta(folder)
    names = [t["name"] for t in meta["tables"]]
    for name, table in tables.items():
        if name not in names:
            raise DataError(str(folder), f"no table {name!r} in the checkpoint (has {names})")
        i = names.index(name)
        step = None
        for keys, vectors, slots, state in _rank_parts(folder, meta, i, table.config, optimizer):
            slot_arg = slots if (slots is not None and (table.config.is_localized or hasattr(
                table, "placement"))) else None
            if keys.size:
                table.load(keys, vectors, slot_arg)
            if state is None:
                continue
            t = int(state["__step__"][1][0])
            step = t if step is None or t > step else step
            if keys.size:
                table.load_optimizer_state(state)
        if optimizer and step is not None and step >= 0:
            inner = getattr(table, "shard", table)
            if inner is not None:
                inner.optimizer.t = step
            if hasattr(table, "set_step"):
                table.set_step(step)


Part = tuple[np.ndarray, np.ndarray, "np.ndarray | None", "state_format.State | None"]


def _read_part(folder: Path, r: int, i: int, cfg: TableConfig, optimizer: bool) -> Part:
    keys, vectors, slots = hf.read_sparse_folder(folder / f"rank{r}" / f"{i}_sparse.model",
                                                cfg.dim)
    state = None
    if optimizer:
        opt_path = folder / f"rank{r}" / f"{i}_opt_sparse.model"
        state = state_format.from_bytes(cfg, opt_path.read_bytes(), keys, str(opt_path))
    return keys, vectors, slots, state


def _rank_parts(folder: Path, meta: dict[str, Any], i: int, cfg: TableConfig,
                optimizer: bool) -> list[Part]:
    """Every rank's rows of table ``i``; a column-wise table's blocks stitched into one part
    of whole rows (each block owner wrote every key, columns ``[lo, hi)`` only)."""
    placement = meta["tables"][i]["placement"]
    if placement["kind"] != "column_wise":
        return [_read_part(folder, r, i, cfg, optimizer) for r in range(int(meta["world_size"]))]
    from terarec.distributed.column_wise import column_blocks

    parts = []
    for r, (lo, hi) in zip(placement["ranks"], column_blocks(cfg.dim, len(placement["ranks"]))):
        parts.append((lo, hi, _read_part(folder, r, i, dataclasses.replace(cfg, dim=hi - lo),
                                         optimizer)))
    keys = np.unique(np.concatenate([p[2][0] for p in parts]))
    vectors = np.zeros((keys.size, cfg.dim), np.float32)
    slots: np.ndarray | None = None
    state: state_format.State | None = {} if optimizer else None
    for lo, hi, (k, v, s, st) in parts:
        pos = np.searchsorted(keys, k)
        vectors[pos, lo:hi] = v
        if s is not None:
            slots = np.zeros(keys.size, np.uint64) if slots is None else slots
            slots[pos] = s
        for name, (_k, val) in (st or {}).items():
            assert state is not None  # noqa: S101
            if name == "__step__":
                old = state.get(name, (_k, val))[1]
                state[name] = (_k, np.maximum(old, val))
            elif val.ndim == 1:
                state.setdefault(name, (keys, np.zeros(keys.size, val.dtype)))[1][pos] = val
            else:
                state.setdefault(name, (keys, np.zeros((keys.size, cfg.dim), np.float32)))
                state[name][1][pos, lo:hi] = val
    return [(keys, vectors, slots, state)]
