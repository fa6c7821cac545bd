"""The hash-table fast path (Triton hash index + fused kernels) against the reference path.

CPU: the path runs through Triton's interpreter (``TRITON_INTERPRET=1``, set here before any
kernel module is imported; ``fast_path_hash.ALLOW_CPU``), tiny shapes. GPU (marked ``gpu``): the
same comparisons on CUDA, a larger stress run, and a step under ``set_sync_debug_mode("error")``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

from terarec.embedding import fast_path_hash  # noqa: E402
from terarec.embedding.config import TableConfig  # noqa: E402
from terarec.embedding.table import EmbeddingTable  # noqa: E402
from terarec.errors import CapacityError  # noqa: E402
from terarec.kernels import triton_available, use_triton  # noqa: E402
from terarec.optim.config import OptimizerConfig  # noqa: E402
from terarec.sparse import SparseInput  # noqa: E402

INTERP = os.environ.get("TRITON_INTERPRET") == "1"
OPTS = [("SGD", {}), ("AdaGrad", {"initial_accu_value": 0.1}), ("Adam", {"epsilon": 1e-4})]
SLOTS = 3


def batch(g: torch.Generator, b: int, hot: int, vocab: int, device: str) -> SparseInput:
    """Multi-hot CSR with empty rows, repeated keys and keys far above 2**40."""
    lens = torch.randint(0, hot + 1, (b * SLOTS,), generator=g)
    keys = torch.randint(0, vocab, (int(lens.sum()),), generator=g) * 7919 + 2**41
    offsets = torch.zeros(b * SLOTS + 1, dtype=torch.int64)
    offsets[1:] = lens.cumsum(0)
    return SparseInput(keys, offsets, SLOTS).to(device)


def table(opt: str, hyper: dict, combiner: str, device: str, dim: int = 8, cap: int = 200,
          etype: str = "LocalizedSlotSparseEmbeddingHash") -> EmbeddingTable:
    cfg = TableConfig("emb", "data", dim=dim, slot_num=SLOTS, max_vocabulary_size=cap,
                      combiner=combiner, embedding_type=etype,
                      slot_size_array=[50, 7, 100] if etype.startswith("Localized") else None,
                      optimizer=OptimizerConfig(type=opt, update_type="Local", **hyper))
    t = EmbeddingTable(cfg, device=device, generator=torch.Generator().manual_seed(1))
    t.set_learning_rate(0.05)
    return t


def by_key(t: EmbeddingTable) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list]:
    keys, vecs, slots = t.export()
    order = np.argsort(keys)
    rows = torch.as_tensor(t.index.lookup(torch.as_tensor(keys[order])))
    states = [s[rows.to(s.device)].cpu() for s in t.optimizer.states]
    return keys[order], vecs[order], None if slots is None else slots[order], states


def assert_same_tables(fast: EmbeddingTable, ref: EmbeddingTable, tol: float) -> None:
    assert fast.num_keys == ref.num_keys
    kf, vf, sf, stf = by_key(fast)
    kr, vr, sr, str_ = by_key(ref)
    np.testing.assert_array_equal(kf, kr)
    np.testing.assert_allclose(vf, vr, rtol=tol, atol=tol)
    if sr is not None:
        np.testing.assert_array_equal(sf, sr)
    for a, b in zip(stf, str_):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def run_pair(opt: str, hyper: dict, combiner: str, device: str, steps: int, b: int, hot: int,
             vocab: int, dim: int = 8, etype: str = "LocalizedSlotSparseEmbeddingHash",
             tol: float = 1e-5, cap: int = 200) -> tuple[EmbeddingTable, EmbeddingTable]:
    """``steps`` training steps of the fast and the reference table on the same batches. The
    batches draw from ``vocab`` keys, which must fit in the capacity: past it the reference
    raises CapacityError at once and the fast path at its next check (see the capacity test)."""
    assert vocab <= cap, "run_pair compares tables below capacity"
    fast = table(opt, hyper, combiner, device, dim, cap=cap, etype=etype)
    ref = table(opt, hyper, combiner, device, dim, cap=cap, etype=etype)
    g = torch.Generator().manual_seed(2)
    for step in range(steps):
        sp = batch(g, b, hot, vocab, device)
        w = torch.randn(b, SLOTS, dim, generator=g).to(device)
        fast.set_learning_rate(0.05 * (step + 1))
        ref.set_learning_rate(0.05 * (step + 1))
        out_f = fast(sp)
        with use_triton(False):
            out_r = ref(sp)
            (out_r * w).sum().backward()
        (out_f * w).sum().backward()
        torch.testing.assert_close(out_f, out_r, rtol=tol, atol=tol)
    assert isinstance(fast.index, fast_path_hash.DeviceHashIndex), "the hash path did not run"
    assert_same_tables(fast, ref, tol)
    return fast, ref


@pytest.fixture
def interp() -> object:
    if HAS_CUDA or not INTERP or not triton_available():
        pytest.skip("Triton interpreter variant: needs triton, no CUDA, TRITON_INTERPRET=1")
    fast_path_hash.ALLOW_CPU = True
    try:
        with use_triton(True):
            yield None
    finally:
        fast_path_hash.ALLOW_CPU = False


# ---------------------------------------------------------------------------- CPU (interpreter)
@pytest.mark.parametrize("combiner", ["sum", "mean"])
@pytest.mark.parametrize(("opt", "hyper"), OPTS, ids=[o for o, _ in OPTS])
def test_hash_path_matches_reference_cpu(interp: object, opt: str, hyper: dict,
                                         combiner: str) -> None:
    run_pair(opt, hyper, combiner, "cpu", steps=3, b=4, hot=3, vocab=25)


def test_hash_path_switch_and_checkpoint_cpu(interp: object) -> None:
    """Reference steps before the switch, torch-twin steps after it and Triton steps all give
    the reference's results; export/load and optimizer states round-trip by key."""
    opt, hyper = OPTS[1]
    fast = table(opt, hyper, "sum", "cpu")
    ref = table(opt, hyper, "sum", "cpu")
    g = torch.Generator().manual_seed(5)
    batches = [batch(g, 3, 3, 20, "cpu") for _ in range(4)]
    for triton, sp in zip([False, True, False, True], batches):
        with use_triton(triton):
            out_f = fast(sp)
            out_f.sum().backward()
        with use_triton(False):
            out_r = ref(sp)
            out_r.sum().backward()
        torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5)
    assert isinstance(fast.index, fast_path_hash.DeviceHashIndex)
    assert_same_tables(fast, ref, 1e-5)
    keys, vecs, slots = fast.export()
    state = fast.optimizer_state()
    blob = fast.optimizer_state_bytes()
    name = fast.optimizer.state_names[0]
    for use_blob in (False, True):
        other = table(opt, hyper, "sum", "cpu")
        other(batches[3 - 2 * use_blob])  # on the device index, rows numbered otherwise
        other.load(keys, vecs, slots)
        if use_blob:
            other.load_optimizer_state_bytes(blob, keys)
        else:
            other.load_optimizer_state(state)
        k2, v2, s2 = other.export()
        st2 = other.optimizer_state()[name][1]
        pos = {int(k): i for i, k in enumerate(k2)}
        sel = [pos[int(k)] for k in keys]
        np.testing.assert_array_equal(v2[sel], vecs)
        np.testing.assert_array_equal(s2[sel], slots)
        np.testing.assert_array_equal(st2[sel], state[name][1])


