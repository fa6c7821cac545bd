"""Optimizer clause of HugeCTR's JSON (``{"type", "update_type", "<x>_hparam": {...}}``).

Also reads the pre-3.1 spellings: ``global_update`` instead of ``update_type`` and the
learning-rate schedule inside the hparam block (``sgd_hparam.learning_rate`` ...).
"""

from __future__ import annotations

from typing import Any

from terarec.errors import ConfigError
from terarec.optim.config import OPTIMIZER_TYPES, OptimizerConfig

HPARAM_BLOCK = {
    "Adam": ("adam_hparam", ("beta1", "beta2", "epsilon")),
    "AdaGrad": ("adagrad_hparam", ("initial_accu_value", "epsilon")),
    "MomentumSGD": ("momentum_sgd_hparam", ("momentum_factor",)),
    "Nesterov": ("nesterov_hparam", ("momentum_factor",)),
    "SGD": ("sgd_hparam", ("atomic_update",)),
    "Ftrl": ("ftrl_hparam", ("beta", "lambda1", "lambda2")),
    "RMSProp": ("rmsprop_hparam", ("beta2", "epsilon")),
}
SCHEDULE_KEYS = ("learning_rate", "warmup_steps", "decay_start", "decay_steps", "decay_power",
                 "end_lr")


def optimizer_to_json(cfg: OptimizerConfig) -> dict[str, Any]:
    block, keys = HPARAM_BLOCK[cfg.type]
    return {
        "type": cfg.type,
        "update_type": cfg.update_type,
        block: {k: getattr(cfg, k) for k in keys},
    }


def optimizer_from_json(entry: Any, where: str) -> tuple[OptimizerConfig, dict[str, Any]]:
    """Return the optimizer config and any legacy schedule keys found in the hparam block."""
    if not isinstance(entry, dict):
        raise ConfigError(where, "an object with 'type' and '<x>_hparam'", entry)
    opt_type = entry.get("type")
    if opt_type not in OPTIMIZER_TYPES:
        raise ConfigError(f"{where}.type", f"one of {list(OPTIMIZER_TYPES)}", opt_type)
    update_type = entry.get("update_type")
    if update_type is None and "global_update" in entry:
        update_type = "Global" if entry["global_update"] else "Local"
    kwargs: dict[str, Any] = {"type": opt_type, "update_type": update_type or "Global"}
    block, keys = HPARAM_BLOCK[opt_type]
    hparams = entry.get(block, {})
    if not isinstance(hparams, dict):
        raise ConfigError(f"{where}.{block}", "an object", hparams)
    known = set(keys) | set(SCHEDULE_KEYS) | {"atomic_update", "global_update"}
    for key in hparams:
        if key not in known:
            raise ConfigError(f"{where}.{block}.{key}", f"one of {sorted(known)}", key)
    for key in keys:
        if key in hparams:
            kwargs[key] = hparams[key]
    if opt_type == "SGD" and "atomic_update" in hparams:
        kwargs["atomic_update"] = bool(hparams["atomic_update"])
    schedule = {k: hparams[k] for k in SCHEDULE_KEYS if k in hparams}
    try:
        cfg = OptimizerConfig(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.where}", exc.expected, exc.received) from None
    return cfg, schedule
