"""The ``fit`` loop with HugeCTR's semantics and log lines (§12.3 of the reference).

Works on any object that provides the low-level API (``train``, ``eval``,
``get_eval_metrics``, ``set_learning_rate``, ``save_params_to_files`` ...) so the same loop
drives the Keras-like ``Model`` and the legacy ``Session``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Protocol

from terarec.errors import ConfigError, TrainingError
from terarec.training.callbacks import ProgressBar, TensorBoardSink
from terarec.training.logging import log
from terarec.utils.paths import check_local_path


class Trainable(Protocol):
    def train(self) -> bool: ...
    def eval(self) -> bool: ...
    def get_eval_metrics(self) -> list[tuple[str, float]]: ...
    def get_current_loss(self) -> float: ...
    def set_learning_rate(self, lr: float) -> None: ...
    def save_params_to_files(self, prefix: str, iter: int = 0) -> None: ...


@dataclass
class FitOptions:
    num_epochs: int = 0
    max_iter: int = 2000
    display: int = 200
    eval_interval: int = 1000
    snapshot: int = 10000
    snapshot_prefix: str = ""
    progress: bool | None = None
    tensorboard_dir: str | None = None


def run_fit(model: Any, opts: FitOptions) -> None:
    """Train ``model`` (a compiled terarec Model or Session) as HugeCTR's ``fit`` does."""
    solver = model.solver
    epoch_mode = not solver.repeat_dataset
    if epoch_mode and opts.num_epochs <= 0:
        raise ConfigError("fit(num_epochs=...)", "num_epochs > 0 in epoch mode "
                          "(CreateSolver(repeat_dataset=False))", opts.num_epochs)
    if not epoch_mode and opts.max_iter <= 0:
        raise ConfigError("fit(max_iter=...)", "max_iter > 0 with repeat_dataset=True",
                          opts.max_iter)
    for name in ("display", "eval_interval", "snapshot"):
        if getattr(opts, name) <= 0:
            raise ConfigError(f"fit({name}=...)", "a positive integer", getattr(opts, name))
    # fail now, not at the first snapshot hours later
    check_local_path(opts.snapshot_prefix, "fit(snapshot_prefix=...)")
    check_local_path(opts.tensorboard_dir, "fit(tensorboard_dir=...)")
    callbacks = list(getattr(solver, "training_callbacks", []) or [])
    scheduler = model.get_learning_rate_scheduler()
    batch = solver.batchsize
    metric_names = list(solver.metrics)
    tb = TensorBoardSink(opts.tensorboard_dir) if opts.tensorboard_dir else None
    bar = ProgressBar(None if epoch_mode else opts.max_iter, opts.progress)
    rank = getattr(model, "rank", 0)

    for cb in callbacks:
        cb.on_training_start()
    if epoch_mode:
        log(f"Training source file: {model.train_source}", rank)
        log(f"Evaluation source file: {model.eval_source}", rank)
    log(f"Start training. max_iter: {opts.max_iter if not epoch_mode else -1}, "
        f"num_epochs: {opts.num_epochs}, display: {opts.display}, eval_interval: "
        f"{opts.eval_interval}, snapshot: {opts.snapshot}", rank)
    it = 0
    stop = False
    t_display = time.time()
    loss_sum, loss_n = 0.0, 0
    epoch = 0
    try:
        while not stop:
            if epoch_mode:
                if epoch >= opts.num_epochs:
                    break
                model.start_epoch()
                log(f"-----------------------------------Epoch {epoch}"
                    f"-----------------------------------", rank)
            while True:
                if not epoch_mode and it >= opts.max_iter:
                    stop = True
                    break
                lr = scheduler.get_next()
                model.set_learning_rate(lr)
                if not model.train():
                    break
                if solver.gen_loss_summary:
                    loss = model.get_current_loss()
                    loss_sum += loss
                    loss_n += 1
                bar.update(1)
                it += 1
                if it % opts.display == 0:
                    elapsed = time.time() - t_display
                    avg = loss_sum / max(loss_n, 1) if solver.gen_loss_summary else 0.0
                    if math.isnan(avg) or math.isinf(avg):
                        raise TrainingError("Train Runtime error: Loss cannot converge")
                    log(f"Iter: {it} Time({opts.display} iters): {elapsed:.6g}s "
                        f"Loss: {avg:.6g} lr:{lr:.6g}", rank)
                    if tb is not None:
                        tb.scalars(it, {"loss": avg, "lr": lr,
                                        "samples_per_s": opts.display * batch / max(elapsed, 1e-9)})
                    _check_tables(model)
                    t_display = time.time()
                    loss_sum, loss_n = 0.0, 0
                if it % opts.eval_interval == 0:
                    stop = _evaluate(model, it, callbacks, metric_names, tb, rank)
                if it % opts.snapshot == 0:
                    model.save_params_to_files(opts.snapshot_prefix, it)
                if stop:
                    break
            epoch += 1
    except BaseException:
        # A failed fit leaves no reader threads parked (a normal return keeps them: HugeCTR
        # continues from the same data position in the next fit/train call).
        for slot in ("train_reader", "eval_reader"):
            reader = getattr(model, slot, None)
            if reader is not None and hasattr(reader, "close"):
                reader.close()
        raise
    finally:
        bar.close()
        if tb is not None:
            tb.close()
    _check_tables(model)
    for cb in callbacks:
        cb.on_training_end(it)
    log(f"Finish {it} iterations with batchsize: {batch} in {'epoch' if epoch_mode else 'iter'}"
        f" mode", rank)


def _check_tables(model: Any) -> None:
    """Raise what a table recorded on the device without stopping the step (GPU fast paths:
    more keys than its capacity, a one-hot key out of range; raised as ``CapacityError``).
    One flag read per table (``check_errors``), at each display and at the end of fit, so that
    a fit never ends "successfully" over an overflowed table."""
    engine = getattr(model, "engine", None)
    for table in (engine.tables.values() if engine is not None else ()):
        check = getattr(table, "check_errors", None)
        if check is not None:
            check()


def _evaluate(model: Any, it: int, callbacks: list[Any], metric_names: list[str],
              tb: TensorBoardSink | None, rank: int) -> bool:
    for cb in callbacks:
        cb.on_eval_start(it)
    t0 = time.time()
    results = model.run_evaluation()
    for name, value in results:
        log(f"Evaluation, {name}: {value:.6g}", rank)
    values = dict(results)
    stop = False
    thresholds = model.solver.metrics
    if "AUC" in values and "AUC" in thresholds and values["AUC"] > thresholds["AUC"]:
        log(f"Hit target accuracy AUC {thresholds['AUC']:.4f} at {it}/{it} iterations", rank)
        stop = True
    log(f"Eval Time for {model.solver.max_eval_batches} iters: {time.time() - t0:.6g}s", rank)
    if tb is not None:
        tb.scalars(it, {f"eval/{k}": v for k, v in values.items()})
    for cb in callbacks:
        if cb.on_eval_end(it, values):
            stop = True
    return stop
