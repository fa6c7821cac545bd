"""Admission, eviction (LRU / LFU / TTL) and occupancy stats of hash tables with an
EvictionPolicy: against a plain-Python model of the policies, fresh-row equivalence,
OOV behaviour, checkpoints, validation and the HugeCTR facade."""

from __future__ import annotations

import collections
import random

import numpy as np
import pytest
import torch

import terarec as hugectr
from terarec.compat.embedding_stats import embedding_stats
from terarec.embedding import EmbeddingTable, TableConfig
from terarec.embedding.admission import PendingKeys
from terarec.embedding.config import EvictionPolicy
from terarec.errors import CapacityError, ConfigError, NotSupportedError
from terarec.optim.config import OptimizerConfig
from terarec.sparse import SparseInput
from tests.helpers.synth import raw_async_dataset


def make_table(cap: int, opt: str = "SGD", dim: int = 4, combiner: str = "sum",
               **eviction) -> EmbeddingTable:
    cfg = TableConfig("emb", "data", dim=dim, slot_num=1, combiner=combiner,
                      max_vocabulary_size=cap, optimizer=OptimizerConfig(type=opt),
                      eviction=eviction or None)
    t = EmbeddingTable(cfg, generator=torch.Generator().manual_seed(0))
    t.set_learning_rate(0.1)
    return t


def bags(batch: list[list[int]]) -> SparseInput:
    """One slot per sample; each inner list is a sample's keys."""
    return SparseInput.from_lists([[b] for b in batch])


def train(t: EmbeddingTable, batch: list[list[int]]) -> torch.Tensor:
    out = t(bags(batch))
    out.sum().backward()
    return out


class DictModel:
    """The policies in plain Python: key -> [last used step, lookups]."""

    def __init__(self, cap: int, policy: str, target: float, ttl: int | None = None,
                 admit_after: int = 1) -> None:
        self.cap, self.policy, self.target, self.ttl = cap, policy, target, ttl
        self.admit_after = admit_after
        self.res: dict[int, list[int]] = {}
        self.pending: collections.Counter = collections.Counter()
        self.step = 0

    def run(self, batch: list[list[int]]) -> None:
        self.step += 1
        flat = [k for b in batch for k in b]
        occ = collections.Counter(flat)
        new = []
        for k in dict.fromkeys(flat):
            if k in self.res:
                continue
            self.pending[k] += occ[k]
            if self.pending[k] >= self.admit_after:
                del self.pending[k]
                new.append(k)
        cand = [k for k in self.res if k not in occ]
        if self.policy == "ttl":
            for k in [k for k in cand if self.step - self.res[k][0] > self.ttl]:
                del self.res[k]
                cand.remove(k)
        if len(self.res) + len(new) > self.cap:
            keep = min(int(self.target * self.cap), self.cap - len(new))
            n = min(max(len(self.res) - keep, 0), len(cand))
            if self.policy == "lfu":
                cand.sort(key=lambda k: (self.res[k][1], self.res[k][0], k))
            else:
                cand.sort(key=lambda k: (self.res[k][0], k))
            for k in cand[:n]:
                del self.res[k]
        for k in new:
            self.res[k] = [self.step, 0]
        for k, c in occ.items():
            if k in self.res:
                self.res[k][0] = self.step
                self.res[k][1] += c


def random_batches(seed: int, steps: int = 40) -> list[list[list[int]]]:
    rng = random.Random(seed)
    hot = list(range(6))
    out = []
    for _ in range(steps):
        batch = []
        for _ in range(rng.randint(1, 3)):
            pool = hot if rng.random() < 0.5 else range(6, 40)
            batch.append([rng.choice(list(pool)) for _ in range(rng.randint(1, 2))])
        out.append(batch)
    return out


@pytest.mark.parametrize("policy,target,ttl,admit_after", [
    ("lru", 0.5, None, 1), ("lru", 1.0, None, 1), ("lfu", 0.75, None, 1),
    ("lfu", 1.0, None, 2), ("ttl", 0.5, 3, 1), ("ttl", 1.0, 1, 2)])
