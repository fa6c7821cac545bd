"""HugeCTR 2.3-3.0: the full JSON config (old key spellings), `terarec train`, the Session loop."""

from __future__ import annotations

import json

import pytest

import terarec as hugectr
from terarec.cli.main import main as cli_main
from terarec.errors import ConfigError
from tests.helpers.synth import raw_async_dataset


def legacy_config(d, tmp_path, **solver_extra):
    slots = len(d["slot_sizes"])
    cfg = {
        "solver": {"lr_policy": "fixed", "display": 20, "max_iter": 60, "gpu": [0],
                   "batchsize": 128, "batchsize_eval": 128, "snapshot": 60,
                   "snapshot_prefix": str(tmp_path / "legacy"), "eval_interval": 30,
                   "max_eval_batches": 4, "eval_metrics": ["AUC:0.99", "AverageLoss"],
                   "input_key_type": "I32", **solver_extra},
        "optimizer": {"type": "Adam", "global_update": True,
                      "adam_hparam": {"learning_rate": 0.01, "beta1": 0.9, "beta2": 0.999,
                                      "epsilon": 1e-7}},
        "layers": [
            {"name": "data", "type": "Data", "format": "RawAsync", "source": d["train"],
             "eval_source": d["eval"], "check": "None", "num_samples": d["n_train"],
             "eval_num_samples": d["n_eval"], "slot_size_array": d["slot_sizes"],
             "async_param": {"num_threads": 1, "num_batches_per_thread": 2,
                             "multi_hot_reader": True, "is_dense_float": True},
             "label": {"top": "label", "label_dim": 1},
             "dense": {"top": "dense", "dense_dim": d["dense_dim"]},
             "sparse": [{"top": "data1", "type": "DistributedSlot",
                         "max_feature_num_per_sample": slots, "max_nnz": 1,
                         "slot_num": slots}]},
            {"name": "sparse_embedding1", "type": "DistributedSlotSparseEmbeddingHash",
             "bottom": "data1", "top": "sparse_embedding1",
             "sparse_embedding_hparam": {"max_vocabulary_size_per_gpu": 1000,
                                         "embedding_vec_size": 8, "combiner": 0}},
            {"name": "reshape1", "type": "Reshape", "bottom": "sparse_embedding1",
             "top": "reshape1", "leading_dim": 8 * slots},
            {"name": "concat1", "type": "Concat", "bottom": ["reshape1", "dense"],
             "top": "concat1"},
            {"name": "fc1", "type": "InnerProduct", "bottom": "concat1", "top": "fc1",
             "fc_param": {"num_output": 16}},
            {"name": "relu1", "type": "ReLU", "bottom": "fc1", "top": "relu1"},
            {"name": "fc2", "type": "InnerProduct", "bottom": "relu1", "top": "fc2",
             "fc_param": {"num_output": 1}},
            {"name": "loss", "type": "BinaryCrossEntropyLoss", "bottom": ["fc2", "label"],
             "top": "loss"},
        ],
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("raw"))


def test_terarec_train_legacy_config(data, tmp_path, capsys):
    path = legacy_config(data, tmp_path)
    assert cli_main(["train", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Evaluation, AUC:" in out and "Evaluation, AverageLoss:" in out
    assert (tmp_path / "legacy_dense_60.model").exists()
    assert (tmp_path / "legacy0_sparse_60.model" / "key").exists()


def test_session_loop(data, tmp_path):
    path = legacy_config(data, tmp_path)
    solver = hugectr.solver_parser_helper(seed=0, batchsize=128, batchsize_eval=128,
                                          max_eval_batches=4, repeat_dataset=True)
    lr_sch = hugectr.get_learning_rate_scheduler(str(path))
    assert lr_sch.get_next() == pytest.approx(0.01)
    sess = hugectr.Session(solver, str(path))
    sess.start_data_reading()
    for i in range(40):
        sess.set_learning_rate(lr_sch.get_next())
        assert sess.train()
        if i % 20 == 19:
            metrics = sess.evaluation()
            assert metrics[0][0] == "AUC"
    assert sess.get_current_loss() > 0
    sess.download_params_to_files(str(tmp_path / "sess"), 40)
    assert (tmp_path / "sess_dense_40.model").exists()
    assert sess.get_params_num() > 0


def test_legacy_config_typos_are_named(data, tmp_path):
    path = legacy_config(data, tmp_path)
    obj = json.loads(path.read_text())
    obj["layers"][4]["fc_param"] = {"num_outptu": 16}
    path.write_text(json.dumps(obj))
    with pytest.raises(ConfigError, match="fc1"):
        hugectr.Session(hugectr.solver_parser_helper(batchsize=128), str(path))
    path.write_text(path.read_text()[:-10])
    with pytest.raises(ConfigError, match="line 1"):
        hugectr.Session(hugectr.solver_parser_helper(batchsize=128), str(path))
    obj["layers"][4]["fc_param"] = {"num_output": 16}
    obj["layers"][5]["type"] = "ReLu"
    path.write_text(json.dumps(obj))
    with pytest.raises(ConfigError, match="Did you mean 'ReLU'"):
        hugectr.Session(hugectr.solver_parser_helper(batchsize=128), str(path))
