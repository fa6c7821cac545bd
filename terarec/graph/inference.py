"""The dense half of a trained model, for inference: graph JSON + ``_dense_N.model`` -> a function.

Used by the inference session (``terarec.inference``): it pools embeddings itself (from the
parameter server) and calls the function returned here with them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from terarec.checkpoint import hugectr_files as hf
from terarec.errors import ConfigError
from terarec.graph.builder import DenseNetwork
from terarec.graph.json_io import read_graph_json

DenseFn = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def build_inference_network(
    graph_json_path: str | os.PathLike[str],
    dense_model_file: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    non_trainable_params_file: str | os.PathLike[str] = "",
) -> tuple[DenseFn, DenseNetwork]:
    """Return ``dense_fn(embeddings, dense) -> probabilities (B, label_dim)`` and the network.

    ``embeddings`` maps each SparseEmbedding's top name to its pooled (B, slot_num, dim)
    tensor. The graph may end in a loss layer (the training graph; the loss's activation is
    applied) or in a Sigmoid (HugeCTR's inference graphs).
    """
    device = torch.device(device)
    spec = read_graph_json(graph_json_path)
    assert spec.schema is not None  # noqa: S101 - read_graph_json requires a Data layer
    slots = {s.name: s.slot_num for s in spec.schema.sparse}
    emb_shapes = {}
    for e in spec.embeddings:
        if e.bottom not in slots:
            raise ConfigError(f"{graph_json_path}: embedding {e.top!r}.bottom",
                              f"one of {sorted(slots)}", e.bottom)
        emb_shapes[e.top] = (1, slots[e.bottom], e.embedding_vec_size)
    network = DenseNetwork(spec, emb_shapes, batch_size=1, require_loss=False).to(device)
    hf.read_dense_into(network.dense_weights(), dense_model_file)
    ntp = str(non_trainable_params_file) or str(dense_model_file) + ".ntp.json"
    if Path(ntp).is_file():
        by_top = {ls.top[0]: layer for ls, layer in zip(network.specs, network.layers)}
        for entry in hf.read_ntp(ntp):
            layer = by_top.get(entry.get("top"))
            if layer is None:  # HugeCTR's own ntp files carry no top: match BatchNorms in order
                continue
            layer.load_non_trainable({k: v for k, v in entry.items() if k not in ("type", "top")})
    network.eval()
    label_dim = spec.schema.label_dim

    @torch.no_grad()
    def dense_fn(embeddings: dict[str, torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        dense = dense.to(device, torch.float32)
        labels = torch.zeros(dense.shape[0], label_dim, device=device)
        emb = {k: v.to(device, torch.float32) for k, v in embeddings.items()}
        out = network(dense, labels, emb, compute_loss=False)
        assert out.predictions is not None  # noqa: S101 - always set by DenseNetwork.forward
        return out.predictions

    return dense_fn, network
