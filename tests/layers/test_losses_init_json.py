"""Losses and regularizers, default initializer statistics, JSON specifics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from terarec.errors import ConfigError
from terarec.layers import LAYERS, build_layer, init_tensor


def _bce(x, y):
    p = 1 / (1 + np.exp(-x))
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def test_bce_loss_is_mean_of_fused_sigmoid_bce():
    x = np.random.default_rng(0).normal(size=(6, 1))
    y = np.array([[0], [1], [1], [0], [1], [0]], dtype=float)
    loss = build_layer("BinaryCrossEntropyLoss", {}, [(6, 1), (6, 1)])
    assert loss.is_loss and loss.output_shapes() == [()]
    out = loss(torch.from_numpy(x), torch.from_numpy(y))
    assert out.dim() == 0
    assert out.item() == pytest.approx(_bce(x, y).mean(), rel=1e-12)


def test_cross_entropy_loss_two_class():
    x = np.random.default_rng(1).normal(size=(5, 2))
    y = np.array([0, 1, 1, 0, 1], dtype=float)
    loss = build_layer("CrossEntropyLoss", {}, [(5, 2), (5, 1)])
    out = loss(torch.from_numpy(x), torch.from_numpy(y).view(5, 1))
    lse = np.log(np.exp(x).sum(1))
    ref = (lse - x[np.arange(5), y.astype(int)]).mean()
    assert out.item() == pytest.approx(ref, rel=1e-12)


def test_multi_cross_entropy_weights_and_mask():
    x = np.random.default_rng(2).normal(size=(4, 2))
    y = np.array([[1, 0], [-1, 1], [0, -1], [1, 1]], dtype=float)
    loss = build_layer("MultiCrossEntropyLoss", {"target_weight_vec": [0.3, 0.7]},
                       [(4, 2), (4, 2)])
    out = loss(torch.from_numpy(x), torch.from_numpy(y))
    ref = sum(w * _bce(x[b, t], y[b, t]) for b in range(4) for t, w in enumerate([0.3, 0.7])
              if y[b, t] >= -0.5) / 4
    assert out.item() == pytest.approx(ref, rel=1e-12)


def test_regularizer_terms():
    ws = [torch.tensor([[1.0, -2.0]]), torch.tensor([3.0])]
    shapes = [(4, 1), (4, 1)]
    off = build_layer("BinaryCrossEntropyLoss", {"lambda": 0.5}, shapes)
    assert off.regularizer_term(ws, 8).item() == 0.0
    l1 = build_layer("BinaryCrossEntropyLoss", {"use_regularizer": True,
                                                "regularizer_type": "L1", "lambda": 0.5}, shapes)
    assert l1.regularizer_term(ws, 8).item() == pytest.approx(0.5 / 8 * 6)
    l2 = build_layer("BinaryCrossEntropyLoss", {"use_regularizer": True,
                                                "regularizer_type": "L2", "lambda": 0.5}, shapes)
    assert l2.regularizer_term(ws, 8).item() == pytest.approx(0.5 / 16 * 14)
    w = torch.tensor([1.0, -2.0], requires_grad=True)
    l2.regularizer_term([w], 8).backward()
    torch.testing.assert_close(w.grad, 0.5 * w.detach() / 8)


def test_fc_default_init_statistics():
    k, n = 300, 200
    layer = build_layer("InnerProduct", {"num_output": n}, [(2, k)],
                        generator=torch.Generator().manual_seed(0))
    w, b = layer.weight.detach().double(), layer.bias.detach().double()
    sigma = math.sqrt(2.0 / (k + n)) / 0.8796
    assert w.abs().max() <= 2 * sigma + 1e-6
    assert w.std().item() == pytest.approx(math.sqrt(2.0 / (k + n)), rel=0.02)
    assert abs(w.mean().item()) < 0.01 * sigma
    bsig = math.sqrt(1.0 / n)
    assert b.abs().max() <= 2 * bsig + 1e-6
    assert b.std().item() == pytest.approx(bsig * 0.8796, rel=0.15)


def test_seed_reproduces_weights():
    def make(seed):
        return build_layer("MLP", {"num_outputs": [8, 4]}, [(2, 5)],
                           generator=torch.Generator().manual_seed(seed)).dense_weights()

    a, b, c = make(3), make(3), make(4)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_other_default_initializers():
    g = torch.Generator().manual_seed(0)
    wm = build_layer("WeightMultiply", {"weight_dims": [40, 30]}, [(2, 40)], generator=g)
    limit = math.sqrt(3.0 / ((40 + 40 * 30) / 2))
    assert wm.weight.abs().max() <= limit and wm.weight.abs().max() > 0.9 * limit
    mc = build_layer("MultiCross", {"num_layers": 1, "projection_dim": 100}, [(2, 300)],
                     generator=g)
    u, _, bias = mc.dense_weights()
    assert u.std().item() == pytest.approx(math.sqrt(2.0 / 400), rel=0.05)
    assert torch.count_nonzero(bias) == 0
    bn = build_layer("BatchNorm", {}, [(2, 5)])
    assert torch.equal(bn.gamma, torch.ones(5)) and torch.equal(bn.beta, torch.zeros(5))
    zero = build_layer("InnerProduct", {"num_output": 3, "weight_init_type": "Zero",
                                        "bias_init_type": "Zero"}, [(2, 4)])
    assert torch.count_nonzero(zero.weight) == 0 and torch.count_nonzero(zero.bias) == 0
    u = init_tensor("Uniform", "fc_weight", (100, 100), 100, 100, g)
    assert u.abs().max() <= 1 / 200
    xu = init_tensor("XavierUniform", "fc_weight", (100, 50), 100, 50, g)
    assert xu.abs().max() <= math.sqrt(6 / 150)
    with pytest.raises(ConfigError):
        init_tensor("Gaussian", "fc_weight", (2, 2), 2, 2)


def test_json_keys_match_hugectr():
    fc = LAYERS.get("InnerProduct").params_to_json({"num_output": 3})
    assert fc == {"fc_param": {"num_output": 3}}
    fc = LAYERS.get("InnerProduct").params_to_json(
        {"num_output": 3, "weight_init_type": "XavierUniform"})
    assert fc["fc_param"]["weight_init"] == "XavierUniform"
    mc = LAYERS.get("MultiCross").params_to_json({"num_layers": 2, "projection_dim": 4})
    assert mc == {"mc_param": {"num_layers": 2, "projection_dim": 4}}
    assert LAYERS.get("Reshape").params_to_json({"shape": [-1, 4]}) == {"shape": [-1, 4]}
    assert LAYERS.get("Select").params_to_json({"dim": 1, "index": [0]}) == {
        "dim": 1, "index": [0]}
    assert LAYERS.get("MultiCrossEntropyLoss").params_to_json({}) == {"target_weight": []}
    assert LAYERS.get("BinaryCrossEntropyLoss").params_to_json(
        {"use_regularizer": True, "regularizer_type": "L2", "lambda": 0.1}) == {
        "regularizer": "L2", "lambda": 0.1}
    mlp = LAYERS.get("MLP").params_to_json({"num_outputs": [4, 1]})
    assert mlp == {"mlp_param": {"num_output": 1, "num_outputs": [4, 1], "use_bias": True,
                                 "activation": "Relu"}}
    dice = LAYERS.get("PReLU_Dice")
    assert dice.params_from_json({"prelu_dice_param": {"elu_alpha": 0.3, "eps": 1e-3}}, "l") == {
        "elu_alpha": 0.3, "eps": 1e-3}
    assert dice.params_to_json({"elu_alpha": 0.3})["prelu_dice_param"]["alpha"] == 0.3


@pytest.mark.parametrize("type_name,entry,key", [
    ("InnerProduct", {}, "fc_param"),
    ("InnerProduct", {"fc_param": {}}, "fc_param.num_output"),
    ("InnerProduct", {"fc_param": {"num_output": 2, "weight_init": "Gauss"}},
     "fc_param.weight_init"),
    ("BatchNorm", {"bn_param": {"factor": 1.0}}, "bn_param.eps"),
    ("Slice", {"ranges": "0:2"}, "ranges"),
    ("MultiCross", {"mc_param": {}}, "mc_param.num_layers"),
    ("BinaryCrossEntropyLoss", {"regularizer": "L3", "lambda": 1}, "regularizer"),
    ("Reshape", {}, "leading_dim"),
])
def test_json_errors_name_where_and_key(type_name, entry, key):
    with pytest.raises(ConfigError) as err:
        LAYERS.get(type_name).params_from_json(entry, 'layers[5] "x"')
    assert f'layers[5] "x".{key}' in str(err.value)
