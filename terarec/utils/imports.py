"""Optional-dependency checks. ``import terarec`` needs only torch and numpy."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from terarec.errors import MissingExtraError


def is_available(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def require(package: str, extra: str, feature: str) -> ModuleType:
    """Import ``package`` or raise an error naming the pip extra that provides it."""
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise MissingExtraError(package.split(".")[0], extra, feature) from exc
