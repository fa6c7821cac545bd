"""Attention building blocks: ``MultiHeadAttention``, ``MatrixMultiply``, ``SequenceMask``.

Owns the HEAD (>= 23.09) attention semantics: Q (B, Sf, H), K (B, St, H), V (B, St, H) and an
optional mask M (B, 1, Sf, St) -> softmax(Q_h K_h^T / sqrt(H / heads) - (1 - M) * 10000) V_h,
heads merged back to (B, Sf, H). The <= 23.08 two-input 4D form is supported too:
``transpose_b=True``: (B, h, m, d), (B, h, k, d) -> scores (B, h, m, k) = Q K^T / sqrt(d);
``transpose_b=False``: scores (B, h, m, k), values (B, h, k, d) -> (B, m, h * d).
Projections are separate InnerProduct layers; no weights here.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import hp, hp_int, json_num, require_rank


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, h = x.shape
    return x.reshape(b, s, heads, h // heads).transpose(1, 2)  # (B, heads, S, d)


@LAYERS.register("MultiHeadAttention")
class MultiHeadAttention(Layer):
    """Scaled dot-product attention (see module docstring). JSON: ``num_attention_heads``,
    ``transpose_b``."""

    type_name = "MultiHeadAttention"
    num_inputs = (2, 4)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        self.heads = hp_int(self, "num_attention_heads", minimum=1)
        self.transpose_b = bool(hp(self, "transpose_b"))
        self.legacy = len(self.input_shapes) == 2
        if self.legacy:
            self._check_legacy()
        else:
            self._check_head()

    def _check_head(self) -> None:
        q = require_rank(self, 0, (3,))
        k = require_rank(self, 1, (3,))
        v = require_rank(self, 2, (3,))
        if k != v or k[0] != q[0] or k[2] != q[2]:
            self.fail("bottom shapes", "Q (B, Sf, H), K and V (B, St, H)", [q, k, v])
        if q[2] % self.heads:
            self.fail("num_attention_heads", f"a divisor of the hidden size {q[2]}", self.heads)
        if len(self.input_shapes) == 4:
            m = require_rank(self, 3, (4,))
            if m[0] != q[0] or m[1] != 1 or m[2] not in (1, q[1]) or m[3] != k[1]:
                self.fail("bottom[3] shape", f"a mask ({q[0]}, 1, {q[1]}, {k[1]})", m)
        self.out_shape = q

    def _check_legacy(self) -> None:
        a = require_rank(self, 0, (4,))
        b = require_rank(self, 1, (4,))
        if a[:2] != b[:2]:
            self.fail("bottom[1] shape", f"batch and heads {a[:2]} like bottom[0]", b)
        if self.transpose_b:
            if a[3] != b[3]:
                self.fail("bottom[1] shape", f"(B, h, k, {a[3]}) for transpose_b=True", b)
            self.out_shape = (a[0], a[1], a[2], b[2])
        else:
            if a[3] != b[2]:
                self.fail("bottom[1] shape", f"(B, h, {a[3]}, d) for transpose_b=False", b)
            self.out_shape = (a[0], a[2], a[1] * b[3])

    def output_shapes(self) -> list[Shape]:
        return [tuple(self.out_shape)]

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        if self.legacy:
            a, b = xs
            if self.transpose_b:
                return torch.matmul(a, b.transpose(-1, -2)) / math.sqrt(a.shape[-1])
            out = torch.matmul(a, b)  # (B, h, m, d)
            return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
        q, k, v = (_split_heads(t, self.heads) for t in xs[:3])
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        if len(xs) == 4:
            scores = scores - (1.0 - xs[3].to(scores.dtype)) * 10000.0
        out = torch.matmul(torch.softmax(scores, dim=-1), v)  # (B, heads, Sf, d)
        return out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"num_attention_heads": int(params.get("num_attention_heads", 1)),
                "transpose_b": bool(params.get("transpose_b", False))}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        return {"num_attention_heads": int(json_num(entry, "num_attention_heads", where, 1)),
                "transpose_b": bool(entry.get("transpose_b", False))}


@LAYERS.register("MatrixMultiply")
class MatrixMultiply(Layer):
    """Batched matmul: 2D x 2D (M, K) @ (K, N) -> (M, N); 3D x 3D (B, M, K) @ (B, K, N);
    4D x 4D (B, h, M, K) @ (B, h, K, N); 2D x 3D: per-sample (B, K) @ (B, K, N) -> (B, N)."""

    type_name = "MatrixMultiply"
    num_inputs = (2, 2)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        a = require_rank(self, 0, (2, 3, 4))
        b = require_rank(self, 1, (2, 3, 4))
        self.vec_mat = len(a) == 2 and len(b) == 3
        if self.vec_mat:
            ok = a[0] == b[0] and a[1] == b[1]
            self.out_shape: Shape = (a[0], b[2])
        else:
            ok = len(a) == len(b) and a[-1] == b[-2] and a[:-2] == b[:-2]
            self.out_shape = (*a[:-1], b[-1])
        if not ok:
            self.fail("bottom[1] shape", f"a matrix compatible with bottom[0] {a}", b)

    def output_shapes(self) -> list[Shape]:
        return [self.out_shape]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.vec_mat:
            return torch.bmm(a.unsqueeze(1), b).squeeze(1)
        return torch.matmul(a, b)


@LAYERS.register("SequenceMask")
class SequenceMask(Layer):
    """Padding mask from sequence lengths. Two inputs (B, 1) "from" and "to" lengths ->
    (B, 1, Lf, Lt) with mask[b, 0, i, j] = (i < len_from[b]) and (j < len_to[b]); one input
    (HugeCTR <= 23.08) -> (B, 1, 1, Lt) = (j < len[b]). JSON: ``max_sequence_len_from``,
    ``max_sequence_len_to``."""

    type_name = "SequenceMask"
    num_inputs = (1, 2)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        for i in range(len(self.input_shapes)):
            s = require_rank(self, i, (1, 2))
            if len(s) == 2 and s[1] != 1:
                self.fail(f"bottom[{i}] shape", "(B, 1) lengths", s)
        self.lf = hp_int(self, "max_sequence_len_from", minimum=1)
        self.lt = hp_int(self, "max_sequence_len_to", minimum=1)

    def output_shapes(self) -> list[Shape]:
        b = self.input_shapes[0][0]
        return [(b, 1, self.lf if len(self.input_shapes) == 2 else 1, self.lt)]

    def forward(self, *lengths: torch.Tensor) -> torch.Tensor:
        to_len = lengths[-1].reshape(-1, 1)
        dtype = to_len.dtype if to_len.is_floating_point() else torch.float32
        cols = torch.arange(self.lt, device=to_len.device)
        to_mask = (cols.view(1, -1) < to_len).to(dtype)  # (B, Lt)
        if len(lengths) == 1:
            return to_mask[:, None, None, :]
        from_len = lengths[0].reshape(-1, 1)
        rows = torch.arange(self.lf, device=to_len.device)
        from_mask = (rows.view(1, -1) < from_len).to(dtype)  # (B, Lf)
        return (from_mask[:, :, None] * to_mask[:, None, :]).unsqueeze(1)

    @classmethod
    def params_to_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {"max_sequence_len_from": int(params.get("max_sequence_len_from", 1)),
                "max_sequence_len_to": int(params.get("max_sequence_len_to", 1))}

    @classmethod
    def params_from_json(cls, entry: dict[str, Any], where: str) -> dict[str, Any]:
        return {"max_sequence_len_from": int(json_num(entry, "max_sequence_len_from", where)),
                "max_sequence_len_to": int(json_num(entry, "max_sequence_len_to", where))}