def test_resident_keys_match_the_dict_model(policy, target, ttl, admit_after):
    cap = 8  # the model's pending counter is unbounded: max_pending well above the 40 keys
    t = make_table(cap, policy=policy, target=target, ttl_steps=ttl, admit_after=admit_after,
                   max_pending=64)
    model = DictModel(cap, policy, target, ttl, admit_after)
    for batch in random_batches(seed=cap + len(policy)):
        train(t, batch)
        model.run(batch)
        assert sorted(t.index.keys().tolist()) == sorted(model.res), (policy, model.step)
        assert t.occupancy()["pending_keys"] == len(model.pending)
    stats = t.occupancy()
    assert stats["evicted_total"] > 0
    assert stats["admitted_total"] == stats["evicted_total"] + stats["num_keys"]


def test_policies_differ_on_the_same_stream():
    resident = {}
    for policy in ("lru", "lfu"):
        t = make_table(8, policy=policy, target=0.5)
        history = []
        for batch in random_batches(seed=3):
            train(t, batch)
            history.append(sorted(t.index.keys().tolist()))
        resident[policy] = history
    assert resident["lru"] != resident["lfu"]


def test_ttl_evicts_when_not_full():
    t = make_table(100, policy="ttl", ttl_steps=2)
    train(t, [[1], [2]])
    train(t, [[2]])
    train(t, [[3]])
    assert sorted(t.index.keys().tolist()) == [1, 2, 3]  # key 1: 2 steps old, not > 2
    train(t, [[3]])
    assert sorted(t.index.keys().tolist()) == [2, 3]
    assert t.occupancy()["evicted_total"] == 1


def test_evicted_then_reseen_key_starts_fresh():
    t = make_table(2, opt="Adam", policy="lru", target=1.0)
    train(t, [[1], [2]])
    train(t, [[1], [2]])
    row_of_1, row_of_2 = t.index.lookup(torch.tensor([1, 2])).tolist()
    train(t, [[3]])  # evicts key 1 (same last use as 2, smaller key); 3 takes its row
    assert sorted(t.index.keys().tolist()) == [2, 3]
    assert int(t.index.lookup(torch.tensor([3]))[0]) == row_of_1
    out = t(bags([[1]]))  # evicts 2, key 1 takes key 2's trained row
    row = int(t.index.lookup(torch.tensor([1]))[0])
    assert row == row_of_2
    fresh = make_table(2, opt="Adam", policy="lru", target=1.0)
    want = fresh(bags([[1]]))
    frow = int(fresh.index.lookup(torch.tensor([1]))[0])
    torch.testing.assert_close(out, want, rtol=0, atol=0)
    torch.testing.assert_close(t.weight[row], fresh.weight[frow], rtol=0, atol=0)
    for s, fs in zip(t.optimizer.states, fresh.optimizer.states):
        torch.testing.assert_close(s[row], fs[frow], rtol=0, atol=0)
    assert t.eviction.counts[row] == 1


def test_admission_gives_zero_vector_and_no_gradient_until_admitted():
    t = make_table(10, policy="lru", admit_after=2)
    out = train(t, [[5]])
    assert torch.count_nonzero(out) == 0
    assert t.num_keys == 0
    stats = t.occupancy()
    assert (stats["rejected_lookups_total"], stats["pending_keys"]) == (1, 1)
    out = t(bags([[5]]))
    assert torch.count_nonzero(out) > 0 and t.num_keys == 1
    row = int(t.index.lookup(torch.tensor([5]))[0])
    before = t.weight[row].clone()
    out.sum().backward()
    assert not torch.equal(before, t.weight[row])
    assert t.occupancy()["pending_keys"] == 0


