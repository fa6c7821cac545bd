"""Triton hash index (terarec.kernels.triton_hash) against its torch twin and HashIndex.

Same key -> row mapping up to a renumbering of rows, same keys, one "created" flag per new key,
``first`` = first occurrence of every new key; new rows initialised bit for bit as
``init_vectors``; capacity overflow flagged, never merged into a real row.
"""

from __future__ import annotations

import pytest
import torch
from kernel_helpers import HAS_CUDA, HAS_TRITON, INTERP

from terarec.embedding import fast_path_hash as FH
from terarec.embedding.hash_index import HashIndex
from terarec.embedding.init import init_vectors, slots_of_positions

TRITON_DEVICES = [
    pytest.param("cpu", id="cpu-triton-interp", marks=pytest.mark.skipif(
        HAS_CUDA or not HAS_TRITON or not INTERP, reason="needs the Triton interpreter")),
    pytest.param("cuda", id="cuda-triton", marks=[
        pytest.mark.gpu, pytest.mark.skipif(not HAS_TRITON, reason="triton not importable")]),
]
IMPLS = [pytest.param(("cpu", False), id="cpu-torch-twin")] + [
    pytest.param((p.values[0], True), id=p.id, marks=p.marks) for p in TRITON_DEVICES]


class State:
    """The index arrays of one table (the DeviceHashIndex layout)."""

    def __init__(self, capacity: int, device: str) -> None:
        idx = FH.DeviceHashIndex(capacity, device)
        self.sk, self.sr, self.rk = idx._slot_keys, idx._slot_rows, idx._row_keys
        self.counter, self.overflow = idx._counter, idx._overflow

    def insert(self, keys: torch.Tensor, triton: bool) -> tuple[torch.Tensor, ...]:
        base = self.counter.clone()
        first = torch.full((keys.numel(),), keys.numel(), dtype=torch.int64, device=keys.device)
        if triton:
            from terarec.kernels import triton_hash

            fn = triton_hash.lookup_or_insert
        else:
            fn = FH.lookup_or_insert_torch
        rows, created = fn(keys, self.sk, self.sr, self.rk, self.counter, self.overflow, base,
                           first)
        return rows, created, base, first


def batches(gen: torch.Generator, n: int, size: int, device: str) -> list[torch.Tensor]:
    out = []
    for _ in range(n):
        keys = torch.randint(-40, 40, (size,), generator=gen) * (2**41 + 7)
        keys[:: 13] = FH.EMPTY_KEY  # the empty-slot marker is a valid key too
        keys[5::17] = 2**63 - 1
        out.append(keys.to(device))
    return out


@pytest.mark.parametrize("impl", IMPLS)
def test_lookup_or_insert_matches_hash_index(impl: tuple[str, bool]) -> None:
    device, triton = impl
    st, ref = State(500, device), HashIndex(500)
    perm: dict[int, int] = {}
    for keys in batches(torch.Generator().manual_seed(0), 4, 300, device):
        rows, created, base, first = st.insert(keys, triton)
        res = ref.insert(keys.cpu())
        rows, created = rows.cpu(), created.cpu()
        for a, b in zip(rows.tolist(), res.rows.tolist()):  # a bijection, stable over calls
            assert perm.setdefault(a, b) == b
        assert len(set(perm.values())) == len(perm)
        n_new = int(st.counter) - int(base)
        assert n_new == res.new_rows.numel() == int(created.sum())
        assert sorted(first[:n_new].tolist()) == sorted(res.new_first_pos.tolist())
        assert (created.bool() <= (rows >= int(base))).all()  # created only at new rows
        assert (st.rk[rows.to(device)].cpu() == keys.cpu()).all()
    n = int(st.counter)
    assert n == ref.num_keys and not bool(st.overflow.any())
    assert sorted(st.rk[:n].tolist()) == sorted(ref.keys().tolist())
    looked = FH.probe_torch(st.sk, st.sr, torch.tensor([3, FH.EMPTY_KEY], device=device))
    assert int(looked[0]) == -1 and int(looked[1]) >= 0


