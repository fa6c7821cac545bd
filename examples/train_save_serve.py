"""Data -> train -> HugeCTR model files -> a model repository -> ``terarec serve`` -> one request.

    pip install -e '.[parquet,serve]'
    python examples/train_save_serve.py [--samples N --iters N --batchsize N --data-dir DIR]

The same repository is served from the command line with
``terarec serve --model-repository DIR/model_repository --port 8000``; any KServe v2 client
(``tritonclient.http``, curl) sends the three inputs of HugeCTR's Triton backend: ``DES`` (dense
features, float32, row by row), ``CATCOLUMN`` (the keys, slot offsets added, int64) and
``ROWINDEX`` (CSR row offsets over samples x slots, int32); the output ``OUTPUT0`` holds the
probabilities. Here the server runs in a background thread and the request is plain ``urllib``.
Without the ``serve`` extra the script stops after the in-process inference session.
"""

import argparse
import importlib.util
import json
import os
import urllib.request

import numpy as np

import terarec as hugectr
from terarec.inference import CreateInferenceSession, InferenceParams
from terarec.tools import DataGenerator, DataGeneratorParams

p = argparse.ArgumentParser()
p.add_argument("--data-dir", default="./serve_data")
p.add_argument("--samples", type=int, default=200_000)
p.add_argument("--batchsize", type=int, default=2048)
p.add_argument("--iters", type=int, default=600)
p.add_argument("--request-size", type=int, default=64, help="samples in the HTTP request")
args = p.parse_args()

# 1. data: HugeCTR Parquet, 26 one-hot slots + 13 dense features, labels from a planted teacher
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

# 2. train an embedding + MLP model through the HugeCTR API
solver = hugectr.CreateSolver(max_eval_batches=50, batchsize_eval=args.batchsize,
                              batchsize=args.batchsize, lr=0.001, vvgpu=[[0]],
                              i64_input_key=True, repeat_dataset=True)
reader = hugectr.DataReaderParams(data_reader_type=hugectr.DataReaderType_t.Parquet,
                                  source=[train_list], eval_source=eval_list,
                                  check_type=hugectr.Check_t.Non, slot_size_array=SLOT_SIZES)
model = hugectr.Model(solver, reader, hugectr.CreateOptimizer(hugectr.Optimizer_t.Adam))
A, L = hugectr.Activation_t, hugectr.Layer_t
model.add(hugectr.Input(label_dim=1, label_name="label", dense_dim=13, dense_name="dense",
                        data_reader_sparse_param_array=[
                            hugectr.DataReaderSparseParam("data1", 1, True, 26)]))
model.add(hugectr.SparseEmbedding(hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,
                                  slot_size_array=SLOT_SIZES, embedding_vec_size=16,
                                  combiner="sum", sparse_embedding_name="emb",
                                  bottom_name="data1"))
model.add(hugectr.DenseLayer(L.Reshape, ["emb"], ["flat"], leading_dim=416))
model.add(hugectr.DenseLayer(L.Concat, ["flat", "dense"], ["concat"]))
model.add(hugectr.DenseLayer(L.MLP, ["concat"], ["mlp"], num_outputs=[256, 128, 1],
                             activations=[A.Relu, A.Relu, A.Non]))
