"""Inference sessions: CSR request -> parameter-server lookup + pooling -> dense network.

Owns :class:`SessionCore`, the one implementation shared by HugeCTR's ``InferenceSession``
(v3.0: ``InferenceSession(config_file, device_id, embedding_cache)``),
``CreateInferenceSession(config_file, params)`` and ``InferenceModel(model_config_path, params)``.
The request layout is documented in :mod:`terarec.inference.csr`. The dense network comes from
:func:`terarec.inference.dense_network.build_dense_network` unless ``dense_network=(dense_fn,
embedding_specs)`` is passed (tests, custom models).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from terarec.data.schema import DataSchema
from terarec.errors import ConfigError
from terarec.inference.csr import CsrBatch, parse_csr
from terarec.inference.dense_network import (
    DenseFn,
    build_dense_network,
    dense_dim_of,
    embedding_specs_from_graph,
)
from terarec.inference.dense_runner import DenseRunner
from terarec.inference.device_csr import DeviceCsr, device_csr_from_batch, to_device_csr
from terarec.inference.device_pool import CacheOf, DevicePooler
from terarec.inference.factories import EmbeddingCacheHandle, ps_config_for, read_inference_config
from terarec.inference.parameter_server import HPS, device_for
from terarec.inference.params import InferenceParams
from terarec.inference.reference_pool import pool_reference

LookupFn = Callable[[int, Any], torch.Tensor]
DenseNetwork = tuple[DenseFn, list[dict[str, Any]]]

#: Autocast dtype of ``InferenceParams.use_mixed_precision`` on CUDA (see dense_runner).
MIXED_PRECISION = "bf16"


class SessionCore:
    """Pools embeddings of a request and runs the dense network.

    The fast path (default) moves the request to the device once and pools every table from the
    device embedding caches with one host sync per batch (:mod:`terarec.inference.device_pool`).
    ``fast_path = False`` selects the plain-PyTorch reference twin (host CSR, per-table
    ``torch.unique`` + parameter-server lookup + ``index_add``); the two agree.

    Args:
        lookup: ``lookup(table_id, unique_keys int64) -> Tensor (n, dim)`` on ``device``.
        embedding_specs: per table ``table``, ``slot_num``, ``dim``, ``combiner`` (graph order).
        dense_fn: ``dense_fn({table: (B, slot_num, dim)}, dense (B, dense_dim)) -> (B, label)``.
        dense_dim: dense features per sample.
        device: device of the dense network.
        max_batchsize: largest batch accepted in one call.
        cache_of: ``cache_of(table_id)`` -> the table's device ``EmbeddingCache`` (or ``None``);
            the fast path reads the caches through it.
        mixed_precision: ``None`` (fp32), ``"bf16"`` or ``"fp16"`` autocast of the dense network.
    """

    def __init__(self, lookup: LookupFn, embedding_specs: list[dict[str, Any]], dense_fn: DenseFn,
                 dense_dim: int, device: torch.device, max_batchsize: int,
                 cache_of: CacheOf | None = None, mixed_precision: str | None = None) -> None:
        self.lookup = lookup
        self.specs = embedding_specs
        self.dense_fn = dense_fn
        self.dense_dim = int(dense_dim)
        self.device = torch.device(device)
        self.max_batchsize = int(max_batchsize)
        self.slot_nums = [int(s["slot_num"]) for s in embedding_specs]
        self.dense = DenseRunner(dense_fn, self.device, mixed_precision)
        self.pooler = DevicePooler(embedding_specs, lookup, cache_of, self.device)
        self.fast_path = True

    def parse(self, dense_feature: Any, embeddingcolumns: Any, row_ptrs: Any) -> CsrBatch:
        return parse_csr(dense_feature, embeddingcolumns, row_ptrs, self.slot_nums,
                         self.dense_dim)

    def to_device(self, dense_feature: Any, embeddingcolumns: Any, row_ptrs: Any,
                  i64_input_key: bool = True) -> DeviceCsr:
        """The request on the device (numpy, lists, or tensors already there)."""
        return to_device_csr(dense_feature, embeddingcolumns, row_ptrs, self.slot_nums,
                             self.dense_dim, self.device, i64_input_key)

    def _check_batch(self, b: int) -> None:
        if b > self.max_batchsize:
            raise ConfigError("batch size", f"at most max_batchsize={self.max_batchsize}", b)

    def pool(self, batch: CsrBatch | DeviceCsr) -> dict[str, torch.Tensor]:
        """Per-table pooled embeddings ``(B, slot_num, dim)`` (sum or mean combiner)."""
        if not self.fast_path:
            if isinstance(batch, DeviceCsr):
                raise ConfigError("SessionCore.pool", "a CsrBatch on the reference path",
                                  type(batch).__name__)
            return self.pool_reference(batch)
        csr = batch if isinstance(batch, DeviceCsr) else device_csr_from_batch(batch, self.device)
        return self.pooler.run(csr)[0]

    def pool_reference(self, batch: CsrBatch) -> dict[str, torch.Tensor]:
        """The plain-PyTorch twin of :meth:`pool` (host CSR, one lookup per table)."""
        return pool_reference(batch, self.specs, self.lookup, self.device)

    @torch.no_grad()
    def run_device(self, csr: DeviceCsr) -> torch.Tensor:
        """Probabilities ``(B, label_dim)`` on the device of a request already there."""
        self._check_batch(csr.batch_size)
        _, out = self.pooler.run(csr, lambda pooled: self.dense(pooled, csr.dense))
        assert out is not None  # noqa: S101 - a forward was given
        return out.reshape(csr.batch_size, -1)

    @torch.no_grad()
    def run(self, batch: CsrBatch) -> torch.Tensor:
        """Probabilities ``(B, label_dim)`` of a parsed batch."""
        self._check_batch(batch.batch_size)
        if self.fast_path:
            return self.run_device(device_csr_from_batch(batch, self.device))
        dense = torch.from_numpy(np.ascontiguousarray(batch.dense, np.float32)).to(self.device)
        out = self.dense(self.pool_reference(batch), dense)
        return out.reshape(batch.batch_size, -1)

    def predict_tensor(self, dense_feature: Any, embeddingcolumns: Any, row_ptrs: Any,
                       i64_input_key: bool = True) -> torch.Tensor:
        """Flat float32 probabilities ``(B * label_dim,)`` on the device."""
        if not self.fast_path:
            keys = np.asarray(embeddingcolumns.cpu() if isinstance(embeddingcolumns, torch.Tensor)
                              else embeddingcolumns)
            if not i64_input_key:
                keys = keys.astype(np.int32).astype(np.int64)
            host = [x.cpu() if isinstance(x, torch.Tensor) else x
                    for x in (dense_feature, row_ptrs)]
            return self.run(self.parse(host[0], keys, host[1])).reshape(-1)
        csr = self.to_device(dense_feature, embeddingcolumns, row_ptrs, i64_input_key)
        return self.run_device(csr).reshape(-1)

    def predict(self, dense_feature: Any, embeddingcolumns: Any, row_ptrs: Any,
                i64_input_key: bool = True) -> np.ndarray:
        """Flat float32 array of ``B * label_dim`` probabilities."""
        return self.predict_tensor(dense_feature, embeddingcolumns, row_ptrs,
                                   i64_input_key).cpu().numpy()


class _SessionBase:
    core: SessionCore
    embedding_cache: EmbeddingCacheHandle

    graph_path: str = ""

    def predict(self, *args: Any, i64_input_key: bool | None = None, **kwargs: Any) -> Any:
        """``predict(dense_feature, embeddingcolumns, row_ptrs)`` -> list of probabilities, or
        ``predict(num_batches, source, data_reader_type, check_type, slot_size_array=[])`` ->
        float32 array ``(num_batches * max_batchsize, label_dim)`` read from data files.
        When ``embeddingcolumns`` is a torch tensor (typically already on the GPU) the
        probabilities come back as a flat float32 tensor on the session's device."""
        if (args and isinstance(args[0], int) and not isinstance(args[0], bool)) or \
                "num_batches" in kwargs:
            return self._from_reader(*args, i64_input_key=i64_input_key, **kwargs)[0]
        dense_feature, embeddingcolumns, row_ptrs = (list(args) + [kwargs.get(k) for k in (
            "dense_feature", "embeddingcolumns", "row_ptrs")][len(args):])[:3]
        i64 = i64_input_key is not False
        if isinstance(embeddingcolumns, torch.Tensor):
            # CSR already in torch (e.g. on the device): the answer stays there as a tensor
            return self.core.predict_tensor(dense_feature, embeddingcolumns, row_ptrs, i64)
        return self.core.predict(dense_feature, embeddingcolumns, row_ptrs, i64).tolist()

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
                                device, cfg["max_batchsize"],
                                cache_of=getattr(embedding_cache, "cache", None))


