"""Export the dense network of a trained model to ONNX (``terarec export-onnx``).

The ONNX graph takes the dense features and one pooled-embedding tensor per SparseEmbedding
(``(B, slot_num, vec_size)``, named after the embedding) and returns the probabilities
``(B, label_dim)``; the embedding lookup stays in the parameter server, as in HugeCTR's
deployments. Needs the ``onnx`` extra (``onnx``, ``onnxruntime``; torch's exporter).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from terarec.graph.inference import build_inference_network
from terarec.utils.atomic import atomic_file
from terarec.utils.imports import require
from terarec.utils.paths import check_local_path


class _Exportable(nn.Module):
    def __init__(self, network: nn.Module, names: list[str], label_dim: int) -> None:
        super().__init__()
        self.network = network
        self.names = names
        self.label_dim = label_dim

    def forward(self, dense: torch.Tensor, *embeddings: torch.Tensor) -> torch.Tensor:
        labels = torch.zeros(dense.shape[0], self.label_dim, dtype=dense.dtype)
        out = self.network(dense, labels, dict(zip(self.names, embeddings)), compute_loss=False)
        return out.predictions


def export_onnx(graph_json_path: str | os.PathLike[str], dense_model_file: str | os.PathLike[str],
                onnx_path: str | os.PathLike[str], opset: int = 17,
                non_trainable_params_file: str | os.PathLike[str] = "") -> list[str]:
    """Write ``onnx_path``; returns the input names (``dense`` first, then the embeddings).
    ``non_trainable_params_file``: the ``.ntp.json`` of BatchNorm statistics and custom-layer
    buffers (default: none)."""
    require("onnx", extra="onnx", feature="ONNX export")
    _, network = build_inference_network(graph_json_path, dense_model_file, "cpu",
                                         non_trainable_params_file)
    schema = network.schema
    emb_names = [name for name in network.shapes if name not in
                 (*schema.label_names, schema.dense_name) and _is_embedding(network, name)]
    module = _Exportable(network, emb_names, schema.label_dim).eval()
    batch = 2
    example = (torch.randn(batch, schema.dense_dim),
               *[torch.randn(batch, *network.shapes[n][1:]) for n in emb_names])
    input_names = [schema.dense_name, *emb_names]
    export_module(module, example, input_names, onnx_path, opset, "export_onnx(onnx_path=...)")
    return input_names


def export_module(module: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str],
                  onnx_path: str | os.PathLike[str], opset: int, where: str,
                  dynamic_axes: dict[str, dict[int, str]] | None = None) -> None:
    """``module(*example)`` to ONNX at ``onnx_path`` (atomically), one output named ``output``;
    dynamic axes: ``dynamic_axes`` (default: dimension 0 of every input, "batch"), the
    output's batch dimension always; ``where`` names the caller's argument in errors."""
    dynamic = dict(dynamic_axes) if dynamic_axes is not None else \
        {name: {0: "batch"} for name in input_names}
    dynamic["output"] = {0: "batch"}
    check_local_path(onnx_path, where)
    Path(onnx_path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(onnx_path) as fh:
        torch.onnx.export(module, example, fh, input_names=input_names, output_names=["output"],
                          dynamic_axes=dynamic, opset_version=opset, dynamo=False)


def _is_embedding(network: nn.Module, name: str) -> bool:
    produced = {t for spec in network.specs for t in spec.top}
    return name not in produced
