"""The ``GRU`` layer (HugeCTR wraps cuDNN's single-layer unidirectional GRU).

Owns the recurrence and the weight blob. Gates follow cuDNN (reset r, update z, new n) with
cuDNN's single-input-bias mode:
    r = sigmoid(W_r x + R_r h + b_r),  z = sigmoid(W_z x + R_z h + b_z)
    n = tanh(W_n x + b_n + r * (R_n h)),  h' = (1 - z) * n + z * h,  h_0 = 0.
Dense-file tensors: the blob (1, 3HE + 3HH + 3H) laid out W_r, W_z, W_n (each (H, E)),
R_r, R_z, R_n (each (H, H)), b_r, b_z, b_n (each H) - our reading of cuDNN's weight space -
then ``hx`` (1, B*H), kept only so the file size matches HugeCTR (HugeCTR passes a NULL
initial state to cuDNN, so hx is unused there too).

Shapes: the input holds batchsize * SeqLength * vector_size values.
* (B, S*E) or (B, S, E), batch-major: output (B, num_output) = the last hidden state
  (HugeCTR's declared shape (in_dim[0], num_output)).
* (1, B*S*E), sequence-major as cuDNN reads it: output (1, S*B*H), every step's hidden state
  sequence-major (cuDNN's y; HugeCTR declares (1, num_output) but cuDNN writes all of y).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import (
    hp_init,
    hp_int,
    inits_from_json,
    inits_to_json,
    json_num,
    json_obj,
)
from terarec.layers.init import init_tensor

_GRU_INITS = {"weight_init_type": "weight_init", "bias_init_type": "bias_init"}


@LAYERS.register("GRU")
class GRU(Layer):
    """Single-layer GRU (see module docstring). JSON: ``gru_param{num_output, batchsize,
    SeqLength, vector_size, weight_init?, bias_init?}``."""

    type_name = "GRU"

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        self.h = hp_int(self, "num_output", minimum=1)
        self.b = hp_int(self, "batchsize", minimum=1)
        self.s = hp_int(self, "SeqLength", minimum=1)
        self.e = hp_int(self, "vector_size", minimum=1)
        shape = self.input_shapes[0]
        if math.prod(shape) != self.b * self.s * self.e:
            self.fail("bottom[0] shape", f"{self.b}*{self.s}*{self.e} values "
                      "(batchsize*SeqLength*vector_size)", shape)
        self.seq_major = shape[0] != self.b
        h, e = self.h, self.e
        w_kind, b_kind = hp_init(self, "weight_init_type"), hp_init(self, "bias_init_type")
        gen = self.generator
        w_in = init_tensor(w_kind, "rnn_weight", (3 * h, e), e, h, gen)
        w_rec = init_tensor(w_kind, "rnn_weight", (3 * h, h), h, h, gen)
        bias = init_tensor(b_kind, "beta", (3 * h,), 1, h, gen)
        blob = torch.cat([w_in.reshape(-1), w_rec.reshape(-1), bias]).reshape(1, -1)
        self.weight = nn.Parameter(blob)
        self.hx = nn.Parameter(torch.zeros(1, self.b * h))

    def output_shapes(self) -> list[Shape]:
        if self.seq_major:
            return [(1, self.s * self.b * self.h)]
        return [(self.input_shapes[0][0], self.h)]

    def _unpack(self, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        h, e = self.h, self.e
        flat = self.weight.to(dtype).reshape(-1)
        n_in, n_rec = 3 * h * e, 3 * h * h
        w_in = flat[:n_in].reshape(3 * h, e)
        w_rec = flat[n_in:n_in + n_rec].reshape(3 * h, h)
        bias = flat[n_in + n_rec:]
        return w_in, w_rec, bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.seq_major:
            seq = x.reshape(self.s, -1, self.e)  # (S, B, E)
        else:
            seq = x.reshape(x.shape[0], self.s, self.e).transpose(0, 1)
        w_in, w_rec, bias = self._unpack(x.dtype)
        gates_x = torch.matmul(seq, w_in.t()) + bias  # (S, B, 3H)
        h = seq.new_zeros(seq.shape[1], self.h)
        wr_rz, wr_n = w_rec[: 2 * self.h], w_rec[2 * self.h:]
        outs = []
        for t in range(self.s):
            gx = gates_x[t]
            rz = torch.sigmoid(gx[:, : 2 * self.h] + h @ wr_rz.t())
            r, z = rz[:, : self.h], rz[:, self.h:]
            n = torch.tanh(gx[:, 2 * self.h:] + r * (h @ wr_n.t()))
            h = (1 - z) * n + z * h
            outs.append(h)
        if self.seq_major:
            return torch.stack(outs).reshape(1, -1)
        return h

    def dense_weights(self) -> list[torch.Tensor]:
        return [self.weight, self.hx]

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        gru: dict[str, Any] = {k: int(params.get(k, d)) for k, d in (
            ("num_output", 1), ("batchsize", 1), ("SeqLength", 1), ("vector_size", 1))}
        inits_to_json(params, gru, _GRU_INITS)
        return {"gru_param": gru}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        w = f"{where}.gru_param"
        gru = json_obj(entry, "gru_param", where)
        out: dict[str, Any] = {k: int(json_num(gru, k, w)) for k in (
            "num_output", "batchsize", "SeqLength", "vector_size")}
        inits_from_json(gru, w, _GRU_INITS, out)
        return out
