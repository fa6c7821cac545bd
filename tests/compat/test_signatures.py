"""Freeze HugeCTR's keyword names, order and defaults (§3, §4, §5, §7, §9, §12 of the reference)."""

from __future__ import annotations

import inspect

import pytest

import terarec as hugectr


def params(func):
    return [(p.name, p.default) for p in inspect.signature(func).parameters.values()
            if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]


def test_create_solver_signature():
    names = [n for n, _ in params(hugectr.CreateSolver)]
    assert names == [
        "model_name", "seed", "lr_policy", "lr", "warmup_steps", "decay_start", "decay_steps",
        "decay_power", "end_lr", "max_eval_batches", "batchsize_eval", "batchsize", "vvgpu",
        "repeat_dataset", "use_mixed_precision", "enable_tf32_compute", "scaler",
        "metrics_spec", "i64_input_key", "use_algorithm_search", "use_cuda_graph",
        "gen_loss_summary", "train_intra_iteration_overlap", "train_inter_iteration_overlap",
        "eval_intra_iteration_overlap", "eval_inter_iteration_overlap", "device_layout",
        "use_embedding_collection", "all_reduce_algo", "grouped_all_reduce",
        "num_iterations_statistics", "perf_logging", "drop_incomplete_batch", "kafka_brockers",
        "training_callbacks",
    ]
    s = hugectr.CreateSolver()
    assert (s.lr, s.warmup_steps, s.decay_power, s.batchsize, s.batchsize_eval) == (
        0.001, 1, 2.0, 2048, 2048)
    assert s.vvgpu == [[0]] and s.repeat_dataset is True and s.use_cuda_graph is True
    assert s.metrics == {"AUC": 1.0} and s.max_eval_batches == 100


def test_create_optimizer_defaults():
    names = params(hugectr.CreateOptimizer)
    assert [n for n, _ in names] == [
        "optimizer_type", "update_type", "beta", "lambda1", "lambda2", "beta1", "beta2",
        "epsilon", "initial_accu_value", "momentum_factor", "atomic_update"]
    cfg = hugectr.CreateOptimizer().config
    assert cfg.type == "Adam" and cfg.update_type == "Global"
    assert (cfg.beta1, cfg.beta2, cfg.epsilon) == (0.9, 0.999, 1e-7)


def test_model_fit_signature():
    names = params(hugectr.Model.fit)[1:7]
    assert names == [("num_epochs", 0), ("max_iter", 2000), ("display", 200),
                     ("eval_interval", 1000), ("snapshot", 10000), ("snapshot_prefix", "")]


@pytest.mark.parametrize("method", [
    "add", "compile", "summary", "fit", "graph_to_json", "construct_from_json",
    "load_dense_weights", "load_dense_optimizer_states", "load_sparse_weights",
    "load_sparse_optimizer_states", "save_params_to_files", "freeze_embedding",
    "unfreeze_embedding", "freeze_dense", "unfreeze_dense", "set_learning_rate",
    "get_learning_rate_scheduler", "reset_learning_rate_scheduler", "start_data_reading",
    "train", "eval", "get_current_loss", "get_eval_metrics", "check_out_tensor",
    "export_predictions", "set_source", "get_data_reader_train", "get_data_reader_eval",
    "predict", "evaluate", "get_incremental_model", "get_embedding_training_cache",
])
def test_model_has_method(method):
    assert callable(getattr(hugectr.Model, method))


def test_etc_signatures():
    """Embedding Training Cache (<= 23.08): CreateETC / CreateHMemCache / Model's 4th argument."""
    assert params(hugectr.CreateETC) == [
        ("ps_types", inspect.Parameter.empty), ("sparse_models", None), ("local_paths", None),
        ("hmem_cache_configs", None), ("hcache_configs", None)]
    assert [n for n, _ in params(hugectr.CreateHMemCache)] == [
        "num_blocks", "target_hit_rate", "max_num_evict"]
    assert [n for n, _ in params(hugectr.Model.__init__)] == [
        "self", "solver", "reader_params", "opt_params", "etc_params"]
    assert [n for n, _ in params(hugectr.Model.set_source)] == [
        "self", "source", "eval_source", "keyset"]
    assert [n for n, _ in params(hugectr.EmbeddingTrainingCache.update)] == [
        "self", "keyset_file", "keyset_file_list"]
    assert hugectr.TrainPSType_t.Staged.name == "Staged" and hugectr.Cached is (
        hugectr.TrainPSType_t.Cached)


def test_data_reader_params_defaults():
    p = hugectr.DataReaderParams(data_reader_type=hugectr.DataReaderType_t.Norm,
                                 source=["a.txt"], eval_source="b.txt",
                                 check_type=hugectr.Check_t.Sum)
    assert p.num_workers == 12 and p.float_label_dense is False and p.slot_size_array == []
    assert p.async_param.multi_hot_reader is False  # HugeCTR quirk §22.2
    assert hugectr.AsyncParam(4, 4, shuffle=False).multi_hot_reader is True


def test_enums_exact_names():
    assert hugectr.Check_t.Non.name == "Non" and hugectr.LrPolicy_t.fixed.name == "fixed"
    assert {m.name for m in hugectr.Optimizer_t} >= {
        "SGD", "MomentumSGD", "Nesterov", "Adam", "AdaGrad", "Ftrl"}
    assert hugectr.Adam is hugectr.Optimizer_t.Adam  # export_values()


def test_bad_arguments_name_the_argument():
    with pytest.raises(hugectr_errors().ConfigError, match="batchsize"):
        hugectr.CreateSolver(batchsize="big")
    with pytest.raises(hugectr_errors().ConfigError, match="beta1"):
        hugectr.CreateOptimizer(beta1="x")
    with pytest.raises(hugectr_errors().ConfigError, match="use_mixed_precision"):
        hugectr.CreateSolver(use_mixed_precision=True, enable_tf32_compute=True)
    with pytest.raises(hugectr_errors().ConfigError, match="nope"):
        hugectr.DenseLayer(layer_type=hugectr.Layer_t.ReLU, bottom_names=["a"],
                           top_names=["b"], nope=1)
    with pytest.raises(hugectr_errors().ConfigError, match="combiner"):
        hugectr.SparseEmbedding(hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash, 1, 4,
                                "max", "e", "d")


def hugectr_errors():
    import terarec.errors

    return terarec.errors


def test_submodules_exist():
    import terarec.data
    import terarec.optimizer

    assert hasattr(terarec.optimizer, "CreateOptimizer")
    assert hasattr(terarec.data, "DataSourceParams")


def test_hugectr_submodule_imports_resolve_to_terarec():
    import importlib
    import sys

    if "hugectr" in sys.modules and sys.modules["hugectr"] is not hugectr:
        pytest.skip("a real hugectr package is installed")
    inference = importlib.import_module("hugectr.inference")
    import terarec.inference

    assert inference is terarec.inference
    assert importlib.import_module("hugectr.tools").DataGeneratorParams
    assert hugectr.inference.InferenceParams is terarec.inference.InferenceParams
