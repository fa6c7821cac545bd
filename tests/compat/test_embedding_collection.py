"""HugeCTR's embedding-collection API (reference §8): argument names and defaults, the mapping
onto SparseEmbedding specs + placements, a HugeCTR-style script on one process, and the same
script on 2 gloo ranks (mp row-wise / table-wise, dp, column-wise) equal to one process."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import terarec as hugectr
from terarec.compat.embedding_collection import EmbeddingCollectionConfig, EmbeddingTableConfig
from terarec.data.schema import DataSchema, SparseSpec
from terarec.errors import ConfigError, NotSupportedError
from tests.distributed.harness import run_ranks
from tests.helpers.synth import raw_async_dataset

STEPS = 4
TOL = 1e-5
#: (shard_matrix, shard_strategy) on 2 GPUs
PLANS = {
    "row_dp_column": ([["t0", "t1", "t2"], ["t0", "t1", "t2"]],
                      [("mp", ["t0", ("t2", 2)]), ("dp", ["t1"])]),
    "table_row_dp": ([["t1", "t2"], ["t0", "t1", "t2"]], [("mp", ["t0", "t1"]), ("dp", ["t2"])]),
}


def schema(n: int = 3, nnz: int = 1) -> DataSchema:
    return DataSchema(label_dims=[1], label_names=["label"], dense_dim=4, dense_name="dense",
                      sparse=[SparseSpec(f"d{i}", [nnz], True, 1) for i in range(n)])


def tables(sizes: list[int]) -> list[EmbeddingTableConfig]:
    return [hugectr.EmbeddingTableConfig(name=f"t{i}", max_vocabulary_size=s, ev_size=8)
            for i, s in enumerate(sizes)]


# ------------------------------------------------------------------ API and mapping
def test_names_defaults_and_exports():
    ebc = hugectr.EmbeddingCollectionConfig()
    assert ebc.use_exclusive_keys is False
    assert ebc.comm_strategy == hugectr.CommunicationStrategy.Uniform
    t = hugectr.EmbeddingTableConfig("t", 10, 4)
    assert (t.opt_params_or_empty, t.init_param_or_empty) == (None, None)
    from terarec.compat import EmbeddingCollectionConfig as C

    assert C is EmbeddingCollectionConfig
    for bad in ({"max_vocabulary_size": 0}, {"ev_size": 300}):
        with pytest.raises(ConfigError):
            EmbeddingTableConfig(**{"name": "t", "max_vocabulary_size": 5, "ev_size": 4, **bad})
    with pytest.raises(NotSupportedError):
        EmbeddingTableConfig("t", 5, 4, init_param_or_empty=object())


def test_lookups_map_to_sparse_embeddings():
    ebc = EmbeddingCollectionConfig()
    t = [*tables([50, 30, 20]), EmbeddingTableConfig("dyn", -1, 4)]
    ebc.embedding_lookup(t[0], "d0", "e0", "sum")
    ebc.embedding_lookup(t[1], "d1", "e1", "average")
    ebc.embedding_lookup(t[2], "d2", "e2", "concat")
    ebc.embedding_lookup(t[3], "d0", "e3", "mean")
    g = ebc.to_graph(schema(), direct_keys=True)
    types = [(s.top, s.embedding_type, s.combiner, s.embedding_vec_size) for s in g.embeddings]
    assert types == [("e0", "LocalizedSlotSparseEmbeddingOneHot", "sum", 8),
                     ("e1", "LocalizedSlotSparseEmbeddingOneHot", "mean", 8),
                     ("e2", "LocalizedSlotSparseEmbeddingOneHot", "sum", 8),
                     ("e3", "DistributedSlotSparseEmbeddingHash", "mean", 4)]
    assert g.embeddings[0].slot_size_array == [50] and g.layers == [] and g.placements == {}
    hashed = ebc.to_graph(schema(), direct_keys=False).embeddings
    assert {s.embedding_type for s in hashed} == {"DistributedSlotSparseEmbeddingHash"}
    assert hashed[1].max_vocabulary_size_global == 30
    with pytest.raises(ConfigError, match="combiner"):
        ebc.embedding_lookup(t[0], "d0", "x", "max")


def test_batch_major_list_form_reshapes_and_concatenates():
    ebc = EmbeddingCollectionConfig()
    ebc.embedding_lookup(tables([5, 6]), ["d0", "d1"], "emb", ["sum", "sum"])
    g = ebc.to_graph(schema())
    assert [s.top for s in g.embeddings] == ["emb0", "emb1"]
    assert [(s.type, s.bottom, s.top) for s in g.layers] == [
        ("Reshape", ["emb0"], ["emb0_flat"]), ("Reshape", ["emb1"], ["emb1_flat"]),
        ("Concat", ["emb0_flat", "emb1_flat"], ["emb"])]
    with pytest.raises(ConfigError, match="only call"):
        ebc.embedding_lookup(tables([5])[0], "d2", "more", "sum")


def test_shard_maps_mp_dp_and_column_wise():
    ebc = EmbeddingCollectionConfig()
    for i, t in enumerate(tables([50, 30, 20])):
        ebc.embedding_lookup(t, f"d{i}", f"e{i}", "sum")
    ebc.shard(*PLANS["row_dp_column"])
    p = {n: (x.kind, x.ranks) for n, x in ebc.to_graph(schema(), 2).placements.items()}
    assert p == {"e0": ("row_wise", [0, 1]), "e1": ("replicated", [0, 1]),
                 "e2": ("column_wise", [0, 1])}
    ebc.shard(*PLANS["table_row_dp"])
    p = {n: (x.kind, x.ranks) for n, x in ebc.placements(2).items()}
    assert p == {"e0": ("table_wise", [1]), "e1": ("row_wise", [0, 1]),
                 "e2": ("replicated", [0, 1])}
    assert ebc.to_graph(schema(), 1).placements == {}  # one process: every table whole
    bad = [([["t0", "t1", "t2"]], [("mp", ["t0", "t1", "t2"])]),       # 1 GPU listed, 2 ranks
           ([["t0", "t1"], ["t0", "t2"]], [("dp", ["t0", "t1"]), ("mp", ["t2"])]),  # dp not all
           ([["t0", "t1", "t2"]] * 2, [("mp", ["t0", "t1"])]),          # t2 has no strategy
           ([["t0", "t1", "t2"]] * 2, [("mp", ["t0", ("t1", 3), "t2"])])]  # k != GPUs
    for matrix, strategy in bad:
        ebc.shard(matrix, strategy)
        with pytest.raises(ConfigError):
            ebc.placements(2)
    with pytest.raises(ConfigError):
        ebc.shard([["t0"]], [("tp", ["t0"])])


def test_shared_table_maps_to_lookups_and_multi_hot_concat_is_refused():
    ebc = EmbeddingCollectionConfig()
    t = tables([10])[0]
    ebc.embedding_lookup(t, "d0", "a", "sum")
    ebc.embedding_lookup(t, "d1", "b", "average")
    g = ebc.to_graph(schema(), collection_id=2, slot_size_array=[10, 10, 10])
    assert [(s.top, s.bottom, s.combiner) for s in g.embeddings] == [
        ("a", "d0", "sum"), ("b", "d1", "mean")]
    assert [s.extra for s in g.embeddings] == [
        {"collection": 2, "table": "t0", "table_id": 0, "key_offset": 0},
        {"collection": 2, "table": "t0", "table_id": 0, "key_offset": 10}]
    assert ebc.lookups_by_table() == {"t0": ["a", "b"]}
    for call in (lambda: ebc.to_graph(schema(), world_size=2), lambda: ebc.placements(2)):
        with pytest.raises(NotSupportedError, match="'t0'"):
            call()
    ebc.embedding_lookup(EmbeddingTableConfig("t0", 11, 8), "d2", "c", "sum")
    with pytest.raises(ConfigError, match="one definition"):
        ebc.to_graph(schema())
    ebc = EmbeddingCollectionConfig()
    ebc.embedding_lookup(t, "d0", "a", "concat")
    with pytest.raises(NotSupportedError, match="concat"):
        ebc.to_graph(schema(nnz=2))


# ------------------------------------------------------------------ a table shared by lookups
VOCAB, EV, B = 20, 4, 16


def concat_model(nnz: int, list_form: bool = False) -> hugectr.Model:
    """One static table looked up with ``"concat"`` from input ``d0`` of hotness ``nnz``."""
    solver = hugectr.CreateSolver(batchsize=B, batchsize_eval=B, lr=0.01, seed=5,
                                  use_embedding_collection=True)
    reader = hugectr.DataReaderParams(
        data_reader_type=hugectr.DataReaderType_t.RawAsync, source=["unused"],
        eval_source="unused", check_type=hugectr.Check_t.Non, slot_size_array=[])
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.SGD)
    model = hugectr.Model(solver, reader, opt)
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=4, dense_name="dense",
                            data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam("d0", nnz, nnz == 1, 1),
                                hugectr.DataReaderSparseParam("d1", 1, True, 1)]))
    t = hugectr.EmbeddingTableConfig("t", VOCAB, EV)
    ebc = hugectr.EmbeddingCollectionConfig()
    if list_form:
        ebc.embedding_lookup([t, t], ["d1", "d0"], "emb", ["sum", "concat"])
    else:
        ebc.embedding_lookup(t, "d0", "emb", "concat")
    model.add(ebc)
    return model


def test_multi_hot_concat_is_refused_at_add_with_hugectr_rule():
    """HugeCTR's concat combiner (embedding-collection code; reference §8.2 lists it) does not
    pool: a lookup's output is (batch, 1, max_hotness * ev_size). terarec's pooled tables do
    not implement that, so Model.add refuses it, stating the rule, and adds nothing."""
    for list_form in (False, True):
        with pytest.raises(NotSupportedError) as err:
            concat_model(3, list_form)
        msg = str(err.value)
        assert "'d0'" in msg and "max_hotness=3" in msg
        assert "(batch, 1, max_hotness * ev_size) = (batch, 1, 3 * 4) = (batch, 1, 12)" in msg
        assert "'sum' or 'average'" in msg
    assert [e.top for e in concat_model(1).spec.embeddings] == ["emb"]  # one-hot: taken
    # nothing half-added: the failing add leaves the model without embeddings
    ebc = hugectr.EmbeddingCollectionConfig()
    ebc.embedding_lookup(hugectr.EmbeddingTableConfig("u", VOCAB, EV), "d0", "e2", "concat")
    bad = hugectr.Model(hugectr.CreateSolver(batchsize=B), None, hugectr.CreateOptimizer())
    bad.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=4, dense_name="dense",
                          data_reader_sparse_param_array=[
                              hugectr.DataReaderSparseParam("d0", [2], False, 1)]))
    with pytest.raises(NotSupportedError, match="max_hotness=2"):
        bad.add(ebc)
    assert bad.spec.embeddings == []


def test_one_hot_concat_is_the_key_vector_as_hugectr():
    """One-hot concat: (batch, 1, 1 * ev_size) = the key's vector, zeros for an empty row."""
    from terarec.data.batch import Batch
    from terarec.sparse import SparseInput

    model = concat_model(1)
    L = hugectr.Layer_t
    model.add(hugectr.DenseLayer(L.Reshape, ["emb"], ["r"], leading_dim=EV))
    model.add(hugectr.DenseLayer(L.Concat, ["r", "dense"], ["c"]))
    model.add(hugectr.DenseLayer(L.InnerProduct, ["c"], ["fc"], num_output=1))
    model.add(hugectr.DenseLayer(L.BinaryCrossEntropyLoss, ["fc", "label"], ["loss"]))
    model.compile()
    w = np.random.default_rng(2).uniform(-0.5, 0.5, (VOCAB, EV)).astype(np.float32)
    model.engine.tables["emb"].load(np.arange(VOCAB), w)
    keys = [[[k]] if k >= 0 else [[]] for k in np.random.default_rng(3).integers(-1, VOCAB, B)]
    batch = Batch(labels=torch.zeros(B, 1), dense=torch.zeros(B, 4),
                  sparse={"d0": SparseInput.from_lists(keys),
                          "d1": SparseInput.from_lists([[[0]]] * B)})
    model.engine.eval_step(batch)
    got = model.check_out_tensor("emb", hugectr.Tensor_t.Evaluate)
    want = np.stack([w[k[0][0]] if k[0] else np.zeros(EV, np.float32) for k in keys])
    assert got.shape == (B, 1, EV)
    np.testing.assert_allclose(got[:, 0], want, atol=1e-6)


