"""Data: the batch type, the data schema, readers of HugeCTR's formats, datagen, preprocessing."""

from terarec.data.batch import Batch
from terarec.data.schema import DataSchema, SparseSpec

__all__ = ["Batch", "DataSchema", "SparseSpec"]
