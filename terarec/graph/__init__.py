"""The model graph: layer/embedding specs, HugeCTR graph JSON, and the nn.Module built from them."""

from terarec.graph.spec import EmbeddingSpec, GraphSpec, LayerSpec


def build_inference_network(*args, **kwargs):  # noqa: ANN002, ANN003, ANN201
    """See :func:`terarec.graph.inference.build_inference_network`."""
    from terarec.graph.inference import build_inference_network as build

    return build(*args, **kwargs)

__all__ = ["EmbeddingSpec", "GraphSpec", "LayerSpec", "build_inference_network"]