def shared_model(optimizer: str, direct: bool, lr: float = 0.05) -> hugectr.Model:
    """Table ``t`` looked up twice (list form): ``d0`` (multi-hot) summed, ``d1`` averaged."""
    solver = hugectr.CreateSolver(batchsize=B, batchsize_eval=B, lr=lr, seed=5,
                                  use_embedding_collection=True)
    reader = hugectr.DataReaderParams(
        data_reader_type=hugectr.DataReaderType_t.RawAsync, source=["unused"],
        eval_source="unused", check_type=hugectr.Check_t.Non, slot_size_array=[]) \
        if direct else None
    opt = hugectr.CreateOptimizer(optimizer_type=getattr(hugectr.Optimizer_t, optimizer))
    model = hugectr.Model(solver, reader, opt)
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=4, dense_name="dense",
                            data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam("d0", 3, False, 1),
                                hugectr.DataReaderSparseParam("d1", 1, True, 1)]))
    t = hugectr.EmbeddingTableConfig("t", VOCAB, EV)
    ebc = hugectr.EmbeddingCollectionConfig()
    ebc.embedding_lookup([t, t], ["d0", "d1"], "emb", ["sum", "average"])
    model.add(ebc)
    L = hugectr.Layer_t
    model.add(hugectr.DenseLayer(L.Concat, ["emb", "dense"], ["c"]))
    model.add(hugectr.DenseLayer(L.InnerProduct, ["c"], ["fc"], num_output=1))
    model.add(hugectr.DenseLayer(L.BinaryCrossEntropyLoss, ["fc", "label"], ["loss"]))
    model.compile()
    return model


