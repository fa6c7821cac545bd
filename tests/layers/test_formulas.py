"""Forward passes against independent float64 numpy formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from terarec.layers import build_layer

RNG = np.random.default_rng(0)


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _run(type_name, params, *arrays, train=False, seed=1):
    shapes = [a.shape for a in arrays]
    layer = build_layer(type_name, params, shapes, name="t",
                        generator=torch.Generator().manual_seed(seed)).double()
    layer.train(train)
    out = layer(*[torch.from_numpy(np.asarray(a, dtype=np.float64)) for a in arrays])
    return layer, out


def test_inner_product_2d_and_3d():
    x = RNG.normal(size=(4, 3, 5))
    layer, y = _run("InnerProduct", {"num_output": 2}, x)
    w, b = _np(layer.weight), _np(layer.bias)
    assert w.shape == (5, 2) and b.shape == (1, 2)
    np.testing.assert_allclose(_np(y), x @ w + b, rtol=1e-12)


def test_fused_inner_product_relu():
    x = RNG.normal(size=(4, 5))
    layer, y = _run("FusedInnerProduct", {"num_output": 3}, x)
    np.testing.assert_allclose(_np(y), np.maximum(x @ _np(layer.weight) + _np(layer.bias), 0))


def test_mlp_chain_and_weight_order():
    x = RNG.normal(size=(4, 5))
    layer, y = _run("MLP", {"num_outputs": [4, 3, 1], "activations": ["Relu", "Relu", "Non"],
                            "biases": [True, False, True]}, x)
    ws = [_np(w) for w in layer.dense_weights()]
    assert [w.shape for w in ws] == [(5, 4), (1, 4), (4, 3), (3, 1), (1, 1)]
    h = np.maximum(x @ ws[0] + ws[1], 0)
    h = np.maximum(h @ ws[2], 0)
    np.testing.assert_allclose(_np(y), h @ ws[3] + ws[4], rtol=1e-12)


def test_mlp_act_type_applies_to_every_layer():
    x = RNG.normal(size=(4, 5))
    layer, y = _run("MLP", {"num_outputs": [3, 2], "act_type": "Non", "use_bias": False}, x)
    w1, w2 = (_np(w) for w in layer.dense_weights())
    np.testing.assert_allclose(_np(y), x @ w1 @ w2, rtol=1e-12)


def test_multicross_v1_and_v2():
    x0 = RNG.normal(size=(4, 5))
    layer, y = _run("MultiCross", {"num_layers": 2}, x0)
    ws = [_np(w) for w in layer.dense_weights()]
    assert [w.shape for w in ws] == [(1, 5)] * 4
    x = x0
    for w, b in ((ws[0], ws[1]), (ws[2], ws[3])):
        x = x0 * (x @ w.T) + b + x
    np.testing.assert_allclose(_np(y), x, rtol=1e-12)
    layer, y = _run("MultiCross", {"num_layers": 2, "projection_dim": 3}, x0)
    ws = [_np(w) for w in layer.dense_weights()]
    assert [w.shape for w in ws] == [(5, 3), (3, 5), (1, 5)] * 2
    x = x0
    for u, v, b in (ws[:3], ws[3:]):
        x = x0 * (x @ u @ v + b) + x
    np.testing.assert_allclose(_np(y), x, rtol=1e-12)


def test_weight_multiply():
    x = RNG.normal(size=(4, 3))
    layer, y = _run("WeightMultiply", {"weight_dims": [3, 2]}, x)
    w = _np(layer.weight)
    ref = np.stack([[x[b, i] * w[i, j] for i in range(3) for j in range(2)] for b in range(4)])
    np.testing.assert_allclose(_np(y), ref)


def test_interaction_order_and_pad():
    mlp, emb = RNG.normal(size=(2, 3)), RNG.normal(size=(2, 3, 3))
    _, y = _run("Interaction", {}, mlp, emb)
    for b in range(2):
        vecs = [mlp[b], *emb[b]]
        pairs = [vecs[r] @ vecs[c] for c in range(1, 4) for r in range(c)]
        np.testing.assert_allclose(_np(y[b]), np.concatenate([mlp[b], pairs, [0.0]]))
    assert y.shape == (2, 3 + 6 + 1)


def test_fm_order2():
    x = RNG.normal(size=(4, 6))
    _, y = _run("FmOrder2", {"out_dim": 2}, x)
    v = x.reshape(4, 3, 2)
    np.testing.assert_allclose(_np(y), 0.5 * (v.sum(1) ** 2 - (v ** 2).sum(1)))


def test_elementwise_family_and_reduce():
    a, b, c = (RNG.normal(size=(4, 3)) for _ in range(3))
    np.testing.assert_allclose(_np(_run("Add", {}, a, b, c)[1]), a + b + c)
    np.testing.assert_allclose(_np(_run("Sub", {}, a, b)[1]), a - b)
    np.testing.assert_allclose(_np(_run("DotProduct", {}, a, b, c)[1]), a * b * c)
    x = RNG.normal(size=(4, 3, 2))
    np.testing.assert_allclose(_np(_run("ReduceSum", {"axis": 1}, x)[1]),
                               x.sum(1, keepdims=True))
    np.testing.assert_allclose(_np(_run("ReduceMean", {"axis": 2}, x)[1]),
                               x.mean(2, keepdims=True))


def test_activations():
    x = RNG.normal(size=(4, 5))
    np.testing.assert_allclose(_np(_run("ReLU", {}, x)[1]), np.maximum(x, 0))
    np.testing.assert_allclose(_np(_run("ReLUHalf", {}, x)[1]), np.maximum(x, 0))
    np.testing.assert_allclose(_np(_run("Sigmoid", {}, x)[1]), 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(_np(_run("ELU", {"elu_alpha": 0.7}, x)[1]),
                               np.where(x > 0, x, 0.7 * (np.exp(x) - 1)))
    mean, var = x.mean(0), (x ** 2).mean(0) - x.mean(0) ** 2
    p = 1 / (1 + np.exp(-(x - mean) / np.sqrt(var + 1e-3)))
    np.testing.assert_allclose(_np(_run("PReLU_Dice", {"elu_alpha": 0.2, "eps": 1e-3}, x)[1]),
                               p * x + (1 - p) * 0.2 * x)


def test_softmax_plain_and_masked():
    x = RNG.normal(size=(2, 2, 3, 3))
    e = np.exp(x - x.max(-1, keepdims=True))
    np.testing.assert_allclose(_np(_run("Softmax", {}, x)[1]), e / e.sum(-1, keepdims=True))
    mask = np.array([1, 1, 0], dtype=float).reshape(1, 1, 1, 3).repeat(2, 0)
    s = x * 0.5 - (1 - mask) * 10000.0
    e = np.exp(s - s.max(-1, keepdims=True))
    _, y = _run("Softmax", {"factor": 0.5}, x, mask)
    np.testing.assert_allclose(_np(y), e / e.sum(-1, keepdims=True), atol=1e-12)
    assert np.allclose(_np(y)[..., 2], 0)


def test_dropout_inverted_train_only():
    x = np.ones((200, 50))
    layer, y = _run("Dropout", {"dropout_rate": 0.25}, x, train=True)
    vals = np.unique(np.round(_np(y), 6))
    assert set(vals) <= {0.0, round(1 / 0.75, 6)}
    assert abs((_np(y) == 0).mean() - 0.25) < 0.02
    layer.eval()
    np.testing.assert_array_equal(_np(layer(torch.from_numpy(x))), x)


def test_batchnorm_train_eval_and_running_stats():
    x = RNG.normal(size=(6, 3)) * 2 + 1
    layer, y = _run("BatchNorm", {"factor": 0.5, "eps": 1e-4}, x, train=True)
    ref = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-4)
    np.testing.assert_allclose(_np(y), ref, rtol=1e-10)
    state = layer.non_trainable()
    np.testing.assert_allclose(state["mean"], 0.5 * x.mean(0))
    np.testing.assert_allclose(state["var"], 0.5 + 0.5 * x.var(0, ddof=1))
    layer.eval()
    y = layer(torch.from_numpy(x))
    ref = (x - np.array(state["mean"])) / np.sqrt(np.array(state["var"]) + 1e-4)
    np.testing.assert_allclose(_np(y), ref, rtol=1e-10)
    other = build_layer("BatchNorm", {}, [(6, 3)])
    other.load_non_trainable(state)
    for key in ("mean", "var"):
        np.testing.assert_allclose(other.non_trainable()[key], state[key], rtol=1e-6)
    with pytest.raises(Exception, match="mean"):
        other.load_non_trainable({"mean": [0.0], "var": [1.0, 1.0, 1.0]})
    assert [tuple(w.shape) for w in layer.dense_weights()] == [(3,), (3,)]


def test_layernorm():
    x = RNG.normal(size=(4, 3, 5))
    layer, y = _run("LayerNorm", {"eps": 1e-4}, x)
    ref = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-4)
    np.testing.assert_allclose(_np(y), ref, rtol=1e-10)


def test_shape_ops():
    x = RNG.normal(size=(4, 3, 2))
    np.testing.assert_allclose(_np(_run("Reshape", {"leading_dim": 6}, x)[1]), x.reshape(4, 6))
    np.testing.assert_allclose(_np(_run("Reshape", {"leading_dim": 2}, x)[1]), x.reshape(12, 2))
    np.testing.assert_allclose(
        _np(_run("Reshape", {"selected": True, "selected_slots": [2, 0]}, x)[1]),
        x[:, [2, 0], :].reshape(4, 4))
    np.testing.assert_allclose(_np(_run("Reshape", {"shape": [4, 6]}, x)[1]), x.reshape(4, 6))
    np.testing.assert_allclose(_np(_run("Select", {"dim": 1, "index": [2, 0]}, x)[1]),
                               x[:, [2, 0], :])
    np.testing.assert_allclose(_np(_run("Concat", {"axis": 1}, x, x)[1]),
                               np.concatenate([x, x], 1))
    a, b = _run("Slice", {"ranges": [(0, 2), (1, 3)]}, x[:, :, 0])[1]
    np.testing.assert_allclose(_np(a), x[:, 0:2, 0])
    np.testing.assert_allclose(_np(b), x[:, 1:3, 0])
    m = x[:, :, 0]
    np.testing.assert_allclose(_np(_run("Gather", {"indices": [3, 1]}, m)[1]), m[[3, 1]])
    np.testing.assert_allclose(_np(_run("Scale", {"axis": 0, "factor": 2}, m)[1]),
                               np.repeat(m, 2, axis=1))
    np.testing.assert_allclose(_np(_run("Scale", {"axis": 1, "factor": 2}, m)[1]),
                               np.repeat(m, 2, axis=0))
    e2 = RNG.normal(size=(4, 3, 1))
    hist, tgt = _run("FusedReshapeConcat", {}, x, e2)[1]
    cat = np.concatenate([x, e2], 2)
    np.testing.assert_allclose(_np(hist), cat[:, :2, :].reshape(8, 3))
    np.testing.assert_allclose(_np(tgt), cat[:, 2, :])
    np.testing.assert_allclose(_np(_run("FusedReshapeConcatGeneral", {}, x, e2)[1]),
                               cat.reshape(12, 3))


def test_matrix_multiply_variants():
    a, b = RNG.normal(size=(4, 2, 3)), RNG.normal(size=(4, 3, 5))
    np.testing.assert_allclose(_np(_run("MatrixMultiply", {}, a, b)[1]), a @ b)
    v = RNG.normal(size=(4, 3))
    np.testing.assert_allclose(_np(_run("MatrixMultiply", {}, v, b)[1]),
                               np.einsum("bk,bkn->bn", v, b))


def _mha_ref(q, k, v, heads, mask=None):
    b, sf, h = q.shape
    d = h // heads
    out = np.zeros_like(q)
    for i in range(b):
        for hd in range(heads):
            sl = slice(hd * d, (hd + 1) * d)
            s = q[i, :, sl] @ k[i, :, sl].T / np.sqrt(d)
            if mask is not None:
                s = s - (1 - mask[i, 0]) * 10000.0
            e = np.exp(s - s.max(-1, keepdims=True))
            out[i, :, sl] = (e / e.sum(-1, keepdims=True)) @ v[i, :, sl]
    return out


def test_multi_head_attention_head_and_legacy():
    q, k, v = RNG.normal(size=(2, 3, 4)), RNG.normal(size=(2, 5, 4)), RNG.normal(size=(2, 5, 4))
    _, y = _run("MultiHeadAttention", {"num_attention_heads": 2}, q, k, v)
    np.testing.assert_allclose(_np(y), _mha_ref(q, k, v, 2), rtol=1e-10)
    mask = (RNG.random(size=(2, 1, 3, 5)) > 0.4).astype(float)
    mask[..., 0] = 1
    _, y = _run("MultiHeadAttention", {"num_attention_heads": 2}, q, k, v, mask)
    np.testing.assert_allclose(_np(y), _mha_ref(q, k, v, 2, mask), rtol=1e-10)
    q4, k4 = RNG.normal(size=(2, 2, 3, 4)), RNG.normal(size=(2, 2, 5, 4))
    _, s = _run("MultiHeadAttention", {"transpose_b": True}, q4, k4)
    np.testing.assert_allclose(_np(s), q4 @ np.swapaxes(k4, -1, -2) / 2.0)
    _, o = _run("MultiHeadAttention", {"transpose_b": False}, _np(s), k4)
    ref = (_np(s) @ k4).transpose(0, 2, 1, 3).reshape(2, 3, 8)
    np.testing.assert_allclose(_np(o), ref)


def test_sequence_mask():
    lf, lt = np.array([[1.0], [3.0]]), np.array([[2.0], [4.0]])
    _, m = _run("SequenceMask", {"max_sequence_len_from": 3, "max_sequence_len_to": 4}, lf, lt)
    ref = np.zeros((2, 1, 3, 4))
    for b in range(2):
        ref[b, 0, : int(lf[b, 0]), : int(lt[b, 0])] = 1
    np.testing.assert_array_equal(_np(m), ref)


def _gru_ref(x_seq, blob, h_size):
    s, b, e = x_seq.shape
    n_in = 3 * h_size * e
    w = blob[:n_in].reshape(3 * h_size, e)
    r_ = blob[n_in:n_in + 3 * h_size * h_size].reshape(3 * h_size, h_size)
    bias = blob[n_in + 3 * h_size * h_size:]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    h = np.zeros((b, h_size))
    outs = []
    for t in range(s):
        gx = x_seq[t] @ w.T + bias
        gh = h @ r_.T
        r = sig(gx[:, :h_size] + gh[:, :h_size])
        z = sig(gx[:, h_size:2 * h_size] + gh[:, h_size:2 * h_size])
        n = np.tanh(gx[:, 2 * h_size:] + r * gh[:, 2 * h_size:])
        h = (1 - z) * n + z * h
        outs.append(h)
    return np.stack(outs)


def test_gru_batch_major_and_seq_major():
    params = {"num_output": 3, "batchsize": 2, "SeqLength": 4, "vector_size": 2,
              "bias_init_type": "Uniform"}
    x = RNG.normal(size=(2, 8))
    layer, y = _run("GRU", params, x)
    blob = _np(layer.weight).reshape(-1)
    assert blob.size == 3 * 3 * 2 + 3 * 3 * 3 + 9
    assert tuple(layer.hx.shape) == (1, 6)
    ref = _gru_ref(x.reshape(2, 4, 2).transpose(1, 0, 2), blob, 3)
    np.testing.assert_allclose(_np(y), ref[-1], rtol=1e-10)
    xs = RNG.normal(size=(1, 16))
    layer, y = _run("GRU", params, xs)
    ref = _gru_ref(xs.reshape(4, 2, 2), _np(layer.weight).reshape(-1), 3)
    np.testing.assert_allclose(_np(y), ref.reshape(1, -1), rtol=1e-10)
    assert layer.output_shapes() == [(1, 24)]


def test_cast_dtypes():
    layer = build_layer("Cast", {}, [(2, 3)])
    assert layer(torch.zeros(2, 3)).dtype == torch.float16
    assert layer(torch.zeros(2, 3, dtype=torch.bfloat16)).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.zeros(2, 3)).dtype == torch.bfloat16
