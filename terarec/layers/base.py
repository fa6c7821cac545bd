"""The contract every dense layer follows, and the registry keyed by HugeCTR type names.

A layer is an ``nn.Module`` built from

* ``params``: a dict of the ``DenseLayer(...)`` keyword arguments it uses (HugeCTR names:
  ``num_output``, ``weight_init_type`` as a string like ``"Default"``, ``ranges``, ...), and
* ``input_shapes``: the full shape of every bottom tensor, first dimension the batch size
  used to build the graph (per-process batch). Layers never bake that batch size into
  ``forward``: at run time the batch may be smaller (last batch, eval batch).

It validates both in ``__init__`` (raising :class:`~terarec.errors.ConfigError` that names
the layer), creates its weights with HugeCTR's default initializers, reports its output
shapes, and lists its trainable tensors in HugeCTR's dense-model-file order.

Weights are stored in HugeCTR's layout (e.g. InnerProduct ``W`` is (in, out) and
``y = x @ W + b``), so saving the dense model is a plain concatenation of
``dense_weights()``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from terarec.errors import ConfigError
from terarec.utils.registry import Registry

Shape = tuple[int, ...]

LAYERS: Registry[type[Layer]] = Registry("layer type")


class Layer(nn.Module):
    """Base class of dense layers (see module docstring for the contract).

    Subclasses set:
        type_name: the HugeCTR ``Layer_t`` name.
        num_inputs: allowed number of bottoms as (min, max); max None = unbounded.
        num_outputs: allowed number of tops as (min, max).
        is_loss: True for loss layers (inputs: prediction, label; output: scalar loss).

    and implement ``forward`` (returning a tensor or a tuple of tensors, one per top) and
    ``output_shapes``.
    """

    type_name: ClassVar[str] = ""
    num_inputs: ClassVar[tuple[int, int | None]] = (1, 1)
    num_outputs: ClassVar[tuple[int, int | None]] = (1, 1)
    is_loss: ClassVar[bool] = False

    def __init__(
        self,
        params: dict[str, Any],
        input_shapes: list[Shape],
        *,
        name: str = "",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.params = dict(params)
        self.input_shapes = [tuple(int(d) for d in s) for s in input_shapes]
        self.layer_name = name or self.type_name
        self.generator = generator
        lo, hi = self.num_inputs
        n = len(self.input_shapes)
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'N'}"
            self.fail("bottom_names", f"{want} input tensors", n)

    # -- helpers for subclasses -------------------------------------------------------
    def fail(self, field: str, expected: str, received: Any) -> None:
        """Raise a ConfigError naming this layer and field."""
        raise ConfigError(
            f"{self.type_name} layer {self.layer_name!r}: {field}", expected, received
        )

    def param(self, key: str, default: Any = None) -> Any:
        return self.params.get(key, default)

    # -- the contract ------------------------------------------------------------------
    def output_shapes(self) -> list[Shape]:
        """Full shapes of the tops (first dim = batch used at build time)."""
        raise NotImplementedError

    def dense_weights(self) -> list[torch.Tensor]:
        """Trainable tensors in HugeCTR dense-model-file order (default: none)."""
        return [p for p in self.parameters(recurse=False) if p.requires_grad]

    def non_trainable(self) -> dict[str, list[float]]:
        """Non-trainable state saved in HugeCTR's ``.ntp.json`` (e.g. BatchNorm running stats)."""
        return {}

    def load_non_trainable(self, state: dict[str, list[float]]) -> None:  # noqa: B027
        """Restore what :meth:`non_trainable` returned."""

    def regularized_weights(self) -> list[torch.Tensor]:
        """Weights the L1/L2 regularizer of a loss layer applies to (HugeCTR: all dense weights)."""
        return self.dense_weights()

    # -- JSON (HugeCTR graph format) ----------------------------------------------------
    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The layer-specific keys of this layer's entry in HugeCTR's graph JSON."""
        return {}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        """Inverse of :meth:`params_to_json`; ``where`` names the entry for errors."""
        return {}
