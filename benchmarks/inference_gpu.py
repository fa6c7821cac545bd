"""Predict samples/s of the inference session for the DLRM MLPerf v1 architecture.

Builds the model through the HugeCTR API (26 tables, dim 128, bottom 512-256-128, top
1024-1024-512-256-1; tables capped at --max-rows rows each), writes HugeCTR model files, loads
them into ``CreateInferenceSession`` with a GPU embedding cache, warms the cache, then times,
on batches of --batch samples (samples/s for each):

* ``predict`` with the CSR in host numpy arrays (as a server receives them; list returned),
* ``predict`` with the CSR already on the device (tensor returned), fp32 and mixed precision,
* the pooled embedding lookup alone (device CSR -> cache -> ``embedding_bag``, one host sync),
* the dense forward alone, fp32 and mixed precision (bf16 autocast),
* the plain-PyTorch reference path of the session (the old per-table host path),
* training's ``Model.predict`` on the same network.

    python benchmarks/inference_gpu.py [--batch 65536] [--max-rows 100000] [--tiny]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import terarec as hugectr
from terarec.inference import CreateInferenceSession, InferenceParams
from terarec.inference.dense_runner import DenseRunner

KAGGLE = [1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194, 27,
          14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572]


def build(sizes: list[int], batch: int, tiny: bool) -> hugectr.Model:
    A, L = hugectr.Activation_t, hugectr.Layer_t
    dim, bottom, top = (8, [16, 8], [16, 1]) if tiny else (
        128, [512, 256, 128], [1024, 1024, 512, 256, 1])
    solver = hugectr.CreateSolver(batchsize=batch, batchsize_eval=batch, lr=0.1,
                                  use_mixed_precision=torch.cuda.is_available())
    opt = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.SGD)
    model = hugectr.Model(solver, None, opt)
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=13, dense_name="dense",
                            data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam("data1", 1, True, 26)]))
    model.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.LocalizedSlotSparseEmbeddingHash,
        slot_size_array=sizes, embedding_vec_size=dim, combiner="sum",
        sparse_embedding_name="emb", bottom_name="data1", optimizer=opt))
    model.add(hugectr.DenseLayer(layer_type=L.MLP, bottom_names=["dense"], top_names=["mlp1"],
                                 num_outputs=bottom, act_type=A.Relu))
    model.add(hugectr.DenseLayer(layer_type=L.Interaction, bottom_names=["mlp1", "emb"],
                                 top_names=["inter"]))
    model.add(hugectr.DenseLayer(layer_type=L.MLP, bottom_names=["inter"], top_names=["mlp2"],
                                 num_outputs=top, activations=[A.Relu] * (len(top) - 1) + [A.Non]))
    model.add(hugectr.DenseLayer(layer_type=L.BinaryCrossEntropyLoss,
                                 bottom_names=["mlp2", "label"], top_names=["loss"]))
    model.compile()
    return model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=65536)
    p.add_argument("--max-rows", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--profile", type=int, default=0,
                   help="profile N bf16 device-CSR predict calls; print the top kernels")
    args = p.parse_args()
    if args.tiny:
        args.batch, args.max_rows, args.reps = 256, 1000, 2
    sizes = [min(s, args.max_rows) for s in KAGGLE]
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    rng = np.random.default_rng(0)
    model = build(sizes, args.batch, args.tiny)
    keys = (rng.integers(0, np.array(sizes), size=(args.batch, 26)) + offsets).astype(np.int64)
    dense = rng.random((args.batch, 13), dtype=np.float32)
    # touch every row once so that every key exists in the saved table
    from terarec.data.batch import Batch
    from terarec.sparse import SparseInput

    all_keys = np.concatenate([np.arange(s) + o for s, o in zip(sizes, offsets)])
    table = model.engine.tables["emb"]
    vectors = rng.normal(scale=0.05, size=(all_keys.size, table.config.dim)).astype(np.float32)
    table.load(all_keys, vectors)
    labels = torch.zeros(args.batch, 1)
    batch = Batch(labels, torch.from_numpy(dense),
                  {"data1": SparseInput(torch.from_numpy(keys.reshape(-1)),
                                        torch.arange(args.batch * 26 + 1), 26)})
    tmp = Path(tempfile.mkdtemp())
    model.save_params_to_files(str(tmp / "m"), 0)
    model.graph_to_json(str(tmp / "g.json"))
    params = InferenceParams(model_name="dlrm", max_batchsize=args.batch, hit_rate_threshold=0.9,
                             dense_model_file=str(tmp / "m_dense_0.model"),
                             sparse_model_files=[str(tmp / "m0_sparse_0.model")], device_id=0,
                             use_gpu_embedding_cache=True, cache_size_percentage=1.0,
                             i64_input_key=True)
    session = CreateInferenceSession(str(tmp / "g.json"), params)
    core = session.core
    row_ptrs = np.arange(args.batch * 26 + 1)
    flat_dense = dense.reshape(-1)
    flat_keys = keys.reshape(-1)
    dev = core.device
    d_dense, d_keys, d_rp = (torch.from_numpy(x).to(dev) for x in (flat_dense, flat_keys, row_ptrs))
    session.predict(flat_dense, flat_keys, row_ptrs)  # warm the cache
    for c in [session.embedding_cache.cache(t) for t in range(len(core.specs))]:
        if c is not None:
            c.wait_pending()
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)

    def rate(fn, reps: int = args.reps) -> float:
        fn()
        sync()
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        sync()
        return args.batch * reps / (time.perf_counter() - t0)

    rows: list[tuple[str, float]] = []
    rows.append(("InferenceSession.predict, CSR from host numpy (list out)",
                 rate(lambda: session.predict(flat_dense, flat_keys, row_ptrs))))
    rows.append(("InferenceSession.predict, CSR on device (tensor out), fp32",
                 rate(lambda: session.predict(d_dense, d_keys, d_rp))))
    syncs = core.pooler.syncs
    csr = core.to_device(d_dense, d_keys, d_rp)
    rows.append(("pooled lookup alone (device cache + embedding_bag)",
                 rate(lambda: core.pool(csr))))
    pooled = core.pool(csr)
    fp32 = DenseRunner(core.dense_fn, dev)
    mixed = DenseRunner(core.dense_fn, dev, "bf16")
    rows.append(("dense forward alone, fp32", rate(lambda: fp32(pooled, csr.dense))))
    rows.append(("dense forward alone, bf16 autocast", rate(lambda: mixed(pooled, csr.dense))))
    core.dense = mixed
    rows.append(("InferenceSession.predict, CSR on device, bf16 (use_mixed_precision)",
                 rate(lambda: session.predict(d_dense, d_keys, d_rp))))
    core.dense = fp32
    core.fast_path = False
    rows.append(("InferenceSession.predict, reference path (host CSR, per-table HPS)",
                 rate(lambda: session.predict(flat_dense, flat_keys, row_ptrs), reps=2)))
    core.fast_path = True
    rows.append(("Model.predict (training tables on device, same network)",
                 rate(lambda: model.predict(batch))))
    stats = session.embedding_cache.stats()
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print(f"device {name}; batch {args.batch}; tables capped at {args.max_rows} rows; "
          f"host syncs per warm batch {syncs}; cache hit rate "
          f"{min(s['hit_rate'] for s in stats.values()) if stats else float('nan'):.3f}")
    for label, r in rows:
        print(f"{label:<72} {r:>14,.0f} samples/s")
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        core.dense = mixed
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        sync()
        with profile(activities=acts) as prof:
            for _ in range(args.profile):
                session.predict(d_dense, d_keys, d_rp)
            sync()
        key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=50))


if __name__ == "__main__":
    main()
