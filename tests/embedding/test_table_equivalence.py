"""The fused-update EmbeddingTable against the plain ReferenceEmbedding oracle."""

from __future__ import annotations

import itertools

import pytest
import torch

from terarec.embedding.config import TableConfig
from terarec.embedding.reference import ReferenceEmbedding
from terarec.embedding.table import EmbeddingTable
from terarec.optim.config import OPTIMIZER_TYPES, UPDATE_TYPES, OptimizerConfig
from terarec.sparse import SparseInput

HYPER = dict(momentum_factor=0.9, beta=0.9, lambda1=0.01, lambda2=0.001,
             initial_accu_value=0.1)


def random_batch(g: torch.Generator, batch: int, slots: int, hot: int, vocab: int,
                 device: str = "cpu") -> SparseInput:
    """Keys far above 2**40, repeated within a batch; multi-hot rows may be empty."""
    lens = torch.randint(0 if hot > 1 else 1, hot + 1, (batch * slots,), generator=g)
    keys = torch.randint(0, vocab, (int(lens.sum()),), generator=g) * 7919 + 2**41
    offsets = torch.zeros(batch * slots + 1, dtype=torch.int64)
    offsets[1:] = lens.cumsum(0)
    return SparseInput(keys, offsets, slots).to(device)


def make_pair(opt: str, update: str, combiner: str, device: str = "cpu", **kw):
    cfg = TableConfig("emb", "data", dim=4, slot_num=3, max_vocabulary_size=200,
                      combiner=combiner,
                      optimizer=OptimizerConfig(type=opt, update_type=update, **HYPER), **kw)
    table = EmbeddingTable(cfg, device=device, generator=torch.Generator().manual_seed(1))
    return table, ReferenceEmbedding(cfg, table.seed)


def run_and_compare(opt: str, update: str, hot: int, combiner: str, device: str = "cpu",
                    steps: int = 5) -> None:
    table, ref = make_pair(opt, update, combiner, device)
    g = torch.Generator().manual_seed(2)
    for step in range(steps):
        sp = random_batch(g, 4, 3, hot, 30, device)
        target = torch.randn(4, 3, 4, generator=g, dtype=torch.float64)
        lr = 0.05 * (step + 1)
        table.set_learning_rate(lr)
        ref.lr = lr
        table.scaler = ref.scaler = 4.0
        out, out_ref = table(sp), ref(sp.to("cpu"))
        torch.testing.assert_close(out.double().cpu(), out_ref, atol=1e-6, rtol=1e-5)
        (4.0 * ((out.double().cpu() - target) ** 2).sum()).backward()
        (4.0 * ((out_ref - target) ** 2).sum()).backward()
        ref.step()
    keys, vectors, _ = table.export()
    assert len(keys) == len(ref.key_to_row)
    torch.testing.assert_close(torch.from_numpy(vectors).double(),
                               ref.vectors_of(keys.tolist()), atol=1e-6, rtol=1e-5)
    states = table.optimizer_state()
    for name in table.optimizer.state_names:
        torch.testing.assert_close(torch.from_numpy(states[name][1]).double(),
                                   ref.state_of(keys.tolist(), name), atol=1e-6, rtol=1e-5)


CASES = list(itertools.product(OPTIMIZER_TYPES, UPDATE_TYPES, [1, 3], ["sum", "mean"]))


@pytest.mark.parametrize(("opt", "update", "hot", "combiner"), CASES)
def test_fused_table_matches_reference(opt: str, update: str, hot: int, combiner: str) -> None:
    run_and_compare(opt, update, hot, combiner)


@pytest.mark.gpu
@pytest.mark.parametrize(("opt", "update", "hot", "combiner"), CASES)
def test_fused_table_matches_reference_cuda(opt: str, update: str, hot: int,
                                            combiner: str) -> None:
    run_and_compare(opt, update, hot, combiner, device="cuda")


@pytest.mark.parametrize("opt", ["MomentumSGD", "Nesterov", "RMSProp", "SGD", "AdaGrad"])
def test_lazy_global_equals_global_where_exact(opt: str) -> None:
    """With a loss linear in the rows the gradients do not depend on when a row caught up, so
    LazyGlobal (catch-up in the backward of the next hit) must end where Global ends."""
    results = []
    for update in ("Global", "LazyGlobal"):
        table, _ = make_pair(opt, update, "sum")
        g = torch.Generator().manual_seed(5)
        for _ in range(6):
            table.set_learning_rate(0.1)
            sp = random_batch(g, 3, 3, 2, 40)
            (table(sp) * torch.randn(3, 3, 4, generator=g)).sum().backward()
        # one final step touching every key so lazy rows catch up
        table.set_learning_rate(0.1)
        keys = table.index.keys()
        table(SparseInput(keys, torch.tensor([0, 0, 0, keys.numel()]), 3)).sum().backward()
        results.append(table.export())
    torch.testing.assert_close(results[0][1], results[1][1], atol=1e-6, rtol=1e-5)


def test_global_moves_unhit_adam_rows_local_does_not() -> None:
    moved = {}
    for update in ("Global", "Local"):
        table, _ = make_pair("Adam", update, "sum")
        table.set_learning_rate(0.1)
        table(SparseInput.from_lists([[[1], [2], [3]]])).sum().backward()
        before = table.export()[1].copy()
        table(SparseInput.from_lists([[[4], [5], [6]]])).sum().backward()
        moved[update] = float(abs(table.export()[1][:3] - before).max())
    assert moved["Global"] > 1e-3 and moved["Local"] == 0.0


