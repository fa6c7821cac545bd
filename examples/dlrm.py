"""DLRM on HugeCTR's RawAsync (multi-hot binary) data — the MLPerf DLRM architecture, scaled.

    python examples/dlrm.py [--samples N --iters N --batchsize N --data-dir DIR]
    python examples/dlrm.py --mlperf   # MLPerf v1 sizes (dim 128, 512-256-128 / 1024-1024-512-256-1)

As HugeCTR's DLRM samples: SGD with warmup, bottom MLP on the dense features, dot
Interaction with the 26 embeddings, top MLP.
"""

import argparse
import os

import terarec as hugectr
from terarec.tools import DataGenerator, DataGeneratorParams

p = argparse.ArgumentParser()
p.add_argument("--data-dir", default="./dlrm_data")
p.add_argument("--samples", type=int, default=200_000)
p.add_argument("--batchsize", type=int, default=2048)
p.add_argument("--iters", type=int, default=600)
p.add_argument("--mlperf", action="store_true", help="MLPerf v1 layer sizes")
args = p.parse_args()

SLOT_SIZES = [1000, 500, 20000, 8000, 300, 24, 1200, 600, 3, 9000, 5000, 10000, 3000, 27,
              1400, 5400, 10, 5600, 2100, 4, 7000, 18, 15, 2800, 105, 1400]
DIM, BOTTOM, TOP = (128, [512, 256, 128], [1024, 1024, 512, 256, 1]) if args.mlperf else (
    16, [64, 16], [128, 64, 1])
train_bin = os.path.join(args.data_dir, "train_data.bin")
eval_bin = os.path.join(args.data_dir, "test_data.bin")
n_eval = args.samples // 4
if not os.path.exists(train_bin):
    DataGenerator(DataGeneratorParams(
        format=hugectr.DataReaderType_t.RawAsync, label_dim=1, dense_dim=13, num_slot=26,
        i64_input_key=False, source=train_bin, eval_source=eval_bin,
        slot_size_array=SLOT_SIZES, nnz_array=[1] * 26, num_samples=args.samples,
        eval_num_samples=n_eval)).generate()

A = hugectr.Activation_t
solver = hugectr.CreateSolver(max_eval_batches=50, batchsize_eval=args.batchsize,
                              batchsize=args.batchsize, lr=0.5, warmup_steps=50,
                              vvgpu=[[0]], repeat_dataset=True, use_cuda_graph=True)
reader = hugectr.DataReaderParams(
    data_reader_type=hugectr.DataReaderType_t.RawAsync, source=[train_bin],
    eval_source=eval_bin, check_type=hugectr.Check_t.Non, num_samples=args.samples,
    eval_num_samples=n_eval, slot_size_array=SLOT_SIZES,
    async_param=hugectr.AsyncParam(num_threads=4, num_batches_per_thread=4, shuffle=False,
                                   multi_hot_reader=True, is_dense_float=True))
optimizer = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.SGD,
                                    update_type=hugectr.Update_t.Local, atomic_update=True)
model = hugectr.Model(solver, reader, optimizer)
model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=13, dense_name="dense",
                        data_reader_sparse_param_array=[
                            hugectr.DataReaderSparseParam("data1", 1, True, 26)]))
model.add(hugectr.SparseEmbedding(
    embedding_type=hugectr.Embedding_t.LocalizedSlotSparseEmbeddingHash,
    slot_size_array=SLOT_SIZES, embedding_vec_size=DIM, combiner="sum",
    sparse_embedding_name="sparse_embedding1", bottom_name="data1", optimizer=optimizer))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.MLP, bottom_names=["dense"],
                             top_names=["mlp1"], num_outputs=BOTTOM, act_type=A.Relu))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.Interaction,
                             bottom_names=["mlp1", "sparse_embedding1"],
                             top_names=["interaction1"]))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.MLP, bottom_names=["interaction1"],
                             top_names=["mlp2"], num_outputs=TOP,
                             activations=[A.Relu] * (len(TOP) - 1) + [A.Non]))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.BinaryCrossEntropyLoss,
                             bottom_names=["mlp2", "label"], top_names=["loss"]))
model.compile()
model.summary()
model.fit(max_iter=args.iters, display=max(1, args.iters // 6),
          eval_interval=max(1, args.iters // 2), snapshot=10 * args.iters,
          snapshot_prefix=os.path.join(args.data_dir, "dlrm"))
model.graph_to_json(os.path.join(args.data_dir, "dlrm.json"))
print(f"final AUC: {model.evaluate(num_batches=50)['AUC']:.4f}")
