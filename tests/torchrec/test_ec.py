"""terarec.torchrec.EmbeddingCollection (unpooled): forward against nn.Embedding, training with
apply_optimizer_in_backward / fused_params against plain PyTorch, state_dict, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from terarec.errors import ConfigError, NotSupportedError
from terarec.torchrec import (
    EmbeddingCollection,
    EmbeddingConfig,
    EmbOptimType,
    IdOutOfRangeError,
    JaggedTensor,
    KeyedJaggedTensor,
    apply_optimizer_in_backward,
)

TOL = 1e-5
DIM = 4


def tables() -> list[EmbeddingConfig]:
    return [
        EmbeddingConfig(num_embeddings=40, embedding_dim=DIM, name="t0", feature_names=["f0", "f1"]),
        EmbeddingConfig(num_embeddings=20, embedding_dim=DIM, name="t1", feature_names=["f2"],
                        weight_init_min=-0.5, weight_init_max=0.3),
    ]


def random_kjt(cfgs: list[EmbeddingConfig], batch: int, gen: torch.Generator
               ) -> KeyedJaggedTensor:
    rows = {f: c.num_embeddings for c in cfgs for f in c.feature_names}
    keys = list(rows)
    lengths = torch.randint(0, 5, (len(keys) * batch,), generator=gen)
    values = torch.cat([torch.randint(0, rows[k], (int(n),), generator=gen)
                        for k, n in zip(keys, lengths.view(len(keys), batch).sum(1))])
    return KeyedJaggedTensor.from_lengths_sync(keys, values, lengths)


class RefEC(nn.Module):
    """The same lookups with one nn.Embedding per table (plain PyTorch, dense gradients)."""

    def __init__(self, ec: EmbeddingCollection) -> None:
        super().__init__()
        self.cfgs = ec.embedding_configs()
        self.embeddings = nn.ModuleDict()
        for c in self.cfgs:
            e = nn.Embedding(c.num_embeddings, c.embedding_dim, sparse=False)
            with torch.no_grad():
                e.weight.copy_(ec.embeddings[c.name].weight)
            self.embeddings[c.name] = e

    def forward(self, kjt: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
        return {f: JaggedTensor(self.embeddings[c.name](kjt[f].values()),
                                lengths=kjt[f].lengths())
                for c in self.cfgs for f in c.feature_names}


class Model(nn.Module):
    """Mean of each sample's sequence embeddings per feature (via the offsets), then an MLP."""

    def __init__(self, sparse: nn.Module, features: list[str]) -> None:
        super().__init__()
        self.sparse, self.features = sparse, features
        self.mlp = nn.Sequential(nn.Linear(DIM * len(features), 8), nn.ReLU(), nn.Linear(8, 1))

    def forward(self, kjt: KeyedJaggedTensor) -> torch.Tensor:
        out = self.sparse(kjt)
        pooled = []
        for f in self.features:
            jt = out[f]
            lengths = jt.lengths()
            seg = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
            s = torch.zeros(lengths.numel(), DIM).index_add(0, seg, jt.values())
            pooled.append(s / lengths.clamp(min=1).unsqueeze(1).to(s.dtype))
        return self.mlp(torch.cat(pooled, dim=1)).squeeze(1)


def test_forward_equals_nn_embedding():
    torch.manual_seed(0)
    cfgs = tables()
    ec = EmbeddingCollection(cfgs, need_indices=True)
    ref = RefEC(ec)
    kjt = random_kjt(cfgs, 6, torch.Generator().manual_seed(1))
    got, want = ec(kjt), ref(kjt)
    assert list(got) == ["f0", "f1", "f2"]
    for f, jt in got.items():
        assert jt.values().shape == (kjt[f].values().numel(), DIM)
        torch.testing.assert_close(jt.values(), want[f].values(), atol=0, rtol=0)
        assert torch.equal(jt.lengths(), kjt[f].lengths())
        assert torch.equal(jt.offsets(), kjt[f].offsets())
        assert torch.equal(jt.weights(), kjt[f].values())  # need_indices: the ids
    assert EmbeddingCollection(cfgs)(kjt)["f0"].weights_or_none() is None
    lo, hi = cfgs[1].init_bounds()
    w = ec.embeddings["t1"].weight
    assert float(w.min()) >= lo and float(w.max()) <= hi


def test_empty_feature():
    ec = EmbeddingCollection(tables())
    kjt = KeyedJaggedTensor.from_lengths_sync(["f0", "f1", "f2"], torch.tensor([3]),
                                              torch.tensor([0, 0, 1, 0, 0, 0]))
    out = ec(kjt)
    assert out["f0"].values().shape == (0, DIM) and out["f2"].values().shape == (0, DIM)
    torch.testing.assert_close(out["f1"].values(), ec.embeddings["t0"].weight[[3]])


OPTIMIZERS = [
    (torch.optim.SGD, {"lr": 0.3}, None),
    (torch.optim.Adagrad, {"lr": 0.1, "eps": 1e-8, "initial_accumulator_value": 0.1}, None),
    (torch.optim.Adagrad, {"lr": 0.05, "eps": 1e-8},
     {"optimizer": EmbOptimType.EXACT_ADAGRAD, "learning_rate": 0.05}),
]


@pytest.mark.parametrize("opt_cls, kwargs, fused", OPTIMIZERS,
                         ids=["sgd", "adagrad", "adagrad-fused_params"])
