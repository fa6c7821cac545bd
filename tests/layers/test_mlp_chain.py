"""The MLP's fused chain (one autograd node, hand-written backward, the ReLU backward of a layer
in the epilogue of the GEMM above it) vs the plain matmul + bias + relu chain: outputs and
every gradient.

CPU: the chain with the torch twins (``use_triton(False)``) and, for 16-bit, with Triton's
interpreter (``TRITON_INTERPRET=1``, set here before any kernel module is imported,
``use_triton(True)``: ``linear_relu_dgrad`` runs). GPU (marked ``gpu``): the path the layer
picks on CUDA (bf16 autocast) vs the oracle (``use_triton(False)``).
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from terarec.kernels import triton_available, use_triton  # noqa: E402
from terarec.layers import build_layer, mlp  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
SPECS = {
    "dlrm-top": ([48, 32, 16, 1], ["Relu", "Relu", "Relu", "Non"], [True] * 4),
    "no-bias-mid": ([32, 24, 16], ["Relu", "Relu", "Relu"], [True, False, True]),
    "linear-mid": ([32, 24, 16], ["Relu", "Non", "Relu"], [True, True, False]),
}


def _params(widths: list[int], acts: list[str], biases: list[bool], k: int,
            dtype: torch.dtype) -> tuple[list[torch.Tensor], tuple[tuple[bool, bool], ...]]:
    gen = torch.Generator().manual_seed(sum(widths))
    params = []
    for w, has_bias in zip(widths, biases):
        params.append((torch.randn(k, w, generator=gen) / k**0.5).to(dtype))
        if has_bias:
            params.append((torch.randn(w, generator=gen) * 0.1).to(dtype))
        k = w
    return params, tuple((a == "Relu", b, False) for a, b in zip(acts, biases))


def _plain(x: torch.Tensor, spec, params):  # noqa: ANN001, ANN202
    p = 0
    for relu, has_bias, _ in spec:
        x = x.mm(params[p])
        if has_bias:
            x = x + params[p + 1]
        x = torch.relu(x) if relu else x
        p += 2 if has_bias else 1
    return x


def _grads(fn, x: torch.Tensor, params, gy: torch.Tensor):  # noqa: ANN001, ANN202
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, *params)]
    y = fn(leaves[0], leaves[1:])
    (y.float() * gy).sum().backward()
    return y.detach(), [t.grad for t in leaves]


def _check(dtype: torch.dtype, device: str, triton: bool) -> None:
    for name, (widths, acts, biases) in SPECS.items():
        params, spec = _params(widths, acts, biases, 40, dtype)
        params = [p.to(device) for p in params]
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(67, 40, generator=gen).to(dtype).to(device)
        gy = torch.randn(67, widths[-1], generator=gen).to(device)
        with use_triton(triton):
            y, got = _grads(lambda a, ps, s=spec: mlp._LinearChain.apply(a, s, *ps), x, params,
                            gy)
        y_ref, ref = _grads(lambda a, ps, s=spec: _plain(a.double(), s, [q.double() for q in ps]),
                            x, params, gy)
        tol = 1e-6 if dtype == torch.float32 else 3e-2
        assert (y.double() - y_ref).norm() <= tol * y_ref.norm(), name
        for i, (g, r) in enumerate(zip(got, ref)):
            assert g is not None and g.dtype == dtype and g.shape == r.shape, (name, i)
            err = float((g.double() - r.double()).norm() / r.double().norm().clamp_min(1e-30))
            assert err <= tol, (name, i, err)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chain_matches_plain_chain_torch_twins(dtype: torch.dtype) -> None:
    _check(dtype, "cpu", False)


@pytest.fixture(autouse=True)
def _small_fused_width(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fused dgrad for the small test widths too, and the outer-product one for the
    logit layer."""
    monkeypatch.setattr(mlp, "FUSED_DGRAD_MIN_WIDTH", 16)
    monkeypatch.setattr(mlp, "FUSED_DGRAD_OUTER_MAX", 8)


@pytest.mark.skipif(HAS_CUDA or not INTERP or not triton_available(),
                    reason="Triton interpreter variant: CPU machine with triton importable")
def test_chain_matches_plain_chain_fused_dgrad_interpreter() -> None:
    _check(torch.bfloat16, "cpu", True)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("cast_in_one", [True, False])
