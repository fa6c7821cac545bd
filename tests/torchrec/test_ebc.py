"""terarec.torchrec: KJT / KeyedTensor API, EmbeddingBagCollection against nn.EmbeddingBag,
training with apply_optimizer_in_backward against plain PyTorch, state_dict, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from terarec.errors import ConfigError, NotSupportedError
from terarec.torchrec import (
    EmbeddingBagCollection,
    EmbeddingBagConfig,
    IdOutOfRangeError,
    JaggedTensor,
    KeyedJaggedTensor,
    KeyedTensor,
    PoolingType,
    apply_optimizer_in_backward,
    in_backward_optimizer_filter,
)

TOL = 1e-5


# --------------------------------------------------------------------------- helpers
def tables(pooling: PoolingType = PoolingType.SUM) -> list[EmbeddingBagConfig]:
    other = PoolingType.MEAN if pooling is PoolingType.SUM else PoolingType.SUM
    return [
        EmbeddingBagConfig(num_embeddings=50, embedding_dim=4, name="t0",
                           feature_names=["f0", "f1"], pooling=pooling),
        EmbeddingBagConfig(num_embeddings=20, embedding_dim=3, name="t1",
                           feature_names=["f2"], pooling=other),
        EmbeddingBagConfig(num_embeddings=30, embedding_dim=2, name="t2",
                           feature_names=["f3", "f4", "f5"], pooling=pooling,
                           weight_init_min=-0.5, weight_init_max=0.3),
    ]


def random_kjt(cfgs: list[EmbeddingBagConfig], batch: int, gen: torch.Generator,
               weighted: bool = False, keys_order: list[str] | None = None) -> KeyedJaggedTensor:
    rows = {f: c.num_embeddings for c in cfgs for f in c.feature_names}
    keys = keys_order or list(rows)
    lengths = torch.randint(0, 4, (len(keys) * batch,), generator=gen)
    values = torch.cat([torch.randint(0, rows[k], (int(n),), generator=gen)
                        for k, n in zip(keys, lengths.view(len(keys), batch).sum(1))])
    weights = torch.rand(values.numel(), generator=gen) if weighted else None
    return KeyedJaggedTensor.from_lengths_sync(keys, values, lengths, weights)


class RefEBC(nn.Module):
    """The same pooled lookups with one nn.EmbeddingBag per table (plain PyTorch)."""

    def __init__(self, ebc: EmbeddingBagCollection) -> None:
        super().__init__()
        self.cfgs = ebc.embedding_bag_configs()
        self.bags = nn.ModuleDict()
        for c in self.cfgs:
            bag = nn.EmbeddingBag(c.num_embeddings, c.embedding_dim, mode=c.combiner,
                                  include_last_offset=True)
            with torch.no_grad():
                bag.weight.copy_(ebc.embedding_bags[c.name].weight)
            self.bags[c.name] = bag

    def forward(self, kjt: KeyedJaggedTensor, weighted: bool = False) -> torch.Tensor:
        out = []
        for c in self.cfgs:
            for f in c.feature_names:
                jt = kjt[f]
                out.append(self.bags[c.name](jt.values(), jt.offsets(),
                                             per_sample_weights=jt.weights_or_none()
                                             if weighted else None))
        return torch.cat(out, dim=1)


# --------------------------------------------------------------------------- KJT / KT API
def test_kjt_layout_and_accessors():
    values = torch.tensor([10, 11, 12, 20, 21, 30])
    lengths = torch.tensor([2, 0, 1, 1, 1, 0, 0, 0, 1])  # keys a, b, c x batch 3, key-major
    w = torch.arange(6, dtype=torch.float32)
    kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b", "c"], values, lengths, weights=w)
    assert kjt.keys() == ["a", "b", "c"] and kjt.stride() == 3 and len(kjt) == 3
    assert kjt.offsets().tolist() == [0, 2, 2, 3, 4, 5, 5, 5, 5, 6]
    assert kjt.length_per_key() == [3, 2, 1] and kjt.offset_per_key() == [0, 3, 5, 6]
    b = kjt["b"]
    assert b.values().tolist() == [20, 21] and b.lengths().tolist() == [1, 1, 0]
    assert b.offsets().tolist() == [0, 1, 2, 2] and b.weights().tolist() == [3.0, 4.0]
    assert [t.tolist() for t in kjt["a"].to_dense()] == [[10, 11], [], [12]]
    assert kjt["a"].to_padded_dense(padding_value=-1).tolist() == [[10, 11], [-1, -1], [12, -1]]
    d = kjt.to_dict()
    assert list(d) == ["a", "b", "c"] and d["c"].values().tolist() == [30]
    same = KeyedJaggedTensor.from_offsets_sync(["a", "b", "c"], values, kjt.offsets(), w)
    assert torch.equal(same.lengths(), lengths) and same.weights_or_none() is not None
    moved = kjt.to("cpu")
    assert torch.equal(moved.values(), values) and moved.stride() == 3
    assert KeyedJaggedTensor.from_lengths_sync(["a"], values[:1],
                                               torch.tensor([1])).weights_or_none() is None
    back = KeyedJaggedTensor.from_jt_dict(d)
    assert torch.equal(back.values(), values) and torch.equal(back.lengths(), lengths)
    jt = JaggedTensor.from_dense([torch.tensor([1, 2]), torch.tensor([], dtype=torch.int64)])
    assert jt.lengths().tolist() == [2, 0] and jt.offsets().tolist() == [0, 2, 2]


@pytest.mark.parametrize("build, where, text", [
    (lambda: KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.arange(3),
                                                 torch.tensor([1, 1, 1, 1])),
     "values", "4 entries (the sum of lengths)"),
    (lambda: KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.arange(3),
                                                 torch.tensor([1, 1, 1])),
     "lengths", "multiple of 2 keys"),
    (lambda: KeyedJaggedTensor.from_lengths_sync(["a"], torch.arange(2), torch.tensor([1, 1]),
                                                 stride=3),
     "lengths", "len(keys) * stride"),
    (lambda: KeyedJaggedTensor.from_lengths_sync(["a"], torch.arange(2), torch.tensor([3, -1])),
     "lengths", "non-negative"),
    (lambda: KeyedJaggedTensor.from_offsets_sync(["a"], torch.arange(2), torch.tensor([0, 2, 1])),
     "offsets", "non-decreasing"),
    (lambda: KeyedJaggedTensor(["a"], torch.arange(2), lengths=torch.tensor([1, 1]),
                               offsets=torch.tensor([0, 2, 2])),
     "offsets", "== lengths[i]"),
    (lambda: KeyedJaggedTensor.from_lengths_sync(["a"], torch.arange(2), torch.tensor([1, 1]),
                                                 weights=torch.ones(3)),
     "weights", "2 entries"),
    (lambda: KeyedJaggedTensor.from_lengths_sync(["a", "a"], torch.arange(2),
                                                 torch.tensor([1, 1])),
     "keys", "unique"),
    (lambda: KeyedJaggedTensor.from_lengths_sync(["a"], torch.arange(2),
                                                 torch.tensor([1, 1]))["zz"],
     "key", "one of ['a']"),
])
def test_kjt_errors_name_argument_expected_received(build, where, text):
    with pytest.raises(ConfigError) as err:
        build()
    assert where in err.value.where and text in str(err.value)


def test_keyed_tensor():
    kt = KeyedTensor(["x", "y"], [2, 3], torch.arange(10.0).view(2, 5))
    assert kt.keys() == ["x", "y"] and kt.length_per_key() == [2, 3]
    assert kt.offset_per_key() == [0, 2, 5] and kt.values().shape == (2, 5)
    assert kt["y"].tolist() == [[2.0, 3.0, 4.0], [7.0, 8.0, 9.0]]
    assert torch.equal(kt.to_dict()["x"], kt.values()[:, :2])
    same = KeyedTensor.from_tensor_list(["x", "y"], [kt["x"], kt["y"]])
    assert torch.equal(same.values(), kt.values())
    with pytest.raises(ConfigError, match="sum of length_per_key"):
        KeyedTensor(["x"], [4], torch.zeros(2, 5))
    with pytest.raises(ConfigError, match="one of"):
        kt["z"]


# --------------------------------------------------------------------------- forward
@pytest.mark.parametrize("pooling", [PoolingType.SUM, PoolingType.MEAN])
def test_forward_equals_nn_embedding_bag(pooling):
    torch.manual_seed(0)
    cfgs = tables(pooling)
    ebc = EmbeddingBagCollection(cfgs)
    ref = RefEBC(ebc)
    gen = torch.Generator().manual_seed(1)
    # KJT keys in another order than the tables: the output still follows the tables.
    kjt = random_kjt(cfgs, 7, gen, keys_order=["f5", "f2", "f0", "f4", "f1", "f3"])
    kt = ebc(kjt)
    assert kt.keys() == ["f0", "f1", "f2", "f3", "f4", "f5"]
    assert kt.length_per_key() == [4, 4, 3, 2, 2, 2] and kt.values().shape == (7, 17)
    torch.testing.assert_close(kt.values(), ref(kjt), atol=1e-6, rtol=0)
    w = ebc.embedding_bags["t2"].weight
    assert w.shape == (30, 2) and float(w.min()) >= -0.5 and float(w.max()) <= 0.3
    assert float(w.min()) < -0.3  # TorchRec's Uniform(min, max), not a symmetric range


def test_weighted_forward_equals_per_sample_weights():
    torch.manual_seed(0)
    cfgs = [c for c in tables(PoolingType.SUM) if c.pooling is PoolingType.SUM]
    ebc = EmbeddingBagCollection(cfgs, is_weighted=True)
    assert ebc.is_weighted()
    kjt = random_kjt(cfgs, 5, torch.Generator().manual_seed(2), weighted=True)
    torch.testing.assert_close(ebc(kjt).values(), RefEBC(ebc)(kjt, weighted=True),
                               atol=1e-6, rtol=0)
    with pytest.raises(ConfigError, match="with weights"):
        ebc(random_kjt(cfgs, 5, torch.Generator().manual_seed(2)))
    with pytest.raises(NotSupportedError, match="MEAN"):
        EmbeddingBagCollection(tables(PoolingType.SUM), is_weighted=True)


def test_out_of_range_id_names_feature_and_table():
    ebc = EmbeddingBagCollection(tables())
    for bad in (20, -1):
        kjt = KeyedJaggedTensor.from_lengths_sync(
            ["f0", "f1", "f2", "f3", "f4", "f5"], torch.tensor([1, 2, 3, bad, 4]),
            torch.tensor([1, 0, 1, 1, 0, 1, 0, 0, 1, 0, 0, 0]))
        with pytest.raises(IdOutOfRangeError) as err:
            ebc(kjt)
        msg = str(err.value)
        assert "'f2'" in msg and "'t1'" in msg and f"id {bad}" in msg and "[0, 20)" in msg


def test_config_errors():
    with pytest.raises(NotSupportedError, match="PoolingType.NONE"):
        EmbeddingBagConfig(10, 4, "t", ["f"], pooling=PoolingType.NONE)
    with pytest.raises(ConfigError, match="feature_names"):
        EmbeddingBagConfig(10, 4, "t", [])
    with pytest.raises(ConfigError, match="read by table 'a'"):
        EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "a", ["f"]),
                                EmbeddingBagConfig(10, 4, "b", ["f"])])
    ebc = EmbeddingBagCollection([EmbeddingBagConfig(10, 4, "a", ["f"])])
    with pytest.raises(ConfigError, match="one of \\['g'\\]"):
        ebc(KeyedJaggedTensor.from_lengths_sync(["g"], torch.tensor([1]), torch.tensor([1])))


# --------------------------------------------------------------------------- state_dict
def test_state_dict_round_trip():
    torch.manual_seed(0)
    cfgs = tables()
    a, b = EmbeddingBagCollection(cfgs), EmbeddingBagCollection(cfgs)
    sd = a.state_dict()
    assert sorted(sd) == ["embedding_bags.t0.weight", "embedding_bags.t1.weight",
                          "embedding_bags.t2.weight"]
    kjt = random_kjt(cfgs, 4, torch.Generator().manual_seed(3))
    assert not torch.allclose(a(kjt).values(), b(kjt).values())
    b.load_state_dict(copy.deepcopy(sd))
    torch.testing.assert_close(b(kjt).values(), a(kjt).values(), atol=0, rtol=0)
    assert torch.equal(b.embedding_bags["t1"].weight, sd["embedding_bags.t1.weight"])
    with pytest.raises(RuntimeError, match="size mismatch"):
        b.load_state_dict({**sd, "embedding_bags.t1.weight": torch.zeros(3, 3)})


# --------------------------------------------------------------------------- training
class Model(nn.Module):
    def __init__(self, sparse: nn.Module, width: int) -> None:
        super().__init__()
        self.sparse = sparse
        self.mlp = nn.Sequential(nn.Linear(width, 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, kjt: KeyedJaggedTensor, weighted: bool = False) -> torch.Tensor:
        emb = self.sparse(kjt).values() if isinstance(self.sparse, EmbeddingBagCollection) \
            else self.sparse(kjt, weighted)
        return self.mlp(emb).squeeze(1)


OPTIMIZERS = [
    (torch.optim.SGD, {"lr": 0.5}, False),
    (torch.optim.SGD, {"lr": 0.3}, True),
    (torch.optim.SGD, {"lr": 0.2, "momentum": 0.9}, False),
    (torch.optim.SGD, {"lr": 0.2, "momentum": 0.8, "nesterov": True}, False),
    (torch.optim.Adagrad, {"lr": 0.1, "eps": 1e-8, "initial_accumulator_value": 0.1}, False),
    (torch.optim.Adam, {"lr": 0.02, "betas": (0.8, 0.99), "eps": 1e-8}, False),
]


@pytest.mark.parametrize("opt_cls, kwargs, weighted", OPTIMIZERS,
                         ids=[f"{c.__name__}-{'-'.join(map(str, k.values()))}{'-w' * w}"
                              for c, k, w in OPTIMIZERS])
def test_training_equals_plain_pytorch(opt_cls, kwargs, weighted):
    torch.manual_seed(0)
    cfgs = [c for c in tables() if c.pooling is PoolingType.SUM] if weighted else tables()
    ebc = EmbeddingBagCollection(cfgs, is_weighted=weighted)
    width = sum(c.embedding_dim * len(c.feature_names) for c in cfgs)
    model = Model(ebc, width)
    ref = Model(RefEBC(ebc), width)
    ref.mlp.load_state_dict(model.mlp.state_dict())

    apply_optimizer_in_backward(opt_cls, model.sparse.parameters(), kwargs)
    dense_opt = torch.optim.SGD(model.parameters(), lr=0.1)  # table weights included: skipped
    ref_dense = torch.optim.SGD(ref.mlp.parameters(), lr=0.1)
    ref_sparse = opt_cls(ref.sparse.parameters(), **kwargs)
    gen = torch.Generator().manual_seed(4)
    for step in range(6):
        kjt = random_kjt(cfgs, 16, gen, weighted)
        target = torch.randn(16, generator=gen)
        losses = []
        for m, opts in ((model, [dense_opt]), (ref, [ref_dense, ref_sparse])):
            for o in opts:
                o.zero_grad()
            loss = nn.functional.mse_loss(m(kjt, weighted) if m is ref else m(kjt), target)
            loss.backward()
            for o in opts:
                o.step()
            losses.append(float(loss.detach()))
        assert abs(losses[0] - losses[1]) <= TOL, (step, losses)
    for c in cfgs:
        got = model.sparse.embedding_bags[c.name].weight
        assert got.grad is None
        torch.testing.assert_close(got, ref.sparse.bags[c.name].weight.detach(), atol=TOL,
                                   rtol=0, msg=f"table {c.name}")
        assert not torch.equal(got, RefEBC(EmbeddingBagCollection(cfgs)).bags[c.name].weight)
    for p, q in zip(model.mlp.parameters(), ref.mlp.parameters()):
        torch.testing.assert_close(p, q, atol=TOL, rtol=0)


def test_tables_untrained_without_optimizer_and_filter():
    torch.manual_seed(0)
    ebc = EmbeddingBagCollection(tables())
    before = {k: v.clone() for k, v in ebc.state_dict().items()}
    model = Model(ebc, 4 * 2 + 3 + 2 * 3)
    model(random_kjt(tables(), 4, torch.Generator().manual_seed(5))).sum().backward()
    for k, v in ebc.state_dict().items():
        assert torch.equal(v, before[k]), k
    names = [n for n, _ in in_backward_optimizer_filter(model.named_parameters())]
    assert "sparse.embedding_bags.t0.weight" in names
    apply_optimizer_in_backward(torch.optim.SGD, [ebc.embedding_bags["t0"].weight], {"lr": 1.0})
    names = [n for n, _ in in_backward_optimizer_filter(model.named_parameters())]
    assert "sparse.embedding_bags.t0.weight" not in names and "mlp.0.weight" in names
    model(random_kjt(tables(), 4, torch.Generator().manual_seed(5))).sum().backward()
    assert not torch.equal(ebc.embedding_bags["t0"].weight, before["embedding_bags.t0.weight"])
    assert torch.equal(ebc.embedding_bags["t1"].weight, before["embedding_bags.t1.weight"])


def test_apply_optimizer_errors():
    ebc = EmbeddingBagCollection(tables())
    with pytest.raises(NotSupportedError) as err:
        apply_optimizer_in_backward(torch.optim.RMSprop, ebc.parameters(), {"lr": 0.1})
    assert "torch.optim.SGD" in str(err.value) and "torch.optim.Adam" in str(err.value)
    with pytest.raises(NotSupportedError, match="weight_decay"):
        apply_optimizer_in_backward(torch.optim.Adam, ebc.parameters(),
                                    {"lr": 0.1, "weight_decay": 0.01})
    with pytest.raises(NotSupportedError, match="lr_decay"):
        apply_optimizer_in_backward(torch.optim.Adagrad, ebc.parameters(), {"lr_decay": 0.1})
    with pytest.raises(ConfigError, match="momentun"):
        apply_optimizer_in_backward(torch.optim.SGD, ebc.parameters(), {"momentun": 0.9})
    with pytest.raises(NotSupportedError, match="not an EmbeddingBagCollection table weight"):
        apply_optimizer_in_backward(torch.optim.SGD, nn.Linear(2, 2).parameters(), {"lr": 0.1})


@pytest.mark.gpu
@pytest.mark.parametrize("opt_cls, kwargs", [(torch.optim.SGD, {"lr": 0.5}),
                                             (torch.optim.Adam, {"lr": 0.02, "eps": 1e-8})])
def test_training_on_cuda_equals_plain_pytorch(opt_cls, kwargs):
    """The same on a GPU (terarec's fused kernels where they apply): tables and MLP on CUDA."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = torch.device("cuda")
    torch.manual_seed(0)
    cfgs = tables()
    ebc = EmbeddingBagCollection(cfgs, device=dev)
    width = sum(c.embedding_dim * len(c.feature_names) for c in cfgs)
    model = Model(ebc, width).to(dev)
    ref = Model(RefEBC(ebc), width).to(dev)
    ref.mlp.load_state_dict(model.mlp.state_dict())
    apply_optimizer_in_backward(opt_cls, model.sparse.parameters(), kwargs)
    dense_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_opts = [torch.optim.SGD(ref.mlp.parameters(), lr=0.1),
                opt_cls(ref.sparse.parameters(), **kwargs)]
    gen = torch.Generator().manual_seed(4)
    for step in range(6):
        kjt = random_kjt(cfgs, 16, gen).to(dev)
        target = torch.randn(16, generator=gen).to(dev)
        dense_opt.zero_grad()
        loss = nn.functional.mse_loss(model(kjt), target)
        loss.backward()
        dense_opt.step()
        for o in ref_opts:
            o.zero_grad()
        ref_loss = nn.functional.mse_loss(ref(kjt), target)
        ref_loss.backward()
        for o in ref_opts:
            o.step()
        assert abs(float(loss) - float(ref_loss)) <= 1e-4, step
    for c in cfgs:
        torch.testing.assert_close(model.sparse.embedding_bags[c.name].weight,
                                   ref.sparse.bags[c.name].weight.detach(), atol=1e-4, rtol=0)

