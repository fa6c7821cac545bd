"""GPU: the fused fast paths of a training step agree with their plain-PyTorch twins.

Each test runs the same steps twice on one GPU: the default (Triton kernels, fused cuBLAS
epilogues) and the oracle forced with ``use_triton(False)``, then compares outputs, losses and
the table rows (fp32 sums in another order: tight tolerances; bf16 autocast: loose ones).
"""

from __future__ import annotations

import pytest
import torch

import terarec as hugectr
from terarec.data.batch import Batch
from terarec.embedding.config import TableConfig
from terarec.embedding.table import EmbeddingTable
from terarec.errors import CapacityError
from terarec.kernels import use_triton
from terarec.optim.config import OptimizerConfig
from terarec.sparse import SparseInput

pytestmark = pytest.mark.gpu
SIZES = [3, 50, 1000, 7, 20000]  # tiny slots: many repeated keys (hot rows) per batch
OPTS = [("SGD", {}), ("AdaGrad", {"initial_accu_value": 0.1}),
        ("Adam", {"epsilon": 1e-4}), ("MomentumSGD", {"momentum_factor": 0.9}),
        ("Nesterov", {"momentum_factor": 0.8}), ("Ftrl", {"lambda1": 0.01, "lambda2": 0.1})]


def one_hot(batch: int, sizes: list[int], gen: torch.Generator) -> SparseInput:
    starts = torch.tensor([0, *sizes[:-1]]).cumsum(0)
    ids = torch.stack([torch.randint(0, c, (batch,), generator=gen) for c in sizes], 1)
    keys = (ids + starts).reshape(-1)
    return SparseInput(keys.cuda(), torch.arange(keys.numel() + 1).cuda(), len(sizes))


def table(opt: str, hyper: dict, dim: int = 64) -> EmbeddingTable:
    cfg = TableConfig("emb", "data", dim=dim, slot_num=len(SIZES), slot_size_array=SIZES,
                      embedding_type="LocalizedSlotSparseEmbeddingOneHot",
                      optimizer=OptimizerConfig(type=opt, update_type="Local", **hyper))
    t = EmbeddingTable(cfg, device="cuda", generator=torch.Generator().manual_seed(1))
    t.set_learning_rate(0.05)
    return t


@pytest.mark.parametrize(("opt", "hyper"), OPTS, ids=[o for o, _ in OPTS])
def test_table_fast_path_matches_reference(opt: str, hyper: dict) -> None:
    fast, ref = table(opt, hyper), table(opt, hyper)
    gen = torch.Generator().manual_seed(2)
    for _ in range(6):
        sp = one_hot(512, SIZES, gen)
        w = torch.randn(512, len(SIZES), 64, generator=gen).cuda()
        out_f = fast(sp)
        with use_triton(False):
            out_r = ref(sp)
            (out_r * w).sum().backward()
        (out_f * w).sum().backward()
        # Adam's m/sqrt(v) amplifies summation-order rounding of near-zero gradients
        torch.testing.assert_close(out_f, out_r, rtol=1e-4, atol=1e-5)
    assert getattr(fast, "_fast_ready", False), "the fused path did not run"
    assert fast.num_keys == ref.num_keys
    kf, vf, sf = fast.export()
    kr, vr, sr = ref.export()
    of, orr = torch.as_tensor(kf).argsort(), torch.as_tensor(kr).argsort()
    assert (torch.as_tensor(kf)[of] == torch.as_tensor(kr)[orr]).all()
    torch.testing.assert_close(torch.as_tensor(vf)[of], torch.as_tensor(vr)[orr],
                               rtol=1e-4, atol=1e-5)
    assert (torch.as_tensor(sf)[of] == torch.as_tensor(sr)[orr]).all()
    for s_f, s_r in zip(fast.optimizer.states, ref.optimizer.states):
        torch.testing.assert_close(s_f[torch.as_tensor(kf)], s_r[torch.as_tensor(kf)],
                                   rtol=1e-4, atol=1e-5)


