"""Model-file methods of ``Model``: save and load HugeCTR's dense / sparse / optimizer files.

Besides HugeCTR's files, ``save_params_to_files`` writes ``{prefix}_state_{iter}.json`` (step,
learning-rate schedule position, graph name) so that a run resumed with
``load_training_state`` continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from terarec.checkpoint import hugectr_files as hf
from terarec.errors import ConfigError, DataError
from terarec.utils.atomic import write_bytes_atomic
from terarec.utils.paths import check_local_path, check_local_paths


class ModelFilesMixin:
    """Mixed into ``Model``; relies on ``self.engine``, ``self.spec``, ``self.scheduler``."""

    engine: Any
    spec: Any
    scheduler: Any

    def _engine(self) -> Any:  # overridden by Model
        raise NotImplementedError

    # ------------------------------------------------------------------ save
    def save_params_to_files(self, prefix: str, iter: int = 0) -> None:  # noqa: A002
        """Write every model file of §17.1 (dense, dense optimizer, sparse, sparse optimizer).

        With an Embedding Training Cache the sparse weights and optimizer states go in place
        into the ``sparse_models`` folders of ``CreateETC`` instead (as HugeCTR). A remote
        ``prefix`` (``s3://...``) raises NotSupportedError before any file is written."""
        check_local_path(prefix, "Model.save_params_to_files(prefix=...)")
        engine = self._engine()
        net = engine.network
        hf.write_dense(net.dense_weights(), hf.dense_path(prefix, iter))
        if engine.dense_optimizer is not None:
            states = engine.dense_optimizer.state_tensors_in_file_order()
            hf.write_dense(states, hf.dense_opt_path(prefix, iter))
        else:
            hf.write_dense([], hf.dense_opt_path(prefix, iter))
        ntp = [{"type": ls.type, "top": ls.top[0], **layer.non_trainable()}
               for ls, layer in zip(net.specs, net.layers) if layer.non_trainable()]
        if ntp:
            hf.write_ntp(ntp, hf.dense_path(prefix, iter) + ".ntp.json")
        etc = getattr(self, "_etc", None)
        if etc is not None:  # Embedding Training Cache: in place into its sparse_models folders
            etc.save_sparse_models()
        else:
            for i, (_name, table) in enumerate(engine.tables.items()):
                keys, vectors, slot_ids = table.export()
                localized = table.config.embedding_type.startswith("LocalizedSlot")
                hf.write_sparse_folder(hf.sparse_path(prefix, i, iter), keys, vectors,
                                       slot_ids if localized else None)
                write_bytes_atomic(hf.sparse_opt_path(prefix, i, iter),
                                   table.optimizer_state_bytes())
        state = {"format": "terarec-training-state", "version": 1, "iter": iter,
                 "scheduler_step": self.scheduler.step,
                 "dense_optimizer_step": int(getattr(engine.dense_optimizer, "t", 0)),
                 "model_name": self.spec.model_name,
                 "tables": list(engine.tables)}
        write_bytes_atomic(f"{prefix}_state_{iter}.json",
                           (json.dumps(state, indent=2) + "\n").encode())

    # ------------------------------------------------------------------ load
    def load_dense_weights(self, dense_model_file: str) -> None:
        check_local_path(dense_model_file, "Model.load_dense_weights(dense_model_file=...)")
        engine = self._engine()
        hf.read_dense_into(engine.network.dense_weights(), dense_model_file)
        ntp = dense_model_file + ".ntp.json"
        if os.path.isfile(ntp):
            self._load_ntp(ntp)

    def _load_ntp(self, path: str) -> None:
        net = self._engine().network
        by_top = {ls.top[0]: layer for ls, layer in zip(net.specs, net.layers)}
        for entry in hf.read_ntp(path):
            layer = by_top.get(entry.get("top"))
            if layer is None:
                raise DataError(path, f"layer with top {entry.get('top')!r} not in this model")
            layer.load_non_trainable({k: v for k, v in entry.items() if k not in ("type", "top")})

    def load_dense_optimizer_states(self, dense_opt_states_file: str) -> None:
        check_local_path(dense_opt_states_file,
                         "Model.load_dense_optimizer_states(dense_opt_states_file=...)")
        engine = self._engine()
        if engine.dense_optimizer is None:
            return
        expected = sum(t.numel() for t in engine.dense_optimizer.state_tensors_in_file_order())
        data = hf.read_float32_file(dense_opt_states_file, expected, "dense optimizer state")
        engine.dense_optimizer.load_state_from_flat(data)

    def _table_files(self, files: Any, method: str) -> list[tuple[Any, str]]:
        check_local_paths(files, f"Model.{method}")
        tables = self._engine().tables
        if isinstance(files, str):
            files = [files]
        if isinstance(files, dict):
            unknown = [n for n in files if n not in tables]
            if unknown:
                raise ConfigError(f"Model.{method}", f"embedding names among {list(tables)}",
                                  unknown)
            return [(tables[n], f) for n, f in files.items()]
        if not isinstance(files, list) or len(files) > len(tables):
            raise ConfigError(f"Model.{method}", f"a list of at most {len(tables)} paths "
                              "(SparseEmbedding add order) or a dict name -> path", files)
        return list(zip(tables.values(), files))

    def load_sparse_weights(self, sparse_embedding_files: Any) -> None:
        for table, path in self._table_files(sparse_embedding_files, "load_sparse_weights"):
            keys, vectors, _ = hf.read_sparse_folder(path, table.config.dim)
            table.load(keys, vectors)

    def load_sparse_optimizer_states(self, sparse_opt_states_files: Any) -> None:
        for table, path in self._table_files(sparse_opt_states_files,
                                             "load_sparse_optimizer_states"):
            if not os.path.isfile(path):
                raise DataError(path, "sparse optimizer state file not found")
            with open(path, "rb") as fh:
                table.load_optimizer_state_bytes(fh.read())

    def load_training_state(self, prefix: str, iter: int) -> None:  # noqa: A002
        """Load every file ``save_params_to_files(prefix, iter)`` wrote and the schedule position."""
        check_local_path(prefix, "Model.load_training_state(prefix=...)")
        self.load_dense_weights(hf.dense_path(prefix, iter))
        self.load_dense_optimizer_states(hf.dense_opt_path(prefix, iter))
        n = len(self._engine().tables)
        self.load_sparse_weights([hf.sparse_path(prefix, i, iter) for i in range(n)])
        self.load_sparse_optimizer_states([hf.sparse_opt_path(prefix, i, iter) for i in range(n)])
        path = f"{prefix}_state_{iter}.json"
        if os.path.isfile(path):
            with open(path) as fh:
                state = json.load(fh)
            self.scheduler.step = int(state.get("scheduler_step", 0))
            opt = self._engine().dense_optimizer
            if opt is not None and hasattr(opt, "t"):
                opt.t = int(state.get("dense_optimizer_step", 0))

    @torch.no_grad()
    def dense_weights_numpy(self) -> list[Any]:
        return [p.detach().cpu().numpy().copy() for p in self._engine().network.dense_weights()]
