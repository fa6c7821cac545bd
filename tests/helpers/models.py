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


def _base(d: dict[str, Any], batchsize: int, seed: int, opt: Any = None, lr: float = 0.01,
          **solver_kw: Any) -> tuple[hugectr.Model, Any]:
    solver = hugectr.CreateSolver(batchsize=batchsize, batchsize_eval=batchsize, lr=lr,
                                  max_eval_batches=4, repeat_dataset=True, seed=seed,
                                  **solver_kw)
    opt = opt or hugectr.CreateOptimizer(optimizer_type=hugectr.Optimizer_t.Adam)
    model = hugectr.Model(solver, raw_async_reader(d), opt)
    model.add(hugectr.Input(
        label_dim=1, label_name="label", dense_dim=d["dense_dim"], dense_name="dense",
        data_reader_sparse_param_array=[
            hugectr.DataReaderSparseParam("data1", d["nnz"], True, len(d["slot_sizes"]))]))
    return model, opt


def _emb(model: hugectr.Model, name: str, dim: int, opt: Any, d: dict[str, Any]) -> None:
    model.add(hugectr.SparseEmbedding(
        embedding_type=hugectr.Embedding_t.LocalizedSlotSparseEmbeddingHash,
        embedding_vec_size=dim, combiner="sum", sparse_embedding_name=name,
        bottom_name="data1", slot_size_array=d["slot_sizes"], optimizer=opt))


def _fc(model: hugectr.Model, bottom: str, top: str, n: int, relu: bool = True) -> str:
    model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.InnerProduct, bottom_names=[bottom],
                                 top_names=[top], num_output=n))
    if not relu:
        return top
    model.add(hugectr.DenseLayer(layer_type=hugectr.Layer_t.ReLU, bottom_names=[top],
                                 top_names=[top + "_relu"]))
    return top + "_relu"


def build_wdl(d: dict[str, Any], batchsize: int = 128, seed: int = 1, **kw: Any) -> hugectr.Model:
    model, opt = _base(d, batchsize, seed, **kw)
    s = len(d["slot_sizes"])
    L = hugectr.Layer_t
    _emb(model, "wide_emb", 1, opt, d)
    _emb(model, "deep_emb", 8, opt, d)
    model.add(hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["deep_emb"],
                                 top_names=["reshape1"], leading_dim=8 * s))
    model.add(hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["wide_emb"],
                                 top_names=["reshape2"], leading_dim=s))
    model.add(hugectr.DenseLayer(layer_type=L.ReduceSum, bottom_names=["reshape2"],
                                 top_names=["wide_redn"], axis=1))
    model.add(hugectr.DenseLayer(layer_type=L.Concat, bottom_names=["reshape1", "dense"],
                                 top_names=["concat1"]))
    h = _fc(model, "concat1", "fc1", 16)
    model.add(hugectr.DenseLayer(layer_type=L.Dropout, bottom_names=[h], top_names=["drop1"],
                                 dropout_rate=0.1))
    _fc(model, "drop1", "fc3", 1, relu=False)
    model.add(hugectr.DenseLayer(layer_type=L.Add, bottom_names=["fc3", "wide_redn"],
                                 top_names=["add1"]))
    model.add(hugectr.DenseLayer(layer_type=L.BinaryCrossEntropyLoss,
                                 bottom_names=["add1", "label"], top_names=["loss"]))
    return model


def build_deepfm(d: dict[str, Any], batchsize: int = 128, seed: int = 1,
                 **kw: Any) -> hugectr.Model:
    model, opt = _base(d, batchsize, seed, **kw)
    s, k, dd = len(d["slot_sizes"]), 4, d["dense_dim"]
    L = hugectr.Layer_t
    add = model.add
    _emb(model, "sparse_embedding1", k + 1, opt, d)
    add(hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["sparse_embedding1"],
                           top_names=["reshape1"], leading_dim=k + 1))
    add(hugectr.DenseLayer(layer_type=L.Slice, bottom_names=["reshape1"],
                           top_names=["slice11", "slice12"], ranges=[(0, k), (k, k + 1)]))
    add(hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["slice11"],
                           top_names=["reshape2"], leading_dim=s * k))
    add(hugectr.DenseLayer(layer_type=L.Reshape, bottom_names=["slice12"],
                           top_names=["reshape3"], leading_dim=s))
    add(hugectr.DenseLayer(layer_type=L.WeightMultiply, bottom_names=["dense"],
                           top_names=["weight_multiply1"], weight_dims=[dd, k]))
    add(hugectr.DenseLayer(layer_type=L.WeightMultiply, bottom_names=["dense"],
                           top_names=["weight_multiply2"], weight_dims=[dd, 1]))
    add(hugectr.DenseLayer(layer_type=L.Concat, bottom_names=["reshape2", "weight_multiply1"],
                           top_names=["concat1"]))
    h = _fc(model, "concat1", "fc1", 16)
    _fc(model, h, "fc3", 1, relu=False)
    add(hugectr.DenseLayer(layer_type=L.FmOrder2, bottom_names=["concat1"],
                           top_names=["fmorder2"], out_dim=k))
    add(hugectr.DenseLayer(layer_type=L.ReduceSum, bottom_names=["fmorder2"],
                           top_names=["reducesum1"], axis=1))
    add(hugectr.DenseLayer(layer_type=L.Concat, bottom_names=["reshape3", "weight_multiply2"],
                           top_names=["concat2"]))
    add(hugectr.DenseLayer(layer_type=L.ReduceSum, bottom_names=["concat2"],
                           top_names=["reducesum2"], axis=1))
    add(hugectr.DenseLayer(layer_type=L.Add, bottom_names=["fc3", "reducesum1", "reducesum2"],
                           top_names=["add"]))
    add(hugectr.DenseLayer(layer_type=L.BinaryCrossEntropyLoss, bottom_names=["add", "label"],
                           top_names=["loss"]))
    return model


def build_dlrm(d: dict[str, Any], batchsize: int = 128, seed: int = 1,
               **kw: Any) -> hugectr.Model:
    kw.setdefault("lr", 0.5)
    model, opt = _base(d, batchsize, seed, opt=hugectr.CreateOptimizer(
        optimizer_type=hugectr.Optimizer_t.SGD), **kw)
    L, A = hugectr.Layer_t, hugectr.Activation_t
    _emb(model, "sparse_embedding1", 8, opt, d)
    model.add(hugectr.DenseLayer(layer_type=L.MLP, bottom_names=["dense"], top_names=["mlp1"],
                                 num_outputs=[16, 8], act_type=A.Relu))
    model.add(hugectr.DenseLayer(layer_type=L.Interaction,
                                 bottom_names=["mlp1", "sparse_embedding1"],
                                 top_names=["interaction1"]))
    model.add(hugectr.DenseLayer(layer_type=L.MLP, bottom_names=["interaction1"],
                                 top_names=["mlp2"], num_outputs=[16, 1],
                                 activations=[A.Relu, A.Non]))
    model.add(hugectr.DenseLayer(layer_type=L.BinaryCrossEntropyLoss,
                                 bottom_names=["mlp2", "label"], top_names=["loss"]))
    return model


BUILDERS = {"dcn": build_dcn, "wdl": build_wdl, "deepfm": build_deepfm, "dlrm": build_dlrm}
