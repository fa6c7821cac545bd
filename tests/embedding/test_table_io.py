"""Export / load of rows and optimizer states: round trips and resumed training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from terarec.embedding.config import TableConfig
from terarec.embedding.table import EmbeddingTable
from terarec.optim.config import OptimizerConfig
from terarec.sparse import SparseInput


def _table(opt: str = "Adam", update: str = "Global", seed: int = 1, **kw) -> EmbeddingTable:
    cfg = TableConfig("emb", "data", dim=5, slot_num=2, max_vocabulary_size=500,
                      optimizer=OptimizerConfig(type=opt, update_type=update), **kw)
    return EmbeddingTable(cfg, generator=torch.Generator().manual_seed(seed))


def _train(table: EmbeddingTable, g: torch.Generator, steps: int) -> None:
    for _ in range(steps):
        keys = torch.randint(0, 60, (8, 2, 2), generator=g) * 2**33 - 5
        sp = SparseInput.from_dense(keys)
        table.set_learning_rate(0.01)
        (table(sp) * torch.randn(8, 2, 5, generator=g)).sum().backward()


def test_export_load_round_trip_bit_identical() -> None:
    src = _table()
    _train(src, torch.Generator().manual_seed(0), 4)
    keys, vectors, slots = src.export()
    assert keys.dtype == np.int64 and vectors.dtype == np.float32 and slots is None
    assert vectors.shape == (src.num_keys, 5)
    perm = np.random.default_rng(0).permutation(len(keys))
    dst = _table(seed=99)
    dst.load(keys[perm], vectors[perm])
    k2, v2, _ = dst.export()
    assert sorted(k2.tolist()) == sorted(keys.tolist())
    assert v2[np.argsort(k2)].tobytes() == vectors[np.argsort(keys)].tobytes()
    # listed rows are overwritten, others kept
    dst.load(keys[:1], np.full((1, 5), 7.0, np.float32))
    assert (dst.export()[1][dst.index.lookup(torch.tensor(keys[:1])).item()] == 7.0).all()


def test_localized_slot_ids_round_trip() -> None:
    t = _table(opt="SGD", embedding_type="LocalizedSlotSparseEmbeddingHash")
    t(SparseInput.from_lists([[[10, 11], [20]]]))
    keys, vecs, slots = t.export()
    assert slots.dtype == np.uint64 and slots.tolist() == [0, 0, 1]
    u = _table(opt="SGD", embedding_type="LocalizedSlotSparseEmbeddingHash")
    u.load(keys[::-1], vecs[::-1], slots[::-1])
    assert dict(zip(*u.export()[::2])) == dict(zip(keys, slots))


def test_load_shape_error_names_table() -> None:
    with pytest.raises(ValueError, match="emb.*emb_vector"):
        _table().load(np.array([1, 2]), np.zeros((2, 4), np.float32))


@pytest.mark.parametrize(("opt", "update"), [("Adam", "Global"), ("Adam", "LazyGlobal"),
                                             ("AdaGrad", "Local"), ("Ftrl", "Local"),
                                             ("MomentumSGD", "LazyGlobal"), ("SGD", "Local")])
def test_resume_from_saved_state_matches_uninterrupted(opt: str, update: str) -> None:
    straight = _table(opt, update)
    _train(straight, torch.Generator().manual_seed(0), 3)
    keys, vectors, _ = straight.export()
    state, flat = straight.optimizer_state(), straight.optimizer_state_bytes()
    g = torch.Generator().manual_seed(1)
    _train(straight, g, 3)

    for mode in ("dict", "bytes"):
        resumed = _table(opt, update)  # same init seed: new keys start alike
        perm = np.random.default_rng(1).permutation(len(keys))
        resumed.load(keys[perm], vectors[perm])
        if mode == "dict":
            resumed.load_optimizer_state({n: ((k[perm], v[perm]) if len(k) else (k, v))
                                          for n, (k, v) in state.items()})
        else:
            resumed.load_optimizer_state_bytes(flat, keys=keys)
        assert resumed.optimizer.t == 3
        _train(resumed, torch.Generator().manual_seed(1), 3)
        k1, v1, _ = straight.export()
        k2, v2, _ = resumed.export()
        np.testing.assert_array_equal(v1[np.argsort(k1)], v2[np.argsort(k2)])


def test_flat_state_layout_and_size_check() -> None:
    t = _table("Adam", "Global")
    _train(t, torch.Generator().manual_seed(0), 1)
    n = t.num_keys
    data = t.optimizer_state_bytes()
    assert len(data) == 2 * n * 5 * 4 + 8
    m = np.frombuffer(data, "<f4", n * 5).reshape(n, 5)
    np.testing.assert_array_equal(m, t.optimizer_state()["m"][1])
    with pytest.raises(ValueError, match="bytes"):
        t.load_optimizer_state_bytes(data[:-4])


def test_reset_state_keeps_rows() -> None:
    t = _table("Adam", "Global")
    _train(t, torch.Generator().manual_seed(0), 2)
    before = t.export()[1].copy()
    t.reset_state()
    assert t.optimizer.t == 0 and float(t.optimizer.states[0].abs().max()) == 0.0
    np.testing.assert_array_equal(before, t.export()[1])
