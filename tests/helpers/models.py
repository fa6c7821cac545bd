"""Small HugeCTR-API models used by several tests (built exactly as a HugeCTR script would)."""

from __future__ import annotations

from typing import Any

import terarec as hugectr


def raw_async_reader(d: dict[str, Any], **kw: Any) -> hugectr.DataReaderParams:
    return hugectr.DataReaderParams(
        data_reader_type=hugectr.DataReaderType_t.RawAsync, source=[d["train"]],
        eval_source=d["eval"], check_type=hugectr.Check_t.Non, num_samples=d["n_train"],
        eval_num_samples=d["n_eval"], slot_size_array=d["slot_sizes"],
        async_param=hugectr.AsyncParam(1, 2, shuffle=False, multi_hot_reader=True,
                                       is_dense_float=True), **kw)


def build_dcn(d: dict[str, Any], *, batchsize: int = 128, lr: float = 0.01,
              optimizer: Any = None, seed: int = 1, repeat: bool = True,
              combiner: str = "sum", **solver_kw: Any) -> hugectr.Model:
    solver = hugectr.CreateSolver(batchsize=batchsize, batchsize_eval=batchsize, lr=lr,
                                  max_eval_batches=4, repeat_dataset=repeat, seed=seed,
                                  **solver_kw)
    opt = optimizer or hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.Adam)
    model = hugectr.Model(solver, raw_async_reader(d), opt)
    slots = len(d["slot_sizes"])
    model.add(hugectr.Input(
        label_dim=1, label_name="label", dense_dim=d["dense_dim"], dense_name="dense",
        data_reader_sparse_param_array=[
            hugectr.DataReaderSparseParam("data1", d["nnz"], True, slots)]))
    model.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.DistributedSlotSparseEmbeddingHash,
        workspace_size_per_gpu_in_mb=1, embedding_vec_size=8, combiner=combiner,
        sparse_embedding_name="emb", bottom_name="data1", optimizer=opt))
    L = hugectr.Layer_t
    add = model.add
    add(hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["emb"], top_names=["r"],
                           leading_dim=8 * slots))
    add(hugectr.DenseLayer(layer_type=L.Concat, bottom_names=["r", "dense"], top_names=["c"]))
    add(hugectr.DenseLayer(layer_type=L.MultiCross, bottom_names=["c"], top_names=["mc"],
                           num_layers=2))
    add(hugectr.DenseLayer(layer_type=L.InnerProduct, bottom_names=["c"], top_names=["fc1"],
                           num_output=16))
    add(hugectr.DenseLayer(layer_type=L.ReLU, bottom_names=["fc1"], top_names=["relu1"]))
    add(hugectr.DenseLayer(layer_type=L.Concat, bottom_names=["relu1", "mc"],
                           top_names=["c2"]))
    add(hugectr.DenseLayer(layer_type=L.InnerProduct, bottom_names=["c2"], top_names=["fc2"],
                           num_output=1))
    add(hugectr.DenseLayer(layer_type=L.BinaryCrossEntropyLoss, bottom_names=["fc2", "label"],
                           top_names=["loss"]))
    return model
