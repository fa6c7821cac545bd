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
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from terarec.data.arrowtext import unpack_short
from terarec.data.preprocess.hashindex import PackedIndex
from terarec.data.preprocess.spec import Parsed
from terarec.data.readers.chunk import Chunk
from terarec.data.textparse import hash_bytes

#: bytes that JSON (ensure_ascii) writes as they are in a string: printable ASCII but " and \\
_JSON_SAFE = np.zeros(256, bool)
_JSON_SAFE[0x20:0x7F] = True
_JSON_SAFE[[ord('"'), ord("\\")]] = False

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
    #: (dense_sum, dense_sq) of later blocks, in input order, not yet added (``merge(o,
    #: fold=False)``): float sums depend on the order of the additions, so they are added one
    #: block after the other, whichever process merged the blocks' other statistics
    unfolded: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)

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

    def merge(self, o: FitStats, fold: bool = True, threads: int = 1) -> FitStats:
        """Sum of both (``o`` holds the rows after ``self``'s). Value counts are folded lazily:
        ``o``'s are queued and all queued ones are folded at once when they outgrow the folded
        ones (amortised O(n log n) in total instead of re-sorting the whole vocabulary for every
        block). Dense sums are added block by block in input order (``fold``), or, with
        ``fold=False`` (a worker merging consecutive blocks), listed in ``unfolded`` for the
        process that merges everything: the totals are then the same bits as when one process
        merges every block in order. ``threads``: for :meth:`compact`."""
        if self.dense_sum is None:
            return o._fold() if fold else o
        sums = [(o.dense_sum, o.dense_sq), *o.unfolded]
        if fold:
            self._fold()
            total, sq = self.dense_sum, self.dense_sq
            for a, b in sums:
                total, sq = total + a, sq + b
            rest: list[tuple[np.ndarray, np.ndarray]] = []
        else:
            total, sq, rest = self.dense_sum, self.dense_sq, [*self.unfolded, *sums]
        out = FitStats(self.rows + o.rows, total, sq, np.minimum(self.dense_min, o.dense_min),
                       np.maximum(self.dense_max, o.dense_max),
                       self.dense_missing + o.dense_missing, self.values, self.counts,
                       [*self.pending, (o.values, o.counts), *o.pending], rest)
        held = sum(v.size for v in out.values)
        queued = sum(v.size for vals, _ in out.pending for v in vals)
        if queued > max(held, 1 << 16):
            out.compact(threads)
        return out

    def _fold(self) -> FitStats:
        """Add the ``unfolded`` dense sums (in order); returns self."""
        for a, b in self.unfolded:
            self.dense_sum, self.dense_sq = self.dense_sum + a, self.dense_sq + b
        self.unfolded = []
        return self

    def compact(self, threads: int = 1) -> FitStats:
        """Fold the queued value counts into ``values`` / ``counts`` (exact); returns self.
        ``threads`` > 1: columns are merged on that many threads (numpy sorts release the
        GIL) when there are over a million values to merge."""
        if not self.pending:
            return self
        parts = [(self.values, self.counts)] if self.values else []
        parts += [p for p in self.pending if p[0]]
        self.pending = []
        if not parts:
            return self

        def column(c: int) -> tuple[np.ndarray, np.ndarray]:
            return _merge_counts(_same_kind([p[0][c] for p in parts]),
                                 np.concatenate([p[1][c] for p in parts]))

        cols = range(len(parts[0][0]))
        size = sum(v.size for p in parts for v in p[0])
        if threads > 1 and size > 1 << 20:
            with ThreadPoolExecutor(threads) as pool:
                merged = list(pool.map(column, cols))
        else:
            merged = [column(c) for c in cols]
        self.values = [v for v, _ in merged]
        self.counts = [n for _, n in merged]
        return self


