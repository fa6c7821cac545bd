"""TorchRec's table descriptions: :class:`EmbeddingBagConfig`, :class:`PoolingType` and the
unpooled :class:`EmbeddingConfig`.

Owns the TorchRec field names and defaults and their translation into terarec's
:class:`~terarec.embedding.config.TableConfig` (``to_table_config``).
Ids are row numbers (TorchRec has no hashing): ``0 <= id < num_embeddings``.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from terarec.embedding.config import MAX_DIM, TableConfig
from terarec.errors import ConfigError, NotSupportedError
from terarec.optim.config import OptimizerConfig


class PoolingType(enum.Enum):
    """How a bag of ids pools into one vector (TorchRec's enum; ``NONE`` is not supported)."""

    SUM = "SUM"
    MEAN = "MEAN"
    NONE = "NONE"


_COMBINER = {PoolingType.SUM: "sum", PoolingType.MEAN: "mean"}


def _check_fields(cfg: EmbeddingBagConfig | EmbeddingConfig, kind: str) -> None:
    """Name, sizes and feature names of a table config (normalises ``feature_names``)."""
    w = f"{kind} {cfg.name!r}"
    if not isinstance(cfg.name, str) or not cfg.name:
        raise ConfigError(f"{kind}.name", "a non-empty table name", cfg.name)
    for fld, hi in (("num_embeddings", None), ("embedding_dim", MAX_DIM)):
        v = getattr(cfg, fld)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1 or (hi and v > hi):
            raise ConfigError(f"{w}.{fld}", "a positive integer" + (f" <= {hi}" if hi else ""),
                              v)
    names = list(cfg.feature_names)
    if not names or any(not isinstance(n, str) or not n for n in names):
        raise ConfigError(f"{w}.feature_names", "a non-empty list of feature names",
                          cfg.feature_names)
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ConfigError(f"{w}.feature_names", "unique feature names", dup)
    cfg.feature_names = names


def _init_bounds(cfg: EmbeddingBagConfig | EmbeddingConfig) -> tuple[float, float]:
    a = math.sqrt(1.0 / cfg.num_embeddings)
    lo = -a if cfg.weight_init_min is None else float(cfg.weight_init_min)
    hi = a if cfg.weight_init_max is None else float(cfg.weight_init_max)
    return lo, hi


def _check_bounds(cfg: EmbeddingBagConfig | EmbeddingConfig, where: str) -> None:
    lo, hi = _init_bounds(cfg)
    if not lo <= hi:
        raise ConfigError(f"{where}.weight_init_min/max", "weight_init_min <= weight_init_max",
                          (lo, hi))


def _init_range(cfg: EmbeddingBagConfig | EmbeddingConfig) -> float | None:
    return max(abs(b) for b in _init_bounds(cfg)) or None


@dataclass
class EmbeddingBagConfig:
    """One pooled embedding table read by one or more features (TorchRec's field order).

    Args:
        num_embeddings: rows; ids must lie in ``[0, num_embeddings)``.
        embedding_dim: vector size (1..1024 in terarec).
        name: table name (unique in a collection).
        feature_names: the KJT keys this table pools (several features share the table).
        pooling: :class:`PoolingType` ``SUM`` or ``MEAN``.
        weight_init_min / weight_init_max: the ``Uniform(min, max)`` init; ``None`` takes
            TorchRec's default ``-/+ sqrt(1 / num_embeddings)``.

    Example:
        >>> EmbeddingBagConfig(100, 8, "t", ["f"]).init_bounds()
        (-0.1, 0.1)
    """

    num_embeddings: int
    embedding_dim: int
    name: str = ""
    feature_names: list[str] = field(default_factory=list)
    pooling: PoolingType = PoolingType.SUM
    weight_init_min: float | None = None
    weight_init_max: float | None = None

    def __post_init__(self) -> None:
        w = f"EmbeddingBagConfig {self.name!r}"
        _check_fields(self, "EmbeddingBagConfig")
        if isinstance(self.pooling, str) and self.pooling.upper() in PoolingType.__members__:
            self.pooling = PoolingType[self.pooling.upper()]
        if not isinstance(self.pooling, PoolingType):
            raise ConfigError(f"{w}.pooling", "PoolingType.SUM or PoolingType.MEAN", self.pooling)
        if self.pooling not in _COMBINER:
            raise NotSupportedError(f"{w}.pooling: {self.pooling} (unpooled sequence embeddings) "
                                    f"is not supported; use PoolingType.SUM or PoolingType.MEAN "
                                    f"(or an EmbeddingConfig in an EmbeddingCollection)")
        _check_bounds(self, w)

    def init_bounds(self) -> tuple[float, float]:
        """``(min, max)`` of the uniform init (TorchRec's defaults filled in)."""
        return _init_bounds(self)

    @property
    def combiner(self) -> str:
        return _COMBINER[self.pooling]

    def to_table_config(self, optimizer: OptimizerConfig | None = None) -> TableConfig:
        """terarec's table: one slot per feature, ``num_embeddings`` rows, the table name as
        its input name. Ids index rows directly (the table is built with a direct index)."""
        return TableConfig(
            name=self.name, input_name=self.name, dim=self.embedding_dim,
            combiner=self.combiner, slot_num=len(self.feature_names),
            max_vocabulary_size=self.num_embeddings,
            optimizer=optimizer if optimizer is not None else OptimizerConfig(type="SGD"),
            init_range=_init_range(self))


@dataclass
class EmbeddingConfig:
    """One unpooled (sequence) embedding table of an ``EmbeddingCollection``.

    Args:
        num_embeddings: rows; ids must lie in ``[0, num_embeddings)``.
        embedding_dim: vector size (1..1024 in terarec).
        name: table name (unique in a collection).
        feature_names: the KJT keys this table looks up (several features share the table).
        weight_init_min / weight_init_max: the ``Uniform(min, max)`` init; ``None`` takes
            TorchRec's default ``-/+ sqrt(1 / num_embeddings)``.

    Example:
        >>> EmbeddingConfig(100, 8, "t", ["f"]).init_bounds()
        (-0.1, 0.1)
    """

    num_embeddings: int
    embedding_dim: int
    name: str = ""
    feature_names: list[str] = field(default_factory=list)
    weight_init_min: float | None = None
    weight_init_max: float | None = None

    def __post_init__(self) -> None:
        _check_fields(self, "EmbeddingConfig")
        _check_bounds(self, f"EmbeddingConfig {self.name!r}")

    def init_bounds(self) -> tuple[float, float]:
        """``(min, max)`` of the uniform init (TorchRec's defaults filled in)."""
        return _init_bounds(self)

    def to_table_config(self, optimizer: OptimizerConfig | None = None) -> TableConfig:
        """terarec's table: one id per bag (a one-slot ``sum`` lookup per id, all the table's
        features in one lookup), ``num_embeddings`` rows, direct index."""
        return TableConfig(
            name=self.name, input_name=self.name, dim=self.embedding_dim, combiner="sum",
            slot_num=1, max_vocabulary_size=self.num_embeddings,
            optimizer=optimizer if optimizer is not None else OptimizerConfig(type="SGD"),
            init_range=_init_range(self))
