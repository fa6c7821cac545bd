"""DLRM dot interaction forward/backward vs a float64 formula (HugeCTR layout)."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import K, rel_err


def forward64(dense: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    x = torch.cat([dense.unsqueeze(1), emb], 1).double()
    n = x.shape[1]
    z = x @ x.transpose(1, 2)
    pairs = [z[:, i, j] for i in range(n) for j in range(i)]  # row-major, i > j
    return torch.cat([dense.double(), torch.stack(pairs, 1),
                      torch.zeros(dense.shape[0], 1, dtype=torch.float64)], 1)


@pytest.mark.parametrize(("s", "e"), [(3, 16), (26, 128), (8, 100)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interaction(dev: torch.device, s: int, e: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(s * e)
    b = 3
    dense = torch.randn(b, e, generator=gen).to(dtype)
    emb = torch.randn(b, s, e, generator=gen).to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    out = K.interaction_forward(dense.to(dev), emb.to(dev))
    ref = forward64(dense, emb)
    assert out.shape == (b, e + (s + 1) * s // 2 + 1) and out.dtype == dtype
    assert rel_err(out, ref) < tol
    assert bool((out[:, -1] == 0).all())
    go = torch.randn(ref.shape, generator=gen).to(dtype)
    d64 = dense.double().requires_grad_()
    e64 = emb.double().requires_grad_()
    forward64(d64, e64).backward(go.double())
    d_dense, d_emb = K.interaction_backward(go.to(dev), dense.to(dev), emb.to(dev))
    assert d_dense.dtype == dtype and d_emb.shape == emb.shape
    assert rel_err(d_dense, d64.grad) < tol
    assert rel_err(d_emb, e64.grad) < tol


def test_interaction_autograd(dev: torch.device) -> None:
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(2, 16, generator=gen).to(dev).requires_grad_()
    emb = torch.randn(2, 4, 16, generator=gen).to(dev).requires_grad_()
    K.interaction(dense, emb).square().sum().backward()
    d64 = dense.detach().double().cpu().requires_grad_()
    e64 = emb.detach().double().cpu().requires_grad_()
    forward64(d64, e64).square().sum().backward()
    assert rel_err(dense.grad, d64.grad) < 1e-5
    assert rel_err(emb.grad, e64.grad) < 1e-5


def test_interaction_block_walk(dev: torch.device) -> None:
    """Triton launch shapes (samples per block, warps, programs walking several blocks) give
    the default launch's results; the batch is not a multiple of the block."""
    if K.backend_for(torch.empty(0, device=dev)) != "triton":
        pytest.skip("launch shapes are a Triton matter")
    import importlib

    t = importlib.import_module("terarec.kernels.triton_interaction")
    gen = torch.Generator().manual_seed(5)
    dense = torch.randn(7, 16, generator=gen).to(dev)
    emb = torch.randn(7, 5, 16, generator=gen).to(dev)
    go = torch.randn(7, 16 + 15 + 1, generator=gen).to(dev)
    want = t.interaction_forward(dense, emb)
    want_b = t.interaction_backward(go, dense, emb)
    for spp, warps, persist in ((2, 2, (1, 2)), (4, 4, (0, 1)), (1, 1, (1, 1))):
        got = t.interaction_forward(dense, emb, spp=spp, warps=warps, persist=persist)
        assert rel_err(got, want) < 1e-6
        got_b = t.interaction_backward(go, dense, emb, warps=warps, persist=persist)
        assert all(rel_err(a, b) < 1e-6 for a, b in zip(got_b, want_b))
    saved = t.BWD_ROW0_STORE
    try:  # the dense gradient by a masked store of row 0 instead of a reduction
        t.BWD_ROW0_STORE = not saved
        got_b = t.interaction_backward(go, dense, emb)
        assert all(rel_err(a, b) < 1e-6 for a, b in zip(got_b, want_b))
        got_b = t.interaction_backward(go.bfloat16(), dense.bfloat16(), emb.bfloat16())
        assert all(rel_err(a, b) < 2e-2 for a, b in zip(got_b, want_b))
    finally:
        t.BWD_ROW0_STORE = saved


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_interaction_slot_major_input(dev: torch.device, dtype: torch.dtype) -> None:
    """The slot exchange's ``[S, B, E]`` buffer seen as ``[B, S, E]`` (a permuted view) is read
    in place: the same outputs as its contiguous copy, and the embedding gradient comes back in
    the input's layout (slot-major: the exchange sends it without a gather)."""
    gen = torch.Generator().manual_seed(11)
    b, s, e = 5, 7, 32
    dense = torch.randn(b, e, generator=gen).to(dtype).to(dev)
    buf = torch.randn(s, b, e, generator=gen).to(dtype).to(dev)
    emb = buf.permute(1, 0, 2)
    go = torch.randn(b, e + (s + 1) * s // 2 + 1, generator=gen).to(dtype).to(dev)
    want = K.interaction_forward(dense, emb.contiguous())
    assert rel_err(K.interaction_forward(dense, emb), want) < 1e-6
    want_d, want_e = K.interaction_backward(go, dense, emb.contiguous())
    got_d, got_e = K.interaction_backward(go, dense, emb)
    assert rel_err(got_d, want_d) < 1e-6 and rel_err(got_e, want_e) < 1e-6
    if K.backend_for(dense) == "triton":  # written in place of the slot-major buffer
        assert got_e.stride() == emb.stride()
    leaf = buf.clone().requires_grad_()
    K.interaction(dense, leaf.permute(1, 0, 2)).float().square().sum().backward()
    ref = buf.clone().requires_grad_()
    K.interaction(dense, ref.permute(1, 0, 2).contiguous()).float().square().sum().backward()
    assert rel_err(leaf.grad, ref.grad) < 1e-6
