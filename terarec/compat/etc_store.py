"""Parameter servers of the Embedding Training Cache (ETC): where a table's rows live between passes.

Owns the host side of HugeCTR's ETC (<= 23.08, §12 of the reference): one store per embedding
table holding every row with its optimizer state, the HMemCache pass blocks of the Cached-PS,
and the ETC sparse model folder (HugeCTR's ``key`` / ``emb_vector`` / ``slot_id`` plus one file
per optimizer state). :mod:`terarec.compat.etc` moves rows between a store and the training
table, which holds one pass's rows.

* ``Staged`` -> terarec's host-memory tier (:class:`~terarec.inference.tiers.HostMemoryTier`):
  the whole table in host RAM.
* ``Cached`` -> terarec's SSD tier (:class:`~terarec.inference.tiers.persistent.RocksDBTier`,
  pip extra ``kv``) in a scratch folder ``terarec_etc_*`` under ``local_paths[0]`` (it stays
  there after the process ends, as HugeCTR's local-path files do; delete it when the job is
  done), behind a host cache of the rows of up to ``num_blocks`` passes. HugeCTR's HMemCache
  rule: a pass's rows take a free block; once all blocks are used, a pass whose hit rate is
  below ``target_hit_rate`` replaces the oldest block, at most ``max_num_evict`` times; then
  the cache is frozen. Writes go to the SSD tier and refresh the cached copies, so the cache
  never changes a value, only where it is read from.

A row is stored as one float32 record: the vector, each optimizer state, the slot id and, for
LazyGlobal updates, the step of the row's last update (int64s kept bit-exact as two float32
words each).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from terarec.checkpoint import hugectr_files as hf
from terarec.errors import DataError
from terarec.utils.atomic import atomic_dir

#: HugeCTR's optimizer-state file names in an ETC sparse model folder (sic "momtentum");
#: states without a HugeCTR counterpart are written as ``{optimizer}.{state}``.
HUGECTR_STATE_FILES = {
    ("Adam", "m"): "Adam.m", ("Adam", "v"): "Adam.v", ("AdaGrad", "accum"): "AdaGrad.accm",
    ("MomentumSGD", "momentum"): "MomentumSGD.momtentum", ("Nesterov", "accum"): "Nesterov.accm",
}
LAST_STEP_FILE = "LazyGlobal.last_step"
STEP_FILE = "terarec_optimizer.json"


def state_file_name(optimizer: str, state: str) -> str:
    return HUGECTR_STATE_FILES.get((optimizer, state), f"{optimizer}.{state}")


# ------------------------------------------------------------------------------ rows
@dataclass(frozen=True)
class RowLayout:
    """What a table's record holds: ``dim`` floats per vector and per optimizer state."""

    dim: int
    num_states: int
    lazy: bool

    @property
    def width(self) -> int:
        return self.dim * (1 + self.num_states) + 2 + (2 if self.lazy else 0)


@dataclass
class Rows:
    """Rows of one table, entry ``i`` of every array belonging to ``keys[i]``."""

    keys: np.ndarray                # int64 [n]
    vectors: np.ndarray             # float32 [n, dim]
    states: list[np.ndarray]        # float32 [n, dim] per optimizer state
    slots: np.ndarray               # int64 [n]
    last_step: np.ndarray | None    # int64 [n] (LazyGlobal only)

    def __len__(self) -> int:
        return int(self.keys.shape[0])


def _int_words(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype="<i8").view("<f4").reshape(-1, 2)


