"""Embedding tables split across GPUs and nodes on ``torch.distributed``.

* :mod:`~terarec.distributed.env` / :mod:`~terarec.distributed.launch`: process groups from
  torchrun variables (NCCL on CUDA, gloo on CPU) and one process per ``vvgpu`` GPU.
* :class:`ShardedEmbeddingCollection`: ``input_dist -> lookup -> output_dist`` with one strategy
  per placement kind (``row_wise``, ``table_wise``, ``replicated``, ``column_wise``,
  ``hybrid``; registry :data:`STRATEGIES`), exactly equal to one-process training on the same
  global batches.
* :mod:`~terarec.distributed.fused`: the collection's ``forward`` runs its row-wise,
  table-wise and replicated tables with one collective per phase for all of them; a world of
  one runs each table's plain lookup (no collectives).
* :mod:`~terarec.distributed.shard_index`: direct-mapped shards (no hash) for tables whose keys
  are row numbers (one-hot, ``slot_size_array``).
* :mod:`~terarec.distributed.planner`: proposes / checks / prints / loads plans.
* :mod:`~terarec.distributed.checkpoint`: per-rank shards, loadable on any number of ranks.
* :mod:`~terarec.distributed.model_hooks`: what ``hugectr.Model`` calls when a job has ranks.
* :mod:`~terarec.distributed.overlap`: the next batch's key exchange issued during the current
  step (``TERAREC_OVERLAP_INPUT_DIST=1``, opt-in; :func:`announce_next_batch` for batches
  passed by hand).
"""

from terarec.distributed.checkpoint import load_shards, save_shards
from terarec.distributed.collection import ShardedEmbeddingCollection, build_sharded_table
from terarec.distributed.data_parallel import DataParallel, local_range
from terarec.distributed.env import DistEnv, init_from_env, init_process_group
from terarec.distributed.launch import launch_if_needed
from terarec.distributed.model_hooks import announce_next_batch
from terarec.distributed.planner import (
    PlannerConfig,
    check_plan,
    describe_plan,
    hugectr_plan,
    load_plan,
    propose,
    save_plan,
)
from terarec.distributed.types import STRATEGIES, LookupContext

__all__ = [
    "STRATEGIES", "DataParallel", "DistEnv", "LookupContext", "PlannerConfig",
    "ShardedEmbeddingCollection", "announce_next_batch", "build_sharded_table", "check_plan", "describe_plan",
    "hugectr_plan", "init_from_env", "init_process_group", "launch_if_needed", "load_plan",
    "load_shards", "local_range", "propose", "save_plan", "save_shards",
]
