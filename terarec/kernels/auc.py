"""Exact ROC AUC on the device (sort-based, ties averaged as scikit-learn's roc_auc_score).

AUC = (sum of the positives' ranks - P(P+1)/2) / (P*N) (Mann-Whitney), with tied predictions
sharing their average rank. One sort plus a few scans, no host sync until the final
``float()``: the same torch code serves as CPU path and GPU fast path (no Triton needed).
"""

from __future__ import annotations

import torch


def exact_auc_tensor(preds: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """AUC as a float64 0-d tensor on ``preds``' device (NaN when one class is missing).

    ``labels``: positives are labels > 0.5 (float) or non-zero (int/bool).
    """
    p = preds.reshape(-1)
    y = labels.reshape(-1).to(p.device)
    if p.numel() != y.numel():
        raise ValueError(f"exact_auc: preds and labels differ in size: {p.numel()} vs {y.numel()}")
    y = y > 0.5 if y.is_floating_point() else y != 0
    n = p.numel()
    if n == 0:
        return torch.tensor(float("nan"), dtype=torch.float64, device=p.device)
    sp, order = torch.sort(p)
    ys = y[order]
    idx = torch.arange(n, device=p.device)
    first = torch.ones(n, dtype=torch.bool, device=p.device)
    first[1:] = sp[1:] != sp[:-1]
    last = torch.ones(n, dtype=torch.bool, device=p.device)
    last[:-1] = first[1:]
    start = torch.cummax(torch.where(first, idx, 0), 0).values
    end = torch.cummin(torch.where(last, idx, n).flip(0), 0).values.flip(0)
    rank = (start + end).to(torch.float64) * 0.5 + 1.0
    n_pos = ys.sum().to(torch.float64)
    n_neg = n - n_pos
    pos_rank_sum = torch.where(ys, rank, 0.0).sum()
    return (pos_rank_sum - n_pos * (n_pos + 1.0) * 0.5) / (n_pos * n_neg)


def exact_auc(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact ROC AUC of ``preds`` vs binary ``labels`` on their device, as a Python float."""
    return float(exact_auc_tensor(preds, labels))