def test_oov_key_in_a_mean_bag_counts_as_a_zero_vector():
    t = make_table(10, combiner="mean", policy="lru", admit_after=2)
    train(t, [[7], [7]])  # 7 admitted (two lookups in one step)
    row = int(t.index.lookup(torch.tensor([7]))[0])
    w7 = t.weight[row].clone()
    out = t(bags([[7, 9]]))  # 9: first sight, not admitted
    torch.testing.assert_close(out.reshape(-1), w7 / 2)
    out.sum().backward()
    torch.testing.assert_close(t.weight[row], w7 - 0.1 * 0.5)  # SGD, d(mean)/d(w7) = 1/2
    assert t.num_keys == 1


def test_pending_counter_is_bounded_and_forgets_least_recently_seen():
    p = PendingKeys(bound=2)
    p.observe(torch.tensor([1, 2]), torch.tensor([1, 1]), step=1, admit_after=3)
    p.observe(torch.tensor([3]), torch.tensor([1]), step=2, admit_after=3)
    assert len(p) == 2 and p.forgotten_total == 1
    assert sorted(p.keys.tolist()) == [1, 3]  # tie at step 1: the larger key 2 forgotten
    assert p.observe(torch.tensor([2]), torch.tensor([2]), step=3, admit_after=3).tolist() == [
        False]  # 2 starts again from zero


def test_eval_and_predict_do_not_change_state():
    t = make_table(4, policy="lfu", admit_after=2, target=0.5)
    for batch in ([[1], [2]], [[1], [2]], [[3]], [[4], [5]]):
        train(t, batch)
    snap = (t.occupancy(), t.index.keys().tolist(), t.eviction.last_used.clone(),
            t.eviction.counts.clone(), t.eviction.pending.keys.clone())
    t.eval()
    out = t(bags([[1], [99], [3]]))
    t.train()
    with torch.no_grad():
        out2 = t(bags([[99], [6]]))
    assert torch.count_nonzero(out[1]) == 0 and torch.count_nonzero(out2) == 0
    assert torch.count_nonzero(out[0]) > 0
    after = (t.occupancy(), t.index.keys().tolist(), t.eviction.last_used,
             t.eviction.counts, t.eviction.pending.keys)
    assert snap[:2] == after[:2]
    for a, b in zip(snap[2:], after[2:]):
        assert torch.equal(a, b)


def continue_and_compare(a: EmbeddingTable, b: EmbeddingTable) -> None:
    for batch in random_batches(seed=11, steps=10):
        train(a, batch)
        train(b, batch)
        assert a.index.keys().tolist() == b.index.keys().tolist()
    assert a.occupancy() == b.occupancy()


@pytest.mark.parametrize("form", ["bytes", "dict"])
def test_eviction_state_save_load_round_trip(form):
    kw = dict(opt="Adam", policy="lfu", target=0.5, admit_after=2)
    t = make_table(8, **kw)
    for batch in random_batches(seed=5, steps=25):
        train(t, batch)
    assert t.occupancy()["evicted_total"] > 0 and t.occupancy()["pending_keys"] > 0
    keys, vectors, _ = t.export()
    assert len(keys) == t.num_keys  # the key file holds the live rows only
    u = make_table(8, **kw)
    u.load(keys, vectors)
    if form == "bytes":
        u.load_optimizer_state_bytes(t.optimizer_state_bytes())
    else:
        u.load_optimizer_state(t.optimizer_state())
    assert u.occupancy() == t.occupancy()
    rows_t, rows_u = t.index.lookup(torch.as_tensor(keys)), u.index.lookup(torch.as_tensor(keys))
    assert torch.equal(t.eviction.last_used[rows_t], u.eviction.last_used[rows_u])
    assert torch.equal(t.eviction.counts[rows_t], u.eviction.counts[rows_u])
    assert torch.equal(t.eviction.pending.counts, u.eviction.pending.counts)
    continue_and_compare(t, u)


