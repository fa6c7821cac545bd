"""Synthetic CTR data: power-law keys, any slot sizes / hotness / dense and label widths, written
as Norm, Raw, RawAsync or Parquet, with an optional planted *teacher* so labels are learnable.

The teacher is a random logistic + factorisation-machine model over what the reader will return
(dense after any ``log(x+1)``, per-slot key ids): per-key weights and 4-d factors come from a
stable hash of ``(slot, key)``, so no table is stored. Labels are Bernoulli(sigmoid(logit)); the
teacher's own AUC on the generated data (the best AUC any model can expect) is reported.

Key conventions: Norm keys are global with ``key % slot_num == slot`` (no offsets; HugeCTR's
generator); Raw / RawAsync / Parquet keys are per-slot ids ``0..slot_size-1`` (the reader or the
embedding adds slot offsets).

Python API used by examples: :func:`generate_synthetic`. HugeCTR's ``DataGenerator`` facade is in
:mod:`terarec.tools`.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from terarec.data.readers.chunk import Chunk
from terarec.data.textparse import mix64
from terarec.data.writers import (
    WRITERS,
    parquet_column_names,
    write_file_list,
    write_parquet_metadata,
)

POWER_LAW_ALPHA = {"Long": 0.9, "Medium": 1.1, "Short": 1.3}
FILE_EXT = {"Norm": ".data", "Parquet": ".parquet"}


def power_law_keys(rng: np.random.Generator, n: int, size: int, alpha: float) -> np.ndarray:
    """``n`` ids in ``[0, size)`` with P(k) ~ (k+1)^-alpha (inverse CDF of the continuous law)."""
    u = rng.random(n)
    if abs(alpha - 1.0) < 1e-9:
        x = np.exp(u * math.log(size + 1.0)) - 1.0
    else:
        a = 1.0 - alpha
        x = ((((size + 1.0) ** a) - 1.0) * u + 1.0) ** (1.0 / a) - 1.0
    return np.clip(x.astype(np.int64), 0, size - 1)


def _gauss(h: np.ndarray) -> np.ndarray:
    """Two uniforms from one 64-bit hash -> one standard normal (Box-Muller)."""
    u1 = ((h >> np.uint64(40)).astype(np.float64) + 0.5) / float(1 << 24)
    u2 = ((h & np.uint64(0xFFFFFF)).astype(np.float64) + 0.5) / float(1 << 24)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * math.pi * u2)


@dataclass
class Teacher:
    """Random logistic + FM teacher; ``logits(chunk)`` -> (n, label_dim)."""

    label_dim: int
    dense_dim: int
    slot_num: int
    seed: int = 0
    fm_dim: int = 4
    scale: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    bias: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed + 12345)
        self.w_dense = rng.normal(0, 1.0 / math.sqrt(max(self.dense_dim, 1)),
                                  (self.dense_dim, self.label_dim))

    def raw(self, c: Chunk) -> np.ndarray:
        keys, ln = c.keys[0], c.lengths[0]
        n, S = ln.shape
        dense = c.dense.astype(np.float64)
        if dense.size:
            if getattr(self, "d_mean", None) is None:
                self.d_mean, self.d_std = dense.mean(0), dense.std(0) + 1e-6
            dense = (dense - self.d_mean) / self.d_std
        out = dense @ self.w_dense if self.dense_dim else np.zeros((n, self.label_dim))
        row = np.repeat(np.arange(n * S), ln.reshape(-1))
        slot = row % S
        cnt = np.maximum(ln.reshape(-1), 1).astype(np.float64)
        for lab in range(self.label_dim):
            salt = (self.seed * 1_000_003 + lab) * 64
            h = mix64(keys.astype(np.uint64) * np.uint64(1315423911) + slot.astype(np.uint64),
                      salt)
            lin = np.bincount(row, _gauss(h), minlength=n * S) / cnt
            lin_s = lin.reshape(n, S).sum(1) / math.sqrt(S)
            v_sum = np.zeros((n, self.fm_dim))
            v_sq = np.zeros(n)
            for f in range(self.fm_dim):
                vf = np.bincount(row, _gauss(mix64(h, f + 1)), minlength=n * S) / cnt
                vf = vf.reshape(n, S)
                v_sum[:, f] = vf.sum(1)
                v_sq += (vf * vf).sum(1)
            fm = 0.5 * ((v_sum ** 2).sum(1) - v_sq) / max(S, 1)
            out[:, lab] += lin_s + fm
        return out

    def calibrate(self, c: Chunk, std: float = 1.6, ctr: float = 0.3) -> None:
        self.d_mean = None
        r = self.raw(c)
        self.scale = std / (r.std(0) + 1e-9)
        self.bias = math.log(ctr / (1 - ctr)) - r.mean(0) * self.scale

    def logits(self, c: Chunk) -> np.ndarray:
        return self.raw(c) * self.scale + self.bias


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by ranks (ties averaged)."""
    labels = labels.astype(bool).reshape(-1)
    scores = scores.reshape(-1)
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(s.size, dtype=np.float64)
    ranks[order] = np.arange(1, s.size + 1)
    # average ranks of ties
    uniq, inv, counts = np.unique(scores, return_inverse=True, return_counts=True)
    if uniq.size != scores.size:
        sums = np.bincount(inv, ranks)
        ranks = (sums / counts)[inv]
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


