"""``hugectr.TorchLayer``: a custom nn.Module inside a HugeCTR-style model (terarec extension).

Training equals plain PyTorch, files and graph JSON round-trip into a fresh model and into an
inference session, a custom loss equals the built-in one, and the errors name the layer.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import terarec as hugectr
from terarec.errors import ConfigError
from terarec.graph.json_io import read_graph_json
from tests.helpers.custom_layers import GatedMix, LogitBCE
from tests.helpers.models import raw_async_reader
from tests.helpers.synth import raw_async_dataset
from tests.inference.test_train_to_serve import _request, _serve

MIX_KW = {"emb_dim": 24, "dense_dim": 4, "hidden": 8}
MIX_PATH = "tests.helpers.custom_layers:GatedMix"
TORCH_INDEX = 1  # network.layers: Reshape, TorchLayer, Concat, InnerProduct, loss


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return raw_async_dataset(tmp_path_factory.mktemp("raw"), n_train=512, n_eval=128)


def build(d, *, module=GatedMix, init_kwargs=MIX_KW, seed: int = 1, custom_loss: bool = False,
          lr: float = 0.05, warmup_steps: int = 3, tops=("h", "p")) -> hugectr.Model:  # noqa: ANN001
    """Input -> embedding -> Reshape -> TorchLayer(flat, dense) -> Concat -> InnerProduct -> loss."""
    solver = hugectr.CreateSolver(batchsize=64, batchsize_eval=64, lr=lr, seed=seed,
                                  warmup_steps=warmup_steps, max_eval_batches=2,
                                  repeat_dataset=True)
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.SGD)
    model = hugectr.Model(solver, raw_async_reader(d), opt)
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=4, dense_name="dense",
                            data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam("data1", 1, True, 3)]))
    model.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,
        workspace_size_per_gpu_in_mb=1, embedding_vec_size=8, combiner="sum",
        sparse_embedding_name="emb", bottom_name="data1", optimizer=opt))
    L = hugectr.Layer_t
    model.add(hugectr.DenseLayer(L.Reshape, ["emb"], ["flat"], leading_dim=24))
    model.add(hugectr.TorchLayer(module, ["flat", "dense"], list(tops), init_kwargs=init_kwargs))
    model.add(hugectr.DenseLayer(L.Concat, list(tops), ["c"]))
    model.add(hugectr.DenseLayer(L.InnerProduct, ["c"], ["fc"], num_output=1))
    if custom_loss:
        model.add(hugectr.TorchLayer(LogitBCE, ["fc", "label"], ["loss"], init_kwargs={}))
    else:
        model.add(hugectr.DenseLayer(L.BinaryCrossEntropyLoss, ["fc", "label"], ["loss"]))
    return model


def _mix(model: hugectr.Model) -> nn.Module:
    return model.engine.network.layers[TORCH_INDEX].module


def _fit(model: hugectr.Model, steps: int) -> None:
    model.fit(max_iter=steps, display=1000, eval_interval=1000, snapshot=100000)


def _eval_batch(model: hugectr.Model):  # noqa: ANN202
    return next(model.eval_reader.iterate_once()).to("cpu")


class Reference(nn.Module):
    """The same network in plain PyTorch, the embedding outputs given."""

    def __init__(self, model: hugectr.Model) -> None:
        super().__init__()
        self.mix = GatedMix(**MIX_KW)
        self.mix.load_state_dict(_mix(model).state_dict())
        fc = model.engine.network.layers[3]
        self.fc = nn.Linear(11, 1)
        with torch.no_grad():
            self.fc.weight.copy_(fc.weight.detach().T)
            self.fc.bias.copy_(fc.bias.detach().reshape(-1))

    def forward(self, emb: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        h, p = self.mix(emb.reshape(emb.shape[0], -1), dense)
        return self.fc(torch.cat([h, p], dim=1))


def test_training_equals_plain_pytorch(data):
    """Same initial weights, SGD, warm-up schedule: losses and weights agree with PyTorch (1e-5).
    The embedding is frozen so the reference can take its outputs as given."""
    model = build(data)
    model.compile()
    model.freeze_embedding()
    device = model.engine.device
    ref = Reference(model).to(device)
    opt = torch.optim.SGD(ref.parameters(), lr=0.0)
    sched = model.get_learning_rate_scheduler()
    for _ in range(6):
        batch = model.train_reader.next_batch()
        with torch.no_grad():
            emb = model.engine.embed(batch)["emb"].clone()
        lr = sched.get_next()
        model.set_learning_rate(lr)
        assert model.train(batch)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ref(emb, batch.dense.to(device)),
                                                  batch.labels.to(device))
        loss.backward()
        opt.step()
        np.testing.assert_allclose(model.get_current_loss(), loss.item(), rtol=1e-5, atol=1e-6)
    mix = _mix(model)
    for (name, got), (_, want) in zip(mix.named_parameters(), ref.mix.named_parameters(),
                                      strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)
    fc = model.engine.network.layers[3]
    torch.testing.assert_close(fc.weight.detach().T, ref.fc.weight.detach(), rtol=1e-5, atol=1e-6)
    assert int(mix.calls) == int(ref.mix.calls) == 6  # the buffer: train forwards only


def test_gradients_reach_the_embedding_through_the_module(data):
    model = build(data)
    model.compile()
    before = {n: p.detach().clone() for n, p in _mix(model).named_parameters()}
    _fit(model, 1)  # the hash table holds the rows of the keys seen so far
    keys0, vecs0, _ = model.engine.tables["emb"].export()
    model.freeze_dense()  # only the embedding's gradient (through the module) moves now
    _fit(model, 3)
    keys1, vecs1, _ = model.engine.tables["emb"].export()
    old = dict(zip(keys0.tolist(), vecs0))
    changed = [not np.allclose(old[k], v) for k, v in zip(keys1.tolist(), vecs1) if k in old]
    assert changed and any(changed)
    for name, p in _mix(model).named_parameters():
        assert not torch.equal(p.detach(), before[name]), name  # the first, unfrozen step


def test_dense_file_layout_and_load_into_fresh_model(data, tmp_path):
    model = build(data)
    model.compile()
    _fit(model, 5)
    prefix = str(tmp_path / "m")
    model.save_params_to_files(prefix, 5)
    raw = np.fromfile(f"{prefix}_dense_5.model", dtype="<f4")
    mix = _mix(model)
    own = np.concatenate([p.detach().cpu().numpy().reshape(-1)
                          for _, p in mix.named_parameters()])
    np.testing.assert_array_equal(raw[:own.size], own)  # Reshape has no weights: it comes first
    fc = model.engine.network.layers[3]
    np.testing.assert_array_equal(raw[own.size:own.size + 11],
                                  fc.weight.detach().cpu().numpy().ravel())
    assert raw.size == own.size + 11 + 1
    ntp = json.loads((tmp_path / "m_dense_5.model.ntp.json").read_text())["layers"]
    assert ntp == [{"type": "TorchLayer", "top": "h", "calls": [5]}]

    fresh = build(data, seed=99)
    fresh.compile()
    batch = _eval_batch(model)
    assert np.abs(fresh.predict(batch) - model.predict(batch)).max() > 1e-4
    fresh.load_dense_weights(f"{prefix}_dense_5.model")
    fresh.load_sparse_weights([f"{prefix}0_sparse_5.model"])
    np.testing.assert_allclose(fresh.predict(batch), model.predict(batch), rtol=1e-5, atol=1e-6)
    assert int(_mix(fresh).calls) == 5


def test_graph_json_and_inference_session(data, tmp_path):
    model = build(data)
    model.compile()
    _fit(model, 5)
    session = _serve(model, tmp_path, "custom", 5, cache_size_percentage=0.5)
    entry = json.loads((tmp_path / "graph.json").read_text())["layers"][3]
    assert entry == {"type": "TorchLayer", "bottom": ["flat", "dense"], "top": ["h", "p"],
                     "module": MIX_PATH, "init_kwargs": MIX_KW}
    batch = _eval_batch(model)
    expected = model.predict(batch)
    got = np.asarray(session.predict(*_request(model, batch)))
    np.testing.assert_allclose(got.reshape(expected.shape), expected, rtol=1e-5, atol=1e-6)
    session.close()

    # terarec's JSON reader: a model built from the graph file starts from the same weights as
    # the Python-built one with the same seed, and takes the saved files
    solver = hugectr.CreateSolver(batchsize=64, batchsize_eval=64, lr=0.05, seed=1,
                                  repeat_dataset=True)
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.SGD)
    from_json = hugectr.Model(solver, raw_async_reader(data), opt)
    from_json.construct_from_json(str(tmp_path / "graph.json"), include_dense_network=True)
    from_json.compile()
    twin = build(data)
    twin.compile()
    for a, b in zip(from_json.engine.network.dense_weights(), twin.engine.network.dense_weights(),
                    strict=True):
        torch.testing.assert_close(a, b)
    from_json.load_dense_weights(str(tmp_path / "custom_dense_5.model"))
    from_json.load_sparse_weights([str(tmp_path / "custom0_sparse_5.model")])
    np.testing.assert_allclose(from_json.predict(batch), expected, rtol=1e-5, atol=1e-6)


def test_custom_loss_equals_builtin_loss(data):
    builtin, custom = build(data), build(data, custom_loss=True)
    builtin.compile()
    custom.compile()
    assert custom.engine.network.loss_tops == ["loss"]
    for model in (builtin, custom):
        _fit(model, 4)
    np.testing.assert_allclose(custom.get_current_loss(), builtin.get_current_loss(), rtol=1e-6)
    batch = _eval_batch(builtin)
    np.testing.assert_allclose(custom.predict(batch), builtin.predict(batch), rtol=1e-5,
                               atol=1e-6)


def test_instance_module_and_several_tops(data):
    """An instance is trained in place; a module returning a tuple feeds several tops."""
    torch.manual_seed(5)
    mix = GatedMix(**MIX_KW)
    start = mix.emb.weight.detach().clone()
    model = build(data, module=mix)
    model.compile()
    assert _mix(model) is mix
    assert model.engine.network.shapes["h"] == (64, 8)
    assert model.engine.network.shapes["p"] == (64, 3)
    _fit(model, 2)
    assert not torch.equal(mix.emb.weight.detach().cpu(), start.cpu())


# ------------------------------------------------------------------------------ errors
def test_graph_to_json_needs_an_importable_class(data, tmp_path):
    class Local(nn.Module):
        def __init__(self, emb_dim: int, dense_dim: int, hidden: int = 8) -> None:
            super().__init__()
            self.inner = GatedMix(emb_dim, dense_dim, hidden)

        def forward(self, emb, dense):  # noqa: ANN001, ANN202
            return self.inner(emb, dense)

    model = build(data, module=Local)
    model.compile()
    _fit(model, 1)  # trains fine: only the JSON needs an import path
    with pytest.raises(ConfigError, match=r"layer TorchLayer \(top \['h', 'p'\]\).*importable"):
        model.graph_to_json(str(tmp_path / "g.json"))
    assert not (tmp_path / "g.json").exists()

    no_kwargs = build(data, module=GatedMix(**MIX_KW), init_kwargs=None)
    with pytest.raises(ConfigError, match="init_kwargs"):
        no_kwargs.graph_to_json(str(tmp_path / "g.json"))
    not_json = build(data, init_kwargs={**MIX_KW, "hidden": np.int64(8)})
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        not_json.graph_to_json(str(tmp_path / "g.json"))


@pytest.mark.parametrize(("path", "named"), [
    ("no_such_package.layers:Block", "no_such_package.layers"),
    ("tests.helpers.custom_layers:Missing", "Missing"),
])
def test_reading_json_with_a_missing_module(data, tmp_path, path, named):
    model = build(data)
    model.graph_to_json(str(tmp_path / "g.json"))
    graph = json.loads((tmp_path / "g.json").read_text())
    graph["layers"][3]["module"] = path
    (tmp_path / "g.json").write_text(json.dumps(graph))
    with pytest.raises(ConfigError, match=r'layers\[3\] "h".module') as err:
        read_graph_json(tmp_path / "g.json")
    assert named in str(err.value)
    with pytest.raises(ConfigError, match=named):
        hugectr.TorchLayer(path, ["dense"], ["x"])


def test_module_failing_on_dummy_inputs_names_the_layer(data):
    model = build(data, module="tests.helpers.custom_layers:NeedsThreeDims", init_kwargs={},
                  tops=("bad",))
    with pytest.raises(ConfigError, match=r"TorchLayer layer 'bad'.*dummy inputs.*IndexError"):
        model.compile()


def test_wrong_number_of_tops_and_bad_arguments(data):
    model = build(data, tops=("only",))
    with pytest.raises(ConfigError, match="top_names"):
        model.compile()
    with pytest.raises(ConfigError, match="TorchLayer.*module"):
        hugectr.TorchLayer(42, ["dense"], ["x"])
    with pytest.raises(ConfigError, match="init_kwargs"):
        hugectr.TorchLayer(GatedMix, ["dense"], ["x"], init_kwargs=[1, 2])
    with pytest.raises(ConfigError, match="bottom_names"):
        hugectr.TorchLayer(GatedMix, [], ["x"])
