"""The fused sparse backward on power-law keys: a few rows with hundreds of lookups (the chunk
path) mixed, in hash-like row order, with many rows of 1..32 lookups (the count-ordered
``_seg_kernel`` blocks). Float64 formulas as the oracle; several rules, sum and mean,
hotness 0 (general CSR, the hash tables' path) and 1."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import HAS_TRITON, HYPER, K, grad64, random_states, rel_err, rule64


def power_law_rows(nnz: int, n_rows: int, gen: torch.Generator, a: float = 1.2) -> torch.Tensor:
    """``nnz`` rows drawn with P(rank r) ~ 1/r^a; ranks spread over the rows at random (the
    row order of a hash table: hot and cold rows interleaved)."""
    p = 1.0 / torch.arange(1, n_rows + 1, dtype=torch.float64) ** a
    ranks = torch.multinomial(p, nnz, replacement=True, generator=gen)
    return torch.randperm(n_rows, generator=gen)[ranks]


def _csr(hot: int, n: int, gen: torch.Generator) -> torch.Tensor:
    if hot:
        return torch.arange(n + 1) * hot
    lengths = torch.randint(0, 7, (n,), generator=gen)
    lengths[:3] = 0  # some empty bags
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    return offsets


@pytest.mark.parametrize("opt", ["sgd", "adagrad", "adam"])
@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("hot", [0, 1])
def test_fused_backward_power_law(dev: torch.device, opt: str, mean: bool, hot: int) -> None:
    gen = torch.Generator().manual_seed(17 * hot + len(opt) + mean)
    n_rows, dim = 240, 40
    offsets = _csr(hot, 1400 if hot else 420, gen)
    n = offsets.numel() - 1
    nnz = int(offsets[-1])
    rows = power_law_rows(nnz, n_rows, gen)
    counts = torch.bincount(rows, minlength=n_rows)
    assert counts.max() > 4 * 32 and (counts == 1).sum() > 10  # hot rows and single ones
    go = torch.randn(n, dim, generator=gen)
    if hot == 0:
        go = go.bfloat16()  # the training path's pooled gradient (bf16 under autocast)
    ref_g = grad64(go, rows, offsets, mean)
    weight = torch.randn(n_rows, dim, generator=gen)
    states = random_states(opt, (n_rows, dim), gen)
    lr, scale = 0.05, 0.5
    results = []
    triton = K.backend_for(weight.to(dev)) == "triton"
    for _ in range(2 if triton else 1):  # Triton twice: bitwise deterministic
        w_d, st_d = weight.to(dev, copy=True), [s.to(dev, copy=True) for s in states]
        out = K.fused_backward_update(go.to(dev), rows.to(dev), offsets.to(dev), mean, w_d, st_d,
                                      opt, lr, grad_scale=scale, hotness=hot,
                                      return_unique=False, **HYPER)
        assert out is None
        results.append((w_d.cpu(), [s.cpu() for s in st_d]))
    for w_b, st_b in results[1:]:
        assert torch.equal(results[0][0], w_b)
        assert all(torch.equal(a, b) for a, b in zip(results[0][1], st_b))
    w_d, st_d = results[0]
    idx = torch.tensor(sorted(ref_g))
    g = torch.stack([ref_g[r] for r in sorted(ref_g)]) * scale
    w_ref, st_ref = rule64(opt, weight[idx], [s[idx] for s in states], g, lr, HYPER)
    assert rel_err(w_d[idx], w_ref) < 1e-5
    for s_d, s_ref in zip(st_d, st_ref):
        assert rel_err(s_d[idx], s_ref) < 1e-5
    untouched = torch.ones(n_rows, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(w_d[untouched], weight[untouched])


@pytest.mark.parametrize("mean", [False, True])
def test_sparse_grad_power_law(dev: torch.device, mean: bool) -> None:
    gen = torch.Generator().manual_seed(5 + mean)
    offsets = _csr(0, 500, gen)
    rows = power_law_rows(int(offsets[-1]), 300, gen, a=1.1)
    go = torch.randn(500, 24, generator=gen)
    uniq, grad = K.sparse_grad(go.to(dev), rows.to(dev), offsets.to(dev), mean)
    ref = grad64(go, rows, offsets, mean)
    assert uniq.tolist() == sorted(ref)
    assert rel_err(grad, torch.stack([ref[r] for r in sorted(ref)])) < 1e-6


@pytest.mark.parametrize("opt", ["sgd", "adagrad"])
def test_fused_backward_power_law_multi(dev: torch.device, opt: str) -> None:
    """All tables at once (table-major CSR, sample-major gradient, 2 slots, per-table mean),
    general CSR: the CSR row of each lookup is gathered once and mapped to the gradient row."""
    gen = torch.Generator().manual_seed(23)
    sizes, b, slots, dim, flags = [50, 7, 120], 40, 2, 16, [True, False, True]
    table_offsets = torch.tensor([0, 50, 57])
    rows_l, offs_l = [], [0]
    for size in sizes:
        o = _csr(0, b * slots, gen)
        rows_l.append(power_law_rows(int(o[-1]), size, gen))
        offs_l.extend((o[1:] + offs_l[-1]).tolist())
    rows, offsets = torch.cat(rows_l), torch.tensor(offs_l)
    go = torch.randn(b, 3 * slots, dim, generator=gen)
    go_tm = go.view(b, 3, slots, dim).permute(1, 0, 2, 3).reshape(-1, dim)
    base = table_offsets.repeat_interleave(b * slots).repeat_interleave(offsets.diff())
    ref_g = grad64(go_tm, rows + base, offsets, flags, b * slots)
    n_rows = sum(sizes)
    weight = torch.randn(n_rows, dim, generator=gen)
    states = random_states(opt, (n_rows, dim), gen)
    w_d, st_d = weight.to(dev, copy=True), [s.to(dev, copy=True) for s in states]
    K.fused_backward_update(go.to(dev), rows.to(dev), offsets.to(dev), flags, w_d, st_d, opt,
                            0.1, hotness=0, table_offsets=table_offsets.to(dev), slots=slots,
                            return_unique=False, **HYPER)
    idx = torch.tensor(sorted(ref_g))
    g = torch.stack([ref_g[r] for r in sorted(ref_g)])
    w_ref, st_ref = rule64(opt, weight[idx], [s[idx] for s in states], g, 0.1, HYPER)
    assert rel_err(w_d.cpu()[idx], w_ref) < 1e-5
    for s_d, s_ref in zip(st_d, st_ref):
        assert rel_err(s_d.cpu()[idx], s_ref) < 1e-5


@pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")
def test_plan_groups_rows_by_count() -> None:
    """``order`` lists the unique rows by lookup count (capped at CAP, longest first), then
    the idle entries: the rows of one ``_seg_kernel`` block share a count."""
    from terarec.kernels import triton_grad as tg

    gen = torch.Generator().manual_seed(2)
    rows = power_law_rows(3000, 400, gen)
    plan = tg._plan(torch.sort(rows.to(torch.int32), stable=True)[0])
    n_u = int(plan.n_u)
    order = plan.order
    assert sorted(order.tolist()) == list(range(rows.numel()))
    assert sorted(order[:n_u].tolist()) == list(range(n_u))
    capped = plan.counts[order[:n_u]].clamp(max=tg.CAP)
    assert bool((capped[:-1] >= capped[1:]).all()) and int(capped[-1]) >= 1
    assert int(capped[0]) == tg.CAP  # the hot rows' first chunks come first
    assert bool((plan.counts[order[n_u:]] == 0).all())
    # What the kernel reads in that order: sort keys (0 hot, CAP + 1 - count), starts, rows.
    cnt = plan.counts[order[:n_u]]
    assert torch.equal(plan.okey[:n_u].long(), torch.where(cnt > tg.CAP, 0, tg.CAP + 1 - cnt))
    assert torch.equal(plan.ostart, plan.starts[order])
    assert torch.equal(plan.oslot, plan.slot[order])
    assert torch.equal(plan.ouniq, plan.uniq[order])


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")
@pytest.mark.parametrize("opt", ["adagrad", "adam"])
@pytest.mark.parametrize("mean", [False, True])
def test_fused_backward_power_law_gpu_large(opt: str, mean: bool) -> None:
    """DCNv2-like sizes (general CSR, bf16 gradient, dim 128, rows of 1 to ~10^4 lookups):
    Triton == the torch twin, bitwise repeatable, and no host sync on the Triton path."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    n, dim, n_rows = 64 * 1024, 128, 200_000
    lengths = torch.randint(0, 8, (n,), generator=gen)
    offsets = torch.zeros(n + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    rows = power_law_rows(int(offsets[-1]), n_rows, gen, a=1.05).to(dev)
    offsets = offsets.to(dev)
    go = torch.randn(n, dim, generator=gen).bfloat16().to(dev)
    weight = torch.randn(n_rows, dim, generator=gen).to(dev)
    states = [s.to(dev) for s in random_states(opt, (n_rows, dim), gen)]
    outs = []
    for triton in (False, True, True):
        w, st = weight.clone(), [s.clone() for s in states]
        with K.use_triton(triton):
            if triton:
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            try:
                K.fused_backward_update(go, rows, offsets, mean, w, st, opt, 0.01, hotness=0,
                                        return_unique=False, **HYPER)
            finally:
                torch.cuda.set_sync_debug_mode("default")
        outs.append((w, st))
    (w_ref, st_ref), (w1, st1), (w2, st2) = outs
    assert torch.equal(w1, w2) and all(torch.equal(a, b) for a, b in zip(st1, st2))
    assert rel_err(w1, w_ref) < 1e-6
    for a, b in zip(st1, st_ref):
        assert rel_err(a, b) < 1e-5