def test_training_equals_plain_pytorch(opt_cls, kwargs, fused):
    torch.manual_seed(0)
    cfgs = tables()
    feats = [f for c in cfgs for f in c.feature_names]
    ec = EmbeddingCollection(cfgs, fused_params=fused)
    model = Model(ec, feats)
    ref = Model(RefEC(ec), feats)
    ref.mlp.load_state_dict(model.mlp.state_dict())
    if fused is None:
        apply_optimizer_in_backward(opt_cls, model.sparse.parameters(), kwargs)
    dense_opt = torch.optim.SGD(model.parameters(), lr=0.1)  # table weights: no grad, skipped
    ref_dense = torch.optim.SGD(ref.mlp.parameters(), lr=0.1)
    ref_sparse = opt_cls(ref.sparse.parameters(), **kwargs)
    gen = torch.Generator().manual_seed(4)
    for step in range(6):
        kjt = random_kjt(cfgs, 8, gen)
        target = torch.randn(8, generator=gen)
        losses = []
        for m, opts in ((model, [dense_opt]), (ref, [ref_dense, ref_sparse])):
            for o in opts:
                o.zero_grad()
            loss = nn.functional.mse_loss(m(kjt), target)
            loss.backward()
            for o in opts:
                o.step()
            losses.append(float(loss.detach()))
        assert abs(losses[0] - losses[1]) <= TOL, (step, losses)
    for c in cfgs:
        got = model.sparse.embeddings[c.name].weight
        assert got.grad is None
        torch.testing.assert_close(got, ref.sparse.embeddings[c.name].weight.detach(),
                                   atol=TOL, rtol=0, msg=f"table {c.name}")
    for p, q in zip(model.mlp.parameters(), ref.mlp.parameters()):
        torch.testing.assert_close(p, q, atol=TOL, rtol=0)
    sd = ec.fused_optimizer.state_dict()
    assert sorted(sd["state"]) == ["embeddings.t0.weight", "embeddings.t1.weight"]


def test_untrained_without_optimizer():
    torch.manual_seed(0)
    ec = EmbeddingCollection(tables())
    before = copy.deepcopy(ec.state_dict())
    model = Model(ec, ["f0", "f1", "f2"])
    model(random_kjt(tables(), 4, torch.Generator().manual_seed(2))).sum().backward()
    for k, v in ec.state_dict().items():
        assert torch.equal(v, before[k])


def test_state_dict_round_trip():
    torch.manual_seed(0)
    cfgs = tables()
    a, b = EmbeddingCollection(cfgs), EmbeddingCollection(cfgs)
    sd = a.state_dict()
    assert sorted(sd) == ["embeddings.t0.weight", "embeddings.t1.weight"]
    kjt = random_kjt(cfgs, 4, torch.Generator().manual_seed(3))
    assert not torch.allclose(a(kjt)["f0"].values(), b(kjt)["f0"].values())
    b.load_state_dict(copy.deepcopy(sd))
    for f in ("f0", "f1", "f2"):
        torch.testing.assert_close(b(kjt)[f].values(), a(kjt)[f].values(), atol=0, rtol=0)
    with pytest.raises(RuntimeError, match="size mismatch"):
        b.load_state_dict({**sd, "embeddings.t1.weight": torch.zeros(3, 3)})


def test_out_of_range_id_names_feature_and_table():
    ec = EmbeddingCollection(tables())
    kjt = KeyedJaggedTensor.from_lengths_sync(["f0", "f1", "f2"], torch.tensor([1, 2, 20]),
                                              torch.tensor([1, 0, 1, 0, 0, 1]))
    with pytest.raises(IdOutOfRangeError, match="EmbeddingCollection: feature 'f2' \\(sample 1\\)"
                                                " of table 't1' has id 20"):
        ec(kjt)
    kjt = KeyedJaggedTensor.from_lengths_sync(["f0", "f1", "f2"], torch.tensor([-1]),
                                              torch.tensor([0, 0, 1, 0, 0, 0]))
    with pytest.raises(IndexError, match="feature 'f1'"):
        ec(kjt)


def test_errors():
    with pytest.raises(ConfigError, match="unique table names"):
        EmbeddingCollection([EmbeddingConfig(10, 4, "a", ["f"]), EmbeddingConfig(10, 4, "a", ["g"])])
    with pytest.raises(ConfigError, match="read by table 'a'"):
        EmbeddingCollection([EmbeddingConfig(10, 4, "a", ["f"]), EmbeddingConfig(10, 4, "b", ["f"])])
    with pytest.raises(ConfigError, match="EmbeddingConfig"):
        EmbeddingCollection([])
    with pytest.raises(ConfigError, match="feature_names"):
        EmbeddingConfig(10, 4, "a", [])
    with pytest.raises(NotSupportedError, match="fused_params"):
        EmbeddingCollection(tables(), fused_params={"optimizer": EmbOptimType.LAMB})


def test_dmp_refuses_embedding_collection(monkeypatch):
    import torch.distributed as dist

    from terarec.torchrec.model_parallel import DistributedModelParallel
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    model = nn.Sequential(EmbeddingCollection(tables()))
    with pytest.raises(NotSupportedError, match="EmbeddingCollection"):
        DistributedModelParallel(model)
