"""DeepFM on HugeCTR's Parquet data — HugeCTR's deepfm_parquet.py, run by terarec.

    python examples/deepfm.py [--samples N --iters N --batchsize N --data-dir DIR]
"""

import argparse
import os

import terarec as hugectr
from terarec.tools import DataGenerator, DataGeneratorParams

p = argparse.ArgumentParser()
p.add_argument("--data-dir", default="./deepfm_data")
p.add_argument("--samples", type=int, default=200_000)
p.add_argument("--batchsize", type=int, default=2048)
p.add_argument("--iters", type=int, default=600)
args = p.parse_args()

SLOT_SIZES = [1000, 500, 20000, 8000, 300, 24, 1200, 600, 3, 9000, 5000, 10000, 3000, 27,
              1400, 5400, 10, 5600, 2100, 4, 7000, 18, 15, 2800, 105, 1400]
train_list = os.path.join(args.data_dir, "file_list.txt")
eval_list = os.path.join(args.data_dir, "file_list_test.txt")
if not os.path.exists(train_list):
    DataGenerator(DataGeneratorParams(
        format=hugectr.DataReaderType_t.Parquet, label_dim=1, dense_dim=13, num_slot=26,
        i64_input_key=True, source=train_list, eval_source=eval_list,
        slot_size_array=SLOT_SIZES, num_files=4, eval_num_files=1,
        num_samples_per_file=args.samples // 4, num_samples=args.samples,
        eval_num_samples=args.samples // 4)).generate()

L = hugectr.Layer_t
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
                            hugectr.DataReaderSparseParam("data1", 1, True, 26)]))
model.add(hugectr.SparseEmbedding(
    embedding_type=hugectr.Embedding_t.LocalizedSlotSparseEmbeddingHash,
    slot_size_array=SLOT_SIZES, embedding_vec_size=11, combiner="sum",
    sparse_embedding_name="sparse_embedding1", bottom_name="data1", optimizer=optimizer))
model.add(hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["sparse_embedding1"],
                             top_names=["reshape1"], leading_dim=11))
model.add(hugectr.DenseLayer(layer_type=L.Slice, bottom_names=["reshape1"],
                             top_names=["slice11", "slice12"], ranges=[(0, 10), (10, 11)]))
model.add(hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["slice11"],
                             top_names=["reshape2"], leading_dim=260))
model.add(hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["slice12"],
                             top_names=["reshape3"], leading_dim=26))
model.add(hugectr.DenseLayer(layer_type=L.Slice, bottom_names=["dense"],
                             top_names=["slice21", "slice22"], ranges=[(0, 13), (0, 13)]))
model.add(hugectr.DenseLayer(layer_type=L.WeightMultiply, bottom_names=["slice21"],
                             top_names=["weight_multiply1"], weight_dims=[13, 10]))
model.add(hugectr.DenseLayer(layer_type=L.WeightMultiply, bottom_names=["slice22"],
                             top_names=["weight_multiply2"], weight_dims=[13, 1]))
model.add(hugectr.DenseLayer(layer_type=L.Concat, bottom_names=["reshape2", "weight_multiply1"],
                             top_names=["concat1"]))
model.add(hugectr.DenseLayer(layer_type=L.Slice, bottom_names=["concat1"],
                             top_names=["slice31", "slice32"], ranges=[(0, 390), (0, 390)]))
model.add(hugectr.DenseLayer(layer_type=L.InnerProduct, bottom_names=["slice31"],
                             top_names=["fc1"], num_output=400))
model.add(hugectr.DenseLayer(layer_type=L.ReLU, bottom_names=["fc1"], top_names=["relu1"]))
model.add(hugectr.DenseLayer(layer_type=L.Dropout, bottom_names=["relu1"],
                             top_names=["dropout1"], dropout_rate=0.5))
model.add(hugectr.DenseLayer(layer_type=L.InnerProduct, bottom_names=["dropout1"],
                             top_names=["fc2"], num_output=400))
model.add(hugectr.DenseLayer(layer_type=L.ReLU, bottom_names=["fc2"], top_names=["relu2"]))
model.add(hugectr.DenseLayer(layer_type=L.Dropout, bottom_names=["relu2"],
                             top_names=["dropout2"], dropout_rate=0.5))
model.add(hugectr.DenseLayer(layer_type=L.InnerProduct, bottom_names=["dropout2"],
                             top_names=["fc3"], num_output=1))
model.add(hugectr.DenseLayer(layer_type=L.FmOrder2, bottom_names=["slice32"],
                             top_names=["fmorder2"], out_dim=10))
model.add(hugectr.DenseLayer(layer_type=L.ReduceSum, bottom_names=["fmorder2"],
                             top_names=["reducesum1"], axis=1))
model.add(hugectr.DenseLayer(layer_type=L.Concat, bottom_names=["reshape3", "weight_multiply2"],
                             top_names=["concat2"]))
model.add(hugectr.DenseLayer(layer_type=L.ReduceSum, bottom_names=["concat2"],
                             top_names=["reducesum2"], axis=1))
model.add(hugectr.DenseLayer(layer_type=L.Add, bottom_names=["fc3", "reducesum1", "reducesum2"],
                             top_names=["add"]))
model.add(hugectr.DenseLayer(layer_type=L.BinaryCrossEntropyLoss, bottom_names=["add", "label"],
                             top_names=["loss"]))
model.compile()
model.summary()
model.fit(max_iter=args.iters, display=max(1, args.iters // 6),
          eval_interval=max(1, args.iters // 2), snapshot=10 * args.iters,
          snapshot_prefix=os.path.join(args.data_dir, "deepfm"))
model.graph_to_json(os.path.join(args.data_dir, "deepfm.json"))
print(f"final AUC: {model.evaluate(num_batches=50)['AUC']:.4f}")