def shared_batches(n: int, seed: int = 0) -> list[Any]:
    from terarec.data.batch import Batch
    from terarec.sparse import SparseInput

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        d0 = [[rng.integers(0, VOCAB, rng.integers(1, 4)).tolist()] for _ in range(B)]
        d1 = [[rng.integers(0, VOCAB, 1).tolist()] for _ in range(B)]
        out.append(Batch(labels=torch.tensor(rng.integers(0, 2, (B, 1)), dtype=torch.float32),
                         dense=torch.tensor(rng.normal(size=(B, 4)), dtype=torch.float32),
                         sparse={"d0": SparseInput.from_lists(d0),
                                 "d1": SparseInput.from_lists(d1)}))
    return out


def bag_inputs(sparse: Any, mean: bool = False) -> dict[str, Any]:
    """``nn.EmbeddingBag(mode="sum")`` arguments; ``mean``: weights 1/bag size."""
    lengths = sparse.offsets[1:] - sparse.offsets[:-1]
    weights = (1.0 / lengths.float()).repeat_interleave(lengths) if mean else None
    return {"input": sparse.keys, "offsets": sparse.offsets[:-1],
            "per_sample_weights": weights}


def hugectr_adam(params: list[torch.Tensor], state: dict[int, Any], lr: float, t: int) -> None:
    """Reference §5.2 Adam (beta1 0.9, beta2 0.999, eps 1e-7) on every element."""
    for i, p in enumerate(params):
        m, v = state.setdefault(i, (torch.zeros_like(p), torch.zeros_like(p)))
        m.mul_(0.9).add_(0.1 * p.grad)
        v.mul_(0.999).add_(0.001 * p.grad * p.grad)
        p -= lr * (1 - 0.999 ** t) ** 0.5 / (1 - 0.9 ** t) * m / (v.sqrt() + 1e-7)


