"""The fitted preprocessing transform: dense statistics + categorical vocabularies, saved as JSON
next to the output so inference applies exactly the same mapping (:meth:`Transform.load`).

Dense (per column): missing -> 0, clip at 0 (Criteo has -1..-3), then ``"log"``: ``log(x + 1)``
(default), ``"standardize"``: ``(x - mean) / std`` with the training mean/std, or ``"none"``.

Categorical ids per column: ``0`` = missing (empty field), ``1`` = out-of-vocabulary (seen fewer
than ``freq_threshold`` times in training, or never), ``2..`` = the frequent values by
descending count (ties by value). ``slot_size = len(vocab) + 2``. With ``hash_buckets=M`` no
vocabulary is kept: ``0`` = missing, else ``1 + hash(value) % (M - 1)``; ``slot_size = M``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import numpy as np

from terarec.data.arrowtext import unpack_short
from terarec.data.preprocess.spec import Parsed
from terarec.data.readers.chunk import Chunk
from terarec.data.textparse import hash_bytes

TRANSFORM_FILE = "transform.json"
VOCAB_FILE = "vocab.json"


@dataclass
class FitStats:
    """Mergeable pass-1 statistics of one block (or many)."""

    rows: int = 0
    dense_sum: np.ndarray | None = None
    dense_sq: np.ndarray | None = None
    dense_min: np.ndarray | None = None
    dense_max: np.ndarray | None = None
    dense_missing: np.ndarray | None = None
    values: list[np.ndarray] = field(default_factory=list)  # unique values per cat column
    counts: list[np.ndarray] = field(default_factory=list)
    #: merged-in (values, counts) not yet folded into ``values``/``counts`` (see ``compact``)
    pending: list[tuple[list[np.ndarray], list[np.ndarray]]] = field(default_factory=list)

    @staticmethod
    def of(p: Parsed, count_values: bool) -> FitStats:
        x = np.maximum(p.dense, 0.0)
        st = FitStats(len(p.lines), x.sum(0), (x * x).sum(0), x.min(0, initial=np.inf),
                      x.max(0, initial=-np.inf), p.dense_missing.sum(0))
        if count_values:
            for c in range(p.cats.shape[1]):
                v, n = np.unique(p.cats[:, c], return_counts=True)
                st.values.append(v)
                st.counts.append(n)
        return st

    def merge(self, o: FitStats) -> FitStats:
        """Sum of both. Value counts are folded lazily: ``o``'s are queued and all queued ones
        are folded at once when they outgrow the folded ones (amortised O(n log n) in total
        instead of re-sorting the whole vocabulary for every block)."""
        if self.dense_sum is None:
            return o
        out = FitStats(self.rows + o.rows, self.dense_sum + o.dense_sum,
                       self.dense_sq + o.dense_sq, np.minimum(self.dense_min, o.dense_min),
                       np.maximum(self.dense_max, o.dense_max),
                       self.dense_missing + o.dense_missing, self.values, self.counts,
                       [*self.pending, (o.values, o.counts), *o.pending])
        held = sum(v.size for v in out.values)
        queued = sum(v.size for vals, _ in out.pending for v in vals)
        if queued > max(held, 1 << 16):
            out.compact()
        return out

    def compact(self) -> FitStats:
        """Fold the queued value counts into ``values`` / ``counts`` (exact); returns self."""
        if not self.pending:
            return self
        parts = [(self.values, self.counts)] if self.values else []
        parts += [p for p in self.pending if p[0]]
        self.pending = []
        if not parts:
            return self
        vals, cnts = [], []
        for c in range(len(parts[0][0])):
            v, inv = np.unique(_same_kind([p[0][c] for p in parts]), return_inverse=True)
            vals.append(v)
            cnts.append(np.bincount(inv.reshape(-1), np.concatenate([p[1][c] for p in parts]),
                                    minlength=v.size).astype(np.int64))
        self.values, self.counts = vals, cnts
        return self


def _same_kind(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate categorical values: packed uint64 stays packed; mixed -> bytes."""
    if all(a.dtype == np.uint64 for a in arrays):
        return np.concatenate(arrays)
    return np.concatenate([unpack_short(a) if a.dtype == np.uint64 else a for a in arrays])


