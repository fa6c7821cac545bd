"""HashIndex / DirectIndex against a Python dict; capacity errors; CPU and CUDA twins."""

from __future__ import annotations

import pytest
import torch

from terarec.embedding.hash_index import DirectIndex, HashIndex
from terarec.errors import CapacityError


def _dict_rows(d: dict[int, int], keys: list[int]) -> list[int]:
    out = []
    for k in keys:
        if k not in d:
            d[k] = len(d)
        out.append(d[k])
    return out


def _check_against_dict(device: str) -> None:
    g = torch.Generator().manual_seed(0)
    idx = HashIndex(50_000, device=device, name="t")
    d: dict[int, int] = {}
    for _ in range(12):
        big = torch.randint(-(2**62), 2**62, (1500,), generator=g)
        small = torch.randint(0, 500, (1000,), generator=g)
        huge = torch.randint(0, 1000, (500,), generator=g) + 2**41
        keys = torch.cat([big, small, huge, big[:300]])  # duplicates inside one call
        keys = keys[torch.randperm(keys.numel(), generator=g)]
        rows = idx.lookup_or_insert(keys.to(device))
        assert rows.cpu().tolist() == _dict_rows(d, keys.tolist())
    assert idx.num_keys == len(d)
    assert idx.keys().cpu().tolist() == list(d)
    probe = torch.tensor([*list(d)[:50], 2**63 - 1, -(2**63), 123456789123], device=device)
    expect = [d.get(k, -1) for k in probe.tolist()]
    assert idx.lookup(probe).cpu().tolist() == expect


def test_hash_index_matches_dict_cpu() -> None:
    _check_against_dict("cpu")


@pytest.mark.gpu
def test_hash_index_matches_dict_cuda() -> None:
    _check_against_dict("cuda")


def test_first_seen_order_and_empty_input() -> None:
    idx = HashIndex(10)
    assert idx.lookup_or_insert(torch.tensor([9, 4, 9, 2**50, -3])).tolist() == [0, 1, 0, 2, 3]
    assert idx.lookup_or_insert(torch.empty(0, dtype=torch.int64)).numel() == 0
    assert idx.lookup(torch.tensor([4, 5])).tolist() == [1, -1]
    assert idx.keys().tolist() == [9, 4, 2**50, -3]


def test_capacity_error_names_table_and_counts() -> None:
    idx = HashIndex(5, name="wide_emb")
    idx.lookup_or_insert(torch.tensor([1, 2, 3]))
    with pytest.raises(CapacityError) as err:
        idx.lookup_or_insert(torch.tensor([3, 4, 5, 6, 6]))
    msg = str(err.value)
    assert "wide_emb" in msg and "6 distinct keys" in msg and "5" in msg
    assert "workspace_size_per_gpu_in_mb" in msg
    assert idx.num_keys == 3  # nothing half-inserted
    assert idx.lookup_or_insert(torch.tensor([4, 5])).tolist() == [3, 4]


def test_growth_keeps_rows() -> None:
    idx = HashIndex(100_000)
    first = idx.lookup_or_insert(torch.arange(10) * 1_000_003)
    idx.lookup_or_insert(torch.arange(50_000) * 7 + 11)
    assert idx.lookup(torch.arange(10) * 1_000_003).tolist() == first.tolist()
    assert idx.num_slots >= 2 * idx.num_keys


def _direct_vs_hash(device: str) -> None:
    g = torch.Generator().manual_seed(3)
    direct, hashed = DirectIndex(1000, device), HashIndex(1000, device)
    seen: set[int] = set()
    for _ in range(5):
        keys = torch.randint(0, 1000, (300,), generator=g).to(device)
        rd = direct.lookup_or_insert(keys)
        rh = hashed.lookup_or_insert(keys)
        seen.update(keys.cpu().tolist())
        assert torch.equal(rd, keys)
        # same partition of keys into rows (a bijection between the two row numberings)
        pairs = set(zip(rd.cpu().tolist(), rh.cpu().tolist()))
        assert len(pairs) == len(set(rd.cpu().tolist())) == len(set(rh.cpu().tolist()))
    assert direct.num_keys == hashed.num_keys == len(seen)
    assert sorted(direct.keys().cpu().tolist()) == sorted(hashed.keys().cpu().tolist())
    probe = torch.tensor([0, 5, 999, 1000, -1], device=device)
    want = hashed.lookup(probe).cpu() >= 0
    assert torch.equal(direct.lookup(probe).cpu() >= 0, want)


def test_direct_and_hash_agree_cpu() -> None:
    _direct_vs_hash("cpu")


@pytest.mark.gpu
def test_direct_and_hash_agree_cuda() -> None:
    _direct_vs_hash("cuda")


def test_direct_rejects_out_of_range() -> None:
    idx = DirectIndex(10, name="onehot")
    with pytest.raises(CapacityError, match="onehot.*key 10"):
        idx.lookup_or_insert(torch.tensor([1, 10]))
    assert idx.num_keys == 0