def reference_run(w0: np.ndarray, dense0: list[np.ndarray], batches: list[Any], optimizer: str,
                  lr: float = 0.05) -> tuple[list[float], np.ndarray, list[np.ndarray]]:
    """Plain PyTorch: one nn.EmbeddingBag used by both lookups, Linear, BCE-with-logits."""
    bag = torch.nn.EmbeddingBag(VOCAB, EV, mode="sum")
    w, b = (torch.tensor(x) for x in dense0)
    with torch.no_grad():
        bag.weight.copy_(torch.tensor(w0))
    params = [bag.weight, w.requires_grad_(), b.requires_grad_()]
    state: dict[int, Any] = {}
    losses = []
    for step, batch in enumerate(batches, 1):
        a = bag(**bag_inputs(batch.sparse["d0"]))
        c = bag(**bag_inputs(batch.sparse["d1"], mean=True))
        logits = torch.cat([a, c, batch.dense], 1) @ w.reshape(-1, 1) + b.reshape(1, 1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch.labels)
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            if optimizer == "SGD":
                for p in params:
                    p -= lr * p.grad
            else:
                hugectr_adam(params, state, lr, step)
        losses.append(float(loss.detach()))
    return losses, bag.weight.detach().numpy(), [w.detach().numpy(), b.detach().numpy()]


