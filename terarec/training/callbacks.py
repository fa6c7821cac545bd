"""``TrainingCallback`` (HugeCTR's four hooks) and terarec's optional TensorBoard/progress sinks."""

from __future__ import annotations

import sys
from typing import Any


class TrainingCallback:
    """Subclass and pass instances in ``CreateSolver(training_callbacks=[...])``.

    ``on_eval_end`` returning True stops training (after ``on_training_end``), as in HugeCTR.
    """

    def on_training_start(self) -> None:
        pass

    def on_training_end(self, current_iter: int) -> None:
        pass

    def on_eval_start(self, current_iter: int) -> None:
        pass

    def on_eval_end(self, current_iter: int, eval_results: dict[str, float]) -> bool:
        return False


class TensorBoardSink:
    """Writes loss, metrics, learning rate and samples/s scalars (needs the ``tensorboard`` extra)."""

    def __init__(self, log_dir: str) -> None:
        from terarec.utils.imports import require

        require("tensorboard", extra="tensorboard", feature="TensorBoard logging")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class ProgressBar:
    """A tqdm bar over iterations when tqdm is installed and output is a terminal."""

    def __init__(self, total: int | None, enabled: bool | None = None) -> None:
        self.bar: Any = None
        if enabled is None:
            enabled = sys.stderr.isatty()
        if not enabled:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, unit="it", dynamic_ncols=True, leave=False)

    def update(self, n: int = 1, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
