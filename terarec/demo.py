"""The built-in default job of ``terarec train`` (no config file).

Generates Criteo-shaped synthetic data (13 dense features, 26 one-hot slots, power-law keys)
whose labels come from a planted teacher model, trains a DCN through the HugeCTR-compatible
API, and reports the AUC reached against the teacher's AUC (the best reachable on this data).
"""

from __future__ import annotations

import os
import time

SLOT_SIZES = [1000, 500, 20000, 8000, 300, 24, 1200, 600, 3, 9000, 5000, 10000, 3000, 27,
              1400, 5400, 10, 5600, 2100, 4, 7000, 18, 15, 2800, 105, 1400]


def run_demo(model_name: str, out_dir: str, samples: int, batchsize: int, iters: int) -> float:
    import terarec as hugectr
    from terarec.data.synthetic import generate_synthetic

    if model_name != "dcn":
        print(f"the built-in demo trains a DCN; for {model_name} run examples/{model_name}.py")
    os.makedirs(out_dir, exist_ok=True)
    data = generate_synthetic(os.path.join(out_dir, "data"), format="Parquet",
                              num_samples=samples, slot_size_array=SLOT_SIZES, dense_dim=13,
                              eval_num_samples=max(batchsize, samples // 5), seed=0)
    steps = iters or max(1, samples // batchsize)  # one epoch
    solver = hugectr.CreateSolver(model_name="terarec_demo_dcn", batchsize=batchsize,
                                  batchsize_eval=batchsize, lr=0.001, vvgpu=[[0]],
                                  i64_input_key=True, repeat_dataset=True,
                                  max_eval_batches=max(1, (samples // 5) // batchsize))
    reader = hugectr.DataReaderParams(data_reader_type=hugectr.DataReaderType_t.Parquet,
                                      source=[data["source"]], eval_source=data["eval_source"],
                                      check_type=hugectr.Check_t.Non,
                                      slot_size_array=SLOT_SIZES)
    optimizer = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.Adam)
    model = hugectr.Model(solver, reader, optimizer)
    L = hugectr.Layer_t
    model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=13, dense_name="dense",
                            data_reader_sparse_param_array=[
                                hugectr.DataReaderSparseParam("data1", 1, True, 26)]))
    model.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,
        slot_size_array=SLOT_SIZES, embedding_vec_size=16, combiner="sum",
        sparse_embedding_name="sparse_embedding1", bottom_name="data1", optimizer=optimizer))
    layers = [
        (L.Reshape, ["sparse_embedding1"], ["reshape1"], {"leading_dim": 416}),
        (L.Concat, ["reshape1", "dense"], ["concat1"], {}),
        (L.MultiCross, ["concat1"], ["multicross1"], {"num_layers": 3}),
        (L.InnerProduct, ["concat1"], ["fc1"], {"num_output": 256}),
        (L.ReLU, ["fc1"], ["relu1"], {}),
        (L.InnerProduct, ["relu1"], ["fc2"], {"num_output": 128}),
        (L.ReLU, ["fc2"], ["relu2"], {}),
        (L.Concat, ["relu2", "multicross1"], ["concat2"], {}),
        (L.InnerProduct, ["concat2"], ["fc3"], {"num_output": 1}),
        (L.BinaryCrossEntropyLoss, ["fc3", "label"], ["loss"], {}),
    ]
    for layer_type, bottom, top, kw in layers:
        model.add(hugectr.DenseLayer(layer_type=layer_type, bottom_names=bottom,
                                     top_names=top, **kw))
    model.compile()
    model.summary()
    t0 = time.time()
    model.fit(max_iter=steps, display=max(1, steps // 10), eval_interval=steps,
              snapshot=steps, snapshot_prefix=os.path.join(out_dir, "dcn"), progress=None)
    elapsed = time.time() - t0
    model.graph_to_json(os.path.join(out_dir, "dcn.json"))
    auc = model.evaluate()["AUC"]
    print(f"\nterarec demo: DCN trained {steps} iterations x {batchsize} samples in "
          f"{elapsed:.1f}s ({steps * batchsize / elapsed:,.0f} samples/s on {model.device}).")
    print(f"eval AUC {auc:.4f}; best reachable AUC of this data (the teacher's) "
          f"{data['eval_best_auc']:.4f}")
    print(f"model files and graph JSON in {out_dir}/")
    return auc