def capacity_overflow(device: str) -> None:
    """~60 distinct keys into 10 rows: the reference raises at once; the fast path flags it on
    the device (no sync), and raises at its next check (here: reading num_keys)."""
    sp = batch(torch.Generator().manual_seed(3), 8, 3, 1000, device)
    ref = table("SGD", {}, "sum", device, cap=10)
    with use_triton(False), pytest.raises(CapacityError):
        ref(sp)
    fast = table("SGD", {}, "sum", device, cap=10)
    fast(sp).sum().backward()  # the overflowing keys share the trash row
    assert isinstance(fast.index, fast_path_hash.DeviceHashIndex)
    with pytest.raises(CapacityError):
        _ = fast.num_keys


def test_hash_path_capacity_error_cpu(interp: object) -> None:
    capacity_overflow("cpu")


def test_hash_path_prepares_once_cpu(interp: object, monkeypatch: pytest.MonkeyPatch) -> None:
    """The switch to the device index runs on the first step only, also for a table built
    with a device spelt without its index ("cpu:0" here, "cuda" on GPU: tensors report
    "cpu" / "cuda:0"), where comparing with table.device re-ran it (a host->device copy of the
    init bounds) every step."""
    calls = []
    prepare = fast_path_hash._prepare
    monkeypatch.setattr(fast_path_hash, "_prepare", lambda t: (calls.append(1), prepare(t)))
    t = table("SGD", {}, "sum", "cpu:0")
    g = torch.Generator().manual_seed(6)
    for _ in range(3):
        t(batch(g, 3, 3, 20, "cpu")).sum().backward()
    assert isinstance(t.index, fast_path_hash.DeviceHashIndex)
    assert len(calls) == 1