model.add(hugectr.DenseLayer(L.BinaryCrossEntropyLoss, ["mlp", "label"], ["loss"]))
model.compile()
model.fit(max_iter=args.iters, display=max(1, args.iters // 6),
          eval_interval=max(1, args.iters // 2), snapshot=10 * args.iters)
print(f"final AUC: {model.evaluate(num_batches=50)['AUC']:.4f}")

# 3. a model repository: <repo>/<model>/<version>/ with the HugeCTR files and a config.json
version = os.path.join(args.data_dir, "model_repository", "ctr", "1")
os.makedirs(version, exist_ok=True)
model.save_params_to_files(version + os.sep, args.iters)  # _dense_N.model, 0_sparse_N.model
model.graph_to_json(os.path.join(version, "graph.json"))
with open(os.path.join(version, "config.json"), "w") as f:
    json.dump({"graph": "graph.json", "dense": f"_dense_{args.iters}.model",
               "sparse": [f"0_sparse_{args.iters}.model"], "max_batch_size": 1024,
               "params": {"gpucacheper": 0.5, "hit_rate_threshold": 0.9}}, f, indent=1)
print(f"model repository: {os.path.dirname(os.path.dirname(version))}")

# 4. a request the way a client builds one: the first eval rows, read from the Parquet file
import pyarrow.parquet as pq  # noqa: E402  (the 'parquet' extra; DataGenerator needed it too)

with open(eval_list) as f:
    eval_file = f.read().split()[1]  # HugeCTR file list: count, then paths
n = min(args.request_size, args.batchsize)
table = pq.read_table(eval_file).slice(0, n)
des = np.stack([table[f"I{i + 1}"].to_numpy() for i in range(13)], 1).astype(np.float32)
slot_offsets = np.concatenate([[0], np.cumsum(SLOT_SIZES)[:-1]])
keys = np.stack([table[f"C{s + 1}"].to_numpy() for s in range(26)], 1) + slot_offsets
catcolumn = keys.astype(np.int64).reshape(-1)  # sample-major: sample 0's 26 keys, then 1's, ...
rowindex = np.arange(n * 26 + 1, dtype=np.int32)  # one key per (sample, slot)
des = des.reshape(-1)
expected = model.predict(num_batches=1)[:n].reshape(-1)  # the first eval batch, same rows

# 5a. in process: HugeCTR's inference session on the repository's files
params = InferenceParams(model_name="ctr", max_batchsize=1024, hit_rate_threshold=0.9,
                         dense_model_file=os.path.join(version, f"_dense_{args.iters}.model"),
                         sparse_model_files=[os.path.join(version, f"0_sparse_{args.iters}.model")],
                         device_id=0, use_gpu_embedding_cache=True, cache_size_percentage=0.5,
                         i64_input_key=True)
session = CreateInferenceSession(os.path.join(version, "graph.json"), params)
in_process = np.asarray(session.predict(des, catcolumn, rowindex)).reshape(-1)
session.close()
print(f"inference session vs model.predict on {n} samples: max abs diff "
      f"{np.abs(in_process - expected).max():.2e}")

# 5b. over HTTP: terarec serve (KServe v2) in a background thread, one JSON request
missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
if missing:
    print(f"terarec serve needs the 'serve' extra ({', '.join(missing)} missing): "
          "pip install 'terarec[serve]'; skipping the HTTP part")
    raise SystemExit(0)

from terarec.serving.server import ServerThread  # noqa: E402

server = ServerThread(os.path.dirname(os.path.dirname(version)), port=0).start()
try:
    request = {"inputs": [
        {"name": "DES", "shape": [des.size], "datatype": "FP32", "data": des.tolist()},
        {"name": "CATCOLUMN", "shape": [catcolumn.size], "datatype": "INT64",
         "data": catcolumn.tolist()},
        {"name": "ROWINDEX", "shape": [rowindex.size], "datatype": "INT32",
         "data": rowindex.tolist()}],
        "outputs": [{"name": "OUTPUT0"}]}
    req = urllib.request.Request(f"http://{server.url}/v2/models/ctr/infer",
                                 data=json.dumps(request).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        reply = json.load(resp)
finally:
    server.stop()
served = np.asarray(reply["outputs"][0]["data"], dtype=np.float32)
print("served probabilities:", np.round(served[:5], 4), "...")
print("model.predict:       ", np.round(expected[:5], 4), "...")
print(f"served (HTTP) vs model.predict on {n} samples: max abs diff "
      f"{np.abs(served - expected).max():.2e}")