def test_fast_path_rejects_out_of_range_keys() -> None:
    t = table("SGD", {})
    sp = one_hot(16, SIZES, torch.Generator().manual_seed(0))
    sp.keys[3] = sum(SIZES) + 5
    t(sp)
    with pytest.raises(CapacityError):
        _ = t.num_keys


def _dlrm(mixed: bool, batch: int, opt_type: str = "SGD",
          emb_type: str = "LocalizedSlotSparseEmbeddingOneHot") -> hugectr.Model:
    solver = hugectr.CreateSolver(batchsize=batch, lr=0.05, vvgpu=[[0]], seed=3,
                                  use_mixed_precision=mixed)
    opt = hugectr.CreateOptimizer(optimizer_type=getattr(hugectr.Optimizer_t, opt_type),
                                  update_type=hugectr.Update_t.Local, epsilon=1e-4)
    m = hugectr.Model(solver, None, opt)
    m.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=13, dense_name="dense",
                        data_reader_sparse_param_array=[
                            hugectr.DataReaderSparseParam("data1", 1, True, len(SIZES))]))
    m.add(hugectr.SparseEmbedding(
        embedding_type=getattr(hugectr.Embedding_t, emb_type),
        slot_size_array=SIZES, embedding_vec_size=32, combiner="sum",
        sparse_embedding_name="emb", bottom_name="data1", optimizer=opt))
    A, L = hugectr.Activation_t, hugectr.Layer_t  # noqa: N806
    m.add(hugectr.DenseLayer(layer_type=L.MLP, bottom_names=["dense"], top_names=["bot"],
                             num_outputs=[64, 32], act_type=A.Relu))
    m.add(hugectr.DenseLayer(layer_type=L.Interaction, bottom_names=["bot", "emb"],
                             top_names=["it"]))
    m.add(hugectr.DenseLayer(layer_type=L.MLP, bottom_names=["it"], top_names=["logit"],
                             num_outputs=[64, 1], activations=[A.Relu, A.Non]))
    m.add(hugectr.DenseLayer(layer_type=L.BinaryCrossEntropyLoss,
                             bottom_names=["logit", "label"], top_names=["loss"]))
    m.compile()
    return m


@pytest.mark.parametrize("mixed", [False, True], ids=["fp32", "bf16"])
def test_dlrm_model_fast_matches_reference(mixed: bool) -> None:
    batch = 1024
    fast, ref = _dlrm(mixed, batch), _dlrm(mixed, batch)
    gen = torch.Generator().manual_seed(4)
    losses_f, losses_r = [], []
    for _ in range(8):
        b = Batch((torch.rand(batch, 1, generator=gen) < 0.3).float().cuda(),
                  torch.rand(batch, 13, generator=gen).cuda(),
                  {"data1": one_hot(batch, SIZES, gen)})
        fast.train(b)
        with use_triton(False):
            ref.train(b)
        losses_f.append(fast.get_current_loss())
        losses_r.append(ref.get_current_loss())
    tol = 2e-2 if mixed else 1e-4
    torch.testing.assert_close(torch.tensor(losses_f), torch.tensor(losses_r), rtol=tol,
                               atol=tol)
    assert losses_f[-1] < losses_f[0]
    tf, tr = fast.engine.tables["emb"], ref.engine.tables["emb"]
    assert getattr(tf, "_fast_ready", False)
    keys = torch.as_tensor(tr.export()[0])
    torch.testing.assert_close(tf.weight[keys.cuda()], tr.weight[keys.cuda()],
                               rtol=tol * 10, atol=tol)
    for pf, pr in zip(fast.engine.network.dense_weights(), ref.engine.network.dense_weights()):
        torch.testing.assert_close(pf, pr, rtol=tol * 10, atol=tol)


def _batches(n: int, batch: int, seed: int) -> list[Batch]:
    gen = torch.Generator().manual_seed(seed)
    return [Batch((torch.rand(batch, 1, generator=gen) < 0.3).float().cuda(),
                  torch.rand(batch, 13, generator=gen).cuda(),
                  {"data1": one_hot(batch, SIZES, gen)}) for _ in range(n)]