class _ParamsSession(_SessionBase):
    """Built from a graph JSON and ``InferenceParams`` (owns its parameter server)."""

    def __init__(self, config_file: str, params: InferenceParams,
                 *, dense_network: DenseNetwork | None = None,
                 parameter_server: HPS | None = None) -> None:
        self.params = params
        device = _params_device(params)
        graph_path = params.network_file or config_file
        self.graph_path = graph_path
        dense_fn, specs = dense_network or build_dense_network(
            graph_path, params.dense_model_file, device, params.non_trainable_params_file)
        self.parameter_server = parameter_server or HPS(
            ps_config_for([params], {params.model_name: specs}))
        self.embedding_cache = EmbeddingCacheHandle(self.parameter_server, params.model_name,
                                                    device.index or 0)
        mixed = MIXED_PRECISION if params.use_mixed_precision and device.type == "cuda" else None
        self.core = SessionCore(self.embedding_cache.lookup, specs, dense_fn,
                                dense_dim_of(graph_path), device, params.max_batchsize,
                                cache_of=self.embedding_cache.cache, mixed_precision=mixed)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.parameter_server.close()


class InferenceModel(_ParamsSession):
    """HugeCTR ``InferenceModel(model_config_path, inference_params)`` (reference §18.3).

    ``predict`` / ``evaluate`` read batches from data files (or take a CSR request, as the
    sessions do); ``check_out_tensor(tensor_name)`` returns a named tensor of the last batch
    they ran. The tensors kept are those of one batch only: the dense input, every embedding's
    pooled output ``(B, slot_num, dim)``, every dense layer's top, and (after the reader-driven
    overloads) the labels read with the batch. Loss layers are skipped at inference (as
    HugeCTR's inference network skips them), so a loss top is not among them.
    """

    def __init__(self, model_config_path: str, inference_params: InferenceParams,
                 *, dense_network: DenseNetwork | None = None,
                 parameter_server: HPS | None = None) -> None:
        self._kept: dict[str, torch.Tensor] = {}
        self._schema: DataSchema | None = None
        graph_path = inference_params.network_file or model_config_path
        if dense_network is None:
            from terarec.graph.inference import build_inference_network

            dense_fn, network = build_inference_network(
                graph_path, inference_params.dense_model_file, _params_device(inference_params),
                inference_params.non_trainable_params_file)
            network.register_forward_hook(self._keep_network_tensors)
            self._schema = network.schema
            dense_network = (dense_fn, embedding_specs_from_graph(graph_path))
        super().__init__(model_config_path, inference_params, dense_network=dense_network,
                         parameter_server=parameter_server)
        self._dense_name = (self._schema.dense_name if self._schema is not None
                            else _dense_name_of(graph_path))
        inner = self.core.dense.dense_fn

        def keeping_dense_fn(pooled: dict[str, torch.Tensor], dense: torch.Tensor
                             ) -> torch.Tensor:
            self._kept = {self._dense_name: dense, **pooled}
            return inner(pooled, dense)

        self.core.dense.dense_fn = keeping_dense_fn

    def _keep_network_tensors(self, network: Any, _args: Any, out: Any) -> None:
        """Forward hook of the dense network: keep its named tensors (not its zero labels)."""
        labels = set(network.schema.label_names)
        self._kept.update({k: v for k, v in out.tensors.items() if k not in labels})

    def _from_reader(self, *args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        preds, labels = super()._from_reader(*args, **kwargs)
        if self._kept:
            self._keep_labels(labels[-next(iter(self._kept.values())).shape[0]:])
        return preds, labels

    def _keep_labels(self, labels: np.ndarray) -> None:
        """The last batch's labels under the Data layer's label names."""
        if self._schema is None:
            from terarec.graph.json_io import read_graph_json

            self._schema = read_graph_json(self.graph_path, include_dense_network=False).schema
        assert self._schema is not None  # noqa: S101 - read_graph_json requires a Data layer
        start = 0
        for name, dim in zip(self._schema.label_names, self._schema.label_dims):
            self._kept[name] = torch.from_numpy(np.ascontiguousarray(labels[:, start:start + dim]))
            start += dim

    def check_out_tensor(self, tensor_name: str) -> np.ndarray:
        """The named tensor of the last batch run by ``predict`` / ``evaluate``, as float32
        numpy in the tensor's shape (batch first).

        Raises:
            ConfigError: no batch was run yet, or ``tensor_name`` is not a tensor of the model
                (the message lists the valid names).
        """
        if not isinstance(tensor_name, str):
            raise ConfigError("InferenceModel.check_out_tensor(tensor_name=...)",
                              "a tensor name (str)", tensor_name)
        if not self._kept:
            raise ConfigError("InferenceModel.check_out_tensor",
                              "a predict(...) or evaluate(...) call first", None)
        if tensor_name not in self._kept:
            raise ConfigError("InferenceModel.check_out_tensor(tensor_name=...)",
                              f"one of {sorted(self._kept)}", tensor_name)
        return self._kept[tensor_name].detach().float().cpu().numpy()


def _params_device(params: InferenceParams) -> torch.device:
    """The device an ``InferenceParams`` session runs on (its first deployed device)."""
    return device_for(params.deployed_devices[0] if params.deployed_devices
                      else params.device_id)


def _dense_name_of(graph_path: str) -> str:
    """The dense input's name in the graph JSON's Data layer (``"dense"`` when it names none)."""
    try:
        layers = json.loads(Path(graph_path).read_text()).get("layers", [])
    except (OSError, ValueError, AttributeError):
        return "dense"
    data = next((ly for ly in layers if isinstance(ly, dict) and ly.get("type") == "Data"), {})
    dense = data.get("dense", {})
    return str(dense.get("top", "dense")) if isinstance(dense, dict) else "dense"


def CreateInferenceSession(config_file: str, params: InferenceParams,  # noqa: N802
                           *, dense_network: DenseNetwork | None = None) -> _ParamsSession:
    """HugeCTR ``CreateInferenceSession(model_config_path, inference_params)``."""
    return _ParamsSession(config_file, params, dense_network=dense_network)
