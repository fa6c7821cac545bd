"""``Input``, ``SparseEmbedding``, ``DenseLayer`` (+ ``DenseLayerComputeConfig``, ``GroupDenseLayer``).

These only record what the user asked for; ``Model.add`` turns them into graph specs, and
``Model.compile`` validates wiring and shapes.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from terarec.compat._check import check_float, check_int, check_str
from terarec.compat.optimizer import OptParamsPy
from terarec.compat.reader import DataReaderSparseParam
from terarec.data.schema import DataSchema, SparseSpec
from terarec.embedding.config import EvictionPolicy
from terarec.enums import (
    Activation_t,
    Embedding_t,
    FcPosition_t,
    GroupLayer_t,
    Initializer_t,
    Layer_t,
    Regularizer_t,
    coerce,
    name_of,
)
from terarec.errors import ConfigError
from terarec.graph.spec import EmbeddingSpec, LayerSpec
from terarec.layers.common import DEFAULTS


# --------------------------------------------------------------------------------- Input
class Input:
    """``hugectr.Input``: the data layer (labels, dense features, sparse inputs).

    Overloads (as HugeCTR):
        ``Input(label_dim, label_name, dense_dim, dense_name, data_reader_sparse_param_array)``
        ``Input(label_dims, label_names, dense_dim, dense_name, data_reader_sparse_param_array)``
        ``Input(label_dims, label_names, label_weights, dense_dim, dense_name, ...)``
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        names = ["label_dim", "label_name", "dense_dim", "dense_name",
                 "data_reader_sparse_param_array"]
        if len(args) >= 3 and isinstance(args[2], list):  # label_weights overload
            names = ["label_dims", "label_names", "label_weights", "dense_dim", "dense_name",
                     "data_reader_sparse_param_array"]
        if "label_weights" in kwargs and "label_weights" not in names:
            names.insert(2, "label_weights")
        if len(args) > len(names):
            raise ConfigError("Input(...)", f"at most {len(names)} positional arguments",
                              len(args))
        values = dict(zip(names, args))
        for key, val in kwargs.items():
            if key in values:
                raise ConfigError("Input(...)", f"{key} given once", "given twice")
            values[key] = val
        label_dim = values.pop("label_dim", values.pop("label_dims", None))
        label_name = values.pop("label_name", values.pop("label_names", None))
        label_weights = values.pop("label_weights", None)
        dense_dim = values.pop("dense_dim", None)
        dense_name = values.pop("dense_name", None)
        sparse = values.pop("data_reader_sparse_param_array", [])
        if values:
            raise ConfigError("Input(...)", "label_dim(s), label_name(s), [label_weights], "
                              "dense_dim, dense_name, data_reader_sparse_param_array",
                              sorted(values))
        if isinstance(label_dim, int):
            label_dims, label_names = [label_dim], [check_str("Input", "label_name", label_name)]
        else:
            label_dims, label_names = list(label_dim or []), list(label_name or [])
        if not label_dims or any(isinstance(d, bool) or not isinstance(d, int) for d in label_dims):
            raise ConfigError("Input(label_dim=...)", "a positive int or list of ints", label_dim)
        check_int("Input", "dense_dim", dense_dim, 0)
        check_str("Input", "dense_name", dense_name)
        if not isinstance(sparse, list) or not all(
                isinstance(p, DataReaderSparseParam) for p in sparse):
            raise ConfigError("Input(data_reader_sparse_param_array=...)",
                              "a list of DataReaderSparseParam", sparse)
        self.label_dims = label_dims
        self.label_names = label_names
        self.label_weights = list(label_weights) if label_weights is not None else None
        self.dense_dim = int(dense_dim)
        self.dense_name = dense_name
        self.data_reader_sparse_param_array = list(sparse)

    def to_schema(self) -> DataSchema:
        return DataSchema(
            label_dims=self.label_dims,
            label_names=self.label_names,
            dense_dim=self.dense_dim,
            dense_name=self.dense_name,
            sparse=[SparseSpec(p.top_name, p.nnz_per_slot, p.is_fixed_length, p.slot_num)
                    for p in self.data_reader_sparse_param_array],
            label_weights=self.label_weights,
        )