@pytest.mark.parametrize(("opt_type", "emb_type"), [
    ("SGD", "LocalizedSlotSparseEmbeddingOneHot"), ("Adam", "LocalizedSlotSparseEmbeddingOneHot"),
    ("SGD", "LocalizedSlotSparseEmbeddingHash")], ids=["whole_step", "dense_only", "hash_table"])
def test_cuda_graph_step_matches_eager(opt_type: str, emb_type: str) -> None:
    """The captured step gives the eager step's losses and weights, also across a learning-rate
    change; a batch of another size (an epoch's last) runs eagerly. SGD captures the whole step
    (lookups and fused updates included); Adam (step-dependent size) the dense part only."""
    graphed, eager = _dlrm(True, 1024, opt_type, emb_type), _dlrm(True, 1024, opt_type, emb_type)
    graphed.engine.use_cuda_graph = True
    eager.engine.use_cuda_graph = False
    losses_g, losses_e = [], []
    batches = _batches(8, 1024, 5) + _batches(1, 512, 6) + _batches(4, 1024, 7)
    for i, b in enumerate(batches):
        if i == 6:
            for m in (graphed, eager):
                m.engine.set_learning_rate(0.02)
        graphed.train(b)
        eager.train(b)
        losses_g.append(graphed.get_current_loss())
        losses_e.append(eager.get_current_loss())
    whole = graphed.engine.step_graph.graph is not None
    assert whole == (opt_type == "SGD" and emb_type.endswith("OneHot"))
    assert whole or graphed.engine._graph, "no graph was captured"
    assert graphed.engine.use_cuda_graph
    torch.testing.assert_close(torch.tensor(losses_g), torch.tensor(losses_e), rtol=1e-3,
                               atol=1e-3)
    for pg, pe in zip(graphed.engine.network.dense_weights(),
                      eager.engine.network.dense_weights()):
        torch.testing.assert_close(pg, pe, rtol=1e-2, atol=1e-3)
    tg, te = graphed.engine.tables["emb"], eager.engine.tables["emb"]
    (kg, vg, _), (ke, ve, _) = tg.export(), te.export()  # key -> vector (hash rows: any order)
    og, oe = torch.as_tensor(kg).argsort(), torch.as_tensor(ke).argsort()
    assert torch.equal(torch.as_tensor(kg)[og], torch.as_tensor(ke)[oe])
    torch.testing.assert_close(torch.as_tensor(vg)[og], torch.as_tensor(ve)[oe], rtol=1e-2,
                               atol=1e-3)
    assert tg.optimizer.t == te.optimizer.t == len(batches)
    assert tg.num_keys == te.num_keys


def _dcnv2_like(graph: bool) -> hugectr.Model:
    """Multi-hot hash table, MultiCross (low rank), AdaGrad: the DCNv2 benchmark's shape."""
    solver = hugectr.CreateSolver(batchsize=512, lr=0.01, vvgpu=[[0]], seed=3,
                                  use_mixed_precision=True, use_cuda_graph=graph)
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.AdaGrad,
                                  update_type=hugectr.Update_t.Local)
    m = hugectr.Model(solver, None, opt)
    m.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=13, dense_name="dense",
                        data_reader_sparse_param_array=[
                            hugectr.DataReaderSparseParam("data1", 3, False, len(SIZES))]))
    m.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.LocalizedSlotSparseEmbeddingHash,
        slot_size_array=SIZES, embedding_vec_size=16, combiner="sum",
        sparse_embedding_name="emb", bottom_name="data1", optimizer=opt))
    A, L, D = hugectr.Activation_t, hugectr.Layer_t, hugectr.DenseLayer  # noqa: N806
    m.add(D(layer_type=L.MLP, bottom_names=["dense"], top_names=["bot"], num_outputs=[32, 16],
            act_type=A.Relu))
    m.add(D(layer_type=L.Reshape, bottom_names=["emb"], top_names=["flat"],
            leading_dim=len(SIZES) * 16))
    m.add(D(layer_type=L.Concat, bottom_names=["bot", "flat"], top_names=["x0"]))
    m.add(D(layer_type=L.MultiCross, bottom_names=["x0"], top_names=["cross"], num_layers=2,
            projection_dim=16))
    m.add(D(layer_type=L.MLP, bottom_names=["cross"], top_names=["logit"], num_outputs=[32, 1],
            activations=[A.Relu, A.Non]))
    m.add(D(layer_type=L.BinaryCrossEntropyLoss, bottom_names=["logit", "label"],
            top_names=["loss"]))
    m.compile()
    return m


