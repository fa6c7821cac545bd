"""``hugectr.Model``: build a graph with ``add``, ``compile`` it, train with ``fit`` or step by step.

Everything HugeCTR's ``Model`` offers (§12 of the reference) plus Pythonic extras:
``predict`` (numpy), ``evaluate`` (dict), a progress bar and optional TensorBoard in ``fit``.
Model-file methods live in :mod:`terarec.compat.model_io`, reader plumbing in
:mod:`terarec.compat.readers`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from terarec.compat.etc import (
    EmbeddingTrainingCache,
    check_etc_params,
    check_keyset_file,
    check_table_count,
    etc_sources,
)
from terarec.compat.layers import DenseLayer, GroupDenseLayer, Input, SparseEmbedding
from terarec.compat.model_io import ModelFilesMixin
from terarec.compat.optimizer import OptParamsPy
from terarec.compat.reader import DataReaderParams
from terarec.compat.readers import ReaderSlot
from terarec.compat.solver import Solver
from terarec.compat.torch_layer import TorchLayer
from terarec.data.batch import Batch
from terarec.enums import Tensor_t, coerce
from terarec.errors import ConfigError, TrainingError
from terarec.graph.builder import DenseNetwork
from terarec.graph.json_io import read_graph_json, write_graph_json
from terarec.graph.spec import GraphSpec
from terarec.metrics.extensions import MetricSet
from terarec.optim.config import OptimizerConfig
from terarec.optim.schedule import LearningRateScheduler
from terarec.training.engine import Engine
from terarec.training.fit import FitOptions, run_fit
from terarec.training.precision import PrecisionConfig
from terarec.training.tables import build_tables
from terarec.utils.device import resolve_device
from terarec.utils.paths import check_local_path


class Model(ModelFilesMixin):
    """``hugectr.Model(solver, reader_params, opt_params[, etc_params])``."""

    def __init__(self, solver: Solver, reader_params: DataReaderParams | None,
                 opt_params: OptParamsPy, etc_params: Any = None) -> None:
        if not isinstance(solver, Solver):
            raise ConfigError("Model(solver=...)", "the result of CreateSolver(...)", solver)
        if reader_params is not None and not isinstance(reader_params, DataReaderParams):
            raise ConfigError("Model(reader_params=...)", "a DataReaderParams", reader_params)
        if not isinstance(opt_params, OptParamsPy) or opt_params.config is None:
            raise ConfigError("Model(opt_params=...)", "the result of CreateOptimizer(...)",
                              opt_params)
        self.solver = solver
        self.reader_params = reader_params
        # Embedding Training Cache (CreateETC, HugeCTR <= 23.08): see terarec.compat.etc.
        self._etc_params = check_etc_params(etc_params)
        self._etc: EmbeddingTrainingCache | None = None
        self._etc_passes: list[tuple[str, str]] | None = None
        self.optimizer_config: OptimizerConfig = opt_params.config
        self.spec = GraphSpec(model_name=solver.model_name)
        self.engine: Engine | None = None
        self.rank = 0
        self.device = resolve_device(solver.vvgpu)
        self.scheduler = LearningRateScheduler(solver.lr, solver.warmup_steps, solver.decay_start,
                                               solver.decay_steps, solver.decay_power,
                                               solver.end_lr)
        self.train_reader = ReaderSlot(self, train=True)
        self.eval_reader = ReaderSlot(self, train=False)
        self._loss: torch.Tensor | None = None
        self._metrics = MetricSet()  # HugeCTR's metrics_spec + terarec extras (add_metric)
        self._eval_losses: list[tuple[float, int]] = []
        self._loss_names: list[str] | None = None
        self._loss_weights: list[float] | None = None
        from terarec.distributed.model_hooks import init_distributed

        # torchrun / one process per vvgpu GPU: sharded tables, data-parallel dense, rank slices.
        self._dist = init_distributed(self)

    # ------------------------------------------------------------------ graph building
    def add(self, layer: Any) -> None:
        if self.engine is not None:
            raise ConfigError("Model.add", "layers added before compile()", type(layer).__name__)
        if isinstance(layer, Input):
            if self.spec.schema is not None:
                raise ConfigError("Model.add(Input)", "a single Input", "a second Input")
            self.spec.schema = layer.to_schema()
        elif isinstance(layer, SparseEmbedding):
            self._require_input("SparseEmbedding")
            if self._etc_params is not None:
                check_table_count(self._etc_params, len(self.spec.embeddings) + 1, final=False)
            self.spec.embeddings.append(layer.to_spec())
        elif isinstance(layer, (DenseLayer, GroupDenseLayer, TorchLayer)):
            self._require_input("DenseLayer")
            self.spec.layers.append(layer.to_spec())
        elif type(layer).__name__ == "EmbeddingCollectionConfig":
            # one SparseEmbedding spec per lookup (+ Reshape/Concat of the list form); the
            # shard(...) plan goes to the sharded collection when the job has ranks.
            self._require_input("EmbeddingCollectionConfig")
            assert self.spec.schema is not None  # noqa: S101 - _require_input checked
            direct = self.reader_params is not None and not self.reader_params.slot_size_array
            cid = len({e.extra["collection"] for e in self.spec.embeddings
                       if "collection" in e.extra})
            sizes = self.reader_params.slot_size_array if self.reader_params else None
            graph = layer.to_graph(self.spec.schema, getattr(self, "world_size", 1), direct,
                                   collection_id=cid, slot_size_array=sizes)
            self.spec.embeddings.extend(graph.embeddings)
            self.spec.layers.extend(graph.layers)
            if self._dist is not None:
                self._dist.request_placements(graph.placements)
        else:
            raise ConfigError("Model.add", "an Input, SparseEmbedding, DenseLayer, "
                              "GroupDenseLayer or TorchLayer", type(layer).__name__)

    def _require_input(self, what: str) -> None:
        if self.spec.schema is None:
            raise ConfigError(f"Model.add({what})", "Input(...) added first", None)

    def compile(self, loss_names: list[str] | None = None,
                loss_weights: list[float] | None = None) -> None:
        """Validate the graph, allocate and initialise every weight."""
        if self.spec.schema is None:
            raise ConfigError("Model.compile", "an Input added before compile()", None)
        if (loss_names is None) != (loss_weights is None) or (
                loss_names is not None and len(loss_names) != len(loss_weights or [])):
            raise ConfigError("Model.compile(loss_names, loss_weights)",
                              "two lists of the same length", (loss_names, loss_weights))
        gen = torch.Generator().manual_seed(self.solver.seed)
        torch.manual_seed(self.solver.seed)
        from terarec.compat import shared_tables

        factory = self._dist.build_tables if self._dist else (  # tables shared by lookups
            shared_tables.table_factory(self.spec)
            if shared_tables.has_shared_tables(self.spec) else None)
        tables, inputs = build_tables(self.spec, self.solver, self.optimizer_config,
                                      self.device, gen, factory)
        emb_shapes = {name: (self.local_batchsize, t.config.slot_num, t.config.dim)
                      for name, t in tables.items()}
        weights = dict(zip(loss_names, loss_weights)) if loss_names else None
        network = DenseNetwork(self.spec, emb_shapes, self.local_batchsize, gen).to(self.device)
        if weights:
            network.set_loss_weights(weights)
        from terarec.optim.dense import make_dense_optimizer

        dense_params = network.dense_weights()
        dense_opt = make_dense_optimizer(self.optimizer_config, dense_params,
                                         scaler=self.solver.scaler) if dense_params else None
        precision = PrecisionConfig(self.solver.use_mixed_precision,
                                    self.solver.enable_tf32_compute, self.solver.scaler)
        self.engine = Engine(network, tables, inputs, dense_opt, precision, self.device)
        self.engine.use_cuda_graph = bool(self.solver.use_cuda_graph)
        if self._dist is not None:
            self._dist.attach(self.engine)
        self._metrics = self._make_metrics()
        if self._etc_params is not None:
            self._etc = EmbeddingTrainingCache(self, self._etc_params)
            self._etc.attach()

    def save_params_to_files(self, prefix: str, iter: int = 0) -> None:  # noqa: A002
        if self._dist is not None:  # every rank its shard; rank 0 the gathered HugeCTR files
            self._dist.save_params_to_files(prefix, iter, super().save_params_to_files)
        else:
            super().save_params_to_files(prefix, iter)

    def embedding_dump(self, path: str, table_names: list[str] | None = None) -> None:
        """Write the embedding-collection tables (default all) under ``path`` (§17.5; format in
        :mod:`terarec.compat.embedding_dump`)."""
        from terarec.compat.embedding_dump import embedding_dump

        embedding_dump(self, path, table_names)

    def embedding_load(self, path: str, table_names: list[str] | None = None) -> None:
        """Load embedding-collection tables (default all) that ``embedding_dump`` wrote."""
        from terarec.compat.embedding_dump import embedding_load

        embedding_load(self, path, table_names)

    @property
    def local_batchsize(self) -> int:
        return self.solver.batchsize

    def _make_metrics(self) -> MetricSet:
        from terarec.metrics import create_metrics

        return self._metrics.rebuilt(create_metrics(self.solver.metrics_spec))

    def add_metric(self, metric: Any) -> Any:
        """terarec extra: evaluate ``metric`` too, next to ``metrics_spec``'s (a
        :class:`terarec.metrics.GroupAUC` / ``NormalizedEntropy`` object, or an extension name
        such as ``"GAUC"`` or ``"NE"``); before or after ``compile``. Returns the metric."""
        return self._metrics.add(metric)

    def _engine(self) -> Engine:
        if self.engine is None:
            raise ConfigError("Model", "compile() called first", "not compiled")
        return self.engine

    def summary(self) -> None:
        """Print each layer's type, inputs and outputs with shapes (per-process batch)."""
        engine = self._engine()
        shapes = engine.network.shapes
        rows = [("Layer Type", "Input Name", "Output Name", "Output Shape")]
        schema = self.spec.schema
        assert schema is not None  # noqa: S101 - compile() checked it
        rows.append(("Input", "", schema.dense_name, str(list(shapes[schema.dense_name]))))
        for e in self.spec.embeddings:
            rows.append((e.embedding_type, e.bottom, e.top, str(list(shapes[e.top]))))
        for ls in self.spec.layers:
            rows.append((ls.type, ",".join(ls.bottom), ",".join(ls.top),
                         ",".join(str(list(shapes.get(t, ()))) for t in ls.top)))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        line = "=" * (sum(widths) + 9)
        print(line)
        print(f"Model summary ({self.spec.model_name or 'unnamed'}), batch per process "
              f"{self.local_batchsize}")
        print(line)
        for r in rows:
            print("   ".join(c.ljust(w) for c, w in zip(r, widths)))
        n_dense = sum(p.numel() for p in engine.network.dense_weights())
        print(f"Dense parameters: {n_dense}; embedding tables: "
              + ", ".join(f"{n} ({t.config.max_vocabulary_size} x {t.config.dim})"
                          for n, t in engine.tables.items()))
        print(line)

    # ------------------------------------------------------------------ JSON
    def graph_to_json(self, graph_config_file: str) -> None:
        if self.spec.schema is None:
            raise ConfigError("Model.graph_to_json", "an Input added first", None)
        spec = self.spec
        if self.engine is not None:
            for e in spec.embeddings:
                e.max_vocabulary_size_global = int(self.engine.tables[e.top].config
                                                   .max_vocabulary_size)
        write_graph_json(spec, graph_config_file)

    def construct_from_json(self, graph_config_file: str, include_dense_network: bool) -> None:
        spec = read_graph_json(graph_config_file, self.solver.num_gpus, include_dense_network)
        spec.model_name = self.solver.model_name or spec.model_name
        self.spec = spec

    # ------------------------------------------------------------------ learning rate
    def get_incremental_model(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per embedding table, ``(keys int64 [n], vectors float32 [n, dim])`` of the rows
        that are new or changed since the previous call (the first call: every row); see
        :mod:`terarec.compat.incremental`. Collective on several ranks."""
        from terarec.compat.incremental import IncrementalTracker, incremental_model

        tracker = getattr(self, "_incremental", None)
        if tracker is None:
            tracker = self._incremental = IncrementalTracker()
        tables = self._etc.store_views() if self._etc is not None else self._engine().tables
        return incremental_model(tables, tracker)

    def embedding_stats(self) -> dict[str, dict[str, Any]]:
        """terarec extra: per table, its occupancy and (tables with an eviction policy)
        admission / eviction totals (see :mod:`terarec.compat.embedding_stats`)."""
        from terarec.compat.embedding_stats import embedding_stats

        return embedding_stats(self)

    def get_embedding_training_cache(self) -> EmbeddingTrainingCache:
        """The ``EmbeddingTrainingCache`` of a model created with ``CreateETC`` params
        (``update(keyset_file)`` / ``update(keyset_file_list)``)."""
        self._engine()
        if self._etc is None:
            raise ConfigError("Model.get_embedding_training_cache", "a Model created as "
                              "Model(solver, reader, optimizer, CreateETC(...))",
                              "a Model without Embedding Training Cache")
        return self._etc

    def dump_incremental_model_2kafka(self) -> None:
        """HugeCTR's Kafka push of the incremental model: terarec has no Kafka producer (as its
        parameter server has no Kafka consumer); raises :class:`NotSupportedError` naming the
        replacement."""
        from terarec.errors import NotSupportedError

        raise NotSupportedError(
            "Model.dump_incremental_model_2kafka: terarec has no Kafka producer. Call "
            "model.get_incremental_model() for the changed (keys, vectors) of every table and "
            "insert them into the serving parameter server "
            "(session.parameter_server.table(model_name, i).insert(keys, vectors), then "
            "session.refresh_embedding_cache()).")

    def get_learning_rate_scheduler(self) -> LearningRateScheduler:
        return self.scheduler

    def reset_learning_rate_scheduler(self, base_lr: float, warmup_steps: int = 1,
                                      decay_start: int = 0, decay_steps: int = 1,
                                      decay_power: float = 2.0, end_lr: float = 0.0) -> None:
        self.scheduler = LearningRateScheduler(base_lr, warmup_steps, decay_start, decay_steps,
                                               decay_power, end_lr)

    def set_learning_rate(self, lr: float) -> None:
        self._engine().set_learning_rate(lr)

    # ------------------------------------------------------------------ freezing
    def freeze_embedding(self, embedding_name: str | None = None) -> None:
        for table in self._tables(embedding_name, "freeze_embedding"):
            table.freeze()

    def unfreeze_embedding(self, embedding_name: str | None = None) -> None:
        for table in self._tables(embedding_name, "unfreeze_embedding"):
            table.unfreeze()

    def _tables(self, name: str | None, method: str) -> list[Any]:
        tables = self._engine().tables
        if name is None:
            return list(tables.values())
        if name not in tables:
            raise ConfigError(f"Model.{method}(embedding_name=...)",
                              f"one of {list(tables)}", name)
        return [tables[name]]

    def freeze_dense(self) -> None:
        engine = self._engine()
        engine.dense_frozen = True
        engine.reset_cuda_graph()
        for p in engine.network.dense_weights():
            p.requires_grad_(False)

    def unfreeze_dense(self) -> None:
        engine = self._engine()
        engine.dense_frozen = False
        engine.reset_cuda_graph()
        for p in engine.network.dense_weights():
            p.requires_grad_(True)

    # ------------------------------------------------------------------ low-level loop
    @property
    def train_source(self) -> str:
        return self.train_reader.source

    @property
    def eval_source(self) -> str:
        return self.eval_reader.source

    def start_data_reading(self) -> None:
        self.train_reader.start()

    def start_epoch(self) -> None:
        self.train_reader.restart()

    def set_source(self, source: Any, eval_source: Any = None, *more: Any,
                   keyset: Any = None) -> None:
        """``set_source(source, eval_source)``; with an Embedding Training Cache (≤23.08)
        ``set_source(source=[file lists], keyset=[keyset files], eval_source=...)``, also
        positionally ``(source, keyset, eval_source)``: the next ``fit`` trains those passes."""
        if more:
            if len(more) > 1 or keyset is not None:
                raise ConfigError("Model.set_source", "(source, eval_source) or (source, "
                                  "keyset, eval_source)", (source, eval_source, *more))
            keyset, eval_source = eval_source, more[0]
        elif keyset is None and isinstance(eval_source, (list, tuple)):
            keyset, eval_source = eval_source, None  # set_source([lists], [keysets])
        if self._etc_params is not None:
            passes = etc_sources(source, keyset, "Model.set_source")
            for _, keyset_file in passes:
                check_keyset_file(keyset_file, bool(self.solver.i64_input_key))
            self._etc_passes = passes
            source = passes[0][0]
        elif keyset not in (None, "", []):
            raise ConfigError("Model.set_source(keyset=...)", "keysets only with an Embedding "
                              "Training Cache (Model(solver, reader, optimizer, CreateETC(...)))",
                              keyset)
        if isinstance(source, list):
            source = source[0]
        self.train_reader.set_source(source)
        if eval_source:
            self.eval_reader.set_source(eval_source)

    def get_data_reader_train(self) -> ReaderSlot:
        return self.train_reader

    def get_data_reader_eval(self) -> ReaderSlot:
        return self.eval_reader

    def train(self, batch: Batch | None = None) -> bool:
        """One iteration on the next training batch; False when an epoch-mode source ended.

        terarec extra: pass a :class:`~terarec.data.Batch` (e.g. already on the GPU) to train on
        it instead of the reader's next batch.
        """
        engine = self._engine()
        if batch is None:
            batch = self.train_reader.next_batch()
        if batch is None:
            return False
        if self._etc is not None:
            self._etc.fetch_missing(batch)
        if self._dist is not None:
            batch = self._dist.begin_train_step(batch)
        if engine.lr == 0.0 and self.scheduler.step == 0:
            engine.set_learning_rate(self.scheduler.get_lr())
        self._loss = engine.train_step(batch)
        return True

    def _whole_batch(self, batch: Batch) -> Batch:
        """An evaluation / prediction batch: every rank of a data-parallel job runs all of it
        (tagged so that sharded tables can exchange fixed-size messages)."""
        if self._etc is not None:
            self._etc.fetch_missing(batch)
        return self._dist.begin_eval_step(batch) if self._dist is not None else batch

    def get_current_loss(self) -> float:
        if self._loss is None:
            return 0.0
        value = float(self._loss)
        return value

    def eval(self) -> bool:
        """One evaluation batch; metrics accumulate until ``get_eval_metrics``."""
        engine = self._engine()
        batch = self.eval_reader.next_batch()
        if batch is None:
            return False
        whole = self._whole_batch(batch)
        out = engine.eval_step(whole)
        self._update_metrics(out, batch.batch_size, whole)
        return True

    def _update_metrics(self, out: Any, n: int, batch: Batch | None = None) -> None:
        loss = float(out.loss) if out.loss is not None else None
        self._metrics.update(out.predictions, out.labels, loss, batch=batch)

    def get_eval_metrics(self) -> list[tuple[str, float]]:
        return self._metrics.results()

    def run_evaluation(self) -> list[tuple[str, float]]:
        """``max_eval_batches`` eval batches (epoch mode: until the eval source ends)."""
        self.eval_reader.restart_if_exhausted()
        for _ in range(self.solver.max_eval_batches):
            if not self.eval():
                self.eval_reader.restart()
                break
        return self.get_eval_metrics()

    def fit(self, num_epochs: int = 0, max_iter: int = 2000, display: int = 200,
            eval_interval: int = 1000, snapshot: int = 10000, snapshot_prefix: str = "",
            *, progress: bool | None = None, tensorboard_dir: str | None = None) -> None:
        """Train as HugeCTR's ``fit`` (§12.3). Extras: ``progress`` bar, ``tensorboard_dir``.

        With an Embedding Training Cache: one pass per file list of ``source`` (with its
        keyset), ``num_epochs`` each, in order; ``snapshot`` is ignored (as HugeCTR)."""
        self._engine()
        opts = FitOptions(num_epochs, max_iter, display, eval_interval, snapshot,
                          snapshot_prefix, progress, tensorboard_dir)
        if self._etc is not None:
            self._etc.fit(opts, self._etc_passes or self._reader_passes())
        else:
            run_fit(self, opts)

    def _reader_passes(self) -> list[tuple[str, str]]:
        params = self.reader_params
        if params is None:
            raise ConfigError("Model", "DataReaderParams to read data from", None)
        return etc_sources(params.source, params.keyset, "DataReaderParams")

    # ------------------------------------------------------------------ inspection
    def check_out_tensor(self, tensor_name: str, tensor_type: Any) -> np.ndarray:
        """The named tensor of the last train / eval forward pass as float32 numpy.

        Differs from HugeCTR for ``Tensor_t.Train``: terarec returns the forward value (HugeCTR
        returns the buffer after backward, i.e. a gradient), which is what users inspect.
        """
        kind = coerce(Tensor_t, tensor_type, "check_out_tensor(tensor_type=...)")
        engine = self._engine()
        out = engine.last_train if kind.name == "Train" else engine.last_eval
        if out is None:
            raise ConfigError("check_out_tensor", f"a {kind.name} step run first", None)
        if tensor_name not in out.tensors:
            hint = ("Training steps run as a CUDA graph keep only inputs and losses; create the "
                    "solver with use_cuda_graph=False to inspect other tensors"
                    if kind.name == "Train" and engine.use_cuda_graph else "")
            raise ConfigError("check_out_tensor(tensor_name=...)",
                              f"one of {sorted(out.tensors)}", tensor_name, hint=hint)
        return out.tensors[tensor_name].detach().float().cpu().numpy()

    def export_predictions(self, output_prediction_file_name: str,
                           output_label_file_name: str) -> None:
        """Append the last eval batch's predictions and labels as space-separated text."""
        out = self._engine().last_eval
        if out is None or out.predictions is None or out.labels is None:
            raise ConfigError("export_predictions", "an eval() step run first", None)
        for path, t in ((output_prediction_file_name, out.predictions),
                        (output_label_file_name, out.labels)):
            check_local_path(path, "Model.export_predictions")
            with open(path, "a") as fh:
                fh.write(" ".join(f"{v:.8g}" for v in t.float().cpu().reshape(-1).tolist()))
                fh.write("\n")

    # ------------------------------------------------------------------ Pythonic extras
    def predict(self, data: Batch | None = None, num_batches: int | None = None) -> np.ndarray:
        """Predicted probabilities (N, label_dim): of ``data`` or of the eval source."""
        engine = self._engine()
        if data is not None:
            return engine.predict_step(self._whole_batch(data)).float().cpu().numpy()
        outs = []
        for n, batch in enumerate(self.eval_reader.iterate_once()):
            if num_batches is not None and n >= num_batches:
                break
            outs.append(engine.predict_step(self._whole_batch(batch)).float().cpu().numpy())
        if not outs:
            raise ConfigError("Model.predict", "a non-empty eval source", self.eval_source)
        return np.concatenate(outs)

    def evaluate(self, num_batches: int | None = None) -> dict[str, float]:
        """All metrics over ``num_batches`` (default: the whole eval source, one pass)."""
        engine = self._engine()
        n = 0
        for batch in self.eval_reader.iterate_once():
            if num_batches is not None and n >= num_batches:
                break
            whole = self._whole_batch(batch)
            out = engine.eval_step(whole)
            self._update_metrics(out, batch.batch_size, whole)
            n += 1
        if n == 0:
            raise TrainingError("Model.evaluate: the eval source yielded no batch")
        return dict(self.get_eval_metrics())