@dataclass
class Transform:
    label_names: list[str]
    dense_names: list[str]
    cat_names: list[str]
    dense_mode: str = "log"
    freq_threshold: int = 1
    hash_buckets: int | None = None
    dense_stats: dict[str, dict] = field(default_factory=dict)
    vocab: dict[str, list[str]] = field(default_factory=dict)
    counts_total: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lookup: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, st: FitStats) -> None:
        st.compact()
        n = max(st.rows, 1)
        mean = st.dense_sum / n if st.dense_sum is not None else []
        for i, name in enumerate(self.dense_names):
            var = max(float(st.dense_sq[i] / n - mean[i] ** 2), 0.0)
            self.dense_stats[name] = {
                "mean": float(mean[i]), "std": float(np.sqrt(var)) or 1.0,
                "min": float(st.dense_min[i]), "max": float(st.dense_max[i]),
                "missing": int(st.dense_missing[i]),
            }
        if self.hash_buckets:
            return
        for name, v, c in zip(self.cat_names, st.values, st.counts):
            # packed uint64 values sort like their bytes (arrowtext.pack_short); 0 = b""
            keep = (c >= self.freq_threshold) & (v != (0 if v.dtype == np.uint64 else b""))
            v, c = v[keep], c[keep]
            order = np.lexsort((v, -c))
            v = v[order]
            if v.dtype == np.uint64:
                v = unpack_short(v)
            self.vocab[name] = [s.decode("latin-1") for s in v]
            self.counts_total[name] = int(c.sum())

    @property
    def slot_size_array(self) -> list[int]:
        if self.hash_buckets:
            return [int(self.hash_buckets)] * len(self.cat_names)
        return [len(self.vocab[c]) + 2 for c in self.cat_names]

    # -- applying --------------------------------------------------------------------------
    def _table(self, name: str, packed: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Sorted vocabulary values and their ids; ``packed``: as uint64 (all <= 8 bytes)."""
        key = name + ("\0packed" if packed else "")
        if key not in self._lookup:
            vals = np.array([s.encode("latin-1") for s in self.vocab[name]] or [b""], dtype=bytes)
            ids = np.arange(2, vals.size + 2, dtype=np.int64)
            if not self.vocab[name]:
                ids = np.array([1], np.int64)
            if packed:
                if vals.dtype.itemsize > 8:
                    raise ValueError("vocabulary values longer than 8 bytes")
                vals = np.ascontiguousarray(vals, dtype="S8").view(">u8").astype(np.uint64)
            order = np.argsort(vals, kind="stable")
            self._lookup[key] = (vals[order], ids[order])
        return self._lookup[key]

    def _packed_ok(self, name: str) -> bool:
        if name + "\0packed" in self._lookup:
            return True
        return all(len(s) <= 8 for s in self.vocab[name])

    def dense_values(self, p: Parsed) -> np.ndarray:
        x = np.maximum(p.dense, 0.0)
        if self.dense_mode == "log":
            return np.log1p(x).astype(np.float32)
        if self.dense_mode == "standardize":
            m = np.array([self.dense_stats[c]["mean"] for c in self.dense_names])
            s = np.array([self.dense_stats[c]["std"] for c in self.dense_names])
            return ((x - m) / s).astype(np.float32)
        return x.astype(np.float32)

    def cat_ids(self, p: Parsed) -> np.ndarray:
        n, C = p.cats.shape
        out = np.empty((n, C), dtype=np.int64)
        packed = p.cats.dtype == np.uint64
        for j, name in enumerate(self.cat_names):
            col = p.cats[:, j]
            if packed and (self.hash_buckets or not self._packed_ok(name)):
                col = unpack_short(col)
            if self.hash_buckets:
                ids = 1 + (hash_bytes(col, salt=j + 1) % np.uint64(self.hash_buckets - 1)
                           ).astype(np.int64)
            else:
                vals, idv = self._table(name, col.dtype == np.uint64)
                pos = np.clip(np.searchsorted(vals, col), 0, vals.size - 1)
                ids = np.where(vals[pos] == col, idv[pos], 1)
            ids[col == (0 if col.dtype == np.uint64 else b"")] = 0
            out[:, j] = ids
        return out

    def apply(self, p: Parsed) -> Chunk:
        """Parsed rows -> a Chunk with per-slot ids (one key per slot)."""
        n = len(p.lines)
        keys = self.cat_ids(p)
        return Chunk(p.labels, self.dense_values(p), [keys.reshape(-1)],
                     [np.ones((n, len(self.cat_names)), np.int64)])

    # -- persistence -----------------------------------------------------------------------
    def save(self, directory: str) -> str:
        os.makedirs(directory, exist_ok=True)
        meta = {k: getattr(self, k) for k in ("label_names", "dense_names", "cat_names",
                                               "dense_mode", "freq_threshold", "hash_buckets",
                                               "dense_stats", "counts_total")}
        meta["slot_size_array"] = self.slot_size_array
        meta["id_convention"] = "0 = missing, 1 = out-of-vocabulary, 2.. = vocab[i - 2]"
        path = os.path.join(directory, TRANSFORM_FILE)
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=1)
        if not self.hash_buckets:
            with open(os.path.join(directory, VOCAB_FILE), "w", encoding="utf-8") as fh:
                json.dump(self.vocab, fh)
        return path

    @staticmethod
    def load(directory: str) -> Transform:
        with open(os.path.join(directory, TRANSFORM_FILE), encoding="utf-8") as fh:
            meta = json.load(fh)
        meta.pop("slot_size_array", None)
        meta.pop("id_convention", None)
        t = Transform(**meta)
        if not t.hash_buckets:
            with open(os.path.join(directory, VOCAB_FILE), encoding="utf-8") as fh:
                t.vocab = json.load(fh)
        return t
