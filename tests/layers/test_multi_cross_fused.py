"""MultiCross v2 through the fused stack (one-pass cross kernels, hand-written backward) vs the
eager layer: outputs and every gradient.

CPU: the fused stack with the torch twins (``use_triton(False)``) and with Triton's interpreter
(``TRITON_INTERPRET=1``, set here before any kernel module is imported, ``use_triton(True)``),
``multi_cross.FUSED_ON_CPU``. GPU (marked ``gpu``): the path the layer picks on its own
(auto: Triton on CUDA) vs the oracle (``use_triton(False)``), fp32 and bf16 autocast.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from terarec.kernels import triton_available, use_triton  # noqa: E402
from terarec.layers import build_layer, multi_cross  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"


def _layer(n: int, k: int, layers: int, seed: int = 3) -> multi_cross.MultiCross:
    return build_layer("MultiCross", {"num_layers": layers, "projection_dim": k}, [(8, n)],
                       name="mc", generator=torch.Generator().manual_seed(seed))


def _run(layer: torch.nn.Module, x0: torch.Tensor, gy: torch.Tensor,
         ) -> tuple[torch.Tensor, list[torch.Tensor], str]:
    """(output, [dx0, d params...], name of the output's grad_fn)."""
    layer.zero_grad(set_to_none=True)
    x = x0.detach().clone().requires_grad_(True)
    y = layer(x)
    (y.float() * gy).sum().backward()
    grads = [x.grad] + [p.grad for p in layer.params_list]
    return y.detach(), grads, type(y.grad_fn).__name__


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.fixture
def fused_cpu() -> Iterator[None]:
    multi_cross.FUSED_ON_CPU = True
    try:
        yield
    finally:
        multi_cross.FUSED_ON_CPU = False


CPU_BACKENDS = [
    pytest.param(False, id="torch-twins"),
    pytest.param(True, id="triton-interp", marks=pytest.mark.skipif(
        HAS_CUDA or not triton_available() or not INTERP,
        reason="Triton interpreter variant: needs triton, no CUDA, TRITON_INTERPRET=1")),
]


@pytest.mark.parametrize("triton", CPU_BACKENDS)
@pytest.mark.parametrize(("n", "k", "layers"), [(5, 2, 1), (37, 4, 3), (130, 8, 2)])
def test_fused_stack_matches_eager_fp32(fused_cpu: None, triton: bool, n: int, k: int,
                                        layers: int) -> None:
    layer = _layer(n, k, layers)
    gen = torch.Generator().manual_seed(n)
    x0 = torch.randn(45, n, generator=gen)
    gy = torch.randn(45, n, generator=gen)
    multi_cross.FUSED_ON_CPU = False
    y_ref, g_ref, fn_ref = _run(layer, x0, gy)
    multi_cross.FUSED_ON_CPU = True
    with use_triton(triton):
        y, g, fn = _run(layer, x0, gy)
    assert fn_ref != fn and "CrossStack" in fn  # the fused stack ran (and eager before)
    assert y.dtype == torch.float32 and _rel(y, y_ref) < 1e-6
    for a, b in zip(g, g_ref):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert _rel(a, b) < 1e-5


@pytest.mark.parametrize("triton", CPU_BACKENDS)
def test_fused_stack_bf16(fused_cpu: None, triton: bool) -> None:
    layer = _layer(64, 8, 3)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(40, 64, generator=gen)
    gy = torch.randn(40, 64, generator=gen)
    y64, g64, _ = _run(layer.double(), x0.double(), gy.double())  # eager float64 oracle
    layer.float()
    with use_triton(triton):
        y, g, fn = _run(layer, x0.bfloat16(), gy)
    assert "CrossStack" in fn and y.dtype == torch.bfloat16
    assert _rel(y, y64) < 2e-2
    for a, b in zip(g, g64):
        assert _rel(a, b) < 5e-2


def test_fused_stack_only_where_it_applies(fused_cpu: None) -> None:
    x = torch.randn(4, 6)
    v1 = _layer(6, 0, 2)
    assert "CrossStack" not in type(v1(x.requires_grad_(True)).grad_fn).__name__
    assert not multi_cross._fused_ok(x.double())  # float64: the eager expression
    multi_cross.FUSED_ON_CPU = False
    assert not multi_cross._fused_ok(x)  # CPU tensors: eager unless a test asks
    with torch.autocast("cpu", dtype=torch.bfloat16):
        multi_cross.FUSED_ON_CPU = True
        assert not multi_cross._fused_ok(x)  # fp32 input under bf16 autocast: eager
        assert multi_cross._fused_ok(x.bfloat16())


def test_fused_stack_frozen_input_and_params(fused_cpu: None) -> None:
    """No gradient asked for x0 or for some parameters: the rest still match eager."""
    layer = _layer(20, 3, 2)
    layer.params_list[0].requires_grad_(False)
    x0 = torch.randn(9, 20)
    multi_cross.FUSED_ON_CPU = False
    y_ref = layer(x0)
    y_ref.sum().backward()
    ref = [p.grad.clone() if p.grad is not None else None for p in layer.params_list]
    layer.zero_grad(set_to_none=True)
    multi_cross.FUSED_ON_CPU = True
    with use_triton(False):
        y = layer(x0)
        y.sum().backward()
    assert _rel(y, y_ref) < 1e-6
    for p, r in zip(layer.params_list, ref):
        assert (p.grad is None) == (r is None)
        if r is not None:
            assert _rel(p.grad, r) < 1e-5


def test_state_dict_names_unchanged() -> None:
    layer = _layer(10, 4, 2)
    assert list(layer.state_dict()) == [f"params_list.{i}" for i in range(6)]


@pytest.mark.gpu
@pytest.mark.parametrize("amp", [False, True])
def test_fused_stack_cuda(amp: bool) -> None:
    """On CUDA the layer picks the fused stack by itself; it matches the oracle (eager)."""
    dev = torch.device("cuda")
    layer = _layer(3456 if amp else 384, 512 if amp else 64, 3).to(dev)
    b = 4096 if amp else 1000
    gen = torch.Generator(device=dev).manual_seed(0)
    n = layer.params_list[0].shape[0]
    x0 = torch.randn(b, n, generator=gen, device=dev)
    gy = torch.randn(b, n, generator=gen, device=dev)
    if amp:
        x0 = x0.bfloat16()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        with use_triton(False):
            y_ref, g_ref, fn_ref = _run(layer, x0, gy)
        y, g, fn = _run(layer, x0, gy)
    assert "CrossStack" in fn and "CrossStack" not in fn_ref
    tol_y, tol_g = (2e-2, 5e-2) if amp else (1e-6, 1e-5)
    assert _rel(y, y_ref) < tol_y
    for a, r in zip(g, g_ref):
        assert a.dtype == r.dtype and _rel(a, r) < tol_g
