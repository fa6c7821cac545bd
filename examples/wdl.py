"""Wide & Deep on HugeCTR's Parquet data — HugeCTR's wdl sample, run by terarec.

    python examples/wdl.py [--samples N --iters N --batchsize N --data-dir DIR]

Two sparse inputs: a "wide" one (2 crossed slots, embedding width 1) and a "deep" one
(26 slots, width 16), as in HugeCTR's sample.
"""

import argparse
import os

import terarec as hugectr
from terarec.tools import DataGenerator, DataGeneratorParams

p = argparse.ArgumentParser()
p.add_argument("--data-dir", default="./wdl_data")
p.add_argument("--samples", type=int, default=200_000)
p.add_argument("--batchsize", type=int, default=2048)
p.add_argument("--iters", type=int, default=600)
args = p.parse_args()

DEEP = [1000, 500, 20000, 8000, 300, 24, 1200, 600, 3, 9000, 5000, 10000, 3000, 27, 1400, 5400,
        10, 5600, 2100, 4, 7000, 18, 15, 2800, 105, 1400]
WIDE = [5000, 5000]
SLOT_SIZES = WIDE + DEEP  # Parquet column order: the wide slots, then the deep slots
train_list = os.path.join(args.data_dir, "file_list.txt")
eval_list = os.path.join(args.data_dir, "file_list_test.txt")
if not os.path.exists(train_list):
    DataGenerator(DataGeneratorParams(
        format=hugectr.DataReaderType_t.Parquet, label_dim=1, dense_dim=13, num_slot=28,
        i64_input_key=True, source=train_list, eval_source=eval_list,
        slot_size_array=SLOT_SIZES, num_files=4, eval_num_files=1,
        num_samples_per_file=args.samples // 4, num_samples=args.samples,
        eval_num_samples=args.samples // 4)).generate()

solver = hugectr.CreateSolver(max_eval_batches=50, batchsize_eval=args.batchsize,
                              batchsize=args.batchsize, lr=0.001, vvgpu=[[0]],
                              i64_input_key=True, repeat_dataset=True)
reader = hugectr.DataReaderParams(data_reader_type=hugectr.DataReaderType_t.Parquet,
                                  source=[train_list], eval_source=eval_list,
                                  check_type=hugectr.Check_t.Non, slot_size_array=SLOT_SIZES)
optimizer = hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.Adam,
                                    update_type=hugectr.Update_t.Global,
                                    beta1=0.9, beta2=0.999, epsilon=0.0000001)
model = hugectr.Model(solver, reader, optimizer)
model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=13, dense_name="dense",
                        data_reader_sparse_param_array=[
                            hugectr.DataReaderSparseParam("wide_data", 1, True, 2),
                            hugectr.DataReaderSparseParam("deep_data", 1, True, 26)]))
model.add(hugectr.SparseEmbedding(
    embedding_type=hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,
    workspace_size_per_gpu_in_mb=2, embedding_vec_size=1, combiner="sum",
    sparse_embedding_name="sparse_embedding2", bottom_name="wide_data", optimizer=optimizer))
model.add(hugectr.SparseEmbedding(
    embedding_type=hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,
    workspace_size_per_gpu_in_mb=30, embedding_vec_size=16, combiner="sum",
    sparse_embedding_name="sparse_embedding1", bottom_name="deep_data", optimizer=optimizer))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.Reshape,
                             bottom_names=["sparse_embedding1"], top_names=["reshape1"],
                             leading_dim=416))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.Reshape,
                             bottom_names=["sparse_embedding2"], top_names=["reshape2"],
                             leading_dim=2))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.ReduceSum, bottom_names=["reshape2"],
                             top_names=["wide_redn"], axis=1))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.Concat,
                             bottom_names=["reshape1", "dense"], top_names=["concat1"]))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.InnerProduct, bottom_names=["concat1"],
                             top_names=["fc1"], num_output=1024))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.ReLU, bottom_names=["fc1"],
                             top_names=["relu1"]))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.Dropout, bottom_names=["relu1"],
                             top_names=["dropout1"], dropout_rate=0.5))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.InnerProduct, bottom_names=["dropout1"],
                             top_names=["fc2"], num_output=1024))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.ReLU, bottom_names=["fc2"],
                             top_names=["relu2"]))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.Dropout, bottom_names=["relu2"],
                             top_names=["dropout2"], dropout_rate=0.5))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.InnerProduct, bottom_names=["dropout2"],
                             top_names=["fc3"], num_output=1))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.Add, bottom_names=["fc3", "wide_redn"],
                             top_names=["add1"]))
model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.BinaryCrossEntropyLoss,
                             bottom_names=["add1", "label"], top_names=["loss"]))
model.compile()
model.summary()
model.fit(max_iter=args.iters, display=max(1, args.iters // 6),
          eval_interval=max(1, args.iters // 2), snapshot=10 * args.iters,
          snapshot_prefix=os.path.join(args.data_dir, "wdl"))
model.graph_to_json(os.path.join(args.data_dir, "wdl.json"))
print(f"final AUC: {model.evaluate(num_batches=50)['AUC']:.4f}")
