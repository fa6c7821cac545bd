"""Reader-driven ``predict`` / ``evaluate`` of the inference sessions (HugeCTR 23.08 overloads).

``predict(num_batches, source, data_reader_type, check_type, slot_size_array=[], ...)`` reads
``num_batches`` batches of ``max_batchsize`` samples (wrapping around the source, in dataset
order) with terarec's readers, using the graph JSON's ``Data`` layer as the schema, and returns
``(num_batches * max_batchsize, label_dim)`` probabilities; ``evaluate`` returns their AUC.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from terarec.data.batch import Batch
from terarec.data.readers import ReaderConfig, create_reader
from terarec.enums import name_of
from terarec.errors import ConfigError
from terarec.graph.json_io import read_graph_json
from terarec.inference.csr import CsrBatch


def batch_to_csr(batch: Batch, specs: list[dict[str, Any]]) -> CsrBatch:
    """Per-table CSR of a reader batch (tables in graph order)."""
    tables = []
    for spec in specs:
        sparse = batch.sparse[spec["input"]]
        tables.append((sparse.keys.numpy(), sparse.offsets.numpy()))
    return CsrBatch(batch.batch_size, batch.dense.numpy(), tables)


def read_batches(graph_path: str | os.PathLike[str], num_batches: int, batch_size: int,
                 source: str, data_reader_type: Any, check_type: Any,
                 slot_size_array: list[int] | None, i64_input_key: bool) -> list[Batch]:
    if num_batches <= 0:
        raise ConfigError("predict(num_batches=...)", "a positive number of batches", num_batches)
    schema = read_graph_json(graph_path, include_dense_network=False).schema
    cfg = ReaderConfig(format=name_of(data_reader_type), source=source,
                       check_type=name_of(check_type), slot_size_array=list(slot_size_array or []),
                       i64_input_key=i64_input_key)
    reader = create_reader(cfg, schema, batch_size, repeat=True)
    out = []
    for batch in reader:
        out.append(batch)
        if len(out) == num_batches:
            break
    return out


def predict_from_reader(session: Any, graph_path: str | os.PathLike[str], num_batches: int,
                        source: str, data_reader_type: Any, check_type: Any,
                        slot_size_array: list[int] | None = None,
                        i64_input_key: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels of ``num_batches`` batches read from ``source``."""
    preds, labels = [], []
    for batch in read_batches(graph_path, num_batches, session.core.max_batchsize, source,
                              data_reader_type, check_type, slot_size_array, i64_input_key):
        preds.append(session.core.run(batch_to_csr(batch, session.core.specs)).cpu().numpy())
        labels.append(batch.labels.numpy())
    return np.concatenate(preds), np.concatenate(labels)
