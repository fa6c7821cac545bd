"""``hugectr2onnx.converter``: a saved HugeCTR/terarec model -> one ONNX file.

``convert(onnx_model_path, graph_config, dense_model, convert_embedding=False,
sparse_models=None, ntp_file=None, graph_name="hugectr")`` with HugeCTR's argument names, and
``python -m terarec.hugectr2onnx.converter --onnx_model_path ... --graph_config ...
--dense_model ... [--convert_embedding] [--sparse_models A B ...] [--ntp_file F]
[--graph_name N]``.

* ``convert_embedding=False``: the dense network only (:func:`terarec.inference.onnx_export.
  export_onnx`): inputs are the dense features (named after the Data layer's dense tensor) and
  one pooled embedding ``(B, slot_num, vec_size)`` per SparseEmbedding (named after its top).
* ``convert_embedding=True``: the whole model. Each SparseEmbedding's table (``key`` /
  ``emb_vector`` of ``sparse_models[i]``, one folder per embedding in graph order) becomes a
  constant of the graph. Inputs are the dense features and, per sparse input read by an
  embedding (named after the Data layer's sparse tensor, e.g. ``data1``), the keys as
  ``(B, slot_num, nnz)`` int64 **with HugeCTR's slot offsets already applied** (the keys the
  sparse model files hold). ``-1`` marks an absent key (padding of a slot holding fewer than
  ``nnz`` keys; HugeCTR's documentation does not name a padding value). A key missing from the
  table looks up the zero vector (and, for ``mean``, still counts, as in terarec's lookups).
  Keys map to rows with a branchless binary search over the sorted keys (Gather/Where/Less ops,
  ``ceil(log2(n))`` steps), pooled by the embedding's combiner into ``(B, slot_num, dim)``.
  The tables live inside the ONNX file, so protobuf's 2 GB limit bounds their size.

The output is named ``output``: the probabilities ``(B, label_dim)`` (the loss layers become
their Sigmoid/Softmax, as in HugeCTR's converter). Layers HugeCTR's converter does not
support (Cast, FusedReshapeConcatGeneral, GRU, Gather, ReLUHalf, Select) raise
:class:`~terarec.errors.NotSupportedError`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from terarec.errors import ConfigError, NotSupportedError
from terarec.graph.inference import build_inference_network
from terarec.graph.json_io import read_graph_json
from terarec.inference.model_files import read_sparse_model
from terarec.inference.onnx_export import export_module, export_onnx
from terarec.utils.atomic import atomic_file
from terarec.utils.imports import require

UNSUPPORTED_LAYERS = ("Cast", "FusedReshapeConcatGeneral", "GRU", "Gather", "ReLUHalf", "Select")
PAD_KEY = -1
OPSET = 17

__all__ = ["PAD_KEY", "UNSUPPORTED_LAYERS", "convert", "main"]


def _check_layers(graph_config: str | os.PathLike[str]) -> None:
    try:
        obj = json.loads(Path(graph_config).read_text())
    except (OSError, ValueError):
        return  # read_graph_json reports it with its own message
    entries = obj.get("layers", []) if isinstance(obj, dict) else []
    for i, entry in enumerate(entries):
        t = entry.get("type") if isinstance(entry, dict) else None
        if t in UNSUPPORTED_LAYERS:
            raise NotSupportedError(
                f"{graph_config}: layer {i} ({t!r}, top {entry.get('top')!r}) cannot be "
                f"converted to ONNX; HugeCTR's converter supports every layer except "
                f"{', '.join(UNSUPPORTED_LAYERS)}")


class _Lookup(nn.Module):
    """keys (B, S, N) int64 -> pooled (B, S, dim): sorted-key binary search, zero if absent."""

    def __init__(self, keys: np.ndarray, vectors: np.ndarray, mean: bool) -> None:
        super().__init__()
        order = np.argsort(keys, kind="stable")
        self.n = int(keys.shape[0])
        self.mean = mean
        self.register_buffer("keys", torch.from_numpy(np.asarray(keys, np.int64)[order].copy()))
        table = np.zeros((self.n + 1, vectors.shape[1]), np.float32)  # last row: zero vector
        table[:self.n] = np.asarray(vectors, np.float32)[order]
        self.register_buffer("table", torch.from_numpy(table))
        self.steps = [1 << k for k in range(max(self.n, 1).bit_length() - 1, -1, -1)]

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        valid = q != PAD_KEY
        if self.n == 0:
            rows = torch.zeros_like(q)
        else:
            idx = torch.full_like(q, -1)  # largest i with keys[i] <= q, or -1
            for step in self.steps:
                cand = idx + step
                k = self.keys[cand.clamp(0, self.n - 1)]
                idx = torch.where((cand < self.n) & (k <= q), cand, idx)
            safe = idx.clamp(0, self.n - 1)
            found = (idx >= 0) & (self.keys[safe] == q) & valid
            rows = torch.where(found, safe, torch.full_like(q, self.n))
        pooled = self.table[rows].sum(dim=2)  # (B, S, dim); absent rows are zero
        if self.mean:
            count = valid.to(pooled.dtype).sum(dim=2, keepdim=True).clamp(min=1.0)
            pooled = pooled / count
        return pooled


class _WholeModel(nn.Module):
    def __init__(self, network: nn.Module, label_dim: int, inputs: list[str],
                 lookups: list[tuple[str, str, _Lookup]]) -> None:
        super().__init__()
        self.network = network
        self.label_dim = label_dim
        self.inputs = inputs
        self.tops = [top for top, _, _ in lookups]
        self.which = [inputs.index(bottom) for _, bottom, _ in lookups]
        self.lookups = nn.ModuleList([lk for _, _, lk in lookups])

    def forward(self, dense: torch.Tensor, *keys: torch.Tensor) -> torch.Tensor:
        emb = {top: lk(keys[i]) for top, i, lk in zip(self.tops, self.which, self.lookups)}
        labels = torch.zeros(dense.shape[0], self.label_dim, dtype=dense.dtype)
        return self.network(dense, labels, emb, compute_loss=False).predictions


def _set_graph_name(onnx_path: str | os.PathLike[str], graph_name: str) -> None:
    import onnx

    model = onnx.load(str(onnx_path))
    model.graph.name = graph_name
    with atomic_file(onnx_path) as fh:
        fh.write(model.SerializeToString())


def convert(onnx_model_path: str | os.PathLike[str], graph_config: str | os.PathLike[str],
            dense_model: str | os.PathLike[str], convert_embedding: bool = False,
            sparse_models: Sequence[str | os.PathLike[str]] | None = None,
            ntp_file: str | os.PathLike[str] | None = None,
            graph_name: str = "hugectr") -> list[str]:
    """Write ``onnx_model_path``; returns the ONNX input names (dense first).

    Args:
        onnx_model_path: the ONNX file to write.
        graph_config: graph JSON written by ``Model.graph_to_json``.
        dense_model: the ``_dense_N.model`` file.
        convert_embedding: also convert the embedding tables (then ``sparse_models`` is
            required, one folder per SparseEmbedding in graph order).
        sparse_models: the ``_sparse_N.model`` folders.
        ntp_file: non-trainable parameters (BatchNorm running stats); default
            ``dense_model + ".ntp.json"`` when it exists.
        graph_name: the ONNX graph's name.
    """
    require("onnx", extra="onnx", feature="hugectr2onnx")
    _check_layers(graph_config)
    if ntp_file is not None and not Path(ntp_file).is_file():
        raise ConfigError("convert(ntp_file=...)", "an existing .ntp.json file", str(ntp_file))
    if not convert_embedding:
        names = export_onnx(graph_config, dense_model, onnx_model_path, opset=OPSET,
                            non_trainable_params_file=ntp_file or "")
    else:
        names = _whole(onnx_model_path, graph_config, dense_model, sparse_models, ntp_file)
    _set_graph_name(onnx_model_path, graph_name)
    return names


def _whole(onnx_path: str | os.PathLike[str], graph_config: str | os.PathLike[str],
           dense_model: str | os.PathLike[str],
           sparse_models: Sequence[str | os.PathLike[str]] | None,
           ntp_file: str | os.PathLike[str] | None) -> list[str]:
    spec = read_graph_json(graph_config)
    assert spec.schema is not None  # noqa: S101 - read_graph_json requires a Data layer
    if isinstance(sparse_models, (str, os.PathLike)):
        sparse_models = [sparse_models]
    sparse_models = list(sparse_models or [])
    if len(sparse_models) != len(spec.embeddings):
        raise ConfigError(
            "convert(sparse_models=...)",
            f"{len(spec.embeddings)} sparse model folder(s), one per SparseEmbedding of "
            f"{graph_config} in graph order ({[e.top for e in spec.embeddings]})",
            [str(s) for s in sparse_models])
    if ntp_file is not None and not Path(ntp_file).is_file():
        raise ConfigError("convert(ntp_file=...)", "an existing .ntp.json file", str(ntp_file))
    _, network = build_inference_network(graph_config, dense_model, "cpu", ntp_file or "")
    sparse = {s.name: s for s in spec.schema.sparse}
    inputs: list[str] = []
    lookups = []
    for emb, folder in zip(spec.embeddings, sparse_models):
        keys, vecs = read_sparse_model(folder, emb.embedding_vec_size)
        lookups.append((emb.top, emb.bottom, _Lookup(np.asarray(keys), np.asarray(vecs),
                                                     emb.combiner == "mean")))
        if emb.bottom not in inputs:
            inputs.append(emb.bottom)
    module = _WholeModel(network, spec.schema.label_dim, inputs, lookups).eval()
    example = [torch.randn(2, spec.schema.dense_dim)]
    for name in inputs:
        s = sparse[name]
        example.append(torch.zeros(2, s.slot_num, max(s.nnz_per_slot), dtype=torch.int64))
    names = [spec.schema.dense_name, *inputs]
    dynamic = {spec.schema.dense_name: {0: "batch"}}
    for name in inputs:
        dynamic[name] = {0: "batch", 2: f"{name}_nnz"}
    export_module(module, tuple(example), names, onnx_path, OPSET,
                  "convert(onnx_model_path=...)", dynamic)
    return names


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m terarec.hugectr2onnx.converter",
                                description="Convert a saved HugeCTR/terarec model to ONNX.")
    p.add_argument("--onnx_model_path", required=True)
    p.add_argument("--graph_config", required=True)
    p.add_argument("--dense_model", required=True)
    p.add_argument("--convert_embedding", action="store_true")
    p.add_argument("--sparse_models", nargs="*", default=None)
    p.add_argument("--ntp_file", default=None)
    p.add_argument("--graph_name", default="hugectr")
    a = p.parse_args(argv)
    names = convert(a.onnx_model_path, a.graph_config, a.dense_model, a.convert_embedding,
                    a.sparse_models, a.ntp_file, a.graph_name)
    print(f"wrote {a.onnx_model_path}; inputs: {', '.join(names)}; output: output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