def test_tables_too_large_to_preallocate_keep_the_reference_path(interp: object) -> None:
    t = table("SGD", {}, "sum", "cpu", cap=2**31, etype="DistributedSlotSparseEmbeddingHash")
    with pytest.warns(UserWarning, match="do not fit"):
        t(batch(torch.Generator().manual_seed(4), 2, 2, 10, "cpu"))
    assert not isinstance(t.index, fast_path_hash.DeviceHashIndex)
    assert t.weight.shape[0] < 2**20


def test_distributed_slot_type_cpu(interp: object) -> None:
    run_pair("SGD", {}, "sum", "cpu", steps=2, b=3, hot=2, vocab=15,
             etype="DistributedSlotSparseEmbeddingHash")


# ---------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.parametrize("combiner", ["sum", "mean"])
@pytest.mark.parametrize(("opt", "hyper"), OPTS, ids=[o for o, _ in OPTS])
def test_hash_path_matches_reference_cuda(opt: str, hyper: dict, combiner: str) -> None:
    # Up to 3000 distinct keys (~2600 in the first batch) under a 4096-key capacity, as the
    # CPU variant's 25 keys under 200 (the default 200 made the reference raise CapacityError).
    run_pair(opt, hyper, combiner, "cuda", steps=6, b=512, hot=8, vocab=3000, dim=64,
             tol=1e-4, cap=4096)


@pytest.mark.gpu
def test_hash_path_capacity_error_cuda() -> None:
    capacity_overflow("cuda")


@pytest.mark.gpu
def test_hash_path_many_new_keys_cuda() -> None:
    """A large first batch (concurrent inserts of ~60K keys, hot keys repeated thousands of
    times) and the EMPTY_KEY key itself: the same keys and vectors as the reference."""
    fast = table("AdaGrad", {}, "sum", "cuda", dim=16, cap=200_000)
    ref = table("AdaGrad", {}, "sum", "cuda", dim=16, cap=200_000)
    g = torch.Generator().manual_seed(7)
    for _ in range(3):
        lens = torch.randint(0, 20, (4096 * SLOTS,), generator=g)
        keys = torch.randint(-2**62, 2**62, (int(lens.sum()),), generator=g) % 60_000
        keys[::97] = 5
        keys[::1001] = fast_path_hash.EMPTY_KEY
        offsets = torch.zeros(lens.numel() + 1, dtype=torch.int64)
        offsets[1:] = lens.cumsum(0)
        sp = SparseInput(keys.cuda(), offsets.cuda(), SLOTS)
        out_f = fast(sp)
        with use_triton(False):
            out_r = ref(sp)
            out_r.sum().backward()
        out_f.sum().backward()
        torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-4)
    assert_same_tables(fast, ref, 1e-4)


@pytest.mark.gpu
def test_hash_path_step_never_waits_for_the_device() -> None:
    t = table("AdaGrad", {}, "sum", "cuda", dim=64, cap=100_000)
    g = torch.Generator().manual_seed(8)
    batches = [batch(g, 1024, 8, 20_000, "cuda") for _ in range(6)]
    w = torch.randn(1024, SLOTS, 64, device="cuda")
    for sp in batches[:3]:  # warm-up: switch to the device index, kernel compilation
        (t(sp) * w).sum().backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for sp in batches[3:]:  # new keys keep arriving: row creation + init stay on device
            (t(sp) * w).sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert isinstance(t.index, fast_path_hash.DeviceHashIndex)
    assert 0 < t.num_keys <= 20_000


