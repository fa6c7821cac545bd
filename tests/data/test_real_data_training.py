"""Real data, preprocessed by terarec and trained through the HugeCTR API (issue: data formats).

Criteo Kaggle sample (first 8,000 rows train, last 2,000 eval): DCN reaches AUC > 0.70.
Frappe (validation split train, test split eval): DeepFM reaches AUC > 0.90.
"""

from __future__ import annotations

import pytest

import terarec as hugectr
from terarec.data.preprocess import preprocess_criteo, preprocess_libsvm

L = hugectr.Layer_t


def _model(res, batch: int, lr: float, seed: int = 0) -> hugectr.Model:
    solver = hugectr.CreateSolver(batchsize=batch, batchsize_eval=batch, lr=lr, seed=seed,
                                  max_eval_batches=1000, i64_input_key=res.i64_input_key,
                                  repeat_dataset=True)
    reader = hugectr.DataReaderParams(**{**res.data_reader_params_kwargs(),
                                         "check_type": hugectr.Check_t.Non})
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.Adam)
    model = hugectr.Model(solver, reader, opt)
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=res.dense_dim,
                            dense_name="dense", data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam("data1", 1, True,
                                                              len(res.slot_size_array))]))
    return model


def _dense(model, layer_type, bottom, top, **kw):
    model.add(hugectr.DenseLayer(layer_type=layer_type, bottom_names=bottom, top_names=top, **kw))


def test_criteo_sample_dcn_auc_above_070(shared_data, tmp_path):
    src = shared_data / "criteo_kaggle_sample" / "train_head10k.txt"
    res = preprocess_criteo([str(src)], str(tmp_path / "criteo"), eval_last_rows=2000,
                            freq_threshold=2)
    assert (res.rows, res.eval_rows) == (8000, 2000)
    model = _model(res, batch=256, lr=0.002)
    slots = len(res.slot_size_array)
    model.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,
        slot_size_array=res.slot_size_array, embedding_vec_size=8, combiner="sum",
        sparse_embedding_name="emb", bottom_name="data1"))
    _dense(model, L.Reshape, ["emb"], ["r"], leading_dim=8 * slots)
    _dense(model, L.Concat, ["r", "dense"], ["c"])
    _dense(model, L.MultiCross, ["c"], ["mc"], num_layers=2)
    _dense(model, L.InnerProduct, ["c"], ["fc1"], num_output=64)
    _dense(model, L.ReLU, ["fc1"], ["relu1"])
    _dense(model, L.Concat, ["relu1", "mc"], ["c2"])
    _dense(model, L.InnerProduct, ["c2"], ["fc2"], num_output=1)
    _dense(model, L.BinaryCrossEntropyLoss, ["fc2", "label"], ["loss"])
    model.compile()
    model.fit(max_iter=93, display=1000, eval_interval=1000, snapshot=100000)  # 3 epochs
    auc = model.evaluate()["AUC"]
    assert auc > 0.70, auc


def test_frappe_deepfm_auc_above_090(shared_data, tmp_path):
    frappe = shared_data / "frappe"
    res = preprocess_libsvm([str(frappe / "frappe.validation.libfm")], str(tmp_path / "f"),
                            eval_inputs=[str(frappe / "frappe.test.libfm")])
    assert res.dense_dim == 0 and len(res.slot_size_array) == 10
    model = _model(res, batch=1024, lr=0.003)
    k, s = 8, 10
    model.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.LocalizedSlotSparseEmbeddingHash,
        slot_size_array=res.slot_size_array, embedding_vec_size=k + 1, combiner="sum",
        sparse_embedding_name="emb", bottom_name="data1"))
    _dense(model, L.Reshape, ["emb"], ["r1"], leading_dim=k + 1)
    _dense(model, L.Slice, ["r1"], ["vec", "bias"], ranges=[(0, k), (k, k + 1)])
    _dense(model, L.Reshape, ["vec"], ["v"], leading_dim=s * k)
    _dense(model, L.Reshape, ["bias"], ["b"], leading_dim=s)
    _dense(model, L.FmOrder2, ["v"], ["fm"], out_dim=k)
    _dense(model, L.ReduceSum, ["fm"], ["fm_sum"], axis=1)
    _dense(model, L.ReduceSum, ["b"], ["first_order"], axis=1)
    _dense(model, L.InnerProduct, ["v"], ["fc1"], num_output=64)
    _dense(model, L.ReLU, ["fc1"], ["relu1"])
    _dense(model, L.InnerProduct, ["relu1"], ["fc2"], num_output=1)
    _dense(model, L.Add, ["fc2", "fm_sum", "first_order"], ["logit"])
    _dense(model, L.BinaryCrossEntropyLoss, ["logit", "label"], ["loss"])
    model.compile()
    model.fit(max_iter=160, display=1000, eval_interval=1000, snapshot=100000)
    auc = model.evaluate()["AUC"]
    assert auc > 0.90, auc


@pytest.fixture
def shared_data():
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.exists():
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA
