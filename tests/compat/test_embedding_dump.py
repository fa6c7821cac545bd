"""``Model.embedding_dump`` / ``Model.embedding_load`` (reference §12.2, §17.5): the bytes of
the folder, a round trip into a fresh model (same predictions, same continued training with
the optimizer states), table selection, atomic writes and clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import terarec as hugectr
from terarec.compat import embedding_dump as ed
from terarec.errors import ConfigError, DataError
from tests.compat.test_embedding_collection import EV, TOL, VOCAB, shared_batches, table_rows


def ec_model(optimizer: str = "Adam") -> hugectr.Model:
    """Table ``t`` shared by ``d0`` (sum) and ``d1`` (average), table ``u`` (ev 2) on ``d1``."""
    solver = hugectr.CreateSolver(batchsize=16, batchsize_eval=16, lr=0.05, seed=7,
                                  use_embedding_collection=True)
    opt = hugectr.CreateOptimizer(optimizer_type=getattr(hugectr.Optimizer_t, optimizer))
    model = hugectr.Model(solver, None, opt)
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=4, dense_name="dense",
                            data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam("d0", 3, False, 1),
                                hugectr.DataReaderSparseParam("d1", 1, True, 1)]))
    t = hugectr.EmbeddingTableConfig("t", VOCAB, EV)
    u = hugectr.EmbeddingTableConfig("u", -1, 2)
    ebc = hugectr.EmbeddingCollectionConfig()
    ebc.embedding_lookup([t, t, u], ["d0", "d1", "d1"], "emb", ["sum", "average", "sum"])
    model.add(ebc)
    L = hugectr.Layer_t
    model.add(hugectr.DenseLayer(L.Concat, ["emb", "dense"], ["c"]))
    model.add(hugectr.DenseLayer(L.InnerProduct, ["c"], ["fc"], num_output=1))
    model.add(hugectr.DenseLayer(L.BinaryCrossEntropyLoss, ["fc", "label"], ["loss"]))
    model.compile()
    return model


@pytest.fixture
def trained(tmp_path_factory) -> dict[str, Any]:
    """A model trained 3 steps, its dump and its dense files."""
    tmp = tmp_path_factory.mktemp("dump")
    model = ec_model()
    batches = shared_batches(7, seed=3)
    for batch in batches[:3]:
        model.train(batch)
    model.embedding_dump(str(tmp / "ec"))
    model.save_params_to_files(str(tmp / "m"), 3)
    return {"model": model, "batches": batches, "dir": tmp, "path": tmp / "ec"}


def words(path: Path, n: int = 32) -> list[int]:
    return np.fromfile(path, "<i4", n).tolist()


def test_folder_layout_to_the_byte(trained):
    folder = trained["path"] / "embedding_collection_0"
    assert sorted(p.name for p in folder.iterdir()) == [
        "key0", "key1", "meta_data", "optimizer0", "optimizer1", "weight0", "weight1"]
    tabs = trained["model"].engine.tables
    n_t, n_u = len(tabs["emb0"].export()[0]), len(tabs["emb2"].export()[0])
    meta = (folder / "meta_data").read_bytes()
    assert len(meta) == 20 + 2 * (4 + 8 + 4)
    assert np.frombuffer(meta, "<i4", 5).tolist() == [2, 1, 0, 0, 0]
    assert np.frombuffer(meta, "<i4", 2, 20).tolist() == [0, 1]
    assert np.frombuffer(meta, "<u8", 2, 28).tolist() == [n_t, n_u]
    assert np.frombuffer(meta, "<i4", 2, 44).tolist() == [EV, 2]
    assert words(folder / "key0") == [1, 0] + [0] * 30
    assert words(folder / "weight1") == [2, 1] + [0] * 30
    keys = np.fromfile(folder / "key0", "<i8", offset=128)
    vecs = np.fromfile(folder / "weight0", "<f4", offset=128).reshape(-1, EV)
    k, v, _ = tabs["emb0"].export()
    np.testing.assert_array_equal(keys, k)
    np.testing.assert_array_equal(vecs, v)
    head = words(folder / "optimizer0", 8)
    assert head == [3, 0, 2, 0, 3, 0, EV, 3]  # Adam: m, v; step 3; ev_size; type Adam
    assert (folder / "optimizer0").stat().st_size == 128 + 2 * n_t * EV * 4
    m = np.fromfile(folder / "optimizer0", "<f4", n_t * EV, offset=128).reshape(n_t, EV)
    state = tabs["emb0"].optimizer_state()
    np.testing.assert_array_equal(m, state["m"][1] if "m" in state
                                  else state[tabs["emb0"].optimizer.state_names[0]][1])


def continue_training(model: hugectr.Model, batches: list[Any]) -> list[float]:
    losses = []
    for batch in batches:
        model.train(batch)
        losses.append(model.get_current_loss())
    return losses


def test_round_trip_same_predictions_and_continued_training(trained):
    model, batches, tmp = trained["model"], trained["batches"], trained["dir"]
    weights_only = ec_model()  # dense file + dump: the predictions
    weights_only.load_dense_weights(str(tmp / "m_dense_3.model"))
    weights_only.embedding_load(str(trained["path"]))
    np.testing.assert_allclose(weights_only.predict(batches[3]), model.predict(batches[3]),
                               atol=TOL)
    fresh, fresh2 = ec_model(), ec_model()
    for f in (fresh, fresh2):  # dense files and schedule, then table states from the dump only
        f.load_training_state(str(tmp / "m"), 3)
        for table in f.engine.tables.values():
            table.reset_state()
    fresh.embedding_load(str(trained["path"]))
    (trained["path"] / "embedding_collection_0" / "optimizer0").rename(tmp / "opt0")
    try:  # fresh2: table t without its optimizer file (weights only, states untouched)
        fresh2.embedding_load(str(trained["path"]))
    finally:
        (tmp / "opt0").rename(trained["path"] / "embedding_collection_0" / "optimizer0")
    want = continue_training(model, batches[3:])
    np.testing.assert_allclose(continue_training(fresh, batches[3:]), want, atol=TOL)
    np.testing.assert_allclose(table_rows(fresh), table_rows(model), atol=TOL)
    np.testing.assert_allclose(table_rows(fresh, "emb2"), table_rows(model, "emb2"), atol=TOL)
    assert fresh.engine.tables["emb0"].optimizer.t == model.engine.tables["emb0"].optimizer.t
    continue_training(fresh2, batches[3:])  # the Adam states of t matter
    assert np.abs(table_rows(fresh2) - table_rows(model)).max() > 1e-4


def test_table_names_select_and_missing_tables_are_named(tmp_path):
    model = ec_model("SGD")
    model.train(shared_batches(1)[0])
    model.embedding_dump(str(tmp_path), ["u"])
    folder = tmp_path / "embedding_collection_0"
    assert sorted(p.name for p in folder.iterdir()) == ["key1", "meta_data", "optimizer1",
                                                        "weight1"]
    assert words(folder / "optimizer1", 8) == [3, 1, 0, 0, 1, 0, 2, 0]  # SGD: no arrays
    fresh = ec_model("SGD")
    fresh.embedding_load(str(tmp_path), ["u"])
    np.testing.assert_array_equal(table_rows(fresh, "emb2"), table_rows(model, "emb2"))
    with pytest.raises(DataError, match=r"meta_data.*table id 0"):
        fresh.embedding_load(str(tmp_path))
    with pytest.raises(ConfigError, match=r"table names among \['t', 'u'\]"):
        model.embedding_dump(str(tmp_path), ["nope"])


def test_dump_is_atomic(tmp_path, monkeypatch):
    model = ec_model("SGD")
    model.embedding_dump(str(tmp_path))
    before = {p.name: p.read_bytes() for p in (tmp_path / "embedding_collection_0").iterdir()}
    model.train(shared_batches(1)[0])

    def boom(*args: Any) -> bytes:
        raise OSError("disk full")

    monkeypatch.setattr(ed, "_optimizer_bytes", boom)
    with pytest.raises(OSError, match="disk full"):
        model.embedding_dump(str(tmp_path))
    assert [p.name for p in tmp_path.iterdir()] == ["embedding_collection_0"]  # no temp left
    after = {p.name: p.read_bytes() for p in (tmp_path / "embedding_collection_0").iterdir()}
    assert after == before


def corrupt(folder: Path, name: str, data: bytes) -> None:
    (folder / name).write_bytes(data)


@pytest.mark.parametrize("name,change,message", [
    ("weight0", lambda b: b[:-4], r"weight0': has \d+ bytes, expected \d+"),
    ("key1", lambda b: np.array([2], "<i4").tobytes() + b[4:], r"key1.*expected \[1, 1\]"),
    ("meta_data", lambda b: b[:-1], r"meta_data': has \d+ bytes, expected \d+ for num_tables=2"),
    ("meta_data", lambda b: b[:44] + np.array([EV + 1], "<i4").tobytes() + b[48:],
     r"ev_size 5, expected 4"),
    ("optimizer0", lambda b: b[:-8], r"optimizer0': has \d+ bytes, expected"),
    ("optimizer0", lambda b: b[:28] + np.array([0], "<i4").tobytes() + b[32:],
     r"holds SGD states.*expected Adam"),
])
def test_corrupt_files_are_named(trained, tmp_path, name, change, message):
    import shutil

    shutil.copytree(trained["path"], tmp_path / "ec")
    folder = tmp_path / "ec" / "embedding_collection_0"
    corrupt(folder, name, change((folder / name).read_bytes()))
    with pytest.raises(DataError, match=message):
        ec_model().embedding_load(str(tmp_path / "ec"))


def test_missing_paths_are_named(tmp_path):
    model = ec_model("SGD")
    with pytest.raises(DataError, match="embedding_dump folder not found"):
        model.embedding_load(str(tmp_path / "none"))
    with pytest.raises(DataError, match="embedding_collection_0': folder of embedding"):
        model.embedding_load(str(tmp_path))
    model.embedding_dump(str(tmp_path))
    (tmp_path / "embedding_collection_0" / "key0").unlink()
    with pytest.raises(DataError, match="key0': keys file not found"):
        model.embedding_load(str(tmp_path))
