"""Build the dense network (an ``nn.Module``) from a :class:`GraphSpec`.

The embedding tables are built elsewhere (``terarec.embedding``); the network receives their
pooled outputs by tensor name. Shapes are inferred layer by layer in add order, so a wrong
bottom name or a shape mismatch is reported when the model is compiled, naming the layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from terarec.data.schema import DataSchema
from terarec.errors import ConfigError
from terarec.graph.spec import GraphSpec, LayerSpec

Shape = tuple[int, ...]

# How each loss turns its first input (logits) into the probabilities users see.
PREDICTION_ACTIVATION = {
    "BinaryCrossEntropyLoss": lambda x: torch.sigmoid(x),
    "MultiCrossEntropyLoss": lambda x: torch.sigmoid(x),
    "CrossEntropyLoss": lambda x: torch.softmax(x.float(), dim=-1)[..., 1:],
}


def _predictions(type_name: str, layer: nn.Module, logits: torch.Tensor) -> torch.Tensor:
    """What a loss layer's logits mean as probabilities (a TorchLayer loss says it itself)."""
    custom = getattr(layer, "predictions", None)
    return custom(logits) if callable(custom) else PREDICTION_ACTIVATION[type_name](logits)


@dataclass
class NetworkOutput:
    """Everything one forward pass produced."""

    tensors: dict[str, torch.Tensor]
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # per loss top name
    loss: torch.Tensor | None = None  # weighted total incl. regularizers
    predictions: torch.Tensor | None = None  # (B, label_dim) probabilities
    labels: torch.Tensor | None = None  # (B, label_dim) matching predictions


def input_shapes(schema: DataSchema, batch_size: int) -> dict[str, Shape]:
    shapes: dict[str, Shape] = {}
    for name, dim in zip(schema.label_names, schema.label_dims):
        shapes[name] = (batch_size, dim)
    shapes[schema.dense_name] = (batch_size, schema.dense_dim)
    return shapes