def table_rows(model: hugectr.Model, name: str = "emb0") -> np.ndarray:
    keys, vecs, _ = model.engine.tables[name].export()
    return np.asarray(vecs)[np.argsort(keys)]


@pytest.mark.parametrize("optimizer,direct", [("SGD", True), ("Adam", True), ("Adam", False)])
def test_shared_table_trains_as_one_embedding_bag_used_twice(optimizer, direct):
    model = shared_model(optimizer, direct)
    tabs = model.engine.tables
    assert tabs["emb0"].table is tabs["emb1"].table  # one set of rows
    w0 = np.random.default_rng(1).uniform(-0.5, 0.5, (VOCAB, EV)).astype(np.float32)
    tabs["emb1"].load(np.arange(VOCAB), w0)  # any lookup loads into the shared rows
    dense0 = model.dense_weights_numpy()
    batches = shared_batches(6)
    losses = []
    for batch in batches:
        assert model.train(batch)
        losses.append(model.get_current_loss())
    ref_losses, ref_w, ref_dense = reference_run(w0, dense0, batches, optimizer)
    np.testing.assert_allclose(losses, ref_losses, atol=TOL)
    np.testing.assert_allclose(table_rows(model), ref_w, atol=TOL)
    np.testing.assert_allclose(table_rows(model, "emb1"), ref_w, atol=TOL)  # every lookup
    for got, want in zip(model.dense_weights_numpy(), ref_dense):
        np.testing.assert_allclose(got.reshape(-1), want.reshape(-1), atol=TOL)
    assert tabs["emb0"].optimizer.t == len(batches)  # one sparse step per training step


def test_shared_table_saves_one_copy_and_reloads(tmp_path):
    model = shared_model("Adam", True)
    batches = shared_batches(4)
    for batch in batches[:3]:
        model.train(batch)
    prefix = str(tmp_path / "m")
    model.save_params_to_files(prefix, 3)
    from terarec.checkpoint import hugectr_files as hf

    first, second = (hf.read_sparse_folder(hf.sparse_path(prefix, i, 3), EV)[0] for i in (0, 1))
    # every lookup's folder holds the table (each serves its lookup on its own)
    assert len(first) == VOCAB and len(second) == VOCAB
    fresh = shared_model("Adam", True)
    fresh.load_training_state(prefix, 3)
    np.testing.assert_allclose(fresh.predict(batches[3]), model.predict(batches[3]), atol=TOL)
    model.train(batches[3])
    fresh.train(batches[3])
    assert abs(model.get_current_loss() - fresh.get_current_loss()) <= TOL
    np.testing.assert_allclose(table_rows(fresh), table_rows(model), atol=TOL)


def test_shared_table_serves_from_its_files(tmp_path):
    """Each lookup's sparse folder holds the table, so an inference session over the saved
    files (one table per lookup) predicts what the trained model predicts."""
    from terarec.inference import CreateInferenceSession, InferenceParams

    model = shared_model("Adam", True)
    batches = shared_batches(4)
    for batch in batches[:3]:
        model.train(batch)
    prefix = str(tmp_path / "m")
    model.save_params_to_files(prefix, 3)
    model.graph_to_json(str(tmp_path / "graph.json"))
    params = InferenceParams(
        model_name="m", max_batchsize=B, hit_rate_threshold=0.9,
        dense_model_file=f"{prefix}_dense_3.model",
        sparse_model_files=[f"{prefix}{i}_sparse_3.model" for i in range(2)], device_id=0,
        use_gpu_embedding_cache=False, i64_input_key=True, cache_size_percentage=0.5)
    session = CreateInferenceSession(str(tmp_path / "graph.json"), params)
    last = batches[3]
    keys = np.concatenate([last.sparse[n].keys.numpy() for n in ("d0", "d1")])
    row_ptrs = np.concatenate([last.sparse[n].offsets.numpy() for n in ("d0", "d1")])
    got = session.predict(last.dense.numpy().reshape(-1).tolist(), keys.tolist(),
                          row_ptrs.tolist())
    np.testing.assert_allclose(np.asarray(got).reshape(-1),
                               np.asarray(model.predict(last)).reshape(-1), atol=1e-6)


