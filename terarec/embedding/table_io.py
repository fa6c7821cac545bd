"""Export / import of an :class:`~terarec.embedding.table.EmbeddingTable`'s rows and states.

Owns the in-memory arrays behind HugeCTR's sparse model folder (reference §17.4: ``key`` int64,
``emb_vector`` float32 ``[N, dim]``, ``slot_id`` uint64 for LocalizedSlot embeddings; order =
row order) and the sparse optimizer-state formats:

* :func:`optimizer_state`: ``{state name: (keys int64 [N], values float32 [N, dim])}``, plus
  ``"last_step": (keys, int64 [N])`` for LazyGlobal and ``"__step__": (empty, int64 [1])`` with
  the table's step counter. Keyed by key, so it survives any re-ordering or re-sharding.
* :func:`optimizer_state_bytes`: the flat ``{prefix}{i}_opt_sparse_{iter}.model`` file. Like
  HugeCTR's it is implementation-defined: every state in rule order as float32 ``[N, dim]`` in
  row order, then for LazyGlobal the int64 last-step per row, then the int64 step counter.
  Rows correspond to the ``key`` file written at the same time.

A table with an eviction policy adds its eviction state (:mod:`terarec.embedding.eviction`):
in :func:`optimizer_state` the entries ``eviction_last_used`` / ``eviction_count`` (keys, int64
[N]), ``__eviction__`` (empty, int64 [5]: step, evicted, admitted, rejected-lookup and
forgotten-pending totals) and ``__eviction_pending__`` (pending keys, int64 [P, 2]: count, last
step seen); in :func:`optimizer_state_bytes` a trailer after the content above: the 8 bytes
``EVICTION_MAGIC``, int64 [6] (the five totals, P), int64 last-used [N] and counts [N] in row
order, then int64 pending keys [P], counts [P], last steps [P]. HugeCTR's ``key`` /
``emb_vector`` files are unchanged (they hold the live rows only); a file without the trailer
loads with a fresh eviction state.

Writing the files to disk (atomically) is the checkpoint package's job.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from terarec.embedding import eviction as evict
from terarec.errors import ConfigError

if TYPE_CHECKING:
    from terarec.embedding.table import EmbeddingTable

STEP_KEY = "__step__"
LAST_STEP_KEY = "last_step"
EVICTION_MAGIC = b"TREVICT1"


def _as_keys(keys: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    t = keys if torch.is_tensor(keys) else torch.from_numpy(
        np.ascontiguousarray(keys, dtype=np.int64))
    return t.to(device=device, dtype=torch.int64).reshape(-1)


def _as_rows(table: EmbeddingTable, values: np.ndarray | torch.Tensor, n: int, what: str,
             dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.as_tensor(np.ascontiguousarray(values) if not torch.is_tensor(values) else values)
    t = t.to(device=table.device, dtype=dtype)
    shape = (n, table.config.dim) if dtype.is_floating_point else (n,)
    if t.numel() != int(np.prod(shape)):
        raise ConfigError(f"embedding table {table.name!r} {what}", f"shape {shape}",
                          tuple(t.shape))
    return t.reshape(shape)


def export(table: EmbeddingTable) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    rows = table.index.rows()
    keys = table.index.keys().cpu().numpy().astype(np.int64)
    vectors = table.weight[rows].detach().float().cpu().numpy()
    slots = None
    if table.config.is_localized:
        slots = table.row_slots[rows].cpu().numpy().astype(np.uint64)
    return keys, np.ascontiguousarray(vectors, dtype=np.float32), slots


@torch.no_grad()
def load(table: EmbeddingTable, keys: np.ndarray | torch.Tensor,
         vectors: np.ndarray | torch.Tensor,
         slot_ids: np.ndarray | torch.Tensor | None = None) -> None:
    k = _as_keys(keys, table.device)
    vec = _as_rows(table, vectors, k.numel(), "emb_vector")
    slots = None
    if slot_ids is not None:
        slots = _as_keys(slot_ids, table.device)
        if slots.numel() != k.numel():
            raise ConfigError(f"embedding table {table.name!r} slot_id",
                              f"{k.numel()} slot ids", slots.numel())
    rows = table.insert_keys(k, slots=slots)
    table.weight[rows] = vec.to(table.weight.dtype)
    if slots is not None:
        table.row_slots[rows] = slots


def optimizer_state(table: EmbeddingTable) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    opt = table.optimizer
    rows = table.index.rows()
    keys = table.index.keys().cpu().numpy().astype(np.int64)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, s in zip(opt.state_names, opt.states):
        out[name] = (keys, s[rows].float().cpu().numpy())
    if opt.lazy:
        out[LAST_STEP_KEY] = (keys, opt.last_step[rows].cpu().numpy().astype(np.int64))
    out[STEP_KEY] = (np.zeros(0, dtype=np.int64), np.array([opt.t], dtype=np.int64))
    if table.eviction is not None:
        out.update(evict.state_arrays(table))
    return out


@torch.no_grad()
def load_optimizer_state(table: EmbeddingTable,
                         state: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    opt = table.optimizer
    missing = [n for n in opt.state_names if n not in state]
    if missing:
        raise ConfigError(f"embedding table {table.name!r} optimizer state",
                          f"states {list(opt.state_names)} of {opt.config.type}",
                          sorted(state), hint=f"missing {missing}")
    for name, s in zip(opt.state_names, opt.states):
        keys, values = state[name]
        k = _as_keys(keys, table.device)
        rows = table.insert_keys(k)
        s[rows] = _as_rows(table, values, k.numel(), f"optimizer state {name!r}", s.dtype)
    if opt.lazy and LAST_STEP_KEY in state:
        keys, values = state[LAST_STEP_KEY]
        k = _as_keys(keys, table.device)
        rows = table.insert_keys(k)
        opt.last_step[rows] = _as_rows(table, values, k.numel(), LAST_STEP_KEY, torch.int64)
    if STEP_KEY in state:
        opt.t = int(np.asarray(state[STEP_KEY][1]).reshape(-1)[0])
    if table.eviction is not None:
        evict.load_state_arrays(table, state)


def optimizer_state_bytes(table: EmbeddingTable) -> bytes:
    opt = table.optimizer
    rows = table.index.rows()
    parts = [s[rows].float().cpu().numpy().astype("<f4").tobytes() for s in opt.states]
    if opt.lazy:
        parts.append(opt.last_step[rows].cpu().numpy().astype("<i8").tobytes())
    parts.append(np.array([opt.t], dtype="<i8").tobytes())
    if table.eviction is not None:
        parts.append(_eviction_trailer(table))
    return b"".join(parts)


def _eviction_trailer(table: EmbeddingTable) -> bytes:
    arrays = evict.state_arrays(table)
    pending_keys, pending = arrays[evict.PENDING_KEY]
    head = np.concatenate([arrays[evict.TOTALS_KEY][1], [pending_keys.size]])
    parts = [head, arrays[evict.LAST_USED_KEY][1], arrays[evict.COUNT_KEY][1], pending_keys,
             pending[:, 0], pending[:, 1]]
    return EVICTION_MAGIC + b"".join(np.asarray(p, dtype="<i8").tobytes() for p in parts)


def _read_eviction_trailer(table: EmbeddingTable, data: bytes, keys: np.ndarray,
                           ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    n_tot = len(evict.TOTALS)
    n = keys.size
    fixed = 8 + 8 * (n_tot + 1) + 16 * n
    if len(data) < fixed or data[:8] != EVICTION_MAGIC:
        raise ConfigError(f"embedding table {table.name!r} sparse optimizer state file",
                          "the eviction-state trailer (EVICTION_MAGIC) after the optimizer "
                          "states", f"{len(data)} further bytes")
    head = np.frombuffer(data, "<i8", n_tot + 1, 8)
    p = int(head[-1])
    if len(data) != fixed + 24 * p:
        raise ConfigError(f"embedding table {table.name!r} eviction-state trailer",
                          f"{fixed + 24 * p} bytes for {n} keys and {p} pending keys",
                          f"{len(data)} bytes")
    arr = np.frombuffer(data, "<i8", 2 * n + 3 * p, 8 * (n_tot + 2))
    pending = np.stack([arr[2 * n + p: 2 * n + 2 * p], arr[2 * n + 2 * p:]], axis=1)
    return {evict.TOTALS_KEY: (np.zeros(0, np.int64), head[:n_tot].copy()),
            evict.LAST_USED_KEY: (keys, arr[:n].copy()),
            evict.COUNT_KEY: (keys, arr[n: 2 * n].copy()),
            evict.PENDING_KEY: (arr[2 * n: 2 * n + p].copy(), pending.copy())}


@torch.no_grad()
def load_optimizer_state_bytes(table: EmbeddingTable, data: bytes,
                               keys: np.ndarray | None = None) -> None:
    """Read :func:`optimizer_state_bytes` content. Row ``i`` belongs to ``keys[i]`` when given
    (the ``key`` file saved alongside), else to the table's row order."""
    opt = table.optimizer
    k = table.index.keys() if keys is None else _as_keys(keys, table.device)
    n, dim = k.numel(), table.config.dim
    expected = n * dim * 4 * len(opt.states) + (n * 8 if opt.lazy else 0) + 8
    trailer = table.eviction is not None and len(data) > expected
    if len(data) != expected and not trailer:
        raise ConfigError(
            f"embedding table {table.name!r} sparse optimizer state file",
            f"{expected} bytes for {n} keys x dim {dim} with {opt.config.type}/"
            f"{opt.config.update_type}", f"{len(data)} bytes",
            hint="The file must come from a table with the same optimizer and keys",
        )
    state: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    keys_np = k.cpu().numpy()
    pos = 0
    for name in opt.state_names:
        arr = np.frombuffer(data, dtype="<f4", count=n * dim, offset=pos).reshape(n, dim)
        state[name] = (keys_np, arr.copy())
        pos += n * dim * 4
    if opt.lazy:
        state[LAST_STEP_KEY] = (keys_np, np.frombuffer(data, "<i8", n, pos).copy())
        pos += n * 8
    state[STEP_KEY] = (np.zeros(0, np.int64), np.frombuffer(data, "<i8", 1, pos).copy())
    if trailer:
        state.update(_read_eviction_trailer(table, data[expected:], keys_np))
    load_optimizer_state(table, state)