def _merge_counts(values: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ``values`` and the sum of ``counts`` of each (int64, exact)."""
    if not values.size:
        return values, counts.astype(np.int64)
    order = np.argsort(values, kind="stable")  # sorted runs (one per merged part): fast
    v, c = values[order], counts[order].astype(np.int64, copy=False)
    start = np.flatnonzero(np.concatenate(([True], v[1:] != v[:-1])))
    return v[start], np.add.reduceat(c, start)


def _same_kind(arrays: list[np.ndarray]) -> np.ndarray:
    """Concatenate categorical values: packed uint64 stays packed; mixed -> bytes."""
    if all(a.dtype == np.uint64 for a in arrays):
        return np.concatenate(arrays)
    return np.concatenate([unpack_short(a) if a.dtype == np.uint64 else a for a in arrays])


class Vocab(Mapping):
    """Fitted vocabularies: per categorical column, the kept values in id order (id = 2 +
    position) as one numpy array, packed ``uint64`` (:func:`~terarec.data.arrowtext.pack_short`)
    or bytes (``S<w>``). ``vocab[name]`` is the list of ``str`` (latin-1) that ``vocab.json``
    holds, built on first use: fitting, saving and applying never need it."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self.arrays = arrays
        self._lists: dict[str, list[str]] = {}

    def __getitem__(self, name: str) -> list[str]:
        if name not in self._lists:
            self._lists[name] = [s.decode("latin-1") for s in _as_bytes(self.arrays[name])]
        return self._lists[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def size(self, name: str) -> int:
        return int(self.arrays[name].size)


def _as_bytes(v: np.ndarray) -> np.ndarray:
    return unpack_short(v) if v.dtype == np.uint64 else v


@dataclass
class Transform:
    label_names: list[str]
    dense_names: list[str]
    cat_names: list[str]
    dense_mode: str = "log"
    freq_threshold: int = 1
    hash_buckets: int | None = None
    dense_stats: dict[str, dict] = field(default_factory=dict)
    #: per column, the values in id order: a :class:`Vocab` after ``fit``, lists of str after
    #: ``load``
    vocab: Mapping[str, list[str]] = field(default_factory=dict)
    counts_total: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._lookup: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._index: dict[str, PackedIndex | None] = {}

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, st: FitStats, threads: int = 1) -> None:
        st._fold().compact(threads)
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
        arrays = {}
        for name, v, c in zip(self.cat_names, st.values, st.counts):
            # packed uint64 values sort like their bytes (arrowtext.pack_short); 0 = b""
            keep = (c >= self.freq_threshold) & (v != (0 if v.dtype == np.uint64 else b""))
            v, c = v[keep], c[keep]
            order = np.lexsort((v, -c))
            arrays[name] = v[order]
            self.counts_total[name] = int(c.sum())
        self.vocab = Vocab(arrays)
        self._lookup, self._index = {}, {}

    def vocab_values(self, name: str) -> np.ndarray:
        """Column ``name``'s vocabulary in id order (packed uint64 or bytes)."""
        if isinstance(self.vocab, Vocab):
            return self.vocab.arrays[name]
        words = [s.encode("latin-1") for s in self.vocab[name]]
        return np.array(words, dtype=bytes) if words else np.zeros(0, "S1")

    def _vocab_size(self, name: str) -> int:
        v = self.vocab
        return v.size(name) if isinstance(v, Vocab) else len(v[name])

    @property
    def slot_size_array(self) -> list[int]:
        if self.hash_buckets:
            return [int(self.hash_buckets)] * len(self.cat_names)
        return [self._vocab_size(c) + 2 for c in self.cat_names]

    # -- applying --------------------------------------------------------------------------
    def _table(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """Sorted vocabulary values (bytes) and their ids (the path for values > 8 bytes)."""
        if name not in self._lookup:
            vals = _as_bytes(self.vocab_values(name))
            ids = np.arange(2, vals.size + 2, dtype=np.int64)
            if not vals.size:
                vals, ids = np.array([b""]), np.array([1], np.int64)
            order = np.argsort(vals, kind="stable")
            self._lookup[name] = (vals[order], ids[order])
        return self._lookup[name]

    def packed_index(self, name: str) -> PackedIndex | None:
        """Hash table packed value -> id of column ``name``, None when a vocabulary value is
        longer than 8 bytes (then packed columns are unpacked and looked up as bytes)."""
        if name not in self._index:
            v = self.vocab_values(name)
            if v.dtype != np.uint64:
                if v.dtype.itemsize > 8:
                    self._index[name] = None
                    return None
                v = np.ascontiguousarray(v, dtype="S8").view(">u8").astype(np.uint64)
            ids = np.arange(2, v.size + 2, dtype=np.int64)
            if not isinstance(self.vocab, Vocab):  # a loaded file: first of duplicates wins
                _, first = np.unique(v, return_index=True)
                first.sort()
                v, ids = v[first], ids[first]
            keep = v != 0  # b"" is "missing" (id 0) whatever the file says
            self._index[name] = PackedIndex(v[keep], ids[keep])
        return self._index[name]

    def prepare(self, threads: int | None = None) -> Transform:
        """Build every column's lookup table now (on ``threads`` threads): called before the
        worker processes fork, so that they share the tables instead of building their own."""
        if not self.hash_buckets:
            with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
                list(pool.map(self.packed_index, self.cat_names))
        return self

    def dense_values(self, p: Parsed) -> np.ndarray:
        x = np.maximum(p.dense, 0.0)
        if self.dense_mode == "log":
            return np.log1p(x, out=x).astype(np.float32)
        if self.dense_mode == "standardize":
            m = np.array([self.dense_stats[c]["mean"] for c in self.dense_names])
            s = np.array([self.dense_stats[c]["std"] for c in self.dense_names])
            return ((x - m) / s).astype(np.float32)
        return x.astype(np.float32)

    def cat_ids(self, p: Parsed) -> np.ndarray:
        """``(n, C)`` int64 ids (Fortran order: every column contiguous)."""
        n, C = p.cats.shape
        out = np.empty((C, n), dtype=np.int64)
        packed = p.cats.dtype == np.uint64
        for j, name in enumerate(self.cat_names):
            col = p.cats[:, j]
            index = self.packed_index(name) if packed and not self.hash_buckets else None
            if index is not None:  # missing (0) -> 0, not in the vocabulary -> 1
                out[j] = index.lookup(col, 1)
                continue
            if packed:
                col = unpack_short(col)
            if self.hash_buckets:
                ids = 1 + (hash_bytes(col, salt=j + 1) % np.uint64(self.hash_buckets - 1)
                           ).astype(np.int64)
            else:
                vals, idv = self._table(name)
                pos = np.clip(np.searchsorted(vals, col), 0, vals.size - 1)
                ids = np.where(vals[pos] == col, idv[pos], 1)
            ids[col == b""] = 0
            out[j] = ids
        return out.T

    def encode(self, p: Parsed) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Parsed rows -> (labels float32 (n, L), dense float32 (n, D), ids int64 (n, C)), each
        in the memory order of the parsed block (column-major from the pyarrow parser)."""
        return p.labels, self.dense_values(p), self.cat_ids(p)

    def apply(self, p: Parsed) -> Chunk:
        """Parsed rows -> a Chunk with per-slot ids (one key per slot)."""
        labels, dense, ids = self.encode(p)
        return Chunk(labels, dense, [ids.reshape(-1)],
                     [np.ones((len(p.lines), len(self.cat_names)), np.int64)])

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
            with open(os.path.join(directory, VOCAB_FILE), "wb") as fh:
                fh.write(b"{")
                for i, name in enumerate(self.cat_names):
                    fh.write((", " if i else "").encode() + json.dumps(name).encode() + b": ")
                    fh.write(self._vocab_json(name))
                fh.write(b"}")
        return path

    def _vocab_json(self, name: str) -> bytes:
        """``json.dumps(self.vocab[name]).encode()``, built with numpy when every value is
        printable ASCII without ``"`` or ``\\`` (then JSON writes its bytes as they are)."""
        if not isinstance(self.vocab, Vocab):
            return json.dumps(self.vocab[name]).encode()
        vals = _as_bytes(self.vocab.arrays[name])
        if not vals.size:
            return b"[]"
        n, w = vals.size, vals.dtype.itemsize
        mat = np.ascontiguousarray(vals).view(np.uint8).reshape(n, w)
        # per value: '"' value '"' ', ' (the last without ', ')
        buf = np.empty((n, w + 4), np.uint8)
        buf[:, 0] = buf[:, w + 1] = ord('"')
        buf[:, 1 : w + 1] = mat
        buf[:, w + 2], buf[:, w + 3] = ord(","), ord(" ")
        if mat[:, -1].all():  # every value w bytes long (e.g. all of Criteo's)
            if not _JSON_SAFE[mat].all():
                return json.dumps(self.vocab[name]).encode()
            return b"[" + buf.reshape(-1)[:-2].tobytes() + b"]"
        nz = mat != 0  # numpy S strings end at their last non-zero byte
        length = np.where(nz.any(1), w - np.argmax(nz[:, ::-1], axis=1), 0)
        inside = np.arange(w)[None, :] < length[:, None]
        if not (_JSON_SAFE[mat] | ~inside).all():
            return json.dumps(self.vocab[name]).encode()
        keep = np.ones((n, w + 4), bool)
        keep[:, 1 : w + 1] = inside
        keep[-1, w + 2 :] = False
        return b"[" + buf[keep].tobytes() + b"]"

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