def test_shared_table_under_reader_offsets_and_freeze(data):
    """With ``slot_size_array`` the reader offsets each input's keys; a shared table removes
    them, so its keys are the table's own rows; freezing one lookup freezes the table."""
    sizes = data["slot_sizes"]
    solver = hugectr.CreateSolver(batchsize=64, batchsize_eval=64, lr=0.01, seed=3,
                                  repeat_dataset=True, use_embedding_collection=True)
    reader = hugectr.DataReaderParams(
        data_reader_type=hugectr.DataReaderType_t.RawAsync, source=[data["train"]],
        eval_source=data["eval"], check_type=hugectr.Check_t.Non, num_samples=data["n_train"],
        eval_num_samples=data["n_eval"], slot_size_array=sizes,
        async_param=hugectr.AsyncParam(1, 2, shuffle=False, multi_hot_reader=True,
                                       is_dense_float=True))
    model = hugectr.Model(solver, reader, hugectr.CreateOptimizer(
        optimizer_type=hugectr.Optimizer_t.SGD))
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=data["dense_dim"],
                            dense_name="dense", data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam(f"d{i}", 1, True, 1)
                                for i in range(3)]))
    ebc = hugectr.EmbeddingCollectionConfig()
    t = hugectr.EmbeddingTableConfig("t", max(sizes), 8)
    ebc.embedding_lookup(t, "d1", "a", "sum")
    ebc.embedding_lookup(t, "d2", "b", "sum")
    model.add(ebc)
    L = hugectr.Layer_t
    model.add(hugectr.DenseLayer(L.Concat, ["a", "b"], ["ab"]))
    model.add(hugectr.DenseLayer(L.Reshape, ["ab"], ["flat"], leading_dim=16))
    model.add(hugectr.DenseLayer(L.Concat, ["flat", "dense"], ["c"]))
    model.add(hugectr.DenseLayer(L.InnerProduct, ["c"], ["fc"], num_output=1))
    model.add(hugectr.DenseLayer(L.BinaryCrossEntropyLoss, ["fc", "label"], ["loss"]))
    model.compile()
    for _ in range(3):
        assert model.train()
    tabs = model.engine.tables
    assert (tabs["a"].key_offset, tabs["b"].key_offset) == (sizes[0], sizes[0] + sizes[1])
    ka, va, _ = tabs["a"].export()
    kb, vb, _ = tabs["b"].export()
    own = np.asarray(ka) - sizes[0]  # the table's own keys
    assert len(own) and int(own.min()) >= 0 and int(own.max()) < max(sizes[1], sizes[2])
    # each lookup exports the table in its input's key space
    np.testing.assert_array_equal(np.asarray(kb) - (sizes[0] + sizes[1]), own)
    np.testing.assert_array_equal(vb, va)
    model.freeze_embedding("b")
    before = table_rows(model, "a").copy()
    assert model.train() and model.engine.tables["a"].frozen
    np.testing.assert_array_equal(table_rows(model, "a")[: len(before)], before)


