"""Data: the batch type, the data schema, readers of HugeCTR's formats, datagen, preprocessing.

Owns ``terarec.data.readers`` (one file per format, registry ``READERS``), ``loader``
(``Prefetcher``), ``synthetic`` (generated data with a planted teacher), ``writers`` and
``preprocess`` (raw text -> Parquet / Raw / Norm). pyarrow is imported only when Parquet is used.
"""

from terarec.data.batch import Batch
from terarec.data.loader import Prefetcher
from terarec.data.readers import READERS, Reader, ReaderConfig, create_reader
from terarec.data.schema import DataSchema, SparseSpec
from terarec.data.source_params import DataSourceParams
from terarec.data.synthetic import generate_synthetic

__all__ = [
    "READERS", "Batch", "DataSchema", "DataSourceParams", "Prefetcher", "Reader", "ReaderConfig",
    "SparseSpec",
    "create_reader", "generate_synthetic",
]
