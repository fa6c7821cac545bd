"""``Model.get_incremental_model()`` (HugeCTR ETC's delta export): per table, the keys and
vectors of the rows that are new or changed since the previous call.

A DCN with SGD on 1,000-key slots, 8 samples per step: the first call returns the whole table;
after a few steps exactly the rows that differ from (or are missing in) the previous export;
right after, nothing. A one-bit change of a row is caught by the row digest."""

from __future__ import annotations

import numpy as np
import pytest

import terarec as hugectr
from terarec.compat.incremental import row_digests
from terarec.errors import NotSupportedError
from tests.helpers.models import build_dcn
from tests.helpers.synth import raw_async_dataset


def _rows(keys: np.ndarray, vectors: np.ndarray) -> dict[int, np.ndarray]:
    return {int(k): v for k, v in zip(keys, vectors)}


def test_incremental_model_returns_exactly_the_changed_rows(tmp_path) -> None:
    data = raw_async_dataset(tmp_path, n_train=512, n_eval=64, slot_sizes=[1000, 1000, 1000])
    sgd = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.SGD)
    model = build_dcn(data, batchsize=8, lr=0.5, optimizer=sgd)
    model.compile()
    for _ in range(3):
        assert model.train()
    (first_keys, first_vecs), = model.get_incremental_model()
    keys, vecs, _ = model._engine().tables["emb"].export()
    assert _rows(first_keys, first_vecs).keys() == _rows(keys, vecs).keys()
    before = _rows(keys, vecs)
    for _ in range(4):
        assert model.train()
    (got_keys, got_vecs), = model.get_incremental_model()
    keys, vecs, _ = model._engine().tables["emb"].export()
    after = _rows(keys, vecs)
    want = {k for k, v in after.items() if k not in before or not np.array_equal(v, before[k])}
    got = _rows(got_keys, got_vecs)
    assert set(got) == want and 0 < len(want) < len(after)
    assert all(np.array_equal(got[k], after[k]) for k in want)
    assert got_keys.dtype == np.int64 and got_vecs.dtype == np.float32
    (none_keys, none_vecs), = model.get_incremental_model()
    assert none_keys.size == 0 and none_vecs.shape == (0, 8)
    with pytest.raises(NotSupportedError, match="get_incremental_model"):
        model.dump_incremental_model_2kafka()


def test_row_digest_sees_one_bit() -> None:
    rows = np.random.default_rng(3).standard_normal((50, 16)).astype(np.float32)
    flipped = rows.copy()
    flipped.view(np.uint32)[17, 5] ^= 1
    same, other = row_digests(rows), row_digests(flipped)
    assert (same != other).tolist() == [i == 17 for i in range(50)]
    assert len(set(same.tolist())) == 50
