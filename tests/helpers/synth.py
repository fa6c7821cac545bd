"""Tiny synthetic CTR data with planted signal, written in HugeCTR's RawAsync layout (§15.4).

Independent of terarec's own data generator so that training tests do not test the generator
with itself.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def make_samples(n: int, slot_sizes: list[int], dense_dim: int, nnz: int = 1, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels (n,), dense (n, dense_dim) float32, keys (n, slots, nnz) per-slot ids.

    Labels come from a logistic teacher over dense features and per-key weights.
    """
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n, dense_dim)).astype(np.float32)
    keys = np.stack([rng.integers(0, s, size=(n, nnz)) for s in slot_sizes], axis=1)
    w_dense = rng.normal(size=dense_dim)
    key_w = [rng.normal(scale=1.5, size=s) for s in slot_sizes]
    logit = dense @ w_dense * 0.5
    for j in range(len(slot_sizes)):
        logit = logit + key_w[j][keys[:, j, :]].mean(axis=1)
    prob = 1 / (1 + np.exp(-logit))
    labels = (rng.random(n) < prob).astype(np.int32)
    return labels, dense, keys.astype(np.int64)


def write_raw_async(path: Path, labels: np.ndarray, dense: np.ndarray, keys: np.ndarray) -> None:
    """label (int32) + dense (float32 bits) + keys (uint32) per sample, 4-byte words."""
    n = labels.shape[0]
    words = np.concatenate([
        labels.reshape(n, -1).astype("<i4").view("<u4"),
        dense.astype("<f4").view("<u4"),
        keys.reshape(n, -1).astype("<u4"),
    ], axis=1)
    words.tofile(path)


def raw_async_dataset(tmp: Path, n_train: int = 4096, n_eval: int = 1024,
                      slot_sizes: list[int] | None = None, dense_dim: int = 4, nnz: int = 1,
                      seed: int = 0, label_dim: int = 1) -> dict:
    slot_sizes = slot_sizes or [50, 30, 20]
    lab, den, keys = make_samples(n_train + n_eval, slot_sizes, dense_dim, nnz, seed)
    if label_dim > 1:  # extra tasks: the first label flipped with noise (still learnable)
        rng = np.random.default_rng(seed + 7)
        extra = [(lab ^ (rng.random(lab.shape) < 0.2)).astype(np.int32)
                 for _ in range(label_dim - 1)]
        lab = np.stack([lab, *extra], axis=1)
    train, evalp = tmp / "train.bin", tmp / "eval.bin"
    write_raw_async(train, lab[:n_train], den[:n_train], keys[:n_train])
    write_raw_async(evalp, lab[n_train:], den[n_train:], keys[n_train:])
    return {"train": str(train), "eval": str(evalp), "n_train": n_train, "n_eval": n_eval,
            "slot_sizes": slot_sizes, "dense_dim": dense_dim, "nnz": nnz,
            "label_dim": label_dim}