@pytest.mark.parametrize("impl", IMPLS)
def test_capacity_overflow_is_flagged(impl: tuple[str, bool]) -> None:
    device, triton = impl
    st = State(20, device)
    keys = (torch.arange(60) * 31 + 5).repeat(2).to(device)
    rows, _, _, _ = st.insert(keys, triton)
    assert bool(st.overflow.any())
    rows = rows.cpu()
    real = rows[rows < 20]
    assert real.unique().numel() == 20  # every real row belongs to one key
    assert (rows[:60] == rows[60:]).all()
    for r in real.unique().tolist():
        assert keys.cpu()[rows == r].unique().numel() == 1
    st.overflow.zero_()  # raised once; the keys past the capacity are flagged again
    again, _, _, _ = st.insert(keys[:60], triton)
    assert bool(st.overflow.any())
    assert torch.equal(again.cpu()[again.cpu() < 20], rows[:60][rows[:60] < 20])


@pytest.mark.parametrize("device", TRITON_DEVICES)
def test_init_new_rows_bit_exact(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from terarec.kernels import triton_hash

    monkeypatch.setattr(triton_hash, "_INIT_PROGRAMS", 2)  # programs stride over new rows
    gen = torch.Generator().manual_seed(1)
    cap, dim, slots = 80, 40, 3
    st = State(cap, device)
    weight = torch.zeros(cap + 1, dim, device=device)
    row_slots = torch.full((cap + 1,), -1, dtype=torch.int64, device=device)
    bounds = torch.tensor([0.5, 0.01, 0.2], dtype=torch.float64)
    seed = -(2**61) + 12345
    for _ in range(3):
        lens = torch.randint(0, 4, (5 * slots,), generator=gen)
        offsets = torch.zeros(lens.numel() + 1, dtype=torch.int64)
        offsets[1:] = lens.cumsum(0)
        keys = torch.randint(-25, 25, (int(offsets[-1]),), generator=gen) * 2**45
        keys, offsets = keys.to(device), offsets.to(device)
        _, _, base, first = st.insert(keys, True)
        triton_hash.init_new_rows(keys, offsets, first, base, st.counter, weight, row_slots,
                                  bounds.to(device), slots, seed, cap)
    n = int(st.counter)
    assert n > 20
    # the reference initialises a key with the slot of its first sight, ever
    assert (row_slots[:n] >= 0).all()
    want = init_vectors(st.rk[:n], row_slots[:n], bounds, dim, seed)
    assert torch.equal(weight[:n], want)
    assert (weight[n:] == 0).all()
    # slots: first occurrence of the first batch that saw the key
    pos = first[: int(st.counter) - int(base)]
    if pos.numel():
        sl = slots_of_positions(offsets, pos, slots)
        assert torch.equal(row_slots[int(base): int(st.counter)], sl)


@pytest.mark.gpu
def test_hash_cost_at_dcnv2_scale_cuda() -> None:
    """Prints the cost of one DCNv2-sized step of the index (14M lookups, all hits) and of the
    same with 1M new keys (insert + init, dim 128); run with ``-s`` to see the numbers."""
    if not HAS_TRITON:
        pytest.skip("triton not importable")
    from terarec.kernels import triton_hash

    cap, dim, nnz, slots = 4_000_000, 128, 14_000_000, 26
    st = State(cap, "cuda")
    weight = torch.zeros(cap + 1, dim, device="cuda")
    row_slots = torch.zeros(cap + 1, dtype=torch.int64, device="cuda")
    bounds = torch.full((slots,), 0.05, dtype=torch.float64, device="cuda")
    offsets = torch.linspace(0, nnz, 65536 * slots + 1, dtype=torch.float64, device="cuda").long()
    old = torch.randint(0, 2_900_000, (nnz,), device="cuda") * 7919

    def step(keys: torch.Tensor) -> None:
        rows, _, base, first = st.insert(keys, True)
        triton_hash.init_new_rows(keys, offsets, first, base, st.counter, weight, row_slots,
                                  bounds, slots, 12345, cap)

    step(old)  # creates the rows; compiles
    fresh = old.clone()
    fresh[:: nnz // 1_000_000] = -torch.arange(fresh[:: nnz // 1_000_000].numel(),
                                               device="cuda") - 1
    times = {}
    for name, keys in (("hits", old), ("1M new", fresh)):
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step(keys)
        end.record()
        torch.cuda.synchronize()
        times[name] = start.elapsed_time(end)
    print(f"\nhash index, 14M lookups: {times['hits']:.3f} ms all hits, "
          f"{times['1M new']:.3f} ms with 1M new rows (insert + init, dim 128)")
    assert not bool(st.overflow.any())
    assert times["hits"] < 5.0
