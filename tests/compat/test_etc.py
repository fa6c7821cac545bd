"""HugeCTR's Embedding Training Cache (ETC, <= 23.08) through an unchanged HugeCTR script flow.

A small wide & deep model (two tables: wide ``Staged``, deep ``Cached``) on Norm file lists
written here, each with its keyset file: ``fit`` walks the file lists in order (the tables
hold one pass's keys), training equals training without ETC on the concatenated lists,
``save_params_to_files`` writes the sparse models in place and a fresh model loads them and
predicts the same; ``set_source`` with keysets, ``update()`` and the argument errors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import terarec as hugectr
from terarec.data.readers.chunk import Chunk
from terarec.data.writers import write_file_list, write_norm
from terarec.errors import CapacityError, ConfigError, DataError, MissingExtraError
from terarec.utils.imports import is_available

# The Cached parameter server's SSD tier is RocksDB (pip extra "kv"); without it both tables
# use Staged and the Cached-only checks are skipped.
HAS_KV = is_available("rocksdict")

SLOTS = [8, 40, 30, 20]  # slot 0 feeds the wide table, slots 1-3 the deep one
OFFSETS = np.cumsum([0, *SLOTS[:-1]])  # Norm keys are global: slot offset + id
DENSE = 3
BATCH = 32


def _samples(n: int, seed: int, lo: float, hi: float) -> tuple[np.ndarray, ...]:
    """Ids of each slot drawn from ``[lo, hi)`` of its range; labels from a fixed teacher."""
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(int(lo * s), int(hi * s), n) for s in SLOTS], axis=1)
    keys = (ids + OFFSETS).astype(np.int64)
    teacher = np.random.default_rng(99).normal(size=sum(SLOTS))
    dense = rng.normal(size=(n, DENSE)).astype(np.float32)
    logit = teacher[keys].sum(axis=1) + dense[:, 0]
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32).reshape(n, 1)
    return labels, dense, keys


def _file_list(folder: Path, name: str, seed: int, lo: float, hi: float,
               files: int = 2, per_file: int = 64) -> dict[str, Any]:
    """A Norm file list (whole batches per file) and its uint32 keyset file."""
    paths, keys = [], []
    for f in range(files):
        labels, dense, k = _samples(per_file, seed * 10 + f, lo, hi)
        path = str(folder / f"{name}_{f}.bin")
        write_norm(path, Chunk(labels, dense, [k.reshape(-1)],
                               [np.ones((per_file, len(SLOTS)), np.int32)]), check_type="Sum")
        paths.append(path)
        keys.append(k)
    lst, keyset = str(folder / f"{name}.txt"), str(folder / f"{name}.keyset")
    write_file_list(lst, paths)
    unique = np.unique(np.concatenate(keys))
    unique.astype(np.uint32).tofile(keyset)
    return {"list": lst, "keyset": keyset, "files": paths, "keys": unique}


@pytest.fixture
def data(tmp_path: Path) -> dict[str, Any]:
    d = {"p0": _file_list(tmp_path, "file_list.0", 0, 0.0, 0.6),
         "p1": _file_list(tmp_path, "file_list.1", 1, 0.4, 1.0),
         "p2": _file_list(tmp_path, "file_list.2", 2, 0.2, 0.8),
         "eval": _file_list(tmp_path, "file_list.3", 3, 0.0, 1.0, files=1)["list"],
         "dir": tmp_path}
    both = str(tmp_path / "file_list.01.txt")
    write_file_list(both, d["p0"]["files"] + d["p1"]["files"])
    d["both"] = both
    return d


def _etc(d: dict[str, Any], **kw: Any) -> Any:
    second = hugectr.TrainPSType_t.Cached if HAS_KV else hugectr.TrainPSType_t.Staged
    args = dict(ps_types=[hugectr.TrainPSType_t.Staged, second],
                sparse_models=[str(d["dir"] / "wdl_0_sparse_model"),
                               str(d["dir"] / "wdl_1_sparse_model")],
                local_paths=[str(d["dir"] / "local")],
                hmem_cache_configs=[hugectr.CreateHMemCache(num_blocks=1, target_hit_rate=0.5,
                                                            max_num_evict=0)])
    args.update(kw)
    return hugectr.CreateETC(**args)


def _model(d: dict[str, Any], source: Any, keyset: Any = None, etc: Any = None,
           deep_slots: list[int] | None = None, repeat: bool = False) -> Any:
    """The HugeCTR script of the ETC notebook, scaled down (wide + deep, no dropout)."""
    solver = hugectr.CreateSolver(max_eval_batches=2, batchsize_eval=BATCH, batchsize=BATCH,
                                  lr=0.01, vvgpu=[[0]], i64_input_key=False,
                                  use_mixed_precision=False, repeat_dataset=repeat, seed=7)
    reader = hugectr.DataReaderParams(data_reader_type=hugectr.DataReaderType_t.Norm,
                                      source=source, keyset=keyset or [],
                                      eval_source=d["eval"], check_type=hugectr.Check_t.Sum)
    optimizer = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.Adam,
                                        update_type=hugectr.Update_t.LazyGlobal)
    model = (hugectr.Model(solver, reader, optimizer, etc) if etc is not None
             else hugectr.Model(solver, reader, optimizer))
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=DENSE, dense_name="dense",
                            data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam("wide_data", 1, True, 1),
                                hugectr.DataReaderSparseParam("deep_data", 1, True, 3)]))
    model.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,
        embedding_vec_size=1, combiner="sum", sparse_embedding_name="sparse_embedding2",
        bottom_name="wide_data", slot_size_array=SLOTS[:1], optimizer=optimizer))
    model.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.LocalizedSlotSparseEmbeddingHash,
        embedding_vec_size=8, combiner="sum", sparse_embedding_name="sparse_embedding1",
        bottom_name="deep_data", slot_size_array=deep_slots or SLOTS[1:], optimizer=optimizer))
    L = hugectr.Layer_t
    for layer in [
        hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["sparse_embedding1"],
                           top_names=["reshape1"], leading_dim=24),
        hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["sparse_embedding2"],
                           top_names=["reshape2"], leading_dim=1),
        hugectr.DenseLayer(layer_type=L.Concat, bottom_names=["reshape1", "dense"],
                           top_names=["concat1"]),
        hugectr.DenseLayer(layer_type=L.InnerProduct, bottom_names=["concat1"],
                           top_names=["fc1"], num_output=16),
        hugectr.DenseLayer(layer_type=L.ReLU, bottom_names=["fc1"], top_names=["relu1"]),
        hugectr.DenseLayer(layer_type=L.InnerProduct, bottom_names=["relu1"],
                           top_names=["fc2"], num_output=1),
        hugectr.DenseLayer(layer_type=L.Add, bottom_names=["fc2", "reshape2"],
                           top_names=["add1"]),
        hugectr.DenseLayer(layer_type=L.BinaryCrossEntropyLoss, bottom_names=["add1", "label"],
                           top_names=["loss"]),
    ]:
        model.add(layer)
    return model


def _record_losses(model: Any) -> list[float]:
    losses: list[float] = []
    train = model.train

    def recording(batch: Any = None) -> bool:
        ok = train(batch)
        if ok:
            losses.append(model.get_current_loss())
        return ok

    model.train = recording
    return losses


def _table_keys(model: Any, name: str) -> set[int]:
    return set(model._engine().tables[name].export()[0].tolist())


def _slot_keys(keys: np.ndarray, table: str) -> set[int]:
    wide = keys < SLOTS[0]
    return set(keys[wide if table == "sparse_embedding2" else ~wide].tolist())


def _rows(folder: str, dim: int) -> dict[int, np.ndarray]:
    keys = np.fromfile(Path(folder) / "key", "<i8")
    return dict(zip(keys.tolist(), np.fromfile(Path(folder) / "emb_vector", "<f4")
                    .reshape(-1, dim)))


def test_etc_fit_equals_training_without_etc_and_saves_in_place(data) -> None:
    d = data
    etc_model = _model(d, [d["p0"]["list"], d["p1"]["list"]],
                       [d["p0"]["keyset"], d["p1"]["keyset"]], _etc(d))
    etc_model.compile()
    etc_model.summary()
    etc_losses = _record_losses(etc_model)
    etc_model.fit(num_epochs=1, display=1000, eval_interval=1000, snapshot=1)

    plain = _model(d, [d["both"]])
    plain.compile()
    plain_losses = _record_losses(plain)
    plain.fit(num_epochs=1, display=1000, eval_interval=1000)

    # both file lists were trained, in order; the tables now hold the last pass's keys only
    assert len(etc_losses) == len(plain_losses) == 8
    np.testing.assert_allclose(etc_losses, plain_losses, rtol=1e-5, atol=1e-6)
    for name in ("sparse_embedding1", "sparse_embedding2"):
        assert _table_keys(etc_model, name) == _slot_keys(d["p1"]["keys"], name)
    for a, b in zip(etc_model.dense_weights_numpy(), plain.dense_weights_numpy()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)

    # save in place: sparse weights + optimizer states into the sparse_models folders
    etc_model.save_params_to_files(str(d["dir"] / "wdl"))
    plain.save_params_to_files(str(d["dir"] / "plain"))
    assert not (d["dir"] / "wdl0_sparse_0.model").exists()  # HugeCTR: in place only
    assert (d["dir"] / "wdl_dense_0.model").is_file()
    assert not list(d["dir"].glob("wdl_*_sparse_0.model"))
    deep = d["dir"] / "wdl_1_sparse_model"
    assert {p.name for p in deep.iterdir()} >= {"key", "emb_vector", "slot_id", "Adam.m",
                                                "Adam.v", "LazyGlobal.last_step"}
    assert not (d["dir"] / "wdl_0_sparse_model" / "slot_id").exists()  # DistributedSlot
    for i, (folder, dim) in enumerate([("wdl_0_sparse_model", 1), ("wdl_1_sparse_model", 8)]):
        got, want = _rows(str(d["dir"] / folder), dim), _rows(
            str(d["dir"] / f"plain{i}_sparse_0.model"), dim)
        assert set(got) == set(want) == _slot_keys(
            np.union1d(d["p0"]["keys"], d["p1"]["keys"]),
            ["sparse_embedding2", "sparse_embedding1"][i])
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)

    # predictions: the ETC model (rows fetched from its parameter servers), the model without
    # ETC, and a fresh ETC model that loads the sparse_models folders + the dense file
    preds = etc_model.predict()
    np.testing.assert_allclose(preds, plain.predict(), rtol=1e-5, atol=1e-6)
    fresh = _model(d, [d["p0"]["list"]], [d["p0"]["keyset"]],
                   _etc(d, local_paths=[str(d["dir"] / "local2")]))
    fresh.compile()
    fresh.load_dense_weights(str(d["dir"] / "wdl_dense_0.model"))
    np.testing.assert_allclose(fresh.predict(), preds, rtol=1e-6, atol=1e-7)

    # the incremental model (reused from get_incremental_model) covers the whole table
    inc = etc_model.get_incremental_model()
    assert [set(k.tolist()) for k, _ in inc] == [
        set(_rows(str(d["dir"] / "wdl_0_sparse_model"), 1)),
        set(_rows(str(d["dir"] / "wdl_1_sparse_model"), 8))]
    assert [k.size for k, _ in etc_model.get_incremental_model()] == [0, 0]


def test_set_source_with_keysets_trains_the_new_passes(data) -> None:
    d = data
    model = _model(d, [d["p0"]["list"]], [d["p0"]["keyset"]], _etc(d))
    model.compile()
    model.fit(num_epochs=1, display=1000, eval_interval=1000)
    model.set_source(source=[d["p2"]["list"]], keyset=[d["p2"]["keyset"]],
                     eval_source=d["eval"])
    losses = _record_losses(model)
    model.fit(num_epochs=2, display=1000, eval_interval=2)
    assert len(losses) == 8  # 2 epochs x 4 batches of file_list.2 only
    # the pass's keys plus the evaluation keys looked up during the pass
    eval_keys = np.concatenate([b.sparse["wide_data"].keys.cpu().numpy() for b in
                                model.get_data_reader_eval().iterate_once()])
    assert _slot_keys(d["p2"]["keys"], "sparse_embedding2") <= _table_keys(
        model, "sparse_embedding2") <= _slot_keys(d["p2"]["keys"], "sparse_embedding2") | set(
        eval_keys.tolist())
    model.set_source([d["p0"]["list"], d["p1"]["list"]], [d["p0"]["keyset"], d["p1"]["keyset"]],
                     d["eval"])  # positional (source, keyset, eval_source)
    assert model.train_source == d["p0"]["list"]
    with pytest.raises(ConfigError, match=r"keyset=.*one keyset file per file list"):
        model.set_source(source=[d["p0"]["list"], d["p1"]["list"]],
                         keyset=[d["p0"]["keyset"]], eval_source=d["eval"])
    with pytest.raises(ConfigError, match="set_source"):
        model.set_source(d["p0"]["list"], d["eval"])  # ETC needs the keysets


def test_update_loads_the_keyset_rows_and_rejects_bad_keysets(data) -> None:
    d = data
    model = _model(d, [d["p0"]["list"]], [d["p0"]["keyset"]], _etc(d))
    model.compile()
    model.fit(num_epochs=1, display=1000, eval_interval=1000)
    before = {n: dict(zip(*model._engine().tables[n].export()[:2]))
              for n in ("sparse_embedding1", "sparse_embedding2")}
    cache = model.get_embedding_training_cache()
    cache.update(d["p1"]["keyset"])  # only the keys trained in pass 0 exist to be loaded
    for name, rows in before.items():
        want = _slot_keys(d["p1"]["keys"], name) & set(rows)
        assert _table_keys(model, name) == want and 0 < len(want) < len(rows)
        keys, vecs, _ = model._engine().tables[name].export()
        for k, v in zip(keys.tolist(), vecs):
            np.testing.assert_array_equal(v, rows[k])
    cache.update([d["p0"]["keyset"], d["p1"]["keyset"]])  # one keyset per table
    assert _table_keys(model, "sparse_embedding2") == _slot_keys(d["p0"]["keys"],
                                                                 "sparse_embedding2")

    bad = d["dir"] / "bad.keyset"
    bad.write_bytes(b"\x01" * 10)
    with pytest.raises(DataError, match=r"bad\.keyset.*10 bytes.*key size 4 bytes"):
        cache.update(str(bad))
    with pytest.raises(DataError, match="missing.keyset.*not found"):
        cache.update([str(d["dir"] / "missing.keyset"), d["p0"]["keyset"]])
    with pytest.raises(ConfigError, match=r"keyset_file_list.*one keyset file per embedding "
                                          r"table \(2"):
        cache.update([d["p0"]["keyset"]])
    with pytest.raises(DataError, match="bad.keyset"):  # checked before any training
        model.set_source(source=[d["p0"]["list"], d["p1"]["list"]],
                         keyset=[d["p0"]["keyset"], str(bad)], eval_source=d["eval"])
    etc_from_reader = _model(d, [d["p0"]["list"], d["p1"]["list"]],
                             [d["p0"]["keyset"], str(bad)], _etc(d, sparse_models=[
                                 str(d["dir"] / "m0"), str(d["dir"] / "m1")]))
    etc_from_reader.compile()
    with pytest.raises(DataError, match="bad.keyset"):  # fit checks every keyset up front
        etc_from_reader.fit(num_epochs=1, display=1000, eval_interval=1000)
    assert etc_from_reader._engine().tables["sparse_embedding1"].num_keys == 0  # no pass ran


def test_etc_trains_more_keys_than_the_training_table_holds(data) -> None:
    d = data  # each pass has <= 54 deep keys, both together up to 90; the table holds 60
    small = [20, 20, 20]
    plain = _model(d, [d["both"]], deep_slots=small)
    plain.compile()
    with pytest.raises(CapacityError):
        plain.fit(num_epochs=1, display=1000, eval_interval=1000)
    model = _model(d, [d["p0"]["list"], d["p1"]["list"]],
                   [d["p0"]["keyset"], d["p1"]["keyset"]], _etc(d), deep_slots=small)
    model.compile()
    model.fit(num_epochs=1, display=1000, eval_interval=1000)
    model.save_params_to_files(str(d["dir"] / "wdl"))
    saved = _rows(str(d["dir"] / "wdl_1_sparse_model"), 8)
    assert len(saved) > 60 and set(saved) == _slot_keys(
        np.union1d(d["p0"]["keys"], d["p1"]["keys"]), "sparse_embedding1")


def test_failed_save_leaves_the_sparse_model_folder_intact(data, monkeypatch) -> None:
    d = data
    model = _model(d, [d["p0"]["list"]], [d["p0"]["keyset"]], _etc(d))
    model.compile()
    model.fit(num_epochs=1, display=1000, eval_interval=1000)
    model.save_params_to_files(str(d["dir"] / "wdl"))
    folder = d["dir"] / "wdl_1_sparse_model"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    model.set_source(source=[d["p1"]["list"]], keyset=[d["p1"]["keyset"]], eval_source=d["eval"])
    model.fit(num_epochs=1, display=1000, eval_interval=1000)
    import terarec.compat.etc_store as etc_store

    def broken(optimizer: str, state: str) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(etc_store, "state_file_name", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save_params_to_files(str(d["dir"] / "wdl"))
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in d["dir"].iterdir() if p.name.startswith(".wdl")) == []


@pytest.mark.skipif(HAS_KV, reason="rocksdict is installed")
def test_cached_without_rocksdb_names_the_extra(data) -> None:
    d = data
    model = _model(d, [d["p0"]["list"]], [d["p0"]["keyset"]],
                   _etc(d, ps_types=[hugectr.TrainPSType_t.Cached] * 2))
    with pytest.raises(MissingExtraError, match=r"terarec\[kv\]"):
        model.compile()


@pytest.mark.skipif(not HAS_KV, reason="the Cached parameter server needs rocksdict")
def test_cached_parameter_server_blocks_follow_hmem_cache_rules(data) -> None:
    d = data
    hc = hugectr.CreateHMemCache(num_blocks=1, target_hit_rate=0.9, max_num_evict=1)
    model = _model(d, [d["p0"]["list"]], [d["p0"]["keyset"]], _etc(d, hmem_cache_configs=[hc]))
    model.compile()
    model.fit(num_epochs=1, display=1000, eval_interval=1000)
    cache = model.get_embedding_training_cache()
    store = cache.stores["sparse_embedding1"]
    blocks = store.blocks
    assert blocks.blocks == []  # pass 0 found nothing stored: nothing cached

    def cached() -> set[int]:
        return set(blocks.blocks[0][0].tolist())

    deep0 = _slot_keys(d["p0"]["keys"], "sparse_embedding1")
    cache.update(d["p1"]["keyset"])  # phase 1: the pass's stored rows take the free block
    assert cached() == _slot_keys(d["p1"]["keys"], "sparse_embedding1") & deep0
    assert blocks.num_evict == 0
    cache.update(d["p2"]["keyset"])  # phase 2: hit rate < 0.9 -> the oldest block is replaced
    assert 0 < blocks.last_hit_rate < 0.9 and blocks.num_evict == 1
    in_pass2 = _slot_keys(d["p2"]["keys"], "sparse_embedding1") & deep0  # nothing else trained
    assert cached() == in_pass2
    cache.update(d["p1"]["keyset"])  # phase 3: max_num_evict reached -> frozen
    assert cached() == in_pass2 and blocks.num_evict == 1
    # the cache never changes a value: cached rows equal the SSD rows after a dump
    cache.dump()
    keys = blocks.blocks[0][0]
    ssd, found = store.ssd.lookup(keys)
    assert found.all()
    np.testing.assert_array_equal(blocks.lookup(keys, store.width)[0], ssd)


def test_etc_argument_errors(data) -> None:
    d = data
    hc = hugectr.CreateHMemCache(2, 0.6, 3)
    assert (hc.num_blocks, hc.target_hit_rate, hc.max_num_evict) == (2, 0.6, 3)
    etc = _etc(d, hmem_cache_configs=None, hcache_configs=[hc])  # the docs' keyword
    assert etc.hmem_cache_configs == [hc] and etc.use_embedding_training_cache
    assert etc.ps_types[0] is hugectr.TrainPSType_t.Staged
    assert hugectr.CreateETC(ps_types=["Staged", hugectr.TrainPSType_t.Cached],
                             local_paths=["."], hmem_cache_configs=[hc]).ps_types == [
        hugectr.TrainPSType_t.Staged, hugectr.TrainPSType_t.Cached]
    assert not hugectr.EmbeddingTrainingCacheParams().use_embedding_training_cache
    with pytest.raises(ConfigError, match="local_paths"):
        hugectr.CreateETC(ps_types=[hugectr.TrainPSType_t.Cached], sparse_models=["m"],
                          hmem_cache_configs=[hc])
    with pytest.raises(ConfigError, match=r"hmem_cache_configs.*1 or 1 configs"):
        hugectr.CreateETC(ps_types=[hugectr.TrainPSType_t.Cached], sparse_models=["m"],
                          local_paths=["."], hmem_cache_configs=[hc, hc])
    with pytest.raises(ConfigError, match="target_hit_rate"):
        hugectr.CreateHMemCache(1, 1.5, 0)
    with pytest.raises(ConfigError, match="ps_types"):
        hugectr.CreateETC(ps_types=["Fast"])

    # one ps_type and one sparse model per SparseEmbedding: at add time and at compile
    with pytest.raises(ConfigError, match=r"ps_types=.*one entry per SparseEmbedding.*"
                                          r"2 added so far.*1 entries"):
        _model(d, [d["p0"]["list"]], [d["p0"]["keyset"]],
               _etc(d, ps_types=[hugectr.TrainPSType_t.Staged]))
    with pytest.raises(ConfigError, match=r"sparse_models=.*2 added so far.*1 entries"):
        _model(d, [d["p0"]["list"]], [d["p0"]["keyset"]],
               _etc(d, sparse_models=[str(d["dir"] / "only_one")]))
    three = _model(d, [d["p0"]["list"]], [d["p0"]["keyset"]],
                   _etc(d, ps_types=[hugectr.TrainPSType_t.Staged] * 3,
                        sparse_models=["a", "b", "c"]))
    with pytest.raises(ConfigError, match=r"ps_types=.*2 in the model.*3 entries"):
        three.compile()

    with pytest.raises(ConfigError, match="etc_params"):
        hugectr.Model(hugectr.CreateSolver(), None, hugectr.CreateOptimizer(), "etc")
    plain = _model(d, [d["p0"]["list"]])
    plain.compile()
    with pytest.raises(ConfigError, match="get_embedding_training_cache"):
        plain.get_embedding_training_cache()
    with pytest.raises(ConfigError, match="keyset"):
        plain.set_source([d["p0"]["list"]], [d["p0"]["keyset"]], d["eval"])
    repeat = _model(d, [d["p0"]["list"]], [d["p0"]["keyset"]], _etc(d), repeat=True)
    repeat.compile()
    with pytest.raises(ConfigError, match="repeat_dataset=False"):
        repeat.fit(max_iter=10)
    no_keyset = _model(d, [d["p0"]["list"], d["p1"]["list"]], None, _etc(d))
    no_keyset.compile()
    with pytest.raises(ConfigError, match=r"DataReaderParams\(keyset=.*2\)"):
        no_keyset.fit(num_epochs=1)
