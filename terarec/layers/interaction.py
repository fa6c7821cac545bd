"""The DLRM dot ``Interaction`` layer.

Owns HugeCTR's output layout: [bottom-MLP output (E values), the S(S+1)/2 pairwise dot
products of the S+1 vectors {mlp, emb_0..emb_{S-1}} in HugeCTR's order, one zero pad column].
Pair order (from HugeCTR's gather kernel, index col*(col-1)/2 + row for row < col): for
col = 1..S, for row = 0..col-1: dot(v_row, v_col) - i.e. the strictly lower triangle of the
Gram matrix read row by row: (1,0), (2,0), (2,1), (3,0), ...

On CUDA under bf16 (autocast or bf16 inputs) the forward and backward run as the fused Triton
kernel :func:`terarec.kernels.interaction` (same layout; the torch code below is its oracle);
``TERAREC_KERNELS=torch`` forces the torch version.
"""

from __future__ import annotations

from typing import Any

import torch

from terarec.layers.base import LAYERS, Layer, Shape
from terarec.layers.common import require_rank


@LAYERS.register("Interaction")
class Interaction(Layer):
    """Dot interaction of (B, E) and (B, S, E) -> (B, E + S(S+1)/2 + 1).

    HugeCTR's FP16 variant has a second top (the same data, used as the next MLP's grad
    buffer); with two tops both are the same tensor.

    Example:
        >>> it = Interaction({}, [(4, 2), (4, 3, 2)])
        >>> it.output_shapes()
        [(4, 9)]
    """

    type_name = "Interaction"
    num_inputs = (2, 2)
    num_outputs = (1, 2)

    def __init__(self, params: dict[str, Any], input_shapes: list[Shape], **kw: Any) -> None:
        super().__init__(params, input_shapes, **kw)
        mlp = require_rank(self, 0, (2,))
        emb = require_rank(self, 1, (3,))
        if mlp[0] != emb[0]:
            self.fail("bottom[1] shape", f"batch size {mlp[0]} like bottom[0]", emb)
        if mlp[1] != emb[2]:
            self.fail("bottom[1] shape", f"vector width {mlp[1]} equal to bottom[0]'s", emb)
        self.n = emb[1] + 1
        idx = torch.tril_indices(self.n, self.n, offset=-1)
        self.register_buffer("_rows", idx[0].clone(), persistent=False)
        self.register_buffer("_cols", idx[1].clone(), persistent=False)
        self.out_width = mlp[1] + self.n * (self.n - 1) // 2 + 1

    def output_shapes(self) -> list[Shape]:
        return [(self.input_shapes[0][0], self.out_width)]

    def forward(self, mlp: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if _use_kernel(mlp, emb):
            from terarec.kernels import interaction

            # any layout of emb's vectors (the slot exchange's slot-major buffer included)
            return interaction(mlp.to(torch.bfloat16).contiguous(), emb.to(torch.bfloat16))
        vecs = torch.cat([mlp.unsqueeze(1), emb], dim=1)  # (B, S+1, E)
        gram = torch.bmm(vecs, vecs.transpose(1, 2))  # (B, S+1, S+1)
        pairs = gram[:, self._rows, self._cols]  # (B, S(S+1)/2)
        pad = mlp.new_zeros(mlp.shape[0], 1)
        return torch.cat([mlp, pairs.to(mlp.dtype), pad], dim=1)


def _use_kernel(mlp: torch.Tensor, emb: torch.Tensor) -> bool:
    """The fused kernel applies on CUDA when the products are bf16 (autocast or inputs)."""
    if not mlp.is_cuda:
        return False
    bf16 = (torch.is_autocast_enabled("cuda")
            and torch.get_autocast_dtype("cuda") == torch.bfloat16) or (
        mlp.dtype == torch.bfloat16 and emb.dtype == torch.bfloat16)
    if not bf16:
        return False
    from terarec.kernels import backend_for

    return backend_for(mlp) == "triton"
