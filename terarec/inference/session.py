"""Inference sessions: CSR request -> parameter-server lookup + pooling -> dense network.

Owns :class:`SessionCore`, the one implementation shared by HugeCTR's ``InferenceSession``
(v3.0: ``InferenceSession(config_file, device_id, embedding_cache)``),
``CreateInferenceSession(config_file, params)`` and ``InferenceModel(model_config_path, params)``.
The request layout is documented in :mod:`terarec.inference.csr`. The dense network comes from
:func:`terarec.inference.dense_network.build_dense_network` unless ``dense_network=(dense_fn,
embedding_specs)`` is passed (tests, custom models).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from terarec.errors import ConfigError
from terarec.inference.csr import CsrBatch, parse_csr
from terarec.inference.dense_network import DenseFn, build_dense_network, dense_dim_of
from terarec.inference.factories import EmbeddingCacheHandle, ps_config_for, read_inference_config
from terarec.inference.parameter_server import HPS, device_for
from terarec.inference.params import InferenceParams

LookupFn = Callable[[int, np.ndarray], torch.Tensor]
DenseNetwork = tuple[DenseFn, list[dict[str, Any]]]


class SessionCore:
    """Pools embeddings of a :class:`CsrBatch` and runs the dense network.

    Args:
        lookup: ``lookup(table_id, unique_keys int64) -> Tensor (n, dim)`` on ``device``.
        embedding_specs: per table ``table``, ``slot_num``, ``dim``, ``combiner`` (graph order).
        dense_fn: ``dense_fn({table: (B, slot_num, dim)}, dense (B, dense_dim)) -> (B, label)``.
        dense_dim: dense features per sample.
        device: device of the dense network.
        max_batchsize: largest batch accepted in one call.
    """

    def __init__(self, lookup: LookupFn, embedding_specs: list[dict[str, Any]], dense_fn: DenseFn,
                 dense_dim: int, device: torch.device, max_batchsize: int) -> None:
        self.lookup = lookup
        self.specs = embedding_specs
        self.dense_fn = dense_fn
        self.dense_dim = int(dense_dim)
        self.device = device
        self.max_batchsize = int(max_batchsize)
        self.slot_nums = [int(s["slot_num"]) for s in embedding_specs]

    def parse(self, dense_feature: Any, embeddingcolumns: Any, row_ptrs: Any) -> CsrBatch:
        return parse_csr(dense_feature, embeddingcolumns, row_ptrs, self.slot_nums,
                         self.dense_dim)

    def pool(self, batch: CsrBatch) -> dict[str, torch.Tensor]:
        """Per-table pooled embeddings ``(B, slot_num, dim)`` (sum or mean combiner)."""
        out = {}
        for t, (spec, (keys, offs)) in enumerate(zip(self.specs, batch.tables)):
            rows, dim = batch.batch_size * int(spec["slot_num"]), int(spec["dim"])
            lengths = torch.from_numpy(np.diff(offs)).to(self.device)
            pooled = torch.zeros((rows, dim), dtype=torch.float32, device=self.device)
            if keys.size:
                # Keys go to the device once and are de-duplicated there (no host sort).
                keys_t = torch.from_numpy(np.ascontiguousarray(keys)).to(self.device)
                uniq, inv = torch.unique(keys_t, return_inverse=True)
                vec = self.lookup(t, uniq).to(self.device)
                if vec.shape[-1] != dim or vec.shape[0] != uniq.numel():
                    raise ConfigError(f"embedding table {spec['table']!r}",
                                      f"({uniq.numel()}, {dim}) vectors", tuple(vec.shape))
                vec = vec[inv]
                row_ids = torch.repeat_interleave(torch.arange(rows, device=self.device), lengths,
                                                  output_size=int(keys.size))
                pooled.index_add_(0, row_ids, vec.to(pooled.dtype))
                if spec.get("combiner", "sum") == "mean":
                    pooled /= lengths.clamp(min=1).unsqueeze(1).to(pooled.dtype)
            out[spec["table"]] = pooled.reshape(batch.batch_size, -1, dim)
        return out

    @torch.no_grad()
    def run(self, batch: CsrBatch) -> torch.Tensor:
        """Probabilities ``(B, label_dim)`` of a parsed batch."""
        if batch.batch_size > self.max_batchsize:
            raise ConfigError("batch size", f"at most max_batchsize={self.max_batchsize}",
                              batch.batch_size)
        dense = torch.from_numpy(np.ascontiguousarray(batch.dense)).to(self.device)
        out = self.dense_fn(self.pool(batch), dense)
        return out.reshape(batch.batch_size, -1).float()

    def predict(self, dense_feature: Any, embeddingcolumns: Any, row_ptrs: Any) -> np.ndarray:
        """Flat float32 array of ``B * label_dim`` probabilities."""
        return self.run(self.parse(dense_feature, embeddingcolumns, row_ptrs)).cpu().numpy(
        ).reshape(-1)


class _SessionBase:
    core: SessionCore
    embedding_cache: EmbeddingCacheHandle

    graph_path: str = ""

    def predict(self, *args: Any, i64_input_key: bool | None = None, **kwargs: Any) -> Any:
        """``predict(dense_feature, embeddingcolumns, row_ptrs)`` -> list of probabilities, or
        ``predict(num_batches, source, data_reader_type, check_type, slot_size_array=[])`` ->
        float32 array ``(num_batches * max_batchsize, label_dim)`` read from data files."""
        if (args and isinstance(args[0], int) and not isinstance(args[0], bool)) or \
                "num_batches" in kwargs:
            return self._from_reader(*args, i64_input_key=i64_input_key, **kwargs)[0]
        dense_feature, embeddingcolumns, row_ptrs = (list(args) + [kwargs.get(k) for k in (
            "dense_feature", "embeddingcolumns", "row_ptrs")][len(args):])[:3]
        keys = np.asarray(embeddingcolumns)
        if i64_input_key is False:
            keys = keys.astype(np.int32).astype(np.int64)
        return self.core.predict(dense_feature, keys, row_ptrs).tolist()

    def _from_reader(self, num_batches: int, source: str, data_reader_type: Any,
                     check_type: Any, slot_size_array: list[int] | None = None,
                     *_more: Any, i64_input_key: bool | None = None,
                     **_kw: Any) -> tuple[np.ndarray, np.ndarray]:
        from terarec.inference.reader_predict import predict_from_reader

        if i64_input_key is None:
            params = getattr(self, "params", None)
            i64_input_key = bool(params.i64_input_key) if params is not None else True
        i64 = bool(i64_input_key)
        return predict_from_reader(self, self.graph_path, num_batches, source, data_reader_type,
                                   check_type, slot_size_array, i64)

    def evaluate(self, num_batches: int, source: str, data_reader_type: Any, check_type: Any,
                 slot_size_array: list[int] | None = None, *more: Any, **kw: Any) -> float:
        """AUC of the predictions on ``num_batches`` batches of ``source``."""
        from terarec.metrics import exact_auc

        preds, labels = self._from_reader(num_batches, source, data_reader_type, check_type,
                                          slot_size_array, *more, **kw)
        return float(exact_auc(torch.from_numpy(preds), torch.from_numpy(labels)).mean())

    def refresh_embedding_cache(self) -> None:
        self.embedding_cache.refresh()



class InferenceSession(_SessionBase):
    """HugeCTR v3.0 ``InferenceSession(config_file, device_id, embedding_cache)``.

    ``config_file`` is the v3.0 inference JSON (an ``inference`` clause plus ``layers``);
    ``embedding_cache`` comes from ``CreateEmbeddingCache``.
    """

    def __init__(self, config_file: str, device_id: int, embedding_cache: EmbeddingCacheHandle,
                 *, dense_network: DenseNetwork | None = None) -> None:
        cfg = read_inference_config(config_file)
        graph = {"layers": cfg["layers"]}
        self.graph_path = config_file
        self.embedding_cache = embedding_cache
        device = device_for(device_id)
        dense_fn, specs = dense_network or build_dense_network(
            config_file, cfg["dense_model_file"], device)
        self.core = SessionCore(embedding_cache.lookup, specs, dense_fn, dense_dim_of(graph),
                                device, cfg["max_batchsize"])


class _ParamsSession(_SessionBase):
    """Built from a graph JSON and ``InferenceParams`` (owns its parameter server)."""

    def __init__(self, config_file: str, params: InferenceParams,
                 *, dense_network: DenseNetwork | None = None,
                 parameter_server: HPS | None = None) -> None:
        self.params = params
        device = device_for(params.deployed_devices[0] if params.deployed_devices
                            else params.device_id)
        graph_path = params.network_file or config_file
        self.graph_path = graph_path
        dense_fn, specs = dense_network or build_dense_network(
            graph_path, params.dense_model_file, device, params.non_trainable_params_file)
        self.parameter_server = parameter_server or HPS(
            ps_config_for([params], {params.model_name: specs}))
        self.embedding_cache = EmbeddingCacheHandle(self.parameter_server, params.model_name,
                                                    device.index or 0)
        self.core = SessionCore(self.embedding_cache.lookup, specs, dense_fn,
                                dense_dim_of(graph_path), device, params.max_batchsize)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.parameter_server.close()


class InferenceModel(_ParamsSession):
    """HugeCTR ``InferenceModel(model_config_path, inference_params)`` (CSR predict only)."""


def CreateInferenceSession(config_file: str, params: InferenceParams,  # noqa: N802
                           *, dense_network: DenseNetwork | None = None) -> _ParamsSession:
    """HugeCTR ``CreateInferenceSession(model_config_path, inference_params)``."""
    return _ParamsSession(config_file, params, dense_network=dense_network)
