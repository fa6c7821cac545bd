"""``Model.embedding_dump(path, table_names=[])`` / ``Model.embedding_load(path, table_names=[])``:
HugeCTR's files of embedding-collection tables (reference §8.2, §12.2, §17.5).

Layout (all little-endian), one folder per collection (``cid`` = add order, from 0)::

    path/embedding_collection_{cid}/
        meta_data     int32[5] header [num_tables, key_type, value_type, 0, 0]
                      (key_type 0 = uint32, 1 = int64; value_type 0 = float32, 1 = float16;
                      terarec writes 1 and 0, and reads all four),
                      int32 table_ids[n], uint64 key_counts[n], int32 ev_sizes[n]
        key{t}        128-byte header int32[32] = [1, t, 0...], then key_counts[i] keys
        weight{t}     header [2, t, 0...], then float vectors [key_counts[i], ev_size]
        optimizer{t}  header [3, t, S, L, step_lo, step_hi, ev_size, opt_type, 0...], then S
                      float32 state arrays [key_counts[i], ev_size] (the update rule's order,
                      §5.2: Adam m then v), then if L = 1 the int64 last-update step per row
                      (LazyGlobal); step = the table's optimizer step counter (int64);
                      opt_type = index in OPTIMIZER_TYPES (SGD, MomentumSGD, Nesterov, Adam,
                      AdaGrad, Ftrl, RMSProp)

Design choices where the reference is silent: ``t`` is the table's index among the tables of
its collection (first-lookup order; a table looked up several times is dumped once); row ``r``
of ``weight{t}`` / ``optimizer{t}`` belongs to key ``r`` of ``key{t}``; keys are the table's
own keys (the per-slot offset a reader with ``slot_size_array`` adds is removed on dump and
added back on load); the optimizer file is terarec's (HugeCTR marks file type 3 only) and
optional on load (without it the states stay as they are).

Semantics: ``table_names`` (HugeCTR table names) selects tables, empty = every table. Dump
writes each collection folder atomically (a temporary folder renamed into place: never a
half-written folder; other content of ``path`` is left alone). Load overwrites the rows of the
dumped keys (other rows keep their values) and their optimizer states. One process only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from terarec.embedding.table_io import LAST_STEP_KEY, STEP_KEY
from terarec.errors import ConfigError, DataError, NotSupportedError
from terarec.optim.config import OPTIMIZER_TYPES
from terarec.utils.atomic import atomic_dir
from terarec.utils.paths import check_local_path

HEADER_BYTES = 128
META_HEADER = 5
KEY_FILE, WEIGHT_FILE, OPT_FILE = 1, 2, 3
KEY_TYPES = {0: np.dtype("<u4"), 1: np.dtype("<i8")}
VALUE_TYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2")}


@dataclass
class DumpTable:
    """One embedding-collection table of a model."""

    collection: int
    table_id: int
    name: str
    lookups: list[str]
    ev_size: int
    key_offset: int  # added to the dumped keys to get the keys the table holds


@dataclass
class Meta:
    """A ``meta_data`` file."""

    key_type: int
    value_type: int
    table_ids: list[int]
    key_counts: list[int]
    ev_sizes: list[int]


def collection_tables(model: Any) -> list[DumpTable]:
    """Every embedding-collection table of ``model`` (by collection, then table id)."""
    found: dict[tuple[int, str], DumpTable] = {}
    for spec in model.spec.embeddings:
        if "table" not in spec.extra:
            continue
        key = (int(spec.extra.get("collection", 0)), str(spec.extra["table"]))
        if key in found:
            found[key].lookups.append(spec.top)
            found[key].key_offset = 0  # shared: lookups remove their offsets themselves
            continue
        found[key] = DumpTable(key[0], int(spec.extra.get("table_id", len(found))), key[1],
                               [spec.top], spec.embedding_vec_size,
                               int(spec.extra.get("key_offset", 0)))
    return sorted(found.values(), key=lambda t: (t.collection, t.table_id))


def _selected(model: Any, table_names: list[str] | None, method: str) -> list[DumpTable]:
    model._engine()
    if getattr(model, "_dist", None) is not None:
        raise NotSupportedError(f"Model.{method}: on several ranks; dump the tables of a "
                                "one-process model, or use save_params_to_files / "
                                "load_training_state (sharded checkpoints)")
    tables = collection_tables(model)
    if not tables:
        raise ConfigError(f"Model.{method}", "a model with an EmbeddingCollectionConfig "
                          "(model.add(ebc_config))", "no embedding-collection table")
    names = list(table_names or [])
    if not isinstance(table_names, (list, tuple, type(None))) or \
            not all(isinstance(n, str) for n in names):
        raise ConfigError(f"Model.{method}(table_names=...)", "a list of table names",
                          table_names)
    known = [t.name for t in tables]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"Model.{method}(table_names=...)", f"table names among {known}",
                          unknown)
    return [t for t in tables if not names or t.name in names]


def _folder(path: str | os.PathLike[str], cid: int) -> Path:
    return Path(path) / f"embedding_collection_{cid}"


# ------------------------------------------------------------------ dump
def _header(kind: int, table_id: int, *words: int) -> bytes:
    h = np.zeros(HEADER_BYTES // 4, dtype="<i4")
    h[:2 + len(words)] = [kind, table_id, *words]
    return h.tobytes()


def _meta_bytes(ids: list[int], counts: list[int], ev_sizes: list[int]) -> bytes:
    head = np.array([len(ids), 1, 0, 0, 0], dtype="<i4")
    return b"".join([head.tobytes(), np.asarray(ids, "<i4").tobytes(),
                     np.asarray(counts, "<u8").tobytes(), np.asarray(ev_sizes, "<i4").tobytes()])


def _align(src_keys: np.ndarray, values: np.ndarray, keys: np.ndarray, what: str) -> np.ndarray:
    """``values`` (rows of ``src_keys``) in the order of ``keys`` (the same set)."""
    if np.array_equal(src_keys, keys):
        return values
    order = np.argsort(src_keys, kind="stable")
    pos = np.searchsorted(src_keys[order], keys)
    if len(src_keys) != len(keys) or not np.array_equal(src_keys[order][pos], keys):
        raise DataError(what, "optimizer state keys differ from the table's keys")
    return values[order[pos]]


def _optimizer_bytes(table: Any, keys: np.ndarray, table_id: int, ev: int) -> bytes:
    opt = table.optimizer
    state = table.optimizer_state()
    step = int(np.asarray(state[STEP_KEY][1]).reshape(-1)[0])
    parts = [_align(*state[n], keys, table.name).astype("<f4").tobytes()
             for n in opt.state_names]
    lazy = LAST_STEP_KEY in state
    if lazy:
        parts.append(_align(*state[LAST_STEP_KEY], keys, table.name).astype("<i8").tobytes())
    words = (len(opt.state_names), int(lazy), step & 0xFFFFFFFF, step >> 32, ev,
             OPTIMIZER_TYPES.index(opt.config.type))
    head = np.zeros(HEADER_BYTES // 4, dtype="<u4")
    head[:8] = [OPT_FILE, table_id, *words]
    return head.tobytes() + b"".join(parts)


def embedding_dump(model: Any, path: str | os.PathLike[str],
                   table_names: list[str] | None = None) -> None:
    """Write the selected tables (default all) of every collection under ``path``."""
    check_local_path(path, "Model.embedding_dump(path=...)")
    tables = _selected(model, table_names, "embedding_dump")
    engine_tables = model._engine().tables
    for cid in sorted({t.collection for t in tables}):
        group = [t for t in tables if t.collection == cid]
        counts = []
        with atomic_dir(_folder(path, cid)) as tmp:
            for t in group:
                table = engine_tables[t.lookups[0]]
                keys, vectors, _ = table.export()
                keys = np.asarray(keys, np.int64) - t.key_offset
                (tmp / f"key{t.table_id}").write_bytes(
                    _header(KEY_FILE, t.table_id) + keys.astype("<i8").tobytes())
                (tmp / f"weight{t.table_id}").write_bytes(
                    _header(WEIGHT_FILE, t.table_id)
                    + np.ascontiguousarray(vectors, "<f4").tobytes())
                (tmp / f"optimizer{t.table_id}").write_bytes(
                    _optimizer_bytes(table, keys + t.key_offset, t.table_id, t.ev_size))
                counts.append(len(keys))
            (tmp / "meta_data").write_bytes(_meta_bytes(
                [t.table_id for t in group], counts, [t.ev_size for t in group]))


# ------------------------------------------------------------------ load
def read_meta(folder: Path) -> Meta:
    """Parse and check ``folder/meta_data``."""
    path = folder / "meta_data"
    if not path.is_file():
        raise DataError(str(path), "embedding_dump meta_data file not found")
    data = path.read_bytes()
    if len(data) < META_HEADER * 4:
        raise DataError(str(path), f"has {len(data)} bytes, expected at least "
                        f"{META_HEADER * 4} (int32 header)")
    n, key_type, value_type = np.frombuffer(data, "<i4", 3).tolist()
    expected = META_HEADER * 4 + n * (4 + 8 + 4)
    if n < 0 or len(data) != expected:
        raise DataError(str(path), f"has {len(data)} bytes, expected {expected} for "
                        f"num_tables={n}")
    if key_type not in KEY_TYPES or value_type not in VALUE_TYPES:
        raise DataError(str(path), f"key_type {key_type} / value_type {value_type}; expected "
                        f"key_type in {sorted(KEY_TYPES)}, value_type in {sorted(VALUE_TYPES)}",
                        field="header")
    pos = META_HEADER * 4
    ids = np.frombuffer(data, "<i4", n, pos).tolist()
    counts = np.frombuffer(data, "<u8", n, pos + 4 * n).tolist()
    evs = np.frombuffer(data, "<i4", n, pos + 12 * n).tolist()
    return Meta(key_type, value_type, ids, counts, evs)


def _body(path: Path, kind: int, table_id: int, nbytes: int, what: str) -> tuple[np.ndarray,
                                                                                  bytes]:
    """Header words and body of one table file, checked: type, table id, size."""
    if not path.is_file():
        raise DataError(str(path), f"{what} file not found")
    data = path.read_bytes()
    if len(data) < HEADER_BYTES:
        raise DataError(str(path), f"has {len(data)} bytes, expected a {HEADER_BYTES}-byte "
                        "header")
    head = np.frombuffer(data, "<i4", HEADER_BYTES // 4)
    if int(head[0]) != kind or int(head[1]) != table_id:
        raise DataError(str(path), f"header [type, table id] = {head[:2].tolist()}, expected "
                        f"[{kind}, {table_id}]", field="header")
    if nbytes >= 0 and len(data) != HEADER_BYTES + nbytes:
        raise DataError(str(path), f"has {len(data)} bytes, expected {HEADER_BYTES + nbytes} "
                        f"({HEADER_BYTES}-byte header + {nbytes} bytes of {what})")
    return head, data[HEADER_BYTES:]


def _load_optimizer(table: Any, path: Path, t: DumpTable, keys: np.ndarray) -> None:
    head, body = _body(path, OPT_FILE, t.table_id, -1, "optimizer state")
    n, ev = len(keys), t.ev_size
    opt = table.optimizer
    s_count, lazy, lo, hi, file_ev, type_code = (int(x) for x in head[2:8])
    names = list(opt.state_names)
    file_type = OPTIMIZER_TYPES[type_code] if 0 <= type_code < len(OPTIMIZER_TYPES) else type_code
    if file_type != opt.config.type or s_count != len(names) or file_ev != ev \
            or bool(lazy) != opt.lazy:
        raise DataError(str(path), f"holds {file_type} states ({s_count} arrays, ev_size "
                        f"{file_ev}, last-step {bool(lazy)}); expected {opt.config.type} "
                        f"({len(names)} arrays, ev_size {ev}, last-step {opt.lazy})")
    expected = n * ev * 4 * s_count + (n * 8 if lazy else 0)
    if len(body) != expected:
        raise DataError(str(path), f"has {len(body) + HEADER_BYTES} bytes, expected "
                        f"{expected + HEADER_BYTES} for {n} keys")
    state: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for i, name in enumerate(names):
        arr = np.frombuffer(body, "<f4", n * ev, i * n * ev * 4)
        state[name] = (keys, arr.reshape(n, ev).copy())
    if lazy:
        state[LAST_STEP_KEY] = (keys, np.frombuffer(body, "<i8", n, s_count * n * ev * 4).copy())
    step = (lo & 0xFFFFFFFF) | ((hi & 0xFFFFFFFF) << 32)
    state[STEP_KEY] = (np.zeros(0, np.int64), np.array([step], np.int64))
    table.load_optimizer_state(state)


def _load_table(model: Any, folder: Path, meta: Meta, t: DumpTable) -> None:
    meta_path = folder / "meta_data"
    if t.table_id not in meta.table_ids:
        raise DataError(str(meta_path), f"no table id {t.table_id} (table {t.name!r}); "
                        f"it lists {meta.table_ids}")
    i = meta.table_ids.index(t.table_id)
    n, ev = int(meta.key_counts[i]), meta.ev_sizes[i]
    if ev != t.ev_size:
        raise DataError(str(meta_path), f"table {t.name!r} (id {t.table_id}) has ev_size {ev}, "
                        f"expected {t.ev_size} (this model's table)")
    kdt, vdt = KEY_TYPES[meta.key_type], VALUE_TYPES[meta.value_type]
    _, kb = _body(folder / f"key{t.table_id}", KEY_FILE, t.table_id, n * kdt.itemsize, "keys")
    _, vb = _body(folder / f"weight{t.table_id}", WEIGHT_FILE, t.table_id,
                  n * ev * vdt.itemsize, "vectors")
    keys = np.frombuffer(kb, kdt).astype(np.int64) + t.key_offset
    vectors = np.frombuffer(vb, vdt).astype(np.float32).reshape(n, ev)
    table = model._engine().tables[t.lookups[0]]
    table.load(keys, vectors)
    opt_path = folder / f"optimizer{t.table_id}"
    if opt_path.is_file():
        _load_optimizer(table, opt_path, t, keys)


def embedding_load(model: Any, path: str | os.PathLike[str],
                   table_names: list[str] | None = None) -> None:
    """Load the selected tables (default all) of every collection from ``path``."""
    check_local_path(path, "Model.embedding_load(path=...)")
    tables = _selected(model, table_names, "embedding_load")
    if not Path(path).is_dir():
        raise DataError(str(path), "embedding_dump folder not found")
    for cid in sorted({t.collection for t in tables}):
        folder = _folder(path, cid)
        if not folder.is_dir():
            raise DataError(str(folder), f"folder of embedding collection {cid} not found")
        meta = read_meta(folder)
        for t in tables:
            if t.collection == cid:
                _load_table(model, folder, meta, t)
