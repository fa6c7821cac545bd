"""Custom ``nn.Module`` layers for the TorchLayer tests, importable as ``tests.helpers.custom_layers``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GatedMix(nn.Module):
    """Two inputs in, two outputs out: ``tanh(A emb) * sigmoid(B dense)`` and ``C dense``.

    A buffer (``calls``) counts training forwards, to exercise the ``.ntp.json`` path.
    """

    def __init__(self, emb_dim: int, dense_dim: int, hidden: int = 8) -> None:
        super().__init__()
        self.emb = nn.Linear(emb_dim, hidden)
        self.gate = nn.Linear(dense_dim, hidden)
        self.proj = nn.Linear(dense_dim, 3, bias=False)
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, emb: torch.Tensor, dense: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            self.calls += 1
        return torch.tanh(self.emb(emb)) * torch.sigmoid(self.gate(dense)), self.proj(dense)


class LogitBCE(nn.Module):
    """A custom loss: mean binary cross-entropy on logits (what BinaryCrossEntropyLoss computes)."""

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, label)


class NeedsThreeDims(nn.Module):
    """Fails on 2-D inputs (IndexError): for the dummy-input error."""

    def forward(self, x: torch.Tensor, *others: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=2)