def test_direct_index_table_matches_hash_table() -> None:
    outs = []
    for index in ("hash", "direct"):
        cfg = TableConfig("oh", "data", dim=3, slot_num=2, slot_size_array=[10, 20],
                          embedding_type="LocalizedSlotSparseEmbeddingOneHot",
                          optimizer=OptimizerConfig(type="Adam"))
        table = EmbeddingTable(cfg, generator=torch.Generator().manual_seed(7), index=index)
        g = torch.Generator().manual_seed(8)
        for _ in range(4):
            keys = torch.stack([torch.randint(0, 10, (5,), generator=g),
                                torch.randint(10, 30, (5,), generator=g)], 1)
            table.set_learning_rate(0.01)
            sp = SparseInput.from_dense(keys)
            table(sp).pow(2).sum().backward()
        k, v, s = table.export()
        order = k.argsort()
        outs.append((k[order], v[order], s[order]))
    assert (outs[0][0] == outs[1][0]).all() and (outs[0][2] == outs[1][2]).all()
    assert (outs[0][1] == outs[1][1]).all()
    assert EmbeddingTable(cfg).index_kind == "direct"


def test_no_dense_gradient_and_freeze() -> None:
    table, _ = make_pair("SGD", "Local", "sum")
    assert list(table.parameters()) == []
    table.set_learning_rate(1.0)
    sp = SparseInput.from_lists([[[1, 1], [], [2]]])
    out = table(sp)
    before = table.export()[1].copy()
    out.sum().backward()
    after = table.export()[1]
    # key 1 appears twice in one slot: its gradient is summed (2 per element)
    assert abs((before - after)[0] - 2.0).max() < 1e-6
    assert abs((before - after)[1] - 1.0).max() < 1e-6
    assert out[0, 1].abs().sum() == 0  # empty slot -> zeros
    table.freeze()
    out = table(sp)
    assert not out.requires_grad
    table.unfreeze()
    with torch.no_grad():
        assert not table(sp).requires_grad


def test_deterministic_given_generator_and_localized_init() -> None:
    cfg = TableConfig("loc", "d", dim=8, slot_num=2, slot_size_array=[4, 10000],
                      embedding_type="LocalizedSlotSparseEmbeddingHash")
    a = EmbeddingTable(cfg, generator=torch.Generator().manual_seed(3))
    b = EmbeddingTable(cfg, generator=torch.Generator().manual_seed(3))
    sp = SparseInput.from_lists([[[1, 2], [100, 101]]] * 50)
    assert torch.equal(a(sp), b(sp))
    keys, vec, slots = a.export()
    assert slots is not None and slots.tolist() == [0, 0, 1, 1]
    assert abs(vec[:2]).max() <= 0.5 and abs(vec[2:]).max() <= 0.01


def test_slot_num_mismatch_is_explained() -> None:
    table, _ = make_pair("SGD", "Local", "sum")
    with pytest.raises(ValueError, match="emb.*slot_num=3"):
        table(SparseInput.from_lists([[[1]]]))


@pytest.mark.gpu
def test_table_moves_with_module_to_cuda() -> None:
    table, _ = make_pair("Adam", "Global", "sum")
    sp = SparseInput.from_lists([[[1], [2, 3], []]])
    cpu_out = table(sp).detach()
    table.cuda()
    assert table.weight.is_cuda and table.optimizer.states[0].is_cuda
    cuda_out = table(sp.to("cuda"))
    torch.testing.assert_close(cuda_out.cpu(), cpu_out)
    table.set_learning_rate(0.1)
    cuda_out.sum().backward()
    assert table.optimizer.t == 1


def test_module_to_keeps_table_working() -> None:
    table, _ = make_pair("Adam", "Global", "sum")
    sp = SparseInput.from_lists([[[1], [2, 3], []]])
    out = table(sp).detach()
    table.to("cpu")
    torch.testing.assert_close(table(sp).detach(), out)


@pytest.mark.parametrize("n_rows", [1, 7, 1000])
def test_sum_per_row_row_map_equals_sort(n_rows: int) -> None:
    """CPU small-table path (used-row map, no sort) == torch.unique + index_put_."""
    from terarec.embedding.table import sum_per_row

    gen = torch.Generator().manual_seed(n_rows)
    rows = torch.randint(0, n_rows, (3000,), generator=gen)
    grads = torch.randn(3000, 4, generator=gen, dtype=torch.float64)
    uniq, summed = sum_per_row(rows, grads, n_rows)
    ref_u, inverse = torch.unique(rows, return_inverse=True)
    ref = torch.zeros(ref_u.numel(), 4, dtype=torch.float64).index_put_((inverse,), grads,
                                                                         accumulate=True)
    assert torch.equal(uniq, ref_u)
    torch.testing.assert_close(summed, ref, rtol=0, atol=1e-12)
    empty_u, empty_s = sum_per_row(rows[:0], grads[:0], n_rows)
    assert empty_u.numel() == 0 and empty_s.shape == (0, 4)
