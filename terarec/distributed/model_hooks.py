"""Hooks that make the HugeCTR ``Model`` train data-parallel over sharded tables.

``Model.__init__`` calls :func:`init_distributed` (which launches / joins the job, see
:mod:`terarec.distributed.launch`); with more than one rank it returns a
:class:`DistributedModel` that:

* sets ``model.rank`` / ``model.world_size`` / ``model.device`` (GPU of the local rank);
* makes both readers read the *global* batches (every rank reads the same file positions); the
  train reader's prefetch thread cuts this rank's contiguous slice before the copy to the device
  and tags it with every rank's batch size (``DataParallel.split``); evaluation runs the whole
  global eval batch on every rank, so metrics equal a one-process run;
* builds the tables from a placement plan (``build_tables``): ``TERAREC_SHARDING_PLAN`` =
  ``hugectr`` (default: by embedding type, ``HybridSparseEmbedding`` -> ``hybrid``), ``auto``
  (the planner, memory from the device) or the path of a JSON plan; placements the script
  asked for itself (``EmbeddingCollectionConfig.shard``, :meth:`request_placements`) override
  them; the plan is printed by rank 0 before allocation; hybrid tables measure their hot rows
  (:func:`hybrid_options`);
* wires the Engine's ``grad_sync`` (weighted all-reduce of dense gradients) and ``loss_sync``
  (global-mean loss), and its ``embed`` to the collection's ``forward`` so all tables of a
  step share one collective per phase (:mod:`~terarec.distributed.fused`);
* overlaps the next batch's key exchange with the current batch's compute
  (``TERAREC_OVERLAP_INPUT_DIST=1``, opt-in; :mod:`~terarec.distributed.overlap`): the
  train reader gets one batch of look-ahead, and a step on a batch from the reader issues the
  next batch's ``input_dist`` right after its own embeddings' ``output_dist``;
* saves: every rank writes its shard (``{prefix}_shards_{iter}/``) and rank 0 writes HugeCTR's
  files from the tables gathered to it, the same files a one-process run writes.

The model object is duck-typed (this package never imports the facade).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import torch

from terarec.distributed import comm, env, overlap, planner
from terarec.distributed.checkpoint import save_shards, shard_folder
from terarec.distributed.collection import ShardedEmbeddingCollection
from terarec.distributed.data_parallel import DataParallel
from terarec.distributed.launch import launch_if_needed
from terarec.embedding.config import TableConfig
from terarec.embedding.plan import ShardingPlan, TablePlacement
from terarec.errors import ConfigError


class _ReaderView:
    """The model as its readers see it: one reader of the global data (rank 0 of 1)."""

    rank = 0
    world_size = 1

    def __init__(self, model: Any) -> None:
        object.__setattr__(self, "_model", model)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.8)
    return int(os.environ.get("TERAREC_DEVICE_MEMORY", str(64 << 30)))


class DistributedModel:
    """The distributed side of one ``Model`` (see module docstring)."""

    def __init__(self, model: Any, denv: env.DistEnv) -> None:
        self.model = model
        self.env = denv
        self.dp = DataParallel()
        self.plan: ShardingPlan | None = None
        self.collection: ShardedEmbeddingCollection | None = None
        self.requested: dict[str, TablePlacement] = {}
        model.rank = denv.rank
        model.world_size = denv.world_size
        model.device = denv.device
        model.train_reader.model = _ReaderView(model)
        model.eval_reader.model = _ReaderView(model)
        # Each rank's slice is cut on the reader's prefetch thread, before the copy to the
        # device, and tagged with every rank's batch size (fixed-size exchanges, no sync).
        model.train_reader.transform = self.dp.split
        # One batch of look-ahead on the train reader: the next batch's keys travel during
        # this step's dense compute (terarec.distributed.overlap).
        self.lookahead = overlap.Lookahead(model.train_reader) if overlap.enabled() else None
        self._ahead = False  # the running step's batch came from the reader: may look ahead
        self._announced: Any = None  # the next step's batch, said by the script

    def begin_train_step(self, batch: Any) -> Any:
        """Called by ``Model.train`` with this rank's batch: sets the step's share of the
        global mean (see :meth:`DataParallel.begin_step`) and returns the tagged batch."""
        self._ahead = self.lookahead is not None and batch is self.lookahead.last
        return self.dp.begin_step(batch)

    def begin_eval_step(self, batch: Any) -> Any:
        """Evaluation runs the whole global batch on every rank: tagged as such."""
        return batch.with_rank_batch_sizes((int(batch.batch_size),) * self.env.world_size)

    def request_placements(self, placements: dict[str, TablePlacement]) -> None:
        """Placements chosen by the script (table name -> placement); they override the
        ``TERAREC_SHARDING_PLAN`` choice for those tables."""
        self.requested.update(placements)

    def choose_plan(self, configs: list[TableConfig], device: torch.device) -> ShardingPlan:
        choice = os.environ.get("TERAREC_SHARDING_PLAN", "hugectr")
        world = self.env.world_size
        rest = [c for c in configs if c.name not in self.requested]
        if choice == "hugectr":
            plan = planner.hugectr_plan(rest, world)
        elif choice == "auto":
            batch = max(1, int(self.model.solver.batchsize) // world)
            pc = planner.PlannerConfig(world, _device_memory(device),
                                       self.env.local_world_size, batch)
            plan = planner.propose(rest, pc)
        else:
            plan = planner.load_plan(choice, rest, world)
        names = {c.name for c in configs}
        plan.placements.update({n: p for n, p in self.requested.items() if n in names})
        plan = ShardingPlan({c.name: plan[c.name] for c in configs})
        planner.check_plan(configs, plan, planner.PlannerConfig(world, 1 << 62))
        return plan

    def build_tables(self, configs: list[TableConfig], device: torch.device,
                     generator: torch.Generator) -> dict[str, Any]:
        """The ``table_factory`` of ``build_tables``: plan, print, then allocate."""
        self.plan = self.choose_plan(configs, device)
        if self.env.rank == 0:
            text = planner.describe_plan(configs, self.plan, world_size=self.env.world_size)
            print(f"Sharding plan ({self.env.world_size} ranks):\n{text}", flush=True)
        coll = ShardedEmbeddingCollection(configs, self.plan, device, generator,
                                          options=hybrid_options(configs, self.plan))
        self.collection = coll
        return dict(coll.tables)

    def attach(self, engine: Any) -> None:
        engine.grad_sync = self.dp.grad_sync
        engine.loss_sync = self.dp.loss_sync
        coll = self.collection
        if coll is None or list(engine.tables) != [c.name for c in coll.configs]:
            return
        if self.lookahead is not None and coll.can_prefetch:
            engine.embed = functools.partial(self.embed_ahead, engine)
        elif len(coll.configs) > 1:
            # the Engine looks tables up one by one; the collection does them all at once
            engine.embed = functools.partial(fused_embed, coll, engine.table_inputs)

    def embed_ahead(self, engine: Any, batch: Any) -> dict[str, torch.Tensor]:
        """``Engine.embed`` with the overlap on: :func:`fused_embed`, then (a training step on
        a batch from the reader, eager, no capture) the next batch's key exchanges issued
        ahead (:meth:`ShardedEmbeddingCollection.prefetch`)."""
        coll = self.collection
        assert coll is not None  # noqa: S101 - attach checked
        out = fused_embed(coll, engine.table_inputs, batch)
        if not torch.is_grad_enabled() or overlap.capturing():
            return out
        ahead, self._ahead = self._ahead, False
        nxt, self._announced = self._announced, None
        if overlap.whole_step_graph(engine):  # its replays never call embed
            coll.drop_pending()
            return out
        if nxt is not None:  # tagged as begin_train_step will tag it (no state change)
            sizes = getattr(nxt, "rank_batch_sizes", None) or \
                (int(nxt.batch_size),) * self.env.world_size
            nxt = nxt.with_rank_batch_sizes(sizes)
        elif ahead and self.lookahead is not None:
            nxt = self.lookahead.peek()  # None: the source ends here, on every rank alike
        if nxt is not None:
            coll.prefetch(nxt.to(engine.device, non_blocking=True).sparse)
        return out

    def announce_next_batch(self, batch: Any) -> None:
        """See :func:`announce_next_batch`."""
        if overlap.enabled():
            self._announced = batch

    def save_params_to_files(self, prefix: str, it: int,
                             write: Callable[[str, int], None]) -> None:
        """Collective: shards on every rank, HugeCTR's files on rank 0 (``write`` is the
        one-process writer, which reads the gathered tables)."""
        tables = self.model.engine.tables
        for t in tables.values():
            t.prepare_export(0)
        try:
            save_shards(dict(tables), shard_folder(prefix, it))
            comm.barrier()
            if self.env.rank == 0:
                write(prefix, it)
        finally:
            for t in tables.values():
                t.clear_prepared()
        comm.barrier()


def announce_next_batch(model: Any, batch: Any) -> None:
    """terarec extra: ``batch`` (this rank's part, as it will be passed) is what the next
    ``model.train(batch)`` call trains on, so the current step issues its key exchanges ahead
    (:mod:`~terarec.distributed.overlap`); for scripts that pass batches by hand (a reader's
    batches are looked ahead by themselves). Every rank announces at the same steps; another
    batch than announced just takes the synchronous path. A no-op in a single process or with
    unless ``TERAREC_OVERLAP_INPUT_DIST=1``."""
    dist_model = getattr(model, "_dist", None)
    if dist_model is not None:
        dist_model.announce_next_batch(batch)


def fused_embed(coll: ShardedEmbeddingCollection, table_inputs: dict[str, str],
                batch: Any) -> dict[str, torch.Tensor]:
    """``Engine.embed`` of a sharded model: every table of the step through the collection's
    ``forward`` (one collective per phase for all fusable tables)."""
    for name, input_name in table_inputs.items():
        if input_name not in batch.sparse:
            raise ConfigError(f"SparseEmbedding {name!r}.bottom_name",
                              f"a sparse input of the batch {sorted(batch.sparse)}", input_name)
    return coll(batch.sparse)


def hybrid_options(configs: list[TableConfig], plan: ShardingPlan) -> dict[str, dict[str, Any]]:
    """Options of the hybrid tables: the measured hot set, sized by ``TERAREC_HYBRID_MAX_HOT``
    (rows) and ``TERAREC_HYBRID_STATISTICS_BATCHES`` when set (HugeCTR's
    ``max_num_frequent_categories`` / ``num_iterations_statistics``; the script's
    ``HybridEmbeddingParam`` is not carried into the table configs)."""
    opts: dict[str, Any] = {}
    if os.environ.get("TERAREC_HYBRID_MAX_HOT"):
        opts["max_hot"] = int(os.environ["TERAREC_HYBRID_MAX_HOT"])
    if os.environ.get("TERAREC_HYBRID_STATISTICS_BATCHES"):
        opts["statistics_batches"] = int(os.environ["TERAREC_HYBRID_STATISTICS_BATCHES"])
    return {c.name: dict(opts) for c in configs if plan[c.name].kind == "hybrid"}


def init_distributed(model: Any) -> DistributedModel | None:
    """Join or launch the job for ``model.solver.vvgpu``; None for a single process."""
    denv = launch_if_needed(getattr(model.solver, "vvgpu", None))
    if denv.world_size <= 1 and not (env.exchange_at_one_rank() and env.is_initialized()):
        return None
    return DistributedModel(model, denv)