def test_state_bytes_without_eviction_are_unchanged_and_trailer_is_checked():
    plain = make_table(8)
    train(plain, [[1], [2]])
    assert len(plain.optimizer_state_bytes()) == 8  # SGD: only the step counter
    t = make_table(8, policy="lru")
    train(t, [[1], [2]])
    data = t.optimizer_state_bytes()
    with pytest.raises(ConfigError, match="eviction"):
        t.load_optimizer_state_bytes(data[:-8])


def test_capacity_error_when_the_batch_alone_does_not_fit():
    t = make_table(3, policy="lru")
    with pytest.raises(CapacityError, match="capacity"):
        train(t, [[1], [2], [3], [4]])


@pytest.mark.parametrize("kw,field", [
    ({"policy": "fifo"}, "policy"), ({"policy": "ttl"}, "ttl_steps"),
    ({"policy": "lru", "ttl_steps": 3}, "ttl_steps"), ({"target": 0.0}, "target"),
    ({"target": 1.5}, "target"), ({"admit_after": 0}, "admit_after"),
    ({"admit_after": 1.5}, "admit_after"), ({"max_pending": 0}, "max_pending")])
def test_policy_validation_names_the_field(kw, field):
    with pytest.raises(ConfigError, match=f"EvictionPolicy.{field}"):
        EvictionPolicy(**kw)
    with pytest.raises(ConfigError, match=f"'emb'.eviction.{field}"):
        TableConfig("emb", "d", dim=4, max_vocabulary_size=8, eviction=kw)


def test_config_errors_for_unknown_fields_and_one_hot_tables():
    with pytest.raises(ConfigError, match="fields among"):
        EvictionPolicy.coerce({"polcy": "lru"}, "x")
    with pytest.raises(ConfigError, match="OneHot"):
        TableConfig("emb", "d", dim=4, slot_size_array=[4],
                    embedding_type="LocalizedSlotSparseEmbeddingOneHot", eviction={})
    with pytest.raises(ConfigError, match="eviction"):
        hugectr.SparseEmbedding(hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash, 1, 4,
                                "sum", "e", "d", eviction={"policy": "mru"})
    cfg = TableConfig("e", "d", dim=4, max_vocabulary_size=8, eviction={"policy": "lfu"})
    assert TableConfig.from_dict(cfg.to_dict()).eviction == EvictionPolicy("lfu")
    assert "eviction" not in TableConfig("e", "d", dim=4, max_vocabulary_size=8).to_dict()


def test_build_tables_refuses_eviction_on_sharded_or_shared_tables():
    from terarec.graph.spec import EmbeddingSpec, GraphSpec
    from terarec.training.tables import build_tables

    spec = hugectr.SparseEmbedding(hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash, 1, 4,
                                   "sum", "emb", "data1", eviction={"policy": "lru"}).to_spec()
    assert isinstance(spec, EmbeddingSpec)
    graph = GraphSpec(schema=hugectr.Input(
        label_dim=1, label_name="label", dense_dim=1, dense_name="dense",
        data_reader_sparse_param_array=[hugectr.DataReaderSparseParam("data1", 1, True, 2)],
    ).to_schema(), embeddings=[spec])

    def factory(configs, device, generator):  # a sharded plan would be built here
        raise AssertionError("not reached")

    with pytest.raises(NotSupportedError, match="single-process"):
        build_tables(graph, None, OptimizerConfig(), torch.device("cpu"),
                     torch.Generator(), factory)
    tables, _ = build_tables(graph, None, OptimizerConfig(), torch.device("cpu"),
                             torch.Generator())
    assert tables["emb"].occupancy()["policy"] == "lru"


