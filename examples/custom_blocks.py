"""User-written ``torch.nn.Module`` blocks for examples/custom_layer.py.

They live in their own module (not in the script run as ``__main__``) because
``model.graph_to_json`` writes a TorchLayer as its import path ``"custom_blocks:LowRankCross"``
and whoever reads the graph JSON (``CreateInferenceSession``, ``terarec serve``) imports the
class by that path: ``examples/`` must be on ``sys.path`` / ``PYTHONPATH`` there too.
"""

from __future__ import annotations

import torch
from torch import nn


class LowRankCross(nn.Module):
    """DCN-v2's cross network with low-rank weights (``Layer_t.MultiCross`` is DCN-v1's):

        x_{l+1} = x_0 * (U_l (V_l x_l) + b_l) + x_l
    """

    def __init__(self, in_dim: int, num_layers: int = 3, rank: int = 32) -> None:
        super().__init__()
        self.v = nn.ModuleList(nn.Linear(in_dim, rank, bias=False) for _ in range(num_layers))
        self.u = nn.ModuleList(nn.Linear(rank, in_dim) for _ in range(num_layers))

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for v, u in zip(self.v, self.u):
            x = x0 * u(v(x)) + x
        return x
