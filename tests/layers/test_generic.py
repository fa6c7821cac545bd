"""Checks every layer type against the contract: registry, shapes, JSON, weights, gradients."""

from __future__ import annotations

import json

import pytest
import torch
from layer_cases import CASES, Case, case_id
from torch.func import functional_call

from terarec.enums import Layer_t
from terarec.errors import ConfigError
from terarec.layers import LAYERS, Layer, build_layer


def _build(case: Case, shapes=None, seed: int = 7, params=None) -> Layer:
    gen = torch.Generator().manual_seed(seed)
    return build_layer(case.type_name, params if params is not None else case.params,
                       shapes or case.shapes, name="l0", generator=gen)


def _tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def test_every_layer_t_member_resolves() -> None:
    for member in Layer_t:
        cls = LAYERS.get(member.name)
        assert issubclass(cls, Layer)
    assert LAYERS.get("DotProduct").type_name == "ElementwiseMultiply"
    assert LAYERS.get("Multiply").type_name == "WeightMultiply"
    assert build_layer(Layer_t.ReLUHalf, {}, [(2, 3)]).type_name == "ReLUHalf"


def test_every_registered_type_has_a_case() -> None:
    assert {c.type_name for c in CASES} == set(LAYERS.names())


def test_unknown_type_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_layer("InnerProdcut", {}, [(2, 3)], name="fc")
    assert "InnerProduct" in str(err.value) and "fc" in str(err.value)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_output_shapes_match_forward(case: Case) -> None:
    layer = _build(case).eval()
    outs = _tuple(layer(*case.inputs(dtype=torch.float32)))
    assert [tuple(o.shape) for o in outs] == layer.output_shapes()
    assert len(outs) == case.n_tops
    if not case.fixed_batch:  # a smaller run-time batch works with the same module
        small = [(2, *s[1:]) for s in case.shapes]
        ref = _build(case, small)
        outs = _tuple(layer(*case.inputs(batch=2, dtype=torch.float32)))
        assert [tuple(o.shape) for o in outs] == ref.output_shapes()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_json_round_trip(case: Case) -> None:
    cls = LAYERS.get(case.type_name)
    entry = cls.params_to_json(case.params)
    json.dumps(entry)
    back = cls.params_from_json(json.loads(json.dumps(entry)), f'layers[3] "{case.type_name}"')
    a, b = _build(case).eval(), _build(case, params=back).eval()
    assert a.output_shapes() == b.output_shapes()
    for wa, wb in zip(a.dense_weights(), b.dense_weights(), strict=True):
        assert torch.equal(wa, wb)
    xs = case.inputs(dtype=torch.float32)
    for oa, ob in zip(_tuple(a(*xs)), _tuple(b(*xs)), strict=True):
        torch.testing.assert_close(oa, ob)
    assert cls.params_to_json(back) == entry


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_dense_weights_cover_parameters(case: Case) -> None:
    layer = _build(case)
    weights = layer.dense_weights()
    assert all(isinstance(w, torch.nn.Parameter) for w in weights)
    assert {id(p) for p in layer.parameters()} == {id(w) for w in weights}
    assert layer.regularized_weights() == weights


_NO_GRAD = {"Dropout", "Cast", "SequenceMask"}


@pytest.mark.parametrize("case", [c for c in CASES if c.type_name not in _NO_GRAD],
                         ids=case_id)
def test_gradcheck_float64(case: Case) -> None:
    layer = _build(case).double().train()
    xs = case.inputs(dtype=torch.float64, seed=3)
    kinds = case.kinds or ["x"] * len(xs)
    for x, kind in zip(xs, kinds + ["x"] * len(xs)):
        x.requires_grad_(kind == "x")
    n_in = len(xs)
    names = [n for n, _ in layer.named_parameters()]

    def fwd(*args: torch.Tensor):
        return functional_call(layer, dict(zip(names, args[n_in:])), tuple(args[:n_in]))

    ps = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]
    assert torch.autograd.gradcheck(fwd, (*xs, *ps), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_runs_under_bf16_autocast(case: Case) -> None:
    layer = _build(case).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = _tuple(layer(*case.inputs(dtype=torch.float32)))
    for o in outs:
        assert torch.isfinite(o.float()).all()


BAD = [
    ("Add", {}, [(4, 3), (4, 2)], "bottom[1] shape"),
    ("Slice", {"ranges": [(0, 6)]}, [(4, 5)], "ranges"),
    ("Slice", {"ranges": [(3, 2)]}, [(4, 5)], "ranges"),
    ("Concat", {}, [(4, 3), (4, 3, 2)], "bottom[1] shape"),
    ("MultiCross", {"num_layers": 1}, [(4, 3, 5)], "bottom[0] shape"),
    ("MultiCross", {"num_layers": 0}, [(4, 5)], "num_layers"),
    ("InnerProduct", {"num_output": 0}, [(4, 5)], "num_output"),
    ("InnerProduct", {"num_output": 3, "weight_init_type": "Gauss"}, [(4, 5)],
     "weight_init_type"),
    ("InnerProduct", {"num_output": 3}, [(4, 5), (4, 5)], "bottom_names"),
    ("MLP", {"num_outputs": [3, 1], "activations": ["Relu"]}, [(4, 5)], "activations"),
    ("Reshape", {"leading_dim": 7}, [(4, 3, 4)], "leading_dim"),
    ("Reshape", {"shape": [-1, 5]}, [(4, 3, 4)], "shape"),
    ("Reshape", {"selected": True, "selected_slots": [3]}, [(4, 3, 4)], "selected_slots"),
    ("Select", {"dim": 3, "index": [0]}, [(4, 3, 4)], "dim"),
    ("WeightMultiply", {"weight_dims": [4, 2]}, [(4, 3)], "weight_dims"),
    ("Interaction", {}, [(4, 3), (4, 2, 4)], "bottom[1] shape"),
    ("FmOrder2", {"out_dim": 4}, [(4, 6)], "out_dim"),
    ("Dropout", {"dropout_rate": 1.0}, [(4, 6)], "dropout_rate"),
    ("ReduceSum", {"axis": 3}, [(4, 6)], "axis"),
    ("Scale", {"axis": 0, "factor": 1.5}, [(4, 6)], "factor"),
    ("MultiHeadAttention", {"num_attention_heads": 3}, [(4, 3, 4)] * 3, "num_attention_heads"),
    ("MatrixMultiply", {}, [(4, 2, 3), (4, 2, 3)], "bottom[1] shape"),
    ("GRU", {"num_output": 3, "batchsize": 2, "SeqLength": 3, "vector_size": 2}, [(2, 5)],
     "bottom[0] shape"),
    ("BinaryCrossEntropyLoss", {}, [(4, 2), (4, 2)], "bottom shapes"),
    ("BinaryCrossEntropyLoss", {"regularizer_type": "L3"}, [(4, 1), (4, 1)],
     "regularizer_type"),
    ("MultiCrossEntropyLoss", {"target_weight_vec": [1.0]}, [(4, 2), (4, 2)],
     "target_weight_vec"),
]


@pytest.mark.parametrize("type_name,params,shapes,field", BAD, ids=[b[0] + "-" + b[3]
                                                                    for b in BAD])
def test_bad_params_name_layer_and_field(type_name, params, shapes, field) -> None:
    with pytest.raises(ConfigError) as err:
        build_layer(type_name, params, shapes, name="my_layer")
    msg = str(err.value)
    assert "'my_layer'" in msg and type_name in msg and field in msg