def facade_model(d, eviction):
    solver = hugectr.CreateSolver(batchsize=16, batchsize_eval=16, lr=0.01, max_eval_batches=2,
                                  repeat_dataset=True, seed=1)
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.SGD)
    reader = hugectr.DataReaderParams(
        data_reader_type=hugectr.DataReaderType_t.RawAsync, source=[d["train"]],
        eval_source=d["eval"], check_type=hugectr.Check_t.Non, num_samples=d["n_train"],
        eval_num_samples=d["n_eval"], slot_size_array=d["slot_sizes"],
        async_param=hugectr.AsyncParam(1, 2, shuffle=False, multi_hot_reader=True,
                                       is_dense_float=True))
    model = hugectr.Model(solver, reader, opt)
    model.add(hugectr.Input(
        label_dim=1, label_name="label", dense_dim=d["dense_dim"], dense_name="dense",
        data_reader_sparse_param_array=[hugectr.DataReaderSparseParam("data1", 1, True, 3)]))
    # 64 rows: 2**-9 MB / (4 bytes * dim 8), SGD; the data has 100 distinct keys
    model.add(hugectr.SparseEmbedding(
        hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,
        workspace_size_per_gpu_in_mb=2**-9, embedding_vec_size=8, combiner="sum",
        sparse_embedding_name="emb", bottom_name="data1", optimizer=opt, eviction=eviction))
    model.add(hugectr.DenseLayer(hugectr.Layer_t.Reshape, ["emb"], ["r"], leading_dim=24))
    model.add(hugectr.DenseLayer(hugectr.Layer_t.Concat, ["r", "dense"], ["c"]))
    model.add(hugectr.DenseLayer(hugectr.Layer_t.InnerProduct, ["c"], ["fc"], num_output=1))
    model.add(hugectr.DenseLayer(hugectr.Layer_t.BinaryCrossEntropyLoss, ["fc", "label"],
                                 ["loss"]))
    model.compile()
    return model


def test_facade_training_with_eviction_reports_stats(tmp_path):
    d = raw_async_dataset(tmp_path, n_train=512, n_eval=64)
    with pytest.raises(CapacityError):
        facade_model(d, None).fit(max_iter=32, display=1000, eval_interval=1000)
    model = facade_model(d, {"policy": "lru", "target": 0.75})
    model.fit(max_iter=32, display=1000, eval_interval=1000)
    stats = embedding_stats(model)["emb"]
    assert stats["capacity"] == 64 and 0 < stats["num_keys"] <= 64
    assert stats["evicted_total"] > 0 and stats["step"] == 32
    assert stats["fill"] == stats["num_keys"] / 64
    before = embedding_stats(model)
    assert model.embedding_stats() == before  # the Model method
    model.evaluate()
    assert embedding_stats(model) == before
    model.save_params_to_files(str(tmp_path / "ck"), 32)
    other = facade_model(d, {"policy": "lru", "target": 0.75})
    other.load_training_state(str(tmp_path / "ck"), 32)
    assert embedding_stats(other) == before
    keys = np.sort(model.engine.tables["emb"].export()[0])
    assert np.array_equal(keys, np.sort(other.engine.tables["emb"].export()[0]))


@pytest.mark.gpu
def test_eviction_on_cuda_equals_cpu():
    """The reference path on CUDA: the same resident keys, rows and stats as on CPU."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    rng = random.Random(3)
    stream = [[[rng.randrange(40)] for _ in range(12)] for _ in range(25)]
    results = []
    for dev in ("cpu", "cuda"):
        cfg = TableConfig("emb", "data", dim=4, slot_num=1, combiner="sum",
                          max_vocabulary_size=16, optimizer=OptimizerConfig(type="Adam"),
                          eviction={"policy": "lfu", "target": 0.5, "admit_after": 2})
        t = EmbeddingTable(cfg, device=dev, generator=torch.Generator().manual_seed(0))
        t.set_learning_rate(0.1)
        for batch in stream:
            out = t(bags(batch).to(torch.device(dev)))
            out.sum().backward()
        keys, vecs, _ = t.export()
        order = np.argsort(keys)
        results.append((np.asarray(keys)[order], np.asarray(vecs)[order], t.occupancy()))
    (k0, v0, s0), (k1, v1, s1) = results
    np.testing.assert_array_equal(k0, k1)
    np.testing.assert_allclose(v0, v1, atol=1e-5)
    assert s0 == s1 and s0["evicted_total"] > 0