def test_dense_graph_multi_hot_adagrad_matches_eager() -> None:
    """The DCNv2-like model (reference hash path + dense-only graph) learns what eager does."""
    graphed, eager = _dcnv2_like(True), _dcnv2_like(False)
    gen = torch.Generator().manual_seed(12)
    losses_g, losses_e = [], []
    for _ in range(12):
        keys = torch.cat([torch.randint(0, c, (512 * 3,), generator=gen) for c in SIZES])
        keys = keys.view(len(SIZES), 512, 3).permute(1, 0, 2).reshape(-1)
        sp = SparseInput(keys.cuda(), (torch.arange(512 * len(SIZES) + 1) * 3).cuda(), len(SIZES))
        b = Batch((torch.rand(512, 1, generator=gen) < 0.3).float().cuda(),
                  torch.rand(512, 13, generator=gen).cuda(), {"data1": sp})
        graphed.train(b)
        eager.train(b)
        losses_g.append(graphed.get_current_loss())
        losses_e.append(eager.get_current_loss())
    assert graphed.engine._graph, "the dense-only graph was not captured"
    torch.testing.assert_close(torch.tensor(losses_g), torch.tensor(losses_e), rtol=2e-3,
                               atol=2e-3)


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "cuda_graph"])
def test_training_step_never_waits_for_the_device(graph: bool) -> None:
    """After warm-up, a whole training step (lookup, dense fwd/bwd, fused sparse backward +
    update, dense optimizer) issues no synchronising CUDA call, so the host runs ahead."""
    model = _dlrm(True, 1024)
    model.engine.use_cuda_graph = graph
    batches = _batches(6, 1024, 8)
    for b in batches[:3]:  # warm-up: table init, kernel compilation, graph capture
        model.train(b)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for b in batches[3:]:
            model.train(b)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.tensor(model.get_current_loss()))
    assert (model.engine.step_graph.graph is not None) == graph


def _learnable_batches(n: int, batch: int, seed: int) -> list[Batch]:
    """Labels from a dense feature plus slot 1's key parity: a curve that keeps falling."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        sp = one_hot(batch, SIZES, gen)
        dense = torch.rand(batch, 13, generator=gen).cuda()
        ids = sp.keys.view(batch, len(SIZES))[:, 1] - SIZES[0]
        label = ((dense[:, 0] + (ids % 2).float()) > 1.0).float().unsqueeze(1)
        out.append(Batch(label, dense, {"data1": sp}))
    return out


def test_dlrm_2000_steps_same_loss_curve_fast_and_reference() -> None:
    """Issue 4's acceptance check: 2,000 fp32 steps of a DLRM on the fast path (Triton lookup,
    sync-free fused backward, CUDA graph) and on the plain-PyTorch reference give the same loss
    curve: every 100-step mean within 2e-3."""
    steps, batch = 2000, 512
    data = _learnable_batches(50, batch, 9)
    fast, ref = _dlrm(False, batch), _dlrm(False, batch)
    fast.engine.use_cuda_graph = True
    lf, lr = torch.zeros(steps, device="cuda"), torch.zeros(steps, device="cuda")
    for i in range(steps):
        b = data[i % len(data)]
        fast.train(b)
        lf[i] = fast._loss
        with use_triton(False):
            ref.train(b)
        lr[i] = ref._loss
    mf, mr = lf.view(-1, 100).mean(1).cpu(), lr.view(-1, 100).mean(1).cpu()
    assert getattr(fast.engine.tables["emb"], "_fast_ready", False)
    assert (mf - mr).abs().max() < 2e-3, (mf, mr)
    assert mf[-1] < 0.85 * mf[0]  # it learned