@dataclass
class SynthSpec:
    """Everything that shapes generated samples (format-independent)."""

    slot_size_array: list[int]
    nnz_array: list[int]
    label_dim: int = 1
    dense_dim: int = 13
    alpha: float | None = 1.2  # None: uniform keys
    int_dense: bool = False
    fixed_hotness: bool = False
    norm_keys: bool = False
    teacher: bool = True
    seed: int = 0


def make_samples(spec: SynthSpec, n: int, rng: np.random.Generator, teacher: Teacher | None
                 ) -> tuple[Chunk, np.ndarray | None]:
    """``n`` samples as a Chunk (keys of all slots in ``keys[0]``) and the teacher logits."""
    S = len(spec.slot_size_array)
    if spec.fixed_hotness:
        ln = np.tile(np.asarray(spec.nnz_array, np.int64), (n, 1))
    else:
        ln = np.stack([rng.integers(1, m + 1, n) if m > 1 else np.full(n, m)
                       for m in spec.nnz_array], axis=1).astype(np.int64) if S else \
            np.zeros((n, 0), np.int64)
    per_slot = []
    for s, size in enumerate(spec.slot_size_array):
        cnt = int(ln[:, s].sum())
        k = power_law_keys(rng, cnt, size, spec.alpha) if spec.alpha else rng.integers(0, size, cnt)
        per_slot.append(k * S + s if spec.norm_keys else k)
    from terarec.data.readers.parquet import _interleave

    keys = _interleave(per_slot, ln)
    if spec.int_dense:
        dense = (rng.geometric(0.15, (n, spec.dense_dim)) - 1).astype(np.float32)
        seen = np.log1p(dense)
    else:
        dense = rng.exponential(1.0, (n, spec.dense_dim)).astype(np.float32)
        seen = dense
    labels = np.zeros((n, spec.label_dim), np.float32)
    logits = None
    if teacher is not None:
        seen_keys = keys // S if spec.norm_keys else keys
        logits = teacher.logits(Chunk(labels, seen, [seen_keys], [ln]))
        labels = (rng.random(logits.shape) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
    else:
        labels = rng.integers(0, 2, (n, spec.label_dim)).astype(np.float32)
    return Chunk(labels, dense, [keys], [ln]), logits


def make_teacher(spec: SynthSpec) -> Teacher | None:
    if not spec.teacher:
        return None
    t = Teacher(spec.label_dim, spec.dense_dim, len(spec.slot_size_array), spec.seed)
    calib = SynthSpec(**{**spec.__dict__, "teacher": False})
    c, _ = make_samples(calib, 4096, np.random.default_rng(spec.seed + 999), None)
    if spec.int_dense:
        c.dense = np.log1p(c.dense)
    if spec.norm_keys:
        c.keys[0] = c.keys[0] // max(len(spec.slot_size_array), 1)
    t.calibrate(c)
    return t


def generate_files(fmt: str, spec: SynthSpec, paths: list[str], rows: list[int],
                   writer_kw: dict, num_threads: int = 1, part_seed: int = 0
                   ) -> float | None:
    """Write ``rows[i]`` samples to ``paths[i]``; return the teacher AUC (None without teacher)."""
    teacher = make_teacher(spec)
    write = WRITERS.get(fmt)

    def one(i: int):
        rng = np.random.default_rng([spec.seed, part_seed, i])
        c, lg = make_samples(spec, rows[i], rng, teacher)
        d = os.path.dirname(paths[i])
        if d:
            os.makedirs(d, exist_ok=True)
        write(paths[i], c, **writer_kw)
        return (c.labels, lg) if lg is not None else None

    with ThreadPoolExecutor(max(1, num_threads)) as pool:
        res = list(pool.map(one, range(len(paths))))
    if teacher is None or not res:
        return None
    labels = np.concatenate([r[0] for r in res])
    logits = np.concatenate([r[1] for r in res])
    return float(np.mean([auc(labels[:, j], logits[:, j]) for j in range(labels.shape[1])]))


def generate_synthetic(
    out_dir: str, format: str = "Parquet", num_samples: int = 100_000,
    slot_size_array: list[int] | None = None, dense_dim: int = 13,
    nnz_per_slot: int | list[int] = 1, teacher: bool = True, seed: int = 0, *,
    eval_num_samples: int | None = None, label_dim: int = 1, num_files: int = 4,
    i64_input_key: bool | None = None, check_type: str = "Sum", alpha: float = 1.2,
    num_threads: int = 4,
) -> dict:
    """Write a train and an eval split of synthetic data and return where and what it is.

    Returns a dict with ``format``, ``source`` / ``eval_source`` (file list for Norm/Parquet,
    the binary file for Raw/RawAsync), ``train_files``, ``eval_files``, ``slot_size_array``,
    ``nnz_per_slot``, ``dense_dim``, ``label_dim``, ``i64_input_key``, ``num_samples``,
    ``eval_num_samples`` and ``best_auc`` / ``eval_best_auc`` (the teacher's AUC, or None).
    """
    fmt = str(getattr(format, "name", format))
    sizes = list(slot_size_array or [1000] * 26)
    nnz = [int(nnz_per_slot)] * len(sizes) if isinstance(nnz_per_slot, int) else list(nnz_per_slot)
    n_eval = num_samples // 5 if eval_num_samples is None else eval_num_samples
    i64 = (fmt == "Parquet") if i64_input_key is None else i64_input_key
    spec = SynthSpec(sizes, nnz, label_dim, dense_dim, alpha, int_dense=fmt == "Raw",
                     fixed_hotness=fmt in ("Raw", "RawAsync"), norm_keys=fmt == "Norm",
                     teacher=teacher, seed=seed)
    kw = {"check_type": check_type, "i64_input_key": i64, "is_dense_float": True,
          "float_label_dense": False}
    out: dict = {"format": fmt, "slot_size_array": sizes, "nnz_per_slot": nnz,
                 "dense_dim": dense_dim, "label_dim": label_dim, "i64_input_key": i64,
                 "num_samples": num_samples, "eval_num_samples": n_eval}
    for split, n, part in (("train", num_samples, 0), ("val", n_eval, 1)):
        if fmt in ("Raw", "RawAsync"):
            files = [os.path.join(out_dir, f"{split}_data.bin")]
            rows = [n]
            src = files[0]
        else:
            k = max(1, min(num_files if split == "train" else max(1, num_files // 4), n))
            rows = [n * (i + 1) // k - n * i // k for i in range(k)]
            files = [os.path.join(out_dir, split, f"gen_{i}{FILE_EXT[fmt]}") for i in range(k)]
            src = os.path.join(out_dir, "file_list.txt" if split == "train"
                               else "file_list_test.txt")
        best = generate_files(fmt, spec, files, rows, kw, num_threads, part)
        if fmt in FILE_EXT:
            write_file_list(src, files)
        if fmt == "Parquet":
            write_parquet_metadata(os.path.dirname(files[0]), files, rows,
                                   parquet_column_names(label_dim, dense_dim, len(sizes)))
        key = "" if split == "train" else "eval_"
        out[f"{key}source"] = src
        out[f"{'train' if split == 'train' else 'eval'}_files"] = files
        out[f"{key}best_auc"] = best
    if teacher:
        print(f"[terarec datagen] {fmt}: {num_samples} train + {n_eval} eval samples in "
              f"{out_dir}; teacher (best reachable) AUC train {out['best_auc']:.4f}, "
              f"eval {out['eval_best_auc']:.4f}")
    return out