class DenseNetwork(nn.Module):
    """The dense layers of a graph, wired by tensor name.

    Args:
        spec: the graph (only ``schema`` and ``layers`` are used here).
        embedding_shapes: ``{embedding top name: (batch, slot_num, vec_size)}``.
        batch_size: batch used for shape inference (per process).
        generator: RNG for weight initialisation.
    """

    def __init__(
        self,
        spec: GraphSpec,
        embedding_shapes: dict[str, Shape],
        batch_size: int,
        generator: torch.Generator | None = None,
        loss_weights: dict[str, float] | None = None,
        require_loss: bool = True,
    ) -> None:
        super().__init__()
        from terarec.layers import build_layer

        if spec.schema is None:
            raise ConfigError("Model", "an Input (data layer) before other layers", None)
        self.schema = spec.schema
        self.specs: list[LayerSpec] = list(spec.layers)
        shapes = input_shapes(spec.schema, batch_size)
        for name, shape in embedding_shapes.items():
            if name in shapes:
                raise ConfigError(f"SparseEmbedding {name!r}", "a tensor name not used yet", name)
            shapes[name] = shape
        self.layers = nn.ModuleList()
        self.loss_tops: list[str] = []
        for i, ls in enumerate(self.specs):
            where = f"layers[{i}] {ls.type} (top {ls.top})"
            for b in ls.bottom:
                if b not in shapes:
                    raise ConfigError(f"{where}: bottom_names", f"one of the tensors defined so far "
                                      f"{sorted(shapes)}", b)
            for t in ls.top:
                if t in shapes:
                    raise ConfigError(f"{where}: top_names", "new tensor names", t)
            layer = build_layer(ls.type, ls.params, [shapes[b] for b in ls.bottom],
                                name=ls.top[0], generator=generator)
            outs = layer.output_shapes()
            if len(outs) != len(ls.top):
                raise ConfigError(f"{where}: top_names", f"{len(outs)} names", ls.top)
            for t, s in zip(ls.top, outs):
                shapes[t] = tuple(s)
            if layer.is_loss:
                self.loss_tops.append(ls.top[0])
            self.layers.append(layer)
        self.shapes = shapes
        if not self.loss_tops and require_loss:
            raise ConfigError("Model.compile", "at least one loss layer (e.g. "
                              "BinaryCrossEntropyLoss)", [s.type for s in self.specs])
        self.loss_weights: dict[str, float] = {}
        if loss_weights:
            self.set_loss_weights(loss_weights)

    def losses_of_labels(self) -> dict[str, list[str]]:
        """``{label name: top names of the loss layers that take it as a bottom}``."""
        labels = set(self.schema.label_names)
        out: dict[str, list[str]] = {}
        for ls, layer in zip(self.specs, self.layers):
            if layer.is_loss:
                for b in ls.bottom:
                    if b in labels:
                        out.setdefault(b, []).append(ls.top[0])
        return out

    def set_loss_weights(self, weights: dict[str, float]) -> None:
        """Weight each loss by name (``Model.compile(loss_names, loss_weights)``).

        A name is a label name of the Input (HugeCTR: ``update_label_weights`` keys the weights
        by label, e.g. MMoE's ``["50k_label", "married_label"]``; the weight applies to every
        loss layer fed by that label) or a loss layer's top name (terarec's earlier form).
        Unnamed losses keep their default weight.
        """
        by_label = self.losses_of_labels()
        resolved: dict[str, float] = {}
        named_by: dict[str, str] = {}
        for name, weight in weights.items():
            tops = self._losses_named(name, by_label)
            for top in tops:
                if top in named_by:
                    raise ConfigError("Model.compile(loss_names)", f"each loss weighted once; "
                                      f"{named_by[top]!r} and {name!r} both name loss {top!r}",
                                      list(weights))
                named_by[top] = name
                resolved[top] = float(weight)
        self.loss_weights = resolved

    def _losses_named(self, name: str, by_label: dict[str, list[str]]) -> list[str]:
        """The loss tops ``name`` (a label or a loss top name) selects; a clear error if none."""
        if name in self.loss_tops:
            return [name]
        if name in by_label:
            return by_label[name]
        if name in self.schema.label_names:
            raise ConfigError("Model.compile(loss_names)", f"a label that a loss layer reads "
                              f"(labels with a loss: {sorted(by_label)})", name)
        raise ConfigError("Model.compile(loss_names)", f"label names {list(by_label)} "
                          f"(Input label_names, as HugeCTR) or loss layer names "
                          f"{self.loss_tops}", name)

    def dense_weights(self) -> list[torch.Tensor]:
        """All trainable tensors in HugeCTR's dense-model-file order."""
        out: list[torch.Tensor] = []
        for layer in self.layers:
            out += layer.dense_weights()
        return out

    def split_labels(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        start = 0
        for name, dim in zip(self.schema.label_names, self.schema.label_dims):
            out[name] = labels[:, start:start + dim]
            start += dim
        return out

    def forward(
        self,
        dense: torch.Tensor,
        labels: torch.Tensor,
        embeddings: dict[str, torch.Tensor],
        compute_loss: bool = True,
    ) -> NetworkOutput:
        tensors: dict[str, torch.Tensor] = {self.schema.dense_name: dense}
        tensors.update(self.split_labels(labels))
        tensors.update(embeddings)
        out = NetworkOutput(tensors)
        preds, labs = [], []
        for ls, layer in zip(self.specs, self.layers):
            args = [tensors[b] for b in ls.bottom]
            if layer.is_loss:
                logits, label = args[0], args[1]
                preds.append(_predictions(ls.type, layer, logits.float()))
                labs.append(label.float())
                if compute_loss:
                    loss = layer(logits.float(), label.float())
                    tensors[ls.top[0]] = loss
                    out.losses[ls.top[0]] = loss
                continue
            result = layer(*args)
            if isinstance(result, torch.Tensor):
                result = (result,)
            for t, value in zip(ls.top, result):
                tensors[t] = value
        if not preds:  # inference graph ending in e.g. Sigmoid: the last top is the prediction
            last = tensors[self.specs[-1].top[0]] if self.specs else dense
            out.predictions = last.float().reshape(last.shape[0], -1)
            out.labels = labels.float()
            return out
        out.predictions = torch.cat(preds, dim=1) if len(preds) > 1 else preds[0]
        out.labels = torch.cat(labs, dim=1) if len(labs) > 1 else labs[0]
        if compute_loss:
            out.loss = self._total_loss(out.losses, dense.shape[0])
        return out

    def _total_loss(self, losses: dict[str, torch.Tensor], batch: int) -> torch.Tensor:
        total: torch.Tensor | None = None
        weights = self.dense_weights()
        label_w = dict(zip(self.schema.label_names, self.schema.label_weights or []))
        for ls, layer in zip(self.specs, self.layers):
            if not layer.is_loss:
                continue
            name = ls.top[0]
            w = self.loss_weights.get(name, label_w.get(ls.bottom[1], 1.0))
            term = losses[name] * w + layer.regularizer_term(weights, batch)
            total = term if total is None else total + term
        assert total is not None  # noqa: S101 - guaranteed by the loss-layer check in __init__
        return total