def _model(batch_size: int, mixed: bool, graph: bool, device: str = "cuda") -> object:
    """A small DCNv2-like model: multi-hot LocalizedSlotSparseEmbeddingHash + AdaGrad."""
    import terarec as hugectr

    solver = hugectr.CreateSolver(batchsize=batch_size, lr=0.01, seed=3,
                                  vvgpu=[[0]] if device == "cuda" else None,
                                  use_mixed_precision=mixed, use_cuda_graph=graph)
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.AdaGrad,
                                  update_type=hugectr.Update_t.Local)
    m = hugectr.Model(solver, None, opt)
    m.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=13, dense_name="dense",
                        data_reader_sparse_param_array=[
                            hugectr.DataReaderSparseParam("data1", 8, False, SLOTS)]))
    m.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.LocalizedSlotSparseEmbeddingHash,
        slot_size_array=[50_000, 700, 100_000], embedding_vec_size=32, combiner="sum",
        sparse_embedding_name="emb", bottom_name="data1", optimizer=opt))
    A, L = hugectr.Activation_t, hugectr.Layer_t  # noqa: N806
    D = hugectr.DenseLayer  # noqa: N806
    m.add(D(layer_type=L.MLP, bottom_names=["dense"], top_names=["bot"], num_outputs=[64, 32],
            act_type=A.Relu))
    m.add(D(layer_type=L.Reshape, bottom_names=["emb"], top_names=["flat"],
            leading_dim=SLOTS * 32))
    m.add(D(layer_type=L.Concat, bottom_names=["bot", "flat"], top_names=["x0"]))
    m.add(D(layer_type=L.MLP, bottom_names=["x0"], top_names=["logit"], num_outputs=[64, 1],
            activations=[A.Relu, A.Non]))
    m.add(D(layer_type=L.BinaryCrossEntropyLoss, bottom_names=["logit", "label"],
            top_names=["loss"]))
    m.compile()
    return m


def _model_batches(n: int, b: int, seed: int, device: str = "cuda") -> list:
    from terarec.data.batch import Batch

    g = torch.Generator().manual_seed(seed)
    return [Batch((torch.rand(b, 1, generator=g) < 0.3).float().to(device),
                  torch.rand(b, 13, generator=g).to(device),
                  {"data1": batch(g, b, 8, 30_000, device)}) for _ in range(n)]


def _models_agree(device: str, b: int, steps: int, tol: float) -> None:
    fast, ref = _model(b, False, False, device), _model(b, False, False, device)
    lf, lr = [], []
    for bt in _model_batches(steps, b, 4, device):
        fast.train(bt)
        with use_triton(False):
            ref.train(bt)
        lf.append(fast.get_current_loss())
        lr.append(ref.get_current_loss())
    torch.testing.assert_close(torch.tensor(lf), torch.tensor(lr), rtol=tol, atol=tol)
    tf, tr = fast.engine.tables["emb"], ref.engine.tables["emb"]
    assert isinstance(tf.index, fast_path_hash.DeviceHashIndex)
    assert_same_tables(tf, tr, 10 * tol)


def test_hash_model_fast_matches_reference_cpu(interp: object) -> None:
    _models_agree("cpu", 8, 3, 1e-5)


@pytest.mark.gpu
def test_hash_model_fast_matches_reference_cuda() -> None:
    _models_agree("cuda", 1024, 6, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("graph", [False, True], ids=["eager", "dense_graph"])
def test_hash_model_step_never_waits_for_the_device(graph: bool) -> None:
    """After warm-up a whole training step of a hash-table model issues no synchronising CUDA
    call (lookup-or-insert, row init, pooling, fused backward/update, dense step)."""
    model = _model(1024, True, graph)
    batches = _model_batches(6, 1024, 8)
    for b in batches[:3]:
        model.train(b)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in batches[3:]:
            model.train(b)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert isinstance(model.engine.tables["emb"].index, fast_path_hash.DeviceHashIndex)
    assert torch.isfinite(torch.tensor(model.get_current_loss()))
