"""Argument checks shared by the facade: right type or a ConfigError naming the argument."""

from __future__ import annotations

from typing import Any

from terarec.errors import ConfigError


def check_int(func: str, name: str, value: Any, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{func}({name}=...)", "an integer", value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{func}({name}=...)", f"an integer >= {minimum}", value)
    return int(value)


def check_float(func: str, name: str, value: Any, minimum: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{func}({name}=...)", "a number", value)
    if minimum is not None and value < minimum:
        raise ConfigError(f"{func}({name}=...)", f"a number >= {minimum}", value)
    return float(value)


def check_bool(func: str, name: str, value: Any) -> bool:
    if not isinstance(value, bool) and value not in (0, 1):
        raise ConfigError(f"{func}({name}=...)", "True or False", value)
    return bool(value)


def check_str(func: str, name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{func}({name}=...)", "a string", value)
    return value


def check_int_list(func: str, name: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or any(
        isinstance(v, bool) or not isinstance(v, int) for v in value
    ):
        raise ConfigError(f"{func}({name}=...)", "a list of integers", value)
    return [int(v) for v in value]