def _words_int(words: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(words, dtype="<f4").view("<i8").reshape(-1)


def pack(layout: RowLayout, rows: Rows) -> np.ndarray:
    """One float32 record per row (see the module docstring)."""
    if not len(rows):
        return np.zeros((0, layout.width), np.float32)
    parts = [rows.vectors, *rows.states, _int_words(rows.slots)]
    if layout.lazy:
        assert rows.last_step is not None  # noqa: S101 - built from a lazy table
        parts.append(_int_words(rows.last_step))
    out = np.concatenate([np.asarray(p, dtype=np.float32).reshape(len(rows), -1)
                          for p in parts], axis=1)
    assert out.shape[1] == layout.width  # noqa: S101 - layout and rows come from one table
    return np.ascontiguousarray(out)


def unpack(layout: RowLayout, keys: np.ndarray, packed: np.ndarray) -> Rows:
    d = layout.dim
    packed = np.asarray(packed, dtype=np.float32).reshape(-1, layout.width)
    states = [packed[:, d * (i + 1):d * (i + 2)].copy() for i in range(layout.num_states)]
    at = d * (1 + layout.num_states)
    last = _words_int(packed[:, at + 2:at + 4]) if layout.lazy else None
    return Rows(np.asarray(keys, dtype=np.int64), packed[:, :d].copy(), states,
                _words_int(packed[:, at:at + 2]), last)


# ------------------------------------------------------------------------------ stores
class Store(Protocol):
    """One table's parameter server."""

    kind: str
    empty: bool

    def pull(self, keys: np.ndarray, pass_level: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(records [n, width], found [n])``; ``pass_level``: a whole pass's keys (the
        Cached-PS may keep them in a block)."""
        ...

    def push(self, keys: np.ndarray, records: np.ndarray) -> None: ...

    def dump(self) -> tuple[np.ndarray, np.ndarray]: ...


class StagedStore:
    """``TrainPSType_t.Staged``: the whole table in terarec's host-memory tier."""

    kind = "Staged"

    def __init__(self, name: str, layout: RowLayout) -> None:
        from terarec.inference.tiers import HostMemoryTier

        self.tier = HostMemoryTier(f"etc.{name}", layout.width)
        self.empty = True

    def pull(self, keys: np.ndarray, pass_level: bool) -> tuple[np.ndarray, np.ndarray]:
        return self.tier.lookup(keys)

    def push(self, keys: np.ndarray, records: np.ndarray) -> None:
        if keys.size:
            self.tier.insert(keys, records)
            self.empty = False

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        return self.tier.dump()


class PassBlocks:
    """HugeCTR's HMemCache: host copies of the rows of up to ``num_blocks`` passes."""

    def __init__(self, num_blocks: int, target_hit_rate: float, max_num_evict: int) -> None:
        self.num_blocks = num_blocks
        self.target_hit_rate = target_hit_rate
        self.max_num_evict = max_num_evict
        self.blocks: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, records), oldest first
        self.num_evict = 0
        self.last_hit_rate = 1.0

    @staticmethod
    def _find(block_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pos = np.minimum(np.searchsorted(block_keys, keys), max(block_keys.size - 1, 0))
        hit = block_keys[pos] == keys if block_keys.size else np.zeros(keys.size, bool)
        return pos, hit

    def lookup(self, keys: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((keys.size, width), np.float32)
        found = np.zeros(keys.size, bool)
        for bkeys, brec in reversed(self.blocks):  # newest first
            pos, hit = self._find(bkeys, keys)
            hit &= ~found
            out[hit] = brec[pos[hit]]
            found |= hit
        return out, found

    def write(self, keys: np.ndarray, records: np.ndarray) -> None:
        for bkeys, brec in self.blocks:
            pos, hit = self._find(bkeys, keys)
            brec[pos[hit]] = records[hit]

    def admit(self, keys: np.ndarray, records: np.ndarray, hit_rate: float) -> None:
        """Cache a pass's rows by HugeCTR's three phases (insert, update, frozen)."""
        self.last_hit_rate = hit_rate
        if not keys.size:  # nothing of this pass is stored yet
            return
        if len(self.blocks) >= self.num_blocks:
            if hit_rate >= self.target_hit_rate or self.num_evict >= self.max_num_evict:
                return
            self.blocks.pop(0)
            self.num_evict += 1
        order = np.argsort(keys, kind="stable")
        self.blocks.append((keys[order].copy(), records[order].copy()))


class CachedStore:
    """``TrainPSType_t.Cached``: terarec's RocksDB (SSD) tier behind :class:`PassBlocks`."""

    kind = "Cached"

    def __init__(self, name: str, layout: RowLayout, folder: str, blocks: PassBlocks) -> None:
        from terarec.inference.tiers.persistent import RocksDBTier

        self.ssd = RocksDBTier(f"etc.{name}", layout.width, folder)
        self.blocks = blocks
        self.width = layout.width
        self.empty = True

    def pull(self, keys: np.ndarray, pass_level: bool) -> tuple[np.ndarray, np.ndarray]:
        out, found = self.blocks.lookup(keys, self.width)
        hits = int(found.sum())
        miss = np.flatnonzero(~found)
        if miss.size and not self.empty:
            rec, got = self.ssd.lookup(keys[miss])
            out[miss[got]] = rec[got]
            found[miss[got]] = True
        if pass_level and keys.size:
            self.blocks.admit(keys[found], out[found], hits / keys.size)
        return out, found

    def push(self, keys: np.ndarray, records: np.ndarray) -> None:
        if keys.size:
            self.ssd.insert(keys, records)
            self.blocks.write(keys, records)
            self.empty = False

    def dump(self) -> tuple[np.ndarray, np.ndarray]:
        return self.ssd.dump()


def scratch_folder(local_path: str) -> str:
    """A new folder for this model's Cached tables under ``local_path`` (created if needed)."""
    os.makedirs(local_path, exist_ok=True)
    return tempfile.mkdtemp(prefix="terarec_etc_", dir=local_path)


# ------------------------------------------------------------------------------ model folder
@dataclass
class FolderOptimizer:
    """The optimizer whose states an ETC sparse model folder carries."""

    type: str
    update_type: str
    state_names: tuple[str, ...]
    initial_values: tuple[float, ...]
    lazy: bool


def read_model_folder(path: str, layout: RowLayout, opt: FolderOptimizer,
                      ) -> tuple[Rows, int | None]:
    """Rows of an ETC sparse model folder and the saved optimizer step (None when absent).

    Optimizer-state files of this optimizer are read when present (else the states start at
    their initial values, as for a folder written without them); their sizes are checked.
    """
    keys, vectors, slots = hf.read_sparse_folder(path, layout.dim)
    n = keys.shape[0]
    folder = Path(path)
    states = []
    for name, init in zip(opt.state_names, opt.initial_values):
        f = folder / state_file_name(opt.type, name)
        states.append(_read_rows(f, n, layout.dim, "<f4") if f.is_file()
                      else np.full((n, layout.dim), init, np.float32))
    last = None
    if opt.lazy:
        f = folder / LAST_STEP_FILE
        last = _read_rows(f, n, 1, "<i8").reshape(n) if f.is_file() else np.zeros(n, np.int64)
    step = None
    meta = folder / STEP_FILE
    if meta.is_file():
        try:
            info = json.loads(meta.read_text())
        except ValueError as exc:
            raise DataError(str(meta), f"not valid JSON ({exc})") from None
        if info.get("optimizer") == opt.type and info.get("update_type") == opt.update_type:
            step = int(info.get("step", 0))
    slot_ids = np.zeros(n, np.int64) if slots is None else slots.astype(np.int64)
    return Rows(keys.astype(np.int64), vectors, states, slot_ids, last), step


def _read_rows(path: Path, n: int, width: int, dtype: str) -> np.ndarray:
    item = np.dtype(dtype).itemsize
    size = path.stat().st_size
    if size != n * width * item:
        raise DataError(str(path), f"has {size} bytes, expected {n * width * item} ({n} keys "
                        f"x {width} x {item} bytes, as the key file of the folder)")
    return np.fromfile(path, dtype=dtype).reshape(n, width)


def write_model_folder(path: str, rows: Rows, opt: FolderOptimizer, step: int,
                       localized: bool) -> None:
    """Replace the folder atomically: ``key``, ``emb_vector``, ``slot_id`` (LocalizedSlot
    tables), one file per optimizer state, LazyGlobal's last steps and the step counter."""
    with atomic_dir(path) as tmp:
        hf.write_sparse_files(tmp, rows.keys, rows.vectors, rows.slots if localized else None)
        for name, values in zip(opt.state_names, rows.states):
            np.ascontiguousarray(values, dtype="<f4").tofile(tmp / state_file_name(opt.type, name))
        if opt.lazy and rows.last_step is not None:
            np.ascontiguousarray(rows.last_step, dtype="<i8").tofile(tmp / LAST_STEP_FILE)
        info: dict[str, Any] = {"format": "terarec-etc-optimizer", "optimizer": opt.type,
                                "update_type": opt.update_type, "step": int(step),
                                "states": list(opt.state_names)}
        (tmp / STEP_FILE).write_text(json.dumps(info, indent=2) + "\n")
