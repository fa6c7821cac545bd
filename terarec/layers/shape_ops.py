"""Layers that only move data: Concat, Reshape, Select, Slice, Gather, Scale,
FusedReshapeConcat and FusedReshapeConcatGeneral.

Owns HugeCTR's shape rules for these layers (§10); none has weights. Forward passes never
bake in the build-time batch size.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from terarec.errors import ConfigError
from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import (
    hp,
    hp_int,
    hp_int_list,
    json_get,
    json_int_list,
    json_num,
    json_obj,
    require_rank,
)


@LAYERS.register("Concat")
class Concat(Layer):
    """Concatenate N inputs. 2D: along the last dim. 3D: ``axis`` 1 (slots) or 2 (width).
    JSON: ``axis``."""

    type_name = "Concat"
    num_inputs = (1, None)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        first = require_rank(self, 0, (2, 3))
        rank = len(first)
        self.axis = 1 if rank == 2 else hp_int(self, "axis")
        if rank == 3 and self.axis not in (1, 2):
            self.fail("axis", "1 or 2 for 3D inputs", self.axis)
        for i, s in enumerate(self.input_shapes):
            if len(s) != rank:
                self.fail(f"bottom[{i}] shape", f"a {rank}D tensor like bottom[0] {first}", s)
            other = [d for j, d in enumerate(s) if j != self.axis]
            want = [d for j, d in enumerate(first) if j != self.axis]
            if other != want:
                self.fail(f"bottom[{i}] shape", f"dims other than axis {self.axis} equal to "
                          f"bottom[0] {first}", s)

    def output_shapes(self) -> list[Shape]:
        out = list(self.input_shapes[0])
        out[self.axis] = sum(s[self.axis] for s in self.input_shapes)
        return [tuple(out)]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=self.axis)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"axis": int(params.get("axis", 1))}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        return {"axis": int(json_num(entry, "axis", where, 1))}


@LAYERS.register("Reshape")
class Reshape(Layer):
    """Reshape. Modes (first that applies):

    * v2 ``shape`` (full shape, batch included, one -1 allowed);
    * ``selected`` + ``selected_slots``: keep listed slots of (B, S, E) -> (B, len * E);
    * ``leading_dim`` (+ ``time_step``): (B, ...) -> (B, leading_dim) when leading_dim is the
      elements per sample, (B * k, leading_dim) when it divides them, or with ``time_step``
      (N / (time_step * leading_dim), time_step, leading_dim) for N input elements in all
      (HugeCTR counts the whole tensor: DIN reshapes FusedReshapeConcat's (B*T, E) to (B, T, E)).

    JSON writes ``selected`` or ``leading_dim``/``time_step`` (as HugeCTR) and also ``shape``.
    """

    type_name = "Reshape"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        self.in_shape = self.input_shapes[0]
        b = self.in_shape[0]
        per_sample = math.prod(self.in_shape[1:])
        self.slots: list[int] | None = None
        shape = hp_int_list(self, "shape")
        if shape:
            self.out_shape = self._v2_shape(shape)
            self.runtime = list(shape)
            if -1 not in shape and shape[0] == b:
                self.runtime[0] = -1
        elif bool(hp(self, "selected")):
            require_rank(self, 0, (3,))
            slots = hp_int_list(self, "selected_slots")
            if not slots or any(not 0 <= s < self.in_shape[1] for s in slots):
                self.fail("selected_slots", f"a non-empty list of slot ids in [0, "
                          f"{self.in_shape[1]})", slots)
            self.slots = slots
            self.out_shape = (b, len(slots) * self.in_shape[2])
            self.runtime = [-1, self.out_shape[1]]
        else:
            lead = hp_int(self, "leading_dim", minimum=0)
            step = hp_int(self, "time_step", minimum=0)
            if lead <= 0:
                self.fail("leading_dim", "a positive value (or a v2 'shape')", lead)
            if step > 0:
                self.out_shape = self._time_step_shape(step, lead)
                self.runtime = [-1, step, lead]
            elif per_sample % lead == 0:
                k = per_sample // lead
                self.out_shape, self.runtime = (b * k, lead), [-1, lead]
            elif lead % per_sample == 0 and b % (lead // per_sample) == 0:
                # HugeCTR's v1 Reshape only needs the total to divide: rows that were split
                # earlier (e.g. (B*S, k) in DeepFM) are merged back into (B, S*k).
                self.out_shape, self.runtime = (b * per_sample // lead, lead), [-1, lead]
            else:
                self.fail("leading_dim", f"a divisor or multiple of the {per_sample} elements "
                          "per row", lead)

    def _time_step_shape(self, step: int, lead: int) -> Shape:
        """HugeCTR's 3-D Reshape: ``(n / (time_step * leading_dim), time_step, leading_dim)``
        where ``n`` counts every element of the input, batch rows included. So ``(B, T*E)`` and
        the ``(B*T, E)`` history top of FusedReshapeConcat (DIN) both give ``(B, T, E)``."""
        total = math.prod(self.in_shape)
        if total % (step * lead):
            self.fail("time_step", f"time_step * leading_dim dividing the {total} input "
                      f"elements (input {self.in_shape})", (step, lead))
        return (total // (step * lead), step, lead)

    def _v2_shape(self, shape: list[int]) -> Shape:
        total = math.prod(self.in_shape)
        if shape.count(-1) > 1 or any(d == 0 or d < -1 for d in shape):
            self.fail("shape", "positive dims with at most one -1", shape)
        known = math.prod(d for d in shape if d != -1)
        if (-1 in shape and total % known) or (-1 not in shape and known != total):
            self.fail("shape", f"a shape holding {total} elements (input {self.in_shape})",
                      shape)
        return tuple(total // known if d == -1 else d for d in shape)

    def output_shapes(self) -> list[Shape]:
        return [self.out_shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.slots is not None:
            x = x[:, self.slots, :]
        return x.reshape(self.runtime)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if params.get("selected", False):
            out["selected"] = [int(s) for s in params.get("selected_slots", [])]
        elif params.get("leading_dim", 0):
            out["leading_dim"] = int(params["leading_dim"])
            out["time_step"] = int(params.get("time_step", 0))
        if params.get("shape"):
            out["shape"] = [int(d) for d in params["shape"]]
        return out

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if "shape" in entry:
            out["shape"] = json_int_list(entry, "shape", where)
        if "selected" in entry:
            slots = json_int_list(entry, "selected", where)
            if any(s < 0 for s in slots):
                raise ConfigError(f"{where}.selected", "slot ids >= 0", slots)
            out.update(selected=True, selected_slots=slots)
        elif "leading_dim" in entry or "shape" not in entry:
            out["leading_dim"] = int(json_num(entry, "leading_dim", where))
            out["time_step"] = int(json_num(entry, "time_step", where, 0))
        return out


@LAYERS.register("Select")
class Select(Layer):
    """Keep entries ``index`` along dimension ``dim``: in[dim] -> len(index).
    JSON (not written by HugeCTR): ``dim``, ``index``."""

    type_name = "Select"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        shape = self.input_shapes[0]
        self.dim = hp_int(self, "dim", minimum=0)
        if self.dim >= len(shape):
            self.fail("dim", f"a dimension < {len(shape)} (input {shape})", self.dim)
        self.index = hp_int_list(self, "index")
        if not self.index or any(not 0 <= i < shape[self.dim] for i in self.index):
            self.fail("index", f"a non-empty list of indices in [0, {shape[self.dim]})",
                      self.index)
        self.register_buffer("_idx", torch.tensor(self.index, dtype=torch.long),
                             persistent=False)

    def output_shapes(self) -> list[Shape]:
        out = list(self.input_shapes[0])
        out[self.dim] = len(self.index)
        return [tuple(out)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, self.dim, self._idx)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        index = [int(i) for i in params.get("index", [])]
        return {"dim": int(params.get("dim", 0)), "index": index}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        return {"dim": int(json_num(entry, "dim", where)),
                "index": json_int_list(entry, "index", where)}


@LAYERS.register("Slice")
class Slice(Layer):
    """Copies of last-dim ranges [a, b) (overlap allowed, at most 5): (B, N) -> {(B, b - a)}.
    JSON: ``ranges``."""

    type_name = "Slice"
    num_outputs = (1, 5)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        shape = require_rank(self, 0, (2, 3))
        ranges = hp(self, "ranges")
        ok = isinstance(ranges, (list, tuple)) and 1 <= len(ranges) <= 5
        parsed: list[tuple[int, int]] = []
        for r in ranges if ok else []:
            if not (isinstance(r, (list, tuple)) and len(r) == 2):
                ok = False
                break
            a, b = int(r[0]), int(r[1])
            if not 0 <= a < b <= shape[-1]:
                self.fail("ranges", f"pairs [a, b) with 0 <= a < b <= {shape[-1]}", ranges)
            parsed.append((a, b))
        if not ok:
            self.fail("ranges", "1 to 5 pairs [a, b)", ranges)
        self.ranges = parsed

    def output_shapes(self) -> list[Shape]:
        head = self.input_shapes[0][:-1]
        return [(*head, b - a) for a, b in self.ranges]

    def forward(self, x: torch.Tensor) -> Any:
        outs = tuple(x[..., a:b] for a, b in self.ranges)
        return outs[0] if len(outs) == 1 else outs

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"ranges": [[int(a), int(b)] for a, b in params.get("ranges", [])]}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        ranges = json_get(entry, "ranges", where)
        if not isinstance(ranges, list) or not all(
            isinstance(r, list) and len(r) == 2 for r in ranges
        ):
            raise ConfigError(f"{where}.ranges", "a list of [a, b] pairs", ranges)
        return {"ranges": [(int(a), int(b)) for a, b in ranges]}


@LAYERS.register("Gather")
class Gather(Layer):
    """Select rows ``indices`` of a 2D input: (B, N) -> (len(indices), N). JSON: ``indices``."""

    type_name = "Gather"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        shape = require_rank(self, 0, (2,))
        self.indices = hp_int_list(self, "indices")
        if not self.indices or any(not 0 <= i < shape[0] for i in self.indices):
            self.fail("indices", f"a non-empty list of row ids in [0, {shape[0]})", self.indices)
        self.register_buffer("_idx", torch.tensor(self.indices, dtype=torch.long),
                             persistent=False)

    def output_shapes(self) -> list[Shape]:
        return [(len(self.indices), self.input_shapes[0][1])]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, 0, self._idx)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"indices": [int(i) for i in params.get("indices", [])]}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        return {"indices": json_int_list(entry, "indices", where)}


@LAYERS.register("Scale")
class Scale(Layer):
    """Repeat a 2D tensor ``factor`` times: axis=0 repeats each element along the width,
    (B, N) -> (B, N * factor); axis=1 repeats each row, (B, N) -> (B * factor, N).
    JSON: ``scale_param{axis, factor}``. Backward sums the copies' gradients (HugeCTR keeps
    only the first copy's)."""

    type_name = "Scale"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        require_rank(self, 0, (2,))
        self.axis = hp_int(self, "axis")
        if self.axis not in (0, 1):
            self.fail("axis", "0 or 1", self.axis)
        factor = hp(self, "factor")
        if not isinstance(factor, (int, float)) or factor < 1 or int(factor) != factor:
            self.fail("factor", "a positive integer", factor)
        self.factor = int(factor)

    def output_shapes(self) -> list[Shape]:
        b, n = self.input_shapes[0]
        return [(b, n * self.factor) if self.axis == 0 else (b * self.factor, n)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.repeat_interleave(x, self.factor, dim=1 - self.axis)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"scale_param": {"axis": int(params.get("axis", 1)),
                                "factor": float(params.get("factor", 1.0))}}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        obj = json_obj(entry, "scale_param", where)
        w = f"{where}.scale_param"
        return {"axis": int(json_num(obj, "axis", w)), "factor": float(json_num(obj, "factor", w))}


class _FusedReshapeBase(Layer):
    num_inputs = (1, None)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        first = require_rank(self, 0, (3,))
        for i, s in enumerate(self.input_shapes):
            if len(s) != 3 or s[:2] != first[:2]:
                self.fail(f"bottom[{i}] shape", f"(B, S, E) with B, S = {first[:2]}", s)
        self.width = sum(s[2] for s in self.input_shapes)


@LAYERS.register("FusedReshapeConcat")
class FusedReshapeConcat(_FusedReshapeBase):
    """DIN: concat k inputs (B, S, E_i) along width; rows 0..S-2 of each sample (history)
    -> top 0 (B * (S - 1), sum E), row S-1 (target item) -> top 1 (B, sum E)."""

    type_name = "FusedReshapeConcat"
    num_outputs = (2, 2)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        if self.input_shapes[0][1] < 2:
            self.fail("bottom[0] shape", "at least 2 rows per sample (S >= 2)",
                      self.input_shapes[0])

    def output_shapes(self) -> list[Shape]:
        b, s, _ = self.input_shapes[0]
        return [(b * (s - 1), self.width), (b, self.width)]

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cat = torch.cat(xs, dim=2)  # (B, S, W)
        return cat[:, :-1, :].reshape(-1, self.width), cat[:, -1, :]


@LAYERS.register("FusedReshapeConcatGeneral")
class FusedReshapeConcatGeneral(_FusedReshapeBase):
    """Concat k inputs (B, S, E_i) along width and flatten: -> (B * S, sum E)."""

    type_name = "FusedReshapeConcatGeneral"

    def output_shapes(self) -> list[Shape]:
        b, s, _ = self.input_shapes[0]
        return [(b * s, self.width)]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=2).reshape(-1, self.width)
