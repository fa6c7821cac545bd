"""The Keras-like API end to end on CPU: fit, evaluate, predict, files, resume, low-level loop."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import terarec as hugectr
from terarec.errors import ConfigError, DataError
from tests.helpers.models import build_dcn
from tests.helpers.synth import raw_async_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("raw"), n_train=4096, n_eval=1024)


def test_fit_learns_and_logs(data, tmp_path, capsys):
    model = build_dcn(data)
    model.compile()
    model.summary()
    model.fit(max_iter=120, display=40, eval_interval=60, snapshot=120,
              snapshot_prefix=str(tmp_path / "dcn"))
    out = capsys.readouterr().out
    assert "Iter: 40 Time(40 iters):" in out and "Loss:" in out and "lr:" in out
    assert "Evaluation, AUC:" in out
    metrics = model.evaluate()
    assert metrics["AUC"] > 0.8, metrics
    preds = model.predict()
    assert preds.shape == (1024, 1) and np.all((preds > 0) & (preds < 1))
    for name in ["dcn_dense_120.model", "dcn_opt_dense_120.model", "dcn0_sparse_120.model",
                 "dcn0_opt_sparse_120.model"]:
        assert (tmp_path / name).exists(), name


def test_dense_file_layout_is_raw_float32_in_layer_order(data, tmp_path):
    model = build_dcn(data)
    model.compile()
    model.save_params_to_files(str(tmp_path / "m"), 0)
    raw = np.fromfile(tmp_path / "m_dense_0.model", dtype="<f4")
    net = model.engine.network
    expected = np.concatenate([p.detach().cpu().numpy().reshape(-1) for p in net.dense_weights()])
    np.testing.assert_array_equal(raw, expected)
    # MultiCross(2 layers on 28 features): w, b per layer, then fc1 W (28x16), b (16), ...
    mc = net.layers[2]
    first = mc.dense_weights()[0].detach().cpu().numpy().reshape(-1)
    np.testing.assert_array_equal(raw[: first.size], first)
    # Adam: m then v over the whole buffer
    opt = np.fromfile(tmp_path / "m_opt_dense_0.model", dtype="<f4")
    assert opt.size == 2 * raw.size
    keys = np.fromfile(tmp_path / "m0_sparse_0.model" / "key", dtype="<i8")
    vec = np.fromfile(tmp_path / "m0_sparse_0.model" / "emb_vector", dtype="<f4")
    assert vec.size == keys.size * 8


def test_save_load_bit_identical_and_resume_equals_uninterrupted(data, tmp_path):
    ref = build_dcn(data, seed=3)
    ref.compile()
    ref.fit(max_iter=40, display=1000, eval_interval=1000, snapshot=20,
            snapshot_prefix=str(tmp_path / "a"))
    final_ref = ref.dense_weights_numpy()

    resumed = build_dcn(data, seed=99)  # different init: everything must come from the files
    resumed.compile()
    resumed.load_training_state(str(tmp_path / "a"), 20)
    snap = np.fromfile(tmp_path / "a_dense_20.model", dtype="<f4")
    now = np.concatenate([w.reshape(-1) for w in resumed.dense_weights_numpy()])
    np.testing.assert_array_equal(now, snap)
    # feed the same data position: skip the 20 batches the first run consumed
    for _ in range(20):
        resumed.train_reader.next_batch()
    sched = resumed.get_learning_rate_scheduler()
    for _ in range(20):
        resumed.set_learning_rate(sched.get_next())
        assert resumed.train()
    for a, b in zip(final_ref, resumed.dense_weights_numpy()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    k1, v1, _ = ref.engine.tables["emb"].export()
    k2, v2, _ = resumed.engine.tables["emb"].export()
    o1, o2 = np.argsort(k1), np.argsort(k2)
    np.testing.assert_array_equal(k1[o1], k2[o2])
    np.testing.assert_allclose(v1[o1], v2[o2], rtol=1e-5, atol=1e-6)


def test_low_level_loop_and_inspection(data, tmp_path):
    model = build_dcn(data)
    model.compile()
    model.start_data_reading()
    lr_sch = model.get_learning_rate_scheduler()
    for _ in range(5):
        model.set_learning_rate(lr_sch.get_next())
        assert model.train()
    assert model.get_current_loss() > 0
    for _ in range(3):
        assert model.eval()
    names = [n for n, _ in model.get_eval_metrics()]
    assert names == ["AUC"]
    fc1 = model.check_out_tensor("fc1", hugectr.Tensor_t.Evaluate)
    assert fc1.shape == (128, 16) and fc1.dtype == np.float32
    model.export_predictions(str(tmp_path / "p.txt"), str(tmp_path / "l.txt"))
    assert len((tmp_path / "p.txt").read_text().split()) == 128
    with pytest.raises(ConfigError, match="nope"):
        model.check_out_tensor("nope", hugectr.Tensor_t.Evaluate)


def test_freeze_dense_and_embedding(data):
    model = build_dcn(data)
    model.compile()
    before = model.dense_weights_numpy()
    emb_before = model.engine.tables["emb"].export()
    model.freeze_dense()
    model.freeze_embedding()
    model.start_data_reading()
    for _ in range(3):
        model.train()
    for a, b in zip(before, model.dense_weights_numpy()):
        np.testing.assert_array_equal(a, b)
    k, v, _ = model.engine.tables["emb"].export()
    keep = np.isin(k, emb_before[0])
    ob = dict(zip(emb_before[0].tolist(), emb_before[1]))
    for key, vec in zip(k[keep], v[keep]):
        np.testing.assert_array_equal(ob[int(key)], vec)
    model.unfreeze_dense()
    model.train()
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.dense_weights_numpy()))


def test_graph_json_round_trip_rebuilds_the_same_model(data, tmp_path):
    model = build_dcn(data)
    model.compile()
    path = tmp_path / "g.json"
    model.graph_to_json(str(path))
    obj = json.loads(path.read_text())
    assert obj["layers"][0]["type"] == "Data"
    assert obj["layers"][1]["type"] == "DistributedSlotSparseEmbeddingHash"
    assert obj["layers"][1]["sparse_embedding_hparam"]["max_vocabulary_size_global"] > 0
    model.save_params_to_files(str(tmp_path / "w"), 0)
    other = hugectr.Model(model.solver, model.reader_params,
                          hugectr.CreateOptimizer(hugectr.Optimizer_t.Adam))
    other.construct_from_json(str(path), include_dense_network=True)
    other.compile()
    other.load_dense_weights(str(tmp_path / "w_dense_0.model"))
    other.load_sparse_weights([str(tmp_path / "w0_sparse_0.model")])
    np.testing.assert_allclose(model.predict(num_batches=2), other.predict(num_batches=2),
                               rtol=1e-6)


def test_bad_input_errors(data, tmp_path):
    model = build_dcn(data)
    model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.ReLU, bottom_names=["missing"],
                                 top_names=["x"]))
    with pytest.raises(ConfigError, match="missing"):
        model.compile()
    model = build_dcn(data)
    model.compile()
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"\0" * 12)
    with pytest.raises(DataError, match="bad.model.*12 bytes"):
        model.load_dense_weights(str(bad))
    with pytest.raises(ConfigError, match="compile"):
        hugectr.Model(model.solver, model.reader_params,
                      hugectr.CreateOptimizer()).train()


def test_nan_loss_stops_with_hugectr_message(data):
    model = build_dcn(data, lr=1e30, optimizer=hugectr.CreateOptimizer(
        optimizer_type=hugectr.Optimizer_t.SGD))
    model.compile()
    with torch.no_grad():
        for p in model.engine.network.dense_weights():
            p.fill_(float("nan"))
    with pytest.raises(hugectr_errors().TrainingError, match="Loss cannot converge"):
        model.fit(max_iter=10, display=2, eval_interval=100, snapshot=100)


def hugectr_errors():
    import terarec.errors

    return terarec.errors


def test_callbacks_and_early_stop(data):
    events = []

    class CB(hugectr.TrainingCallback):
        def on_training_start(self):
            events.append("start")

        def on_eval_start(self, it):
            events.append(("eval_start", it))

        def on_eval_end(self, it, results):
            events.append(("eval_end", it, sorted(results)))
            return True

        def on_training_end(self, it):
            events.append(("end", it))

    model = build_dcn(data, training_callbacks=[CB()])
    model.compile()
    model.fit(max_iter=50, display=100, eval_interval=10, snapshot=1000)
    assert events == ["start", ("eval_start", 10), ("eval_end", 10, ["AUC"]), ("end", 10)]
