"""``PreprocessResult``: where the preprocessed data is and how to read it (one call each)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from terarec.data.readers.base import ReaderConfig
from terarec.data.schema import DataSchema, SparseSpec

READER_FORMAT = {"parquet": "Parquet", "raw": "RawAsync", "norm": "Norm"}


@dataclass
class PreprocessResult:
    out_dir: str
    format: str  # "parquet" | "raw" | "norm"
    source: str  # train file list (parquet/norm) or binary file (raw)
    eval_source: str
    train_files: list[str]
    eval_files: list[str]
    rows: int
    eval_rows: int
    slot_size_array: list[int]
    dense_dim: int
    label_dim: int
    bad_rows: int = 0
    bad_examples: list[tuple[str, int, str]] = field(default_factory=list)
    cat_names: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def reader_format(self) -> str:
        return READER_FORMAT[self.format]

    @property
    def i64_input_key(self) -> bool:
        return self.format == "parquet" or (self.format == "norm" and
                                            sum(self.slot_size_array) > 0xFFFFFFFF)

    def schema(self, sparse_name: str = "data1", dense_name: str = "dense",
               label_name: str = "label") -> DataSchema:
        """The Input: label_dim, dense_dim and one sparse input with one slot per column."""
        n = len(self.slot_size_array)
        return DataSchema([self.label_dim], [label_name], self.dense_dim, dense_name,
                          [SparseSpec(sparse_name, [1] * n, True, n)])

    def reader_config(self, eval: bool = False, **overrides: object) -> ReaderConfig:
        """A ReaderConfig for the train (or eval) split, slot offsets included."""
        kw: dict = dict(
            format=self.reader_format, source=self.eval_source if eval else self.source,
            check_type="Sum", num_samples=self.eval_rows if eval else self.rows,
            slot_size_array=list(self.slot_size_array) if self.format != "norm" else [],
            i64_input_key=self.i64_input_key, is_dense_float=True,
        )
        kw.update(overrides)
        return ReaderConfig(**kw)

    def data_reader_params_kwargs(self) -> dict:
        """Keyword arguments for ``hugectr.DataReaderParams`` (format as a name)."""
        return {
            "data_reader_type": self.reader_format,
            "source": [self.source], "eval_source": self.eval_source, "check_type": "Sum",
            "num_samples": self.rows, "eval_num_samples": self.eval_rows,
            "slot_size_array": list(self.slot_size_array) if self.format != "norm" else [],
        }

    def to_json(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [
            f"[terarec preprocess] {self.rows:,} train rows, {self.eval_rows:,} eval rows "
            f"-> {self.format} in {self.out_dir} ({self.seconds:.1f} s)",
            f"  train source: {self.source}",
            f"  eval source:  {self.eval_source}",
            f"  bad rows: {self.bad_rows}",
        ]
        for path, line, msg in self.bad_examples[:10]:
            lines.append(f"    {path}:{line}: {msg}")
        sizes = ", ".join(f"{n}={s}" for n, s in zip(self.cat_names, self.slot_size_array))
        lines.append(f"  vocabulary sizes: {sizes}")
        lines.append(f"  slot_size_array = {list(self.slot_size_array)}")
        return "\n".join(lines)
