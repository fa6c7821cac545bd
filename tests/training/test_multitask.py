"""Multi-label Input and compile(loss_names, loss_weights) (HugeCTR's MMoE / shared-bottom)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import terarec as hugectr
from terarec.errors import ConfigError
from tests.helpers.models import raw_async_reader
from tests.helpers.synth import raw_async_dataset

L = hugectr.Layer_t


def build(d, tmp_path=None):
    solver = hugectr.CreateSolver(batchsize=128, batchsize_eval=128, lr=0.01, seed=2,
                                  max_eval_batches=4,
                                  metrics_spec={hugectr.MetricsType.AUC: 1.0,
                                                hugectr.MetricsType.AverageLoss: 0.0})
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.Adam)
    model = hugectr.Model(solver, raw_async_reader(d), opt)
    model.add(hugectr.Input(label_dims=[1, 1], label_names=["label1", "label2"],
                            dense_dim=d["dense_dim"], dense_name="dense",
                            data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam("data1", 1, True, 3)]))
    model.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,
        workspace_size_per_gpu_in_mb=1, embedding_vec_size=4, combiner="sum",
        sparse_embedding_name="emb", bottom_name="data1"))

    def dense(t, b, top, **kw):
        model.add(hugectr.DenseLayer(layer_type=t, bottom_names=b, top_names=top, **kw))

    dense(L.Reshape, ["emb"], ["r"], leading_dim=12)
    dense(L.Concat, ["r", "dense"], ["shared_in"])
    dense(L.InnerProduct, ["shared_in"], ["shared"], num_output=16)
    dense(L.ReLU, ["shared"], ["shared_relu"])
    dense(L.Slice, ["shared_relu"], ["s1", "s2"], ranges=[(0, 16), (0, 16)])
    dense(L.InnerProduct, ["s1"], ["head1"], num_output=1)
    dense(L.InnerProduct, ["s2"], ["head2"], num_output=1)
    dense(L.BinaryCrossEntropyLoss, ["head1", "label1"], ["loss1"])
    dense(L.BinaryCrossEntropyLoss, ["head2", "label2"], ["loss2"])
    return model


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("mt"), n_train=2048, n_eval=512,
                             label_dim=2)


def test_weighted_losses_and_two_predictions(data):
    model = build(data)
    model.compile(loss_names=["loss1", "loss2"], loss_weights=[0.7, 0.3])
    model.fit(max_iter=60, display=1000, eval_interval=1000, snapshot=1000)
    out = model.engine.last_train
    total = 0.7 * out.losses["loss1"] + 0.3 * out.losses["loss2"]
    torch.testing.assert_close(out.loss, total)
    preds = model.predict(num_batches=2)
    assert preds.shape == (256, 2)
    metrics = model.evaluate()
    assert metrics["AUC"] > 0.7 and metrics["AverageLoss"] > 0
    assert np.isfinite(model.get_current_loss())


def test_loss_names_may_be_label_names(data):
    """HugeCTR's MMoE sample: compile(loss_names=[label names], ...) (update_label_weights)."""
    model = build(data)
    model.compile(loss_names=["label1", "label2"], loss_weights=[0.25, 0.75])
    assert model.engine.network.loss_weights == {"loss1": 0.25, "loss2": 0.75}
    model.fit(max_iter=3, display=1000, eval_interval=1000, snapshot=1000)
    out = model.engine.last_train
    torch.testing.assert_close(out.loss, 0.25 * out.losses["loss1"] + 0.75 * out.losses["loss2"])
    mixed = build(data)  # a label for one loss, a loss top name for the other
    mixed.compile(loss_names=["label2", "loss1"], loss_weights=[0.4, 0.6])
    assert mixed.engine.network.loss_weights == {"loss2": 0.4, "loss1": 0.6}


def test_compile_rejects_unknown_loss_name(data):
    model = build(data)
    with pytest.raises(ConfigError, match="loss3") as ei:
        model.compile(loss_names=["loss1", "loss3"], loss_weights=[0.5, 0.5])
    msg = str(ei.value)  # lists both accepted kinds of names
    assert "'label1', 'label2'" in msg and "'loss1', 'loss2'" in msg
    with pytest.raises(ConfigError, match="same length"):
        build(data).compile(loss_names=["loss1"], loss_weights=[0.5, 0.5])
    with pytest.raises(ConfigError, match="weighted once"):
        build(data).compile(loss_names=["label1", "loss1"], loss_weights=[0.5, 0.5])
