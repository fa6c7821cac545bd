"""TorchRec's ``fused_params``: the sparse optimizer named the FBGEMM way.

Owns :class:`EmbOptimType` (FBGEMM's enum, the members terarec can run), the translation of a
``fused_params`` dict into the ``torch.optim`` class + keyword arguments that
:func:`~terarec.torchrec.apply_optimizer_in_backward` takes (:func:`fused_params_to_optimizer`),
and :class:`EmbeddingBagCollectionSharder`, the carrier TorchRec passes to
``DistributedModelParallel(sharders=[...])``.

Mapping (FBGEMM's defaults: ``learning_rate=0.01``, ``eps=1e-8``, ``beta1=0.9``,
``beta2=0.999``, ``weight_decay=0``):

* ``SGD`` / ``EXACT_SGD`` -> ``torch.optim.SGD(lr)``;
* ``EXACT_ADAGRAD`` -> ``torch.optim.Adagrad(lr, eps)`` (per element, zero initial accumulator);
* ``ADAM`` -> ``torch.optim.Adam(lr, betas=(beta1, beta2), eps)``.

Row-wise Adagrad (``ROWWISE_ADAGRAD`` / ``EXACT_ROWWISE_ADAGRAD``), LAMB, LARS and the partial
row-wise variants have no terarec rule (:mod:`terarec.optim.rules` has per-element AdaGrad
only): :class:`NotSupportedError` naming the supported ones.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any

import torch

from terarec.errors import ConfigError, NotSupportedError
from terarec.torchrec.optim import apply_optimizer_in_backward


class EmbOptimType(enum.Enum):
    """FBGEMM's embedding optimizer types (values as FBGEMM's); see the module docstring for
    which ones terarec runs."""

    SGD = "sgd"
    EXACT_SGD = "exact_sgd"
    EXACT_ADAGRAD = "exact_adagrad"
    ADAM = "adam"
    ROWWISE_ADAGRAD = "row_wise_adagrad"
    EXACT_ROWWISE_ADAGRAD = "exact_row_wise_adagrad"
    PARTIAL_ROWWISE_ADAM = "partial_row_wise_adam"
    LAMB = "lamb"
    PARTIAL_ROWWISE_LAMB = "partial_row_wise_lamb"
    LARS_SGD = "lars_sgd"


SUPPORTED_TYPES = (EmbOptimType.SGD, EmbOptimType.EXACT_SGD, EmbOptimType.EXACT_ADAGRAD,
                   EmbOptimType.ADAM)
KEYS = ("optimizer", "learning_rate", "eps", "beta1", "beta2", "weight_decay")


def _optim_type(value: Any) -> EmbOptimType:
    if isinstance(value, EmbOptimType):
        return value
    name = getattr(value, "name", value)  # FBGEMM's own enum member works by name
    if isinstance(name, str):
        for m in EmbOptimType:
            if name.upper() == m.name or name.lower() == m.value:
                return m
    raise ConfigError('fused_params["optimizer"]', "an EmbOptimType among "
                      f"{[m.name for m in SUPPORTED_TYPES]}", value)


def fused_params_to_optimizer(fused_params: dict[str, Any]) -> tuple[type, dict[str, Any]]:
    """``(torch optimizer class, kwargs)`` equal to ``fused_params`` (see the module docstring).

    Example:
        >>> fused_params_to_optimizer({"optimizer": EmbOptimType.EXACT_ADAGRAD,
        ...                            "learning_rate": 0.05})
        (<class 'torch.optim.adagrad.Adagrad'>, {'lr': 0.05, 'eps': 1e-08})
    """
    if not isinstance(fused_params, dict) or "optimizer" not in fused_params:
        raise ConfigError("fused_params", 'a dict with an "optimizer" (EmbOptimType)',
                          fused_params)
    unknown = sorted(set(fused_params) - set(KEYS))
    if unknown:
        raise NotSupportedError(f"fused_params: keys {unknown} are not supported by terarec "
                                f"(supported: {list(KEYS)})")
    kind = _optim_type(fused_params["optimizer"])
    if kind not in SUPPORTED_TYPES:
        raise NotSupportedError(f"fused_params: optimizer {kind.name} has no terarec fused "
                                f"sparse optimizer (no row-wise / LAMB / LARS rules); "
                                f"supported: {[m.name for m in SUPPORTED_TYPES]}")
    if float(fused_params.get("weight_decay", 0.0)) != 0.0:
        raise NotSupportedError("fused_params: weight_decay is not supported by terarec's fused "
                                "sparse optimizers (keep 0)")
    lr = float(fused_params.get("learning_rate", 0.01))
    eps = float(fused_params.get("eps", 1e-8))
    if kind in (EmbOptimType.SGD, EmbOptimType.EXACT_SGD):
        return torch.optim.SGD, {"lr": lr}
    if kind is EmbOptimType.EXACT_ADAGRAD:
        return torch.optim.Adagrad, {"lr": lr, "eps": eps}
    betas = (float(fused_params.get("beta1", 0.9)), float(fused_params.get("beta2", 0.999)))
    return torch.optim.Adam, {"lr": lr, "betas": betas, "eps": eps}


def apply_fused_params(params: Iterable[torch.nn.Parameter], fused_params: dict[str, Any]
                       ) -> None:
    """``apply_optimizer_in_backward`` with the optimizer ``fused_params`` names."""
    cls, kwargs = fused_params_to_optimizer(fused_params)
    apply_optimizer_in_backward(cls, params, kwargs)


class EmbeddingBagCollectionSharder:
    """TorchRec's ``EmbeddingBagCollectionSharder(fused_params=...)``: carries the sparse
    optimizer to ``DistributedModelParallel(sharders=[...])`` (terarec plans placements
    itself; the sharder's only role here is ``fused_params``)."""

    def __init__(self, fused_params: dict[str, Any] | None = None) -> None:
        if fused_params is not None:
            fused_params_to_optimizer(fused_params)  # fail early on bad params
        self.fused_params = dict(fused_params) if fused_params is not None else None
