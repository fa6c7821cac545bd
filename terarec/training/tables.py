"""Turn the graph's ``EmbeddingSpec``s into embedding tables (the trivial one-device plan)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from terarec.errors import ConfigError, NotSupportedError
from terarec.graph.spec import EmbeddingSpec, GraphSpec
from terarec.optim.config import OptimizerConfig


def table_config_for(spec: EmbeddingSpec, graph: GraphSpec, default_optimizer: OptimizerConfig,
                     num_gpus: int = 1) -> Any:
    """The ``TableConfig`` (what the table is) of one ``SparseEmbedding``."""
    from terarec.embedding.config import TableConfig, vocabulary_from_workspace

    assert graph.schema is not None  # noqa: S101 - callers check
    where = f"SparseEmbedding({spec.top!r})"
    names = [s.name for s in graph.schema.sparse]
    if spec.bottom not in names:
        raise ConfigError(f"{where}.bottom_name", f"one of the sparse inputs {names}", spec.bottom)
    sparse_spec = graph.schema.sparse_by_name(spec.bottom)
    slot_num = sparse_spec.slot_num
    nnz = set(sparse_spec.nnz_per_slot)
    hotness = nnz.pop() if sparse_spec.is_fixed_length and len(nnz) == 1 else None
    if spec.slot_size_array and len(spec.slot_size_array) != slot_num:
        raise ConfigError(f"{where}.slot_size_array", f"{slot_num} entries (slot_num of input "
                          f"{spec.bottom!r})", spec.slot_size_array)
    optimizer = spec.optimizer or default_optimizer
    if spec.slot_size_array:
        vocab = sum(spec.slot_size_array)
    elif spec.max_vocabulary_size_global > 0 and spec.workspace_size_per_gpu_in_mb <= 0:
        vocab = spec.max_vocabulary_size_global
    else:
        vocab = vocabulary_from_workspace(spec.workspace_size_per_gpu_in_mb,
                                          spec.embedding_vec_size, optimizer, num_gpus)
    if vocab <= 0:
        raise ConfigError(f"{where}.workspace_size_per_gpu_in_mb", "a workspace large enough "
                          "for at least one row", spec.workspace_size_per_gpu_in_mb)
    spec.max_vocabulary_size_global = int(vocab)
    return TableConfig(
        name=spec.top,
        input_name=spec.bottom,
        dim=spec.embedding_vec_size,
        combiner=spec.combiner,
        slot_num=slot_num,
        max_vocabulary_size=int(vocab),
        slot_size_array=list(spec.slot_size_array) or None,
        embedding_type=spec.embedding_type,
        optimizer=optimizer,
        hotness=hotness,
        eviction=spec.extra.get("eviction"),
    )


def _multi_rank() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def build_tables(graph: GraphSpec, solver: Any, default_optimizer: OptimizerConfig,
                 device: torch.device, generator: torch.Generator,
                 table_factory: Callable[[list[Any], torch.device, torch.Generator],
                                         dict[str, Any]] | None = None,
                 ) -> tuple[dict[str, Any], dict[str, str]]:
    """Build every table of ``graph`` on ``device``; returns (tables by name, input names).

    ``table_factory(configs, device, generator)`` replaces the one-device tables (the
    distributed package passes one that builds sharded tables from a placement plan).
    """
    from terarec.embedding.table import EmbeddingTable

    configs: list[Any] = []
    inputs: dict[str, str] = {}
    for spec in graph.embeddings:
        if spec.top in inputs:
            raise ConfigError(f"SparseEmbedding({spec.top!r}).sparse_embedding_name",
                              "a unique name", spec.top)
        configs.append(table_config_for(spec, graph, default_optimizer,
                                        getattr(solver, "num_gpus", 1)))
        inputs[spec.top] = spec.bottom
    evicting = [c.name for c in configs if c.eviction is not None]
    if evicting and (table_factory is not None or _multi_rank()):
        raise NotSupportedError(
            f"SparseEmbedding {evicting}: an eviction policy is supported for single-process "
            "tables only, not for tables sharded over several ranks or shared by several "
            "lookups. Remove eviction=... or run this model in one process without shared "
            "tables.")
    if table_factory is not None:
        return table_factory(configs, device, generator), inputs
    tables = {cfg.name: EmbeddingTable(cfg, device=device, generator=generator)
              for cfg in configs}
    return tables, inputs
