"""HugeCTR 2.3-3.0's low-level Python API: ``solver_parser_helper``, ``Session``,
``get_learning_rate_scheduler``; and ``train_from_config`` behind ``terarec train``.

The model and optimizer come from a legacy JSON config (§14); the loop is the user's. Under
the hood a ``Session`` is a compiled ``Model``: same engine, same files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from terarec.compat.legacy_config import LegacyConfig, read_legacy_config
from terarec.compat.model import Model
from terarec.optim.schedule import LearningRateScheduler
from terarec.training.fit import FitOptions, run_fit


@dataclass
class SolverParser:
    """What ``solver_parser_helper`` returns (HugeCTR 2.3's ``SolverParser``)."""

    seed: int = 0
    max_eval_batches: int = 100
    batchsize_eval: int = 2048
    batchsize: int = 2048
    model_file: str = ""
    dense_opt_states_file: str = ""
    embedding_files: list[str] = field(default_factory=list)
    sparse_opt_states_file: list[str] = field(default_factory=list)
    vvgpu: list[list[int]] = field(default_factory=lambda: [[0]])
    use_mixed_precision: bool = False
    enable_tf32_compute: bool = False
    scaler: float = 1.0
    i64_input_key: bool = False
    use_algorithm_search: bool = True
    use_cuda_graph: bool = True
    repeat_dataset: bool = False
    max_iter: int = 0
    num_epochs: int = 0
    display: int = 200
    snapshot: int = 10000
    eval_interval: int = 1000
    use_model_oversubscriber: bool = False
    temp_embedding_dir: str = ""


def solver_parser_helper(
    seed: int = 0, max_eval_batches: int = 100, batchsize_eval: int = 2048,
    batchsize: int = 2048, model_file: str = "", dense_opt_states_file: str = "",
    embedding_files: list[str] | None = None, sparse_opt_states_file: list[str] | None = None,
    vvgpu: list[list[int]] | None = None, use_mixed_precision: bool = False,
    enable_tf32_compute: bool = False, scaler: float = 1.0, i64_input_key: bool = False,
    use_algorithm_search: bool = True, use_cuda_graph: bool = True,
    repeat_dataset: bool = False, max_iter: int = 0, num_epochs: int = 0, display: int = 200,
    snapshot: int = 10000, eval_interval: int = 1000, use_model_oversubscriber: bool = False,
    temp_embedding_dir: str = "",
) -> SolverParser:
    """Solver settings for a ``Session`` (HugeCTR 2.3-3.0)."""
    return SolverParser(
        seed, max_eval_batches, batchsize_eval, batchsize, model_file, dense_opt_states_file,
        list(embedding_files or []), list(sparse_opt_states_file or []), vvgpu or [[0]],
        use_mixed_precision, enable_tf32_compute, scaler, i64_input_key, use_algorithm_search,
        use_cuda_graph, repeat_dataset, max_iter, num_epochs, display, snapshot, eval_interval,
        use_model_oversubscriber, temp_embedding_dir,
    )


def get_learning_rate_scheduler(configure_file: str) -> LearningRateScheduler:
    """The schedule written in a legacy config's optimizer hparam block (``learning_rate`` ...)."""
    cfg = read_legacy_config(configure_file)
    s = cfg.solver
    return LearningRateScheduler(s.lr, s.warmup_steps, s.decay_start, s.decay_steps,
                                 s.decay_power, s.end_lr)


def _model_from_config(cfg: LegacyConfig) -> Model:
    model = Model(cfg.solver, cfg.reader, cfg.optimizer)
    model.spec = cfg.graph
    model.compile()
    if cfg.dense_model_file:
        model.load_dense_weights(cfg.dense_model_file)
    if cfg.dense_opt_states_file:
        model.load_dense_optimizer_states(cfg.dense_opt_states_file)
    if cfg.sparse_model_files:
        model.load_sparse_weights(cfg.sparse_model_files)
    if cfg.sparse_opt_states_files:
        model.load_sparse_optimizer_states(cfg.sparse_opt_states_files)
    return model


class Session:
    """``hugectr.Session(solver_config, config_file, use_model_oversubscriber=False, ...)``."""

    def __init__(self, solver_config: SolverParser, config_file: str,
                 use_model_oversubscriber: bool = False, temp_embedding_dir: str = "") -> None:
        sp = solver_config
        overrides = {
            "seed": sp.seed, "max_eval_batches": sp.max_eval_batches,
            "batchsize_eval": sp.batchsize_eval, "batchsize": sp.batchsize, "vvgpu": sp.vvgpu,
            "use_mixed_precision": sp.use_mixed_precision,
            "enable_tf32_compute": sp.enable_tf32_compute, "scaler": sp.scaler,
            "i64_input_key": sp.i64_input_key, "use_algorithm_search": sp.use_algorithm_search,
            "use_cuda_graph": sp.use_cuda_graph, "repeat_dataset": sp.repeat_dataset,
        }
        cfg = read_legacy_config(config_file, overrides)
        cfg.dense_model_file = sp.model_file or cfg.dense_model_file
        cfg.dense_opt_states_file = sp.dense_opt_states_file or cfg.dense_opt_states_file
        cfg.sparse_model_files = sp.embedding_files or cfg.sparse_model_files
        cfg.sparse_opt_states_files = sp.sparse_opt_states_file or cfg.sparse_opt_states_files
        self.config = cfg
        self.solver_config = sp
        self.model = _model_from_config(cfg)

    # The low-level loop API of HugeCTR 2.3-3.0.
    def start_data_reading(self) -> None:
        self.model.start_data_reading()

    def train(self) -> bool:
        return self.model.train()

    def eval(self) -> bool:
        return self.model.eval()

    def get_eval_metrics(self) -> list[tuple[str, float]]:
        return self.model.get_eval_metrics()

    def evaluation(self, export_predictions_out_file: str = "",
                   export_labels_out_file: str = "") -> list[tuple[str, float]]:
        """Run ``max_eval_batches`` eval batches; optionally export predictions and labels."""
        for _ in range(self.model.solver.max_eval_batches):
            if not self.model.eval():
                self.model.eval_reader.restart()
                break
            if export_predictions_out_file:
                self.model.export_predictions(export_predictions_out_file,
                                              export_labels_out_file or
                                              export_predictions_out_file + ".labels")
        return self.model.get_eval_metrics()

    def get_current_loss(self) -> float:
        return self.model.get_current_loss()

    def set_learning_rate(self, lr: float) -> None:
        self.model.set_learning_rate(lr)

    def download_params_to_files(self, prefix: str, iter: int) -> None:  # noqa: A002
        self.model.save_params_to_files(prefix, iter)

    def init_params(self, model_file: str) -> None:
        self.model.load_dense_weights(model_file)

    def get_params_num(self) -> int:
        engine = self.model._engine()
        dense = sum(p.numel() for p in engine.network.dense_weights())
        sparse = sum(t.num_keys * t.config.dim for t in engine.tables.values())
        return int(dense + sparse)

    def check_overflow(self) -> None:
        for table in self.model._engine().tables.values():
            table.check_capacity() if hasattr(table, "check_capacity") else None

    def copy_weights_for_evaluation(self) -> None:
        """No-op: terarec's train and eval networks share weights."""

    def get_data_reader_train(self) -> Any:
        return self.model.get_data_reader_train()

    def get_data_reader_eval(self) -> Any:
        return self.model.get_data_reader_eval()

    def get_model_oversubscriber(self) -> None:
        return None


def train_from_config(config_file: str, **fit_extras: Any) -> Model:
    """Train as ``huge_ctr --train config.json`` did: settings from the file's solver clause."""
    cfg = read_legacy_config(config_file)
    model = _model_from_config(cfg)
    run_fit(model, FitOptions(cfg.num_epochs, cfg.max_iter, cfg.display, cfg.eval_interval,
                              cfg.snapshot, cfg.snapshot_prefix, **fit_extras))
    return model
