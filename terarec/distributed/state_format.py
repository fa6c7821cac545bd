"""The flat sparse optimizer-state layout, as plain functions over arrays.

Same layout as :func:`terarec.embedding.table_io.optimizer_state_bytes` (every state in rule
order as float32 ``[N, dim]``, then for LazyGlobal the int64 last step per row, then the int64
step counter), so a file gathered from N shards is byte-compatible with a one-process file and
loads into either. Rows correspond to the ``key`` file written at the same time.
"""

from __future__ import annotations

import numpy as np

from terarec.embedding.config import TableConfig
from terarec.embedding.table_io import LAST_STEP_KEY, STEP_KEY
from terarec.errors import ConfigError
from terarec.optim.rules import get_rule

State = dict[str, tuple[np.ndarray, np.ndarray]]


def state_names(cfg: TableConfig) -> tuple[str, ...]:
    return tuple(get_rule(cfg.optimizer.type).state_names)


def is_lazy(cfg: TableConfig) -> bool:
    return cfg.optimizer.update_type == "LazyGlobal"


def to_bytes(cfg: TableConfig, state: State) -> bytes:
    """Serialise a ``{name: (keys, values)}`` state whose entries share one key order."""
    parts = [np.ascontiguousarray(state[n][1], dtype="<f4").tobytes() for n in state_names(cfg)]
    if is_lazy(cfg):
        parts.append(np.ascontiguousarray(state[LAST_STEP_KEY][1], dtype="<i8").tobytes())
    step = state.get(STEP_KEY, (None, np.zeros(1, np.int64)))[1]
    parts.append(np.asarray(step, dtype="<i8").reshape(-1)[:1].tobytes())
    return b"".join(parts)


def from_bytes(cfg: TableConfig, data: bytes, keys: np.ndarray, where: str) -> State:
    """Parse :func:`to_bytes` content whose rows belong to ``keys``."""
    names, lazy, dim = state_names(cfg), is_lazy(cfg), cfg.dim
    keys = np.ascontiguousarray(keys, dtype=np.int64).reshape(-1)
    n = keys.size
    expected = n * dim * 4 * len(names) + (n * 8 if lazy else 0) + 8
    if len(data) != expected:
        raise ConfigError(where, f"{expected} bytes for {n} keys x dim {dim} with "
                          f"{cfg.optimizer.type}/{cfg.optimizer.update_type}",
                          f"{len(data)} bytes",
                          hint="The file must come from a table with the same optimizer and keys")
    out: State = {}
    pos = 0
    for name in names:
        out[name] = (keys, np.frombuffer(data, "<f4", n * dim, pos).reshape(n, dim).copy())
        pos += n * dim * 4
    if lazy:
        out[LAST_STEP_KEY] = (keys, np.frombuffer(data, "<i8", n, pos).copy())
        pos += n * 8
    out[STEP_KEY] = (np.zeros(0, np.int64), np.frombuffer(data, "<i8", 1, pos).copy())
    return out


def select(state: State, mask: np.ndarray) -> State:
    """Entries of ``state`` whose keys are selected by ``mask`` (the step counter is kept)."""
    out: State = {}
    for name, (k, v) in state.items():
        out[name] = (k, v) if name == STEP_KEY else (k[mask], v[mask])
    return out
