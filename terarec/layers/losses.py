"""Loss layers: BinaryCrossEntropyLoss, CrossEntropyLoss, MultiCrossEntropyLoss.

Owns the loss value (0-dim, mean over this process's batch; the trainer averages across
ranks) and the L1/L2 regularizer term of §5.3 that a loss layer carries:
L1: lambda / batch * sum |w|;  L2: lambda / (2 * batch) * sum w^2, over all dense weights.
Inputs are (prediction logits, label); the sigmoid/softmax is fused into the loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from terarec.errors import ConfigError
from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import hp, hp_float, json_num, pget, upcast


class _Loss(Layer):
    num_inputs = (2, 2)
    is_loss = True

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        self.use_regularizer = bool(hp(self, "use_regularizer"))
        self.regularizer_type = str(hp(self, "regularizer_type"))
        self.lam = hp_float(self, "lambda")
        if self.regularizer_type not in ("L1", "L2"):
            self.fail("regularizer_type", "'L1' or 'L2'", self.regularizer_type)
        if self.lam < 0:
            self.fail("lambda", "a value >= 0", self.lam)

    def output_shapes(self) -> list[Shape]:
        return [()]

    def regularizer_term(self, weights: list[torch.Tensor], batch_size: int) -> torch.Tensor:
        """The §5.3 term added to the loss (0-dim); zero when ``use_regularizer`` is False."""
        if not weights:
            return torch.zeros(())
        zero = weights[0].new_zeros(())
        if not self.use_regularizer or self.lam == 0.0:
            return zero
        if self.regularizer_type == "L1":
            total = sum((w.abs().sum() for w in weights), zero)
            return total * (self.lam / batch_size)
        total = sum(((w * w).sum() for w in weights), zero)
        return total * (self.lam / (2.0 * batch_size))

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("use_regularizer", False):
            return {}
        return {"regularizer": str(pget(params, "regularizer_type")),
                "lambda": float(params.get("lambda", 0.0))}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        if "regularizer" not in entry:
            return {"use_regularizer": False}
        reg = entry["regularizer"]
        if reg not in ("L1", "L2"):
            raise ConfigError(f"{where}.regularizer", "'L1' or 'L2'", reg)
        return {"use_regularizer": True, "regularizer_type": reg,
                "lambda": float(json_num(entry, "lambda", where))}


@LAYERS.register("BinaryCrossEntropyLoss")
class BinaryCrossEntropyLoss(_Loss):
    """mean(BCE(sigmoid(logit), label)) for pred (B, 1) logits and label (B, 1)."""

    type_name = "BinaryCrossEntropyLoss"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        pred, label = self.input_shapes
        if pred != label or len(pred) != 2 or pred[1] != 1:
            self.fail("bottom shapes", "prediction and label both (B, 1)", [pred, label])

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x = upcast(logits)
        return F.binary_cross_entropy_with_logits(x, label.to(x.dtype))


@LAYERS.register("CrossEntropyLoss")
class CrossEntropyLoss(_Loss):
    """2-class softmax cross entropy: pred (B, 2) logits, label one 0/1 value per sample
    ((B, 1) or (B,)); HugeCTR reads label[i] per sample."""

    type_name = "CrossEntropyLoss"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        pred, label = self.input_shapes
        if len(pred) != 2 or pred[1] != 2:
            self.fail("bottom[0] shape", "(B, 2) logits", pred)
        if label[0] != pred[0] or (len(label) == 2 and label[1] != 1) or len(label) > 2:
            self.fail("bottom[1] shape", f"({pred[0]}, 1) labels", label)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(upcast(logits), label.reshape(-1).round().long())


@LAYERS.register("MultiCrossEntropyLoss")
class MultiCrossEntropyLoss(_Loss):
    """Per-output sigmoid BCE weighted by ``target_weight_vec`` (default 1.0 per output):
    sum over kept (b, t) of w_t * BCE / B; labels < -0.5 are masked out.
    JSON: ``target_weight`` (always written; HugeCTR's reader requires it)."""

    type_name = "MultiCrossEntropyLoss"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        pred, label = self.input_shapes
        if pred != label or len(pred) != 2:
            self.fail("bottom shapes", "prediction and label both (B, T)", [pred, label])
        weights = hp(self, "target_weight_vec") or [1.0] * pred[1]
        if len(weights) != pred[1]:
            self.fail("target_weight_vec", f"{pred[1]} weights (one per output)", weights)
        self.register_buffer("target_weight", torch.tensor(weights, dtype=torch.float64),
                             persistent=False)

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        x = upcast(logits)
        y = label.to(x.dtype)
        keep = (y >= -0.5).to(x.dtype)
        bce = F.binary_cross_entropy_with_logits(x, y.clamp(min=0.0), reduction="none")
        return (bce * keep * self.target_weight.to(x.dtype)).sum() / x.shape[0]

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        out = super().params_to_json(params)
        out["target_weight"] = [float(w) for w in params.get("target_weight_vec", [])]
        return out

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        out = super().params_from_json(entry, where)
        tw = entry.get("target_weight", [])
        if not isinstance(tw, list) or not all(isinstance(w, (int, float)) for w in tw):
            raise ConfigError(f"{where}.target_weight", "a list of numbers", tw)
        out["target_weight_vec"] = [float(w) for w in tw]
        return out
