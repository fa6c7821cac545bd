"""sparse_grad / sparse_grad_multi / fused_backward_update vs float64 formulas."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import HYPER, K, grad64, random_csr, random_states, rel_err, rule64


def _check_grad(uniq: torch.Tensor, grad: torch.Tensor, ref: dict[int, torch.Tensor]) -> None:
    assert uniq.tolist() == sorted(ref)
    assert grad.dtype == torch.float32 and grad.shape == (len(ref), grad.shape[1])
    assert rel_err(grad, torch.stack([ref[r] for r in sorted(ref)])) < 1e-6


@pytest.mark.parametrize("dim", [16, 100, 128])
@pytest.mark.parametrize("mean", [False, True])
def test_sparse_grad(dev: torch.device, dim: int, mean: bool) -> None:
    gen = torch.Generator().manual_seed(dim)
    rows, offsets = random_csr(40, 4, 25, gen)
    go = torch.randn(40, dim, generator=gen)
    uniq, grad = K.sparse_grad(go.to(dev), rows.to(dev), offsets.to(dev), mean)
    _check_grad(uniq, grad, grad64(go, rows, offsets, mean))


@pytest.mark.parametrize("hot", [0, 1, 2])
def test_sparse_grad_hot_rows(dev: torch.device, hot: int) -> None:
    """Rows hit far more than one chunk (32) take the chunk + combine path; deterministic."""
    gen = torch.Generator().manual_seed(hot)
    n = 400
    if hot:
        offsets = torch.arange(n + 1) * hot
    else:
        _, offsets = random_csr(n, 3, 2, gen)
    nnz = int(offsets[-1])
    rows = torch.randint(0, 6, (nnz,), generator=gen)
    rows[: nnz // 2] = 3  # one very hot row (> 16 chunks)
    go = torch.randn(n, 24, generator=gen)
    args = (go.to(dev), rows.to(dev), offsets.to(dev), True)
    uniq, grad = K.sparse_grad(*args)
    _check_grad(uniq, grad, grad64(go, rows, offsets, True))
    uniq2, grad2 = K.sparse_grad(*args)
    assert torch.equal(grad, grad2) and torch.equal(uniq, uniq2)


@pytest.mark.parametrize("slots", [1, 2])
def test_sparse_grad_multi(dev: torch.device, slots: int) -> None:
    gen = torch.Generator().manual_seed(slots)
    sizes, b, dim, flags = [5, 40, 9], 6, 16, [True, False, True]
    table_offsets = torch.tensor([0, 5, 45])
    rows_l, offs_l = [], [0]
    for size in sizes:
        r, o = random_csr(b * slots, 3, size, gen)
        rows_l.append(r + 0)
        offs_l.extend((o[1:] + offs_l[-1]).tolist())
    rows, offsets = torch.cat(rows_l), torch.tensor(offs_l)
    go = torch.randn(b, 3 * slots, dim, generator=gen)
    go_tm = go.view(b, 3, slots, dim).permute(1, 0, 2, 3).reshape(-1, dim)
    base = table_offsets.repeat_interleave(b * slots).repeat_interleave(offsets.diff())
    ref = grad64(go_tm, rows + base, offsets, flags, b * slots)
    uniq, grad = K.sparse_grad_multi(go.to(dev), rows.to(dev), offsets.to(dev),
                                     table_offsets.to(dev), flags, slots=slots)
    _check_grad(uniq, grad, ref)


@pytest.mark.parametrize("opt", ["sgd", "adagrad", "momentum", "nesterov", "adam", "ftrl"])
@pytest.mark.parametrize("multi", [False, True])
def test_fused_backward_update(dev: torch.device, opt: str, multi: bool) -> None:
    gen = torch.Generator().manual_seed(len(opt))
    n_rows, dim, n = 30, 100, 48
    rows, offsets = random_csr(n, 3, n_rows // 2 if multi else n_rows, gen)
    rows[:40] = 7  # a hot row (> 32 lookups)
    if multi:  # two tables of 15 rows, one slot: csr row t*24 + b
        table_offsets = torch.tensor([0, 15])
        go = torch.randn(n // 2, 2, dim, generator=gen)
        go_tm = go.permute(1, 0, 2).reshape(n, dim)
        grows = rows + table_offsets.repeat_interleave(n // 2).repeat_interleave(offsets.diff())
        ref_g = grad64(go_tm, grows, offsets, True)
        extra = dict(table_offsets=table_offsets.to(dev), slots=1)
    else:
        go = torch.randn(n, dim, generator=gen)
        ref_g = grad64(go, rows, offsets, True)
        extra = {}
    weight = torch.randn(n_rows, dim, generator=gen)
    states = random_states(opt, (n_rows, dim), gen)
    lr, scale = 0.05, 0.5
    w_d, st_d = weight.to(dev, copy=True), [s.to(dev, copy=True) for s in states]
    uniq = K.fused_backward_update(go.to(dev), rows.to(dev), offsets.to(dev), True, w_d, st_d,
                                   opt, lr, grad_scale=scale, **HYPER, **extra)
    assert uniq.tolist() == sorted(ref_g)
    idx = torch.tensor(sorted(ref_g))
    g = torch.stack([ref_g[r] for r in sorted(ref_g)]) * scale
    w_ref, st_ref = rule64(opt, weight[idx], [s[idx] for s in states], g, lr, HYPER)
    assert rel_err(w_d.cpu()[idx], w_ref) < 1e-5
    for s_d, s_ref in zip(st_d, st_ref):
        assert rel_err(s_d.cpu()[idx], s_ref) < 1e-5
    untouched = torch.ones(n_rows, dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(w_d.cpu()[untouched], weight[untouched])


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_fused_backward_many_hot_rows_no_sync(dev: torch.device, opt: str) -> None:
    """Several hot rows around the chunk boundaries (32, 33, 64, 65, 200 lookups), one-hot CSR,
    ``return_unique=False`` (the sync-free form the training fast path uses)."""
    gen = torch.Generator().manual_seed(11)
    counts = {0: 200, 1: 65, 2: 64, 3: 33, 4: 32, 5: 1}
    rows = torch.cat([torch.full((c,), r) for r, c in counts.items()]
                     + [torch.arange(6, 40)])
    rows = rows[torch.randperm(rows.numel(), generator=gen)]
    n, dim, n_rows = rows.numel(), 20, 40
    offsets = torch.arange(n + 1)
    go = torch.randn(n, dim, generator=gen)
    ref_g = grad64(go, rows, offsets, False)
    weight = torch.randn(n_rows, dim, generator=gen)
    states = random_states(opt, (n_rows, dim), gen)
    w_d, st_d = weight.to(dev, copy=True), [s.to(dev, copy=True) for s in states]
    out = K.fused_backward_update(go.to(dev), rows.to(dev), offsets.to(dev), False, w_d, st_d,
                                  opt, 0.1, hotness=1, return_unique=False, **HYPER)
    assert out is None
    idx = torch.tensor(sorted(ref_g))
    g = torch.stack([ref_g[r] for r in sorted(ref_g)])
    w_ref, st_ref = rule64(opt, weight[idx], [s[idx] for s in states], g, 0.1, HYPER)
    assert rel_err(w_d.cpu()[idx], w_ref) < 1e-5
    for s_d, s_ref in zip(st_d, st_ref):
        assert rel_err(s_d.cpu()[idx], s_ref) < 1e-5


@pytest.mark.parametrize("opt", ["sgd", "adagrad", "ftrl"])
def test_fused_backward_lr_factor(dev: torch.device, opt: str) -> None:
    """A device-side learning-rate factor (CUDA-graph replays) equals passing the rate."""
    gen = torch.Generator().manual_seed(3)
    rows, offsets = random_csr(40, 2, 12, gen)
    go = torch.randn(40, 16, generator=gen)
    weight = torch.randn(12, 16, generator=gen)
    states = random_states(opt, (12, 16), gen)
    results = []
    for lr, factor in ((0.05, None), (1.0, torch.tensor([0.05]))):
        w_d, st_d = weight.to(dev, copy=True), [s.to(dev, copy=True) for s in states]
        K.fused_backward_update(go.to(dev), rows.to(dev), offsets.to(dev), False, w_d, st_d, opt,
                                lr, return_unique=False,
                                lr_factor=None if factor is None else factor.to(dev), **HYPER)
        results.append((w_d.cpu(), [s.cpu() for s in st_d]))
    assert rel_err(results[0][0], results[1][0]) < 1e-6
    for a, b in zip(results[0][1], results[1][1]):
        assert rel_err(a, b) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_sums(dev: torch.device, dtype: torch.dtype) -> None:
    """Per distinct row without a host sync (the replicated slots' gradient sums): hot rows
    around the chunk boundaries (thousands of lookups, as a 3-row Criteo slot has), the
    distinct rows ascending in the first ``count`` entries, their float32 sums."""
    gen = torch.Generator().manual_seed(12)
    counts = {7: 3000, 1: 65, 2: 64, 3: 33, 0: 32}
    rows = torch.cat([torch.full((c,), r) for r, c in counts.items()]
                     + [torch.arange(8, 300)])
    rows = rows[torch.randperm(rows.numel(), generator=gen)]
    n, dim = rows.numel(), 24
    go = torch.randn(n, dim, generator=gen).to(dtype)
    ref_g = grad64(go.float(), rows, torch.arange(n + 1), False)
    out_rows, sums, count = K.row_sums(go.to(dev), rows.to(dev))
    u = int(count.item())
    assert count.dtype == torch.int64 and u == len(ref_g) and out_rows.numel() == n
    assert out_rows[:u].cpu().tolist() == sorted(ref_g)
    assert sums.dtype == torch.float32 and sums.shape == (n, dim)
    want = torch.stack([ref_g[r] for r in sorted(ref_g)])
    assert rel_err(sums[:u].cpu(), want) < 1e-5
    empty = K.row_sums(go[:0].to(dev), rows[:0].to(dev))
    assert empty[0].numel() == 0 and int(empty[2].item()) == 0


@pytest.mark.parametrize("narrow", [None, 400])
def test_row_sums_gathered_gradient(dev: torch.device, narrow: int | None) -> None:
    """``grad_rows``: lookup i's gradient read at row ``grad_rows[i]`` of a larger gradient
    (the replicated slots' rows of a slot-major buffer), equal to summing the gathered copy;
    ``num_rows`` (int32 sort) changes nothing."""
    gen = torch.Generator().manual_seed(5)
    n, dim, big = 900, 16, 2000
    rows = torch.cat([torch.full((500,), 3), torch.randint(0, 300, (n - 500,), generator=gen)])
    rows = rows[torch.randperm(n, generator=gen)]
    go = torch.randn(big, dim, generator=gen)
    where = torch.randperm(big, generator=gen)[:n]
    with K.use_triton(False):  # the torch twin on the gathered copy
        ref_rows, ref_sums, ref_count = K.row_sums(go[where], rows)
    out_rows, sums, count = K.row_sums(go.to(dev), rows.to(dev), grad_rows=where.to(dev),
                                       num_rows=narrow)
    u = int(ref_count.item())
    assert int(count.item()) == u
    assert torch.equal(out_rows[:u].cpu(), ref_rows[:u])
    assert rel_err(sums[:u].cpu(), ref_sums[:u]) < 1e-6
    with pytest.raises(ValueError, match="row index"):
        K.row_sums(go.to(dev), rows.to(dev), grad_rows=where[:-1].to(dev))

