"""pooled_lookup / pooled_lookup_multi vs a float64 formula (torch twin and Triton)."""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import K, random_csr, rel_err


def pool64(weight: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor,
           mean: bool) -> torch.Tensor:
    w = weight.double().cpu()
    out = torch.zeros(offsets.numel() - 1, w.shape[1], dtype=torch.float64)
    for q in range(offsets.numel() - 1):
        a, b = int(offsets[q]), int(offsets[q + 1])
        if b > a:
            out[q] = w[rows[a:b].cpu()].sum(0) / ((b - a) if mean else 1)
    return out


@pytest.mark.parametrize("dim", [16, 100, 128])
@pytest.mark.parametrize("mean", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pooled_lookup_csr(dev: torch.device, dim: int, mean: bool, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(dim + mean)
    rows, offsets = random_csr(24, 5, 30, gen)
    weight = torch.randn(30, dim, generator=gen).to(dtype)
    ref = pool64(weight, rows, offsets, mean)
    out = K.pooled_lookup(weight.to(dev), rows.to(dev), offsets.to(dev), mean,
                          out_dtype=torch.float32)
    assert out.shape == (24, dim) and out.dtype == torch.float32
    assert rel_err(out, ref) < 1e-6
    assert bool((out[0] == 0).all())  # empty row -> zeros
    out2 = K.pooled_lookup(weight.to(dev), rows.to(dev), offsets.to(dev), mean)
    assert out2.dtype == dtype
    assert rel_err(out2, ref) < (1e-6 if dtype == torch.float32 else 1e-2)


@pytest.mark.parametrize("hot", [1, 3])
@pytest.mark.parametrize("hint", [None, "exact", 0])
def test_pooled_lookup_fixed_hotness(dev: torch.device, hot: int, hint: object) -> None:
    gen = torch.Generator().manual_seed(hot)
    n = 20
    offsets = torch.arange(n + 1) * hot
    rows = torch.randint(0, 9, (n * hot,), generator=gen)
    weight = torch.randn(9, 24, generator=gen)
    hotness = hot if hint == "exact" else hint
    out = K.pooled_lookup(weight.to(dev), rows.to(dev), offsets.to(dev), True, hotness=hotness)
    assert rel_err(out, pool64(weight, rows, offsets, True)) < 1e-6


@pytest.mark.parametrize("dim", [16, 128])
@pytest.mark.parametrize("multi", [False, True])
def test_pooled_lookup_skewed_lengths(dev: torch.device, dim: int, multi: bool) -> None:
    """DCNv2-like sample-major CSR (row lengths 0..40 side by side): every row is summed to its
    own end (the general-CSR kernel walks each row in chunks, not to its block's longest)."""
    gen = torch.Generator().manual_seed(dim)
    hot, b, vocab = [3, 40, 1, 0, 9, 1, 17, 2], 5, 50
    lengths = torch.tensor(hot).repeat(b)
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    offsets[1:] = lengths.cumsum(0)
    nnz = int(offsets[-1])
    w0, w1 = torch.randn(vocab, dim, generator=gen), torch.randn(vocab, dim, generator=gen)
    r0, r1 = (torch.randint(0, vocab, (nnz,), generator=gen) for _ in range(2))
    ref0 = pool64(w0, r0, offsets, True)
    if not multi:
        out = K.pooled_lookup(w0.to(dev), r0.to(dev), offsets.to(dev), True, hotness=0)
        assert rel_err(out, ref0) < 1e-6
        return
    # two tables (table-major CSR, rows local to each table), mean for table 0 only
    weight = torch.cat([w0, w1])
    rows = torch.cat([r0, r1])
    offs = torch.cat([offsets, offsets[1:] + nnz])
    out = K.pooled_lookup_multi(weight.to(dev), rows.to(dev), offs.to(dev),
                                torch.tensor([0, vocab]).to(dev), [True, False],
                                slots=len(hot), hotness=0)
    ref1 = pool64(w1, r1, offsets, False)
    ref = torch.cat([ref0.view(b, len(hot), dim), ref1.view(b, len(hot), dim)], 1)
    assert out.shape == (b, 2 * len(hot), dim)
    assert rel_err(out, ref) < 1e-6


@pytest.mark.parametrize("mean", [True, [True, False, True]])
@pytest.mark.parametrize("slots", [1, 2])
def test_pooled_lookup_multi(dev: torch.device, mean: object, slots: int) -> None:
    gen = torch.Generator().manual_seed(slots)
    sizes, b, dim = [7, 20, 13], 5, 100
    weight = torch.randn(sum(sizes), dim, generator=gen)
    table_offsets = torch.tensor([0, 7, 27])
    rows_l, offs_l, refs = [], [0], []
    flags = mean if isinstance(mean, list) else [mean] * 3
    for t, size in enumerate(sizes):
        r, o = random_csr(b * slots, 4, size, gen)
        rows_l.append(r)
        offs_l.extend((o[1:] + offs_l[-1]).tolist())
        refs.append(pool64(weight[int(table_offsets[t]):][:size], r, o, flags[t]))
    rows, offsets = torch.cat(rows_l), torch.tensor(offs_l)
    ref = torch.stack([x.view(b, slots, dim) for x in refs], 1).reshape(b, 3 * slots, dim)
    out = K.pooled_lookup_multi(weight.to(dev), rows.to(dev), offsets.to(dev),
                                table_offsets.to(dev), mean, slots=slots)
    assert out.shape == (b, 3 * slots, dim)
    assert rel_err(out, ref) < 1e-6


def test_pooled_lookup_empty_batch(dev: torch.device) -> None:
    weight = torch.randn(4, 16, device=dev)
    out = K.pooled_lookup(weight, torch.zeros(0, dtype=torch.int64, device=dev),
                          torch.zeros(3, dtype=torch.int64, device=dev), True)
    assert out.shape == (2, 16) and bool((out == 0).all())


def test_mark_rows(dev: torch.device) -> None:
    """``used[rows] = True`` with many repeats of a few rows (the Triton version writes a flag
    only where it is unset) and flags already set beforehand kept."""
    gen = torch.Generator().manual_seed(3)
    used = torch.zeros(50, dtype=torch.bool)
    used[[7, 40]] = True
    rows = torch.cat([torch.full((3000,), 2), torch.randint(0, 50, (200,), generator=gen),
                      torch.tensor([49, 0])])
    want = used.clone()
    want[rows] = True
    got = used.to(dev)
    K.mark_rows(got, rows.to(dev))
    assert torch.equal(got.cpu(), want)
    with pytest.raises(ValueError, match="rows: expected int64"):
        K.mark_rows(got, rows.to(dev).int())


@pytest.mark.parametrize("hot", [1, 0])
def test_pooled_lookup_into_rows(dev: torch.device, hot: int) -> None:
    """``out`` + ``out_rows``: each pooled row lands at its row of a larger buffer (slot-major
    exchange buffers), the buffer's other rows untouched; ``out`` alone fills its first rows."""
    gen = torch.Generator().manual_seed(3 + hot)
    n, dim = 12, 32
    if hot:
        offsets, rows = torch.arange(n + 1), torch.randint(0, 9, (n,), generator=gen)
    else:
        rows, offsets = random_csr(n, 4, 9, gen)
    weight = torch.randn(9, dim, generator=gen).to(torch.bfloat16)
    ref = pool64(weight, rows, offsets, False)
    where = torch.randperm(30, generator=gen)[:n]
    buf = torch.full((30, dim), 7.0)
    got = K.pooled_lookup(weight.to(dev), rows.to(dev), offsets.to(dev), False,
                          hotness=hot or None, out=buf.clone().to(dev), out_rows=where.to(dev)).cpu()
    assert got.dtype == torch.float32
    assert rel_err(got[where], ref) < 1e-6
    rest = torch.ones(30, dtype=torch.bool)
    rest[where] = False
    assert bool((got[rest] == 7.0).all())
    head = K.pooled_lookup(weight.to(dev), rows.to(dev), offsets.to(dev), False,
                           out=buf.clone().to(dev)).cpu()
    assert rel_err(head[:n], ref) < 1e-6 and bool((head[n:] == 7.0).all())
    with pytest.raises(ValueError, match="out"):
        K.pooled_lookup(weight.to(dev), rows.to(dev), offsets.to(dev), False,
                        out_rows=where.to(dev))