def test_mlp_layer_cuda_bf16_as_close_as_the_oracle(fused: bool, cast_in_one: bool,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """bf16 autocast: the chain (``FUSED_DGRAD`` and ``CAST_IN_ONE`` on / off) is as close to
    float32 as the plain chain (the oracle) is, for the output and every gradient."""
    monkeypatch.setattr(mlp, "FUSED_DGRAD", fused)
    monkeypatch.setattr(mlp, "CAST_IN_ONE", cast_in_one)
    params = {"num_outputs": [1024, 512, 256, 1], "activations": ["Relu"] * 3 + ["Non"],
              "biases": [True] * 4}
    layer = build_layer("MLP", params, [(8, 480)], name="m",
                        generator=torch.Generator().manual_seed(1)).cuda()
    x = torch.randn(4096, 480, device="cuda")
    gy = torch.randn(4096, 1, device="cuda")
    runs = []
    for triton, dtype in ((True, torch.bfloat16), (False, torch.bfloat16),
                          (False, torch.float32)):
        layer.zero_grad(set_to_none=True)
        xx = x.clone().requires_grad_(True)
        with use_triton(triton), torch.autocast("cuda", dtype=dtype,
                                                enabled=dtype != torch.float32):
            y = layer(xx)
        (y.float() * gy).sum().backward()
        runs.append([y.float(), xx.grad] + [p.grad for p in layer.parameters()])
    for i, (got, oracle, ref) in enumerate(zip(*runs)):
        ref = ref.double()
        err = float((got.double() - ref).norm() / ref.norm())
        err_oracle = float((oracle.double() - ref).norm() / ref.norm())
        assert err <= 1.5 * err_oracle + 2e-3, (i, err, err_oracle)


def test_cast_all_matches_per_tensor_casts() -> None:
    """``_CastAll`` (one multi-tensor copy each way) == ``p.to(dtype)`` per tensor: values and
    the float32 gradients that reach the parameters (None where a cast output is unused)."""
    gen = torch.Generator().manual_seed(5)
    params = [torch.randn(7, 5, generator=gen), torch.randn(1, 5, generator=gen),
              torch.randn(5, 3, generator=gen)]
    weights = [torch.randn(p.shape, generator=gen) for p in params]
    runs = []
    for fused in (True, False):
        leaves = [p.clone().requires_grad_(True) for p in params]
        cast = (list(mlp._CastAll.apply(torch.bfloat16, *leaves)) if fused
                else [p.to(torch.bfloat16) for p in leaves])
        assert all(c.dtype == torch.bfloat16 for c in cast)
        (cast[0].float() * weights[0]).sum().backward(retain_graph=True)
        (cast[2].float() * weights[2]).sum().backward()  # cast[1] unused
        runs.append(([c.detach() for c in cast], [p.grad for p in leaves]))
    (got_v, got_g), (ref_v, ref_g) = runs
    assert all(torch.equal(a, b) for a, b in zip(got_v, ref_v))
    assert got_g[1] is None and ref_g[1] is None
    for a, b in ((got_g[0], ref_g[0]), (got_g[2], ref_g[2])):
        assert a.dtype == torch.float32 and torch.equal(a, b)


def _two_mlps() -> tuple[torch.nn.Module, torch.nn.Module]:
    bottom = build_layer("MLP", {"num_outputs": [512, 256, 128], "activations": ["Relu"] * 3,
                                 "biases": [True] * 3}, [(8, 13)], name="b",
                         generator=torch.Generator().manual_seed(2)).cuda()
    top = build_layer("MLP", {"num_outputs": [1024, 512, 1], "activations": ["Relu"] * 2
                              + ["Non"], "biases": [True] * 3}, [(8, 128)], name="t",
                      generator=torch.Generator().manual_seed(3)).cuda()
    return bottom, top


def _step(bottom, top, x, gy):  # noqa: ANN001, ANN202
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = top(bottom(x))
    (y.float() * gy).sum().backward()
    return y.detach()  # a kept graph would keep its AccumulateGrad nodes (and their stream)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_wgrad_side_stream_equals_main_stream(monkeypatch: pytest.MonkeyPatch) -> None:
    """``WGRAD_SIDE_STREAM``: the weight gradients made on the side stream (the padded first
    layer's on the main stream) equal the one-stream chain's (to a bf16 rounding where cuBLAS
    picks another algorithm; a race would be far off), eagerly and replayed from a CUDA graph
    that captured forward and backward (the side stream forked and joined inside it)."""
    monkeypatch.setattr(mlp, "CAST_IN_ONE", True)
    bottom, top = _two_mlps()
    params = [*bottom.parameters(), *top.parameters()]
    gen = torch.Generator().manual_seed(9)
    xs = [torch.randn(4096, 13, generator=gen).cuda() for _ in range(2)]
    gys = [torch.randn(4096, 1, generator=gen).cuda() for _ in range(2)]

    def eager(side: bool, x, gy):  # noqa: ANN001, ANN202
        monkeypatch.setattr(mlp, "WGRAD_SIDE_STREAM", side)
        for p in params:
            p.grad = None
        y = _step(bottom, top, x, gy)
        return [y.float().clone()] + [p.grad.clone() for p in params]

    def compare(got, want, where: str) -> None:  # noqa: ANN001
        # bitwise where the same cuBLAS algorithm runs; a race would be far off
        errs = [float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))
                for a, b in zip(got, want)]
        print(where, ["=" if torch.equal(a, b) else f"{e:.1e}"
                      for a, b, e in zip(got, want, errs)])
        assert max(errs) <= 1e-2, (where, errs)

    for x, gy in zip(xs, gys):
        want, got = eager(False, x, gy), eager(True, x, gy)
        compare(got, want, "eager")
    monkeypatch.setattr(mlp, "WGRAD_SIDE_STREAM", True)
    sx, sgy = xs[0].clone(), gys[0].clone()
    for _ in range(3):  # warm-up as the whole-step graph has it: eager steps, then capture
        for p in params:
            p.grad = None
        _step(bottom, top, sx, sgy)
    torch.cuda.synchronize()
    for p in params:
        p.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sy = _step(bottom, top, sx, sgy)
    static_grads = [p.grad for p in params]  # the graph's own gradient tensors
    for x, gy in zip(xs, gys):
        sx.copy_(x)
        sgy.copy_(gy)
        graph.replay()
        torch.cuda.synchronize()
        got = [sy.float().clone()] + [g.clone() for g in static_grads]
        want = eager(False, x, gy)
        monkeypatch.setattr(mlp, "WGRAD_SIDE_STREAM", True)
        compare(got, want, "graph")
