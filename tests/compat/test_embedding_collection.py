"""HugeCTR's embedding-collection API (reference §8): argument names and defaults, the mapping
onto SparseEmbedding specs + placements, a HugeCTR-style script on one process, and the same
script on 2 gloo ranks (mp row-wise / table-wise, dp, column-wise) equal to one process."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

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


def test_shared_table_and_multi_hot_concat_are_refused():
    ebc = EmbeddingCollectionConfig()
    t = tables([10])[0]
    ebc.embedding_lookup(t, "d0", "a", "sum")
    ebc.embedding_lookup(t, "d1", "b", "sum")
    with pytest.raises(NotSupportedError, match="one table per lookup"):
        ebc.to_graph(schema())
    ebc = EmbeddingCollectionConfig()
    ebc.embedding_lookup(t, "d0", "a", "concat")
    with pytest.raises(NotSupportedError, match="concat"):
        ebc.to_graph(schema(nnz=2))


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