# ----------------------------------------------------------------------- SparseEmbedding
@dataclass
class HybridEmbeddingParam:
    """Accepted for compatibility; terarec's hybrid placement is chosen by its planner."""

    max_num_frequent_categories: int = 1
    max_num_infrequent_samples: int = -1
    p_dup_max: float = 0.01
    max_all_reduce_bandwidth: float = 1.3e11
    max_all_to_all_bandwidth: float = 2.6e11
    efficiency_bandwidth_ratio: float = 1.0
    communication_type: Any = None
    hybrid_embedding_type: Any = None


class SparseEmbedding:
    """``hugectr.SparseEmbedding``: one embedding table pooled per slot (sum or mean).

    terarec extension: ``eviction=`` (an :class:`terarec.embedding.config.EvictionPolicy` or
    its dict, e.g. ``{"policy": "lru", "target": 0.8, "admit_after": 2}``) makes the hash
    table admit keys, evict rows when full (LRU / LFU / TTL) and report its occupancy
    (``terarec.compat.embedding_stats``); keys without a row are a zero vector with no
    gradient. Single-process, hash embedding types only. Not part of HugeCTR's API.
    """

    def __init__(
        self,
        embedding_type: Any,
        workspace_size_per_gpu_in_mb: float = 0,
        embedding_vec_size: int = 1,
        combiner: str = "sum",
        sparse_embedding_name: str = "",
        bottom_name: str = "",
        slot_size_array: list[int] | None = None,
        optimizer: OptParamsPy | None = None,
        hybrid_embedding_param: HybridEmbeddingParam | None = None,
        *,
        eviction: EvictionPolicy | dict[str, Any] | None = None,
    ) -> None:
        f = "SparseEmbedding"
        self.embedding_type = coerce(Embedding_t, embedding_type, f"{f}(embedding_type=...)")
        self.workspace_size_per_gpu_in_mb = check_float(
            f, "workspace_size_per_gpu_in_mb", workspace_size_per_gpu_in_mb, 0)
        self.embedding_vec_size = check_int(f, "embedding_vec_size", embedding_vec_size, 1)
        if combiner in (0, 1):
            combiner = ("sum", "mean")[combiner]
        if combiner not in ("sum", "mean"):
            raise ConfigError(f"{f}(combiner=...)", "'sum' or 'mean'", combiner)
        self.combiner = combiner
        self.sparse_embedding_name = check_str(f, "sparse_embedding_name", sparse_embedding_name)
        self.bottom_name = check_str(f, "bottom_name", bottom_name)
        if not self.sparse_embedding_name or not self.bottom_name:
            raise ConfigError(f"{f}(sparse_embedding_name=..., bottom_name=...)",
                              "both names given", (sparse_embedding_name, bottom_name))
        self.slot_size_array = list(slot_size_array or [])
        if not self.slot_size_array and self.workspace_size_per_gpu_in_mb <= 0:
            raise ConfigError(f"{f}({self.sparse_embedding_name!r})",
                              "workspace_size_per_gpu_in_mb > 0 or a slot_size_array",
                              {"workspace_size_per_gpu_in_mb": workspace_size_per_gpu_in_mb,
                               "slot_size_array": slot_size_array})
        if optimizer is not None and not isinstance(optimizer, OptParamsPy):
            raise ConfigError(f"{f}(optimizer=...)", "the result of CreateOptimizer(...)",
                              optimizer)
        self.optimizer = optimizer or OptParamsPy()
        self.hybrid_embedding_param = hybrid_embedding_param or HybridEmbeddingParam()
        self.eviction = None if eviction is None else EvictionPolicy.coerce(
            eviction, f"{f}({self.sparse_embedding_name!r}).eviction")
        if self.eviction is not None and name_of(self.embedding_type) == \
                "LocalizedSlotSparseEmbeddingOneHot":
            raise ConfigError(f"{f}({self.sparse_embedding_name!r}).eviction",
                              "None for LocalizedSlotSparseEmbeddingOneHot (eviction needs a "
                              "hash embedding type)", eviction)

    def to_spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(
            embedding_type=name_of(self.embedding_type),
            bottom=self.bottom_name,
            top=self.sparse_embedding_name,
            embedding_vec_size=self.embedding_vec_size,
            combiner=self.combiner,
            workspace_size_per_gpu_in_mb=self.workspace_size_per_gpu_in_mb,
            slot_size_array=self.slot_size_array,
            optimizer=self.optimizer.config,
            extra={"eviction": self.eviction.to_dict()} if self.eviction is not None else {},
        )


