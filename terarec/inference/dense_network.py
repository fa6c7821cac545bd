"""The one place where inference meets the training-side graph builder.

Owns :func:`build_dense_network`, which returns the dense network of a HugeCTR graph JSON as a
plain callable plus the embedding specs the session needs, and :func:`embedding_specs_from_graph`,
which reads those specs straight from the graph JSON (§13) without the graph builder.

``dense_fn(embeddings: dict[table_name, Tensor (B, slot_num, dim)], dense: Tensor (B, dense_dim))
-> Tensor (B, label_dim)`` returns probabilities (the graph's final sigmoid/softmax applied).
The dense part needs :mod:`terarec.graph`, imported lazily here only.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from terarec.errors import ConfigError

DenseFn = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]

#: Graph JSON layer types that are embeddings (HugeCTR ``Embedding_t`` names).
EMBEDDING_TYPES = frozenset({
    "DistributedSlotSparseEmbeddingHash", "LocalizedSlotSparseEmbeddingHash",
    "LocalizedSlotSparseEmbeddingOneHot", "HybridSparseEmbedding",
})
_COMBINERS = {"sum": "sum", "mean": "mean", "average": "mean", 0: "sum", 1: "mean"}


def _load(graph: str | os.PathLike[str] | dict[str, Any]) -> dict[str, Any]:
    if isinstance(graph, dict):
        return graph
    try:
        return json.loads(Path(graph).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError("graph JSON", "a readable HugeCTR graph JSON file", str(graph)) from exc


def dense_dim_of(graph: str | os.PathLike[str] | dict[str, Any]) -> int:
    """``dense_dim`` of the graph's Data layer (0 when it has none)."""
    data = next((ly for ly in _load(graph).get("layers", []) if ly.get("type") == "Data"), {})
    dims = data.get("dense", {}).get("dense_dim", 0)
    return int(sum(dims) if isinstance(dims, list) else dims)


def embedding_specs_from_graph(graph: str | os.PathLike[str] | dict[str, Any]
                               ) -> list[dict[str, Any]]:
    """Embedding tables of a graph JSON in graph order.

    Returns one dict per embedding layer: ``table`` (its top name), ``input`` (the sparse input
    it reads), ``slot_num``, ``dim`` (``embedding_vec_size``) and ``combiner`` (sum|mean).
    """
    layers = _load(graph).get("layers", [])
    data = next((ly for ly in layers if ly.get("type") == "Data"), None)
    if data is None:
        raise ConfigError("graph JSON layers", "a layer of type 'Data'", [ly.get("type")
                                                                            for ly in layers])
    sparse = data.get("sparse", [])
    slots = {s["top"]: int(s["slot_num"]) for s in (sparse if isinstance(sparse, list)
                                                   else [sparse])}
    specs = []
    for i, ly in enumerate(layers):
        if ly.get("type") not in EMBEDDING_TYPES:
            continue
        where = f"layers[{i}] {ly.get('top')!r}"
        hp = ly.get("sparse_embedding_hparam", {})
        bottom = ly.get("bottom")
        bottom = bottom[0] if isinstance(bottom, list) else bottom
        if bottom not in slots:
            raise ConfigError(f"{where}.bottom", f"one of the Data sparse inputs {sorted(slots)}",
                              bottom)
        combiner = hp.get("combiner", "sum")
        if combiner not in _COMBINERS:
            raise ConfigError(f"{where}.combiner", "'sum' or 'mean'", combiner)
        specs.append({"table": ly["top"], "input": bottom, "slot_num": slots[bottom],
                      "dim": int(hp["embedding_vec_size"]), "combiner": _COMBINERS[combiner]})
    return specs


def build_dense_network(graph_json_path: str | os.PathLike[str], dense_model_file: str,
                        device: str | torch.device,
                        non_trainable_params_file: str = "",
                        ) -> tuple[DenseFn, list[dict[str, Any]]]:
    """Return ``(dense_fn, embedding_specs)`` for a trained HugeCTR graph.

    Args:
        graph_json_path: the graph JSON written by ``graph_to_json`` (``network_file``).
        dense_model_file: raw float32 dense weights (§17.2).
        device: where the dense network runs.
        non_trainable_params_file: ``.ntp.json`` with BatchNorm running statistics.

    """
    from terarec.graph.inference import build_inference_network

    specs = embedding_specs_from_graph(graph_json_path)
    dense_fn, _ = build_inference_network(graph_json_path, dense_model_file, device,
                                          non_trainable_params_file)
    return dense_fn, specs
