"""Dense layers of HugeCTR (``Layer_t``), registered in ``LAYERS`` by their HugeCTR names.

Importing this package registers every layer. ``build_layer`` resolves a type name (old
aliases "DotProduct", "Multiply" included) and builds the layer.

Example:
    >>> from terarec.layers import build_layer
    >>> fc = build_layer("InnerProduct", {"num_output": 2}, [(4, 3)], name="fc1")
    >>> fc.output_shapes()
    [(4, 2)]
"""

from __future__ import annotations

from typing import Any

import torch

from terarec.enums import name_of
from terarec.layers import (  # noqa: F401  (imported for registration)
    activations,
    attention,
    elementwise,
    fm,
    gru,
    inner_product,
    interaction,
    losses,
    mlp,
    multi_cross,
    normalization,
    reduce,
    shape_ops,
    torch_module,
)
from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.init import INITIALIZERS, init_tensor

__all__ = ["INITIALIZERS", "LAYERS", "Layer", "Shape", "build_layer", "init_tensor"]


def build_layer(
    type_name: Any,
    params: dict[str, Any],
    input_shapes: list[Shape],
    *,
    name: str = "",
    generator: torch.Generator | None = None,
) -> Layer:
    """Build the layer registered as ``type_name`` (a string or ``Layer_t`` member).

    Raises ConfigError listing the valid names when the type is unknown, or naming the layer
    and field when params or shapes are invalid.
    """
    where = f"layer {name!r}: type" if name else "layer type"
    cls = LAYERS.get(name_of(type_name), where)
    return cls(params, input_shapes, name=name, generator=generator)