# ---------------------------------------------------------------------------- DenseLayer
@dataclass
class DenseLayerComputeConfig:
    """``hugectr.DenseLayerComputeConfig(async_wgrad=False, fuse_wb=False)`` (performance hints)."""

    async_wgrad: bool = False
    fuse_wb: bool = False


# Every DenseLayer keyword with its §9 default (the layers read the same table).
DENSE_LAYER_DEFAULTS: dict[str, Any] = {**DEFAULTS, "compute_config": None}
_ENUM_PARAMS = {
    "gamma_init_type": Initializer_t, "beta_init_type": Initializer_t,
    "weight_init_type": Initializer_t, "bias_init_type": Initializer_t,
    "regularizer_type": Regularizer_t, "pos_type": FcPosition_t, "act_type": Activation_t,
}


def _plain(key: str, value: Any) -> Any:
    """Enum members -> their names; tuples -> lists; compute_config -> dict."""
    if key in _ENUM_PARAMS:
        return name_of(coerce(_ENUM_PARAMS[key], value, f"DenseLayer({key}=...)"))
    if key == "activations":
        return [name_of(coerce(Activation_t, a, "DenseLayer(activations=...)")) for a in value]
    if key == "compute_config":
        return None if value is None else {"async_wgrad": bool(value.async_wgrad),
                                           "fuse_wb": bool(value.fuse_wb)}
    if key == "ranges":
        return [list(r) for r in value]
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, tuple):
        return list(value)
    return value


class DenseLayer:
    """``hugectr.DenseLayer(layer_type, bottom_names, top_names, **params)``.

    Every keyword of HugeCTR's binding is accepted with its default (§9); ``lambda`` must be
    passed as ``**{"lambda": x}`` as in HugeCTR. Unknown keywords are an error naming them.
    """

    def __init__(self, layer_type: Any, bottom_names: list[str], top_names: list[str],
                 **params: Any) -> None:
        self.layer_type = coerce(Layer_t, layer_type, "DenseLayer(layer_type=...)")
        for arg, names in (("bottom_names", bottom_names), ("top_names", top_names)):
            if isinstance(names, str):
                names = [names]
            if not isinstance(names, list) or not names or not all(
                    isinstance(n, str) and n for n in names):
                raise ConfigError(f"DenseLayer({name_of(self.layer_type)}).{arg}",
                                  "a non-empty list of tensor names", names)
        self.bottom_names = [bottom_names] if isinstance(bottom_names, str) else list(bottom_names)
        self.top_names = [top_names] if isinstance(top_names, str) else list(top_names)
        unknown = sorted(set(params) - set(DENSE_LAYER_DEFAULTS))
        if unknown:
            raise ConfigError(f"DenseLayer({name_of(self.layer_type)})",
                              f"keywords among {sorted(DENSE_LAYER_DEFAULTS)}", unknown)
        self.params = {k: _plain(k, v) for k, v in params.items()}

    def to_spec(self) -> LayerSpec:
        return LayerSpec(type=name_of(self.layer_type), bottom=self.bottom_names,
                         top=self.top_names, params=dict(self.params))


@dataclass
class GroupDenseLayer:
    """``hugectr.GroupDenseLayer`` (≤23.08): a chain of fully connected layers.

    terarec expands it into one MLP layer with the same weights and activations.
    """

    group_layer_type: Any
    bottom_name_list: list[str]
    top_name_list: list[str]
    num_outputs: list[int] = field(default_factory=list)
    last_act_type: Any = Activation_t.Relu

    def to_spec(self) -> LayerSpec:
        coerce(GroupLayer_t, self.group_layer_type, "GroupDenseLayer(group_layer_type=...)")
        last = name_of(coerce(Activation_t, self.last_act_type, "GroupDenseLayer(last_act_type)"))
        acts = ["Relu"] * (len(self.num_outputs) - 1) + [last]
        return LayerSpec(type="MLP", bottom=list(self.bottom_name_list[:1]),
                         top=[self.top_name_list[-1]],
                         params={"num_outputs": list(self.num_outputs), "activations": acts})