# ------------------------------------------------------------------ a HugeCTR-style script
def build(d: dict[str, Any], plan: str | None, direct: bool) -> hugectr.Model:
    """What a HugeCTR 3G-embedding script does (one feature per sparse input)."""
    solver = hugectr.CreateSolver(batchsize=64, batchsize_eval=64, lr=0.01, max_eval_batches=2,
                                  repeat_dataset=True, seed=3, use_embedding_collection=True)
    reader = hugectr.DataReaderParams(
        data_reader_type=hugectr.DataReaderType_t.RawAsync, source=[d["train"]],
        eval_source=d["eval"], check_type=hugectr.Check_t.Non, num_samples=d["n_train"],
        eval_num_samples=d["n_eval"], slot_size_array=[] if direct else d["slot_sizes"],
        async_param=hugectr.AsyncParam(1, 2, shuffle=False, multi_hot_reader=True,
                                       is_dense_float=True))
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.Adam)
    model = hugectr.Model(solver, reader, opt)
    n = len(d["slot_sizes"])
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=d["dense_dim"],
                            dense_name="dense", data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam(f"d{i}", 1, True, 1)
                                for i in range(n)]))
    ebc = hugectr.EmbeddingCollectionConfig(use_exclusive_keys=False)
    ebc.embedding_lookup(tables(d["slot_sizes"]), [f"d{i}" for i in range(n)], "emb",
                         ["sum", "average", "sum"])
    if plan is not None:
        ebc.shard(*PLANS[plan])
    model.add(ebc)
    L = hugectr.Layer_t
    model.add(hugectr.DenseLayer(L.Concat, ["emb", "dense"], ["c"]))
    model.add(hugectr.DenseLayer(L.InnerProduct, ["c"], ["fc1"], num_output=16))
    model.add(hugectr.DenseLayer(L.ReLU, ["fc1"], ["r1"]))
    model.add(hugectr.DenseLayer(L.InnerProduct, ["r1"], ["fc2"], num_output=1))
    model.add(hugectr.DenseLayer(L.BinaryCrossEntropyLoss, ["fc2", "label"], ["loss"]))
    model.compile()
    return model


def train(d: dict[str, Any], plan: str | None, direct: bool) -> dict[str, Any]:
    model = build(d, plan, direct)
    losses = []
    for _ in range(STEPS):
        assert model.train()
        losses.append(model.get_current_loss())
    tabs = {}
    for name, t in model.engine.tables.items():
        keys, vecs, _ = t.export()
        tabs[name] = (np.asarray(keys), np.asarray(vecs))
    kinds = {n: getattr(getattr(t, "placement", None), "kind", None)
             for n, t in model.engine.tables.items()}
    return {"losses": losses, "dense": model.dense_weights_numpy(), "tables": tabs,
            "kinds": kinds, "types": {n: t.config.embedding_type
                                      for n, t in model.engine.tables.items()}}


JOBS = [("row_dp_column", True), ("table_row_dp", False)]


def two_rank_worker(rank: int, world: int, d: dict[str, Any]) -> list[dict[str, Any]]:
    return [train(d, plan, direct) for plan, direct in JOBS]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("ec"), n_train=512, n_eval=128)


def test_script_trains_on_one_process(data):
    res = train(data, "row_dp_column", True)  # the 2-GPU plan is not needed on one process
    assert all(np.isfinite(res["losses"])) and res["losses"][-1] < res["losses"][0]
    assert set(res["types"].values()) == {"LocalizedSlotSparseEmbeddingOneHot"}
    assert all(k.max() < s for (k, _), s in zip(res["tables"].values(), data["slot_sizes"]))


def by_key(keys, values) -> dict[int, np.ndarray]:
    return dict(zip(np.asarray(keys).tolist(), np.asarray(values)))


def test_script_on_two_ranks_equals_one_process(data):
    refs = [train(data, None, direct) for _, direct in JOBS]
    results = run_ranks(two_rank_worker, 2, data, timeout=240)
    for r, res in enumerate(results):
        for (plan, _direct), got, ref in zip(JOBS, res["value"], refs):
            where = f"rank {r}, plan {plan}"
            assert sorted(got["kinds"].values()) == sorted(
                {"row_dp_column": ["row_wise", "replicated", "column_wise"],
                 "table_row_dp": ["table_wise", "row_wise", "replicated"]}[plan]), where
            np.testing.assert_allclose(got["losses"], ref["losses"], atol=TOL, err_msg=where)
            for a, b in zip(got["dense"], ref["dense"]):
                np.testing.assert_allclose(a, b, atol=TOL, err_msg=where)
            for name, table in ref["tables"].items():
                g, w = by_key(*got["tables"][name]), by_key(*table)
                assert set(g) == set(w), f"{where} {name}: keys differ"
                assert max(float(np.abs(g[k] - w[k]).max()) for k in w) <= TOL, where
