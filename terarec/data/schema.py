"""What a sample looks like: label columns, dense width, sparse inputs and their slots.

Built by the HugeCTR facade from ``Input(...)`` / ``DataReaderSparseParam(...)`` or from the
``Data`` layer of a graph JSON; readers use it to decode files, the graph uses it for shapes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from terarec.errors import ConfigError


@dataclass
class SparseSpec:
    """One sparse input (HugeCTR ``DataReaderSparseParam``).

    Args:
        name: tensor name (``top_name``).
        nnz_per_slot: maximum keys per slot, one entry per slot.
        is_fixed_length: every slot always has exactly ``nnz_per_slot[s]`` keys.
        slot_num: number of slots.
    """

    name: str
    nnz_per_slot: list[int]
    is_fixed_length: bool
    slot_num: int

    def __post_init__(self) -> None:
        where = f"DataReaderSparseParam({self.name!r})"
        if not isinstance(self.slot_num, int) or self.slot_num <= 0:
            raise ConfigError(f"{where}.slot_num", "a positive integer", self.slot_num)
        if isinstance(self.nnz_per_slot, int):
            self.nnz_per_slot = [int(self.nnz_per_slot)] * self.slot_num
        self.nnz_per_slot = [int(n) for n in self.nnz_per_slot]
        if len(self.nnz_per_slot) != self.slot_num:
            raise ConfigError(
                f"{where}.nnz_per_slot",
                f"an int or a list of slot_num={self.slot_num} ints",
                self.nnz_per_slot,
            )
        if any(n < 0 for n in self.nnz_per_slot):
            raise ConfigError(f"{where}.nnz_per_slot", "non-negative counts", self.nnz_per_slot)

    @property
    def max_feature_num(self) -> int:
        return sum(self.nnz_per_slot)

    @property
    def max_nnz(self) -> int:
        return max(self.nnz_per_slot)


@dataclass
class DataSchema:
    """Label, dense and sparse layout of one sample (HugeCTR ``Input``)."""

    label_dims: list[int]
    label_names: list[str]
    dense_dim: int
    dense_name: str
    sparse: list[SparseSpec] = field(default_factory=list)
    label_weights: list[float] | None = None

    def __post_init__(self) -> None:
        if len(self.label_dims) != len(self.label_names):
            raise ConfigError(
                "Input.label_dims/label_names", "lists of the same length",
                (self.label_dims, self.label_names),
            )
        if any(d <= 0 for d in self.label_dims):
            raise ConfigError("Input.label_dim", "positive integers", self.label_dims)
        if self.dense_dim < 0:
            raise ConfigError("Input.dense_dim", "a non-negative integer", self.dense_dim)
        names = [s.name for s in self.sparse]
        if len(set(names)) != len(names):
            raise ConfigError("Input.data_reader_sparse_param_array", "unique top names", names)

    @property
    def label_dim(self) -> int:
        return sum(self.label_dims)

    @property
    def total_slots(self) -> int:
        return sum(s.slot_num for s in self.sparse)

    def sparse_by_name(self, name: str) -> SparseSpec:
        for s in self.sparse:
            if s.name == name:
                return s
        raise ConfigError("sparse input", f"one of {[s.name for s in self.sparse]}", name)
