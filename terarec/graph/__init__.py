"""The model graph: layer/embedding specs, HugeCTR graph JSON, and the nn.Module built from them."""

from terarec.graph.spec import EmbeddingSpec, GraphSpec, LayerSpec

__all__ = ["EmbeddingSpec", "GraphSpec", "LayerSpec"]
