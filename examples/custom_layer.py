"""A DCN whose cross network is your own ``nn.Module``: ``hugectr.TorchLayer`` (terarec extension).

    python examples/custom_layer.py [--samples N --iters N --batchsize N --data-dir DIR]

HugeCTR's ``DenseLayer`` only takes built-in ``Layer_t`` types. ``hugectr.TorchLayer(module,
bottom_names, top_names, init_kwargs)`` puts any ``torch.nn.Module`` into the graph: here DCN-v2's
low-rank cross network (examples/custom_blocks.py) next to a built-in MLP tower. The block is
trained by the model's optimizer, saved in the ``_dense_N.model`` file, written to the graph JSON
as ``"custom_blocks:LowRankCross"`` and rebuilt from there by ``CreateInferenceSession``; the
script checks that the served predictions equal ``model.predict``.
"""

import argparse
import os
import sys

import numpy as np

import terarec as hugectr
from terarec.inference import CreateInferenceSession, InferenceParams
from terarec.tools import DataGenerator, DataGeneratorParams

# the block's module must be importable by its path (graph JSON readers import it)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from custom_blocks import LowRankCross  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--data-dir", default="./custom_layer_data")
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

solver = hugectr.CreateSolver(max_eval_batches=50, batchsize_eval=args.batchsize,
                              batchsize=args.batchsize, lr=0.001, vvgpu=[[0]],
                              i64_input_key=True, repeat_dataset=True)
reader = hugectr.DataReaderParams(data_reader_type=hugectr.DataReaderType_t.Parquet,
                                  source=[train_list], eval_source=eval_list,
                                  check_type=hugectr.Check_t.Non, slot_size_array=SLOT_SIZES)
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
model.add(hugectr.DenseLayer(L.Reshape, ["sparse_embedding1"], ["reshape1"], leading_dim=416))
model.add(hugectr.DenseLayer(L.Concat, ["reshape1", "dense"], ["concat1"]))
# the custom block: a class (or "custom_blocks:LowRankCross") + the kwargs that build it
model.add(hugectr.TorchLayer(LowRankCross, ["concat1"], ["cross1"],
                             init_kwargs={"in_dim": 416 + 13, "num_layers": 3, "rank": 32}))
model.add(hugectr.DenseLayer(L.MLP, ["concat1"], ["mlp1"], num_outputs=[256, 128],
                             act_type=hugectr.Activation_t.Relu))
model.add(hugectr.DenseLayer(L.Concat, ["mlp1", "cross1"], ["concat2"]))
model.add(hugectr.DenseLayer(L.InnerProduct, ["concat2"], ["fc_out"], num_output=1))
model.add(hugectr.DenseLayer(L.BinaryCrossEntropyLoss, ["fc_out", "label"], ["loss"]))
model.compile()
model.summary()
model.fit(max_iter=args.iters, display=max(1, args.iters // 6),
          eval_interval=max(1, args.iters // 2), snapshot=10 * args.iters,
          snapshot_prefix=os.path.join(args.data_dir, "custom_layer"))
print(f"final AUC: {model.evaluate(num_batches=50)['AUC']:.4f}")

# save HugeCTR model files + graph JSON, then serve them with an inference session
prefix = os.path.join(args.data_dir, "custom_layer")
model.save_params_to_files(prefix, args.iters)
graph = os.path.join(args.data_dir, "custom_layer.json")
model.graph_to_json(graph)  # the TorchLayer entry: "module": "custom_blocks:LowRankCross"
params = InferenceParams(
    model_name="custom_layer", max_batchsize=args.batchsize, hit_rate_threshold=0.9,
    dense_model_file=f"{prefix}_dense_{args.iters}.model",
    sparse_model_files=[f"{prefix}0_sparse_{args.iters}.model"], device_id=0,
    use_gpu_embedding_cache=True, cache_size_percentage=0.5, i64_input_key=True)
session = CreateInferenceSession(graph, params)
# HugeCTR's reader-driven predict: the same eval batches model.predict reads
n = 2
served = session.predict(n, eval_list, hugectr.DataReaderType_t.Parquet, hugectr.Check_t.Non,
                         SLOT_SIZES)
expected = model.predict(num_batches=n)
diff = float(np.abs(np.asarray(served).reshape(-1) - expected.reshape(-1)).max())
print(f"inference session vs model.predict on {expected.size} samples: max abs diff {diff:.2e}")
session.close()
