"""``hugectr.CreateSolver(...)``: every keyword of HugeCTR's binding, same order and defaults.

Arguments that only tune HugeCTR's CUDA internals (``use_algorithm_search``, the overlap flags,
``all_reduce_algo``, ``grouped_all_reduce``, ``device_layout``, ``num_iterations_statistics``)
are accepted, stored and reported by ``Solver``; they do not change results in terarec.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from terarec.compat._check import check_bool, check_float, check_int, check_str
from terarec.enums import AllReduceAlgo, DeviceLayout, LrPolicy_t, MetricsType, coerce, name_of
from terarec.errors import ConfigError


@dataclass
class Solver:
    """What ``CreateSolver`` returns; attribute names are HugeCTR's."""

    model_name: str = ""
    seed: int = 0
    lr_policy: Any = LrPolicy_t.fixed
    lr: float = 0.001
    warmup_steps: int = 1
    decay_start: int = 0
    decay_steps: int = 1
    decay_power: float = 2.0
    end_lr: float = 0.0
    max_eval_batches: int = 100
    batchsize_eval: int = 2048
    batchsize: int = 2048
    vvgpu: list[list[int]] = field(default_factory=lambda: [[0]])
    repeat_dataset: bool = True
    use_mixed_precision: bool = False
    enable_tf32_compute: bool = False
    scaler: float = 1.0
    metrics_spec: dict[Any, float] = field(default_factory=lambda: {MetricsType.AUC: 1.0})
    i64_input_key: bool = False
    use_algorithm_search: bool = True
    use_cuda_graph: bool = True
    gen_loss_summary: bool = True
    train_intra_iteration_overlap: bool = False
    train_inter_iteration_overlap: bool = False
    eval_intra_iteration_overlap: bool = False
    eval_inter_iteration_overlap: bool = False
    device_layout: Any = DeviceLayout.LocalFirst
    use_embedding_collection: bool = False
    all_reduce_algo: Any = AllReduceAlgo.NCCL
    grouped_all_reduce: bool = False
    num_iterations_statistics: int = 20
    perf_logging: bool = False
    drop_incomplete_batch: bool = True
    kafka_brokers: str = ""
    training_callbacks: list[Any] = field(default_factory=list)

    @property
    def num_gpus(self) -> int:
        return sum(len(node) for node in self.vvgpu)

    @property
    def metrics(self) -> dict[str, float]:
        """``metrics_spec`` with plain string names."""
        return {name_of(k): float(v) for k, v in self.metrics_spec.items()}


def CreateSolver(  # noqa: N802 - HugeCTR's name
    model_name: str = "",
    seed: int = 0,
    lr_policy: Any = LrPolicy_t.fixed,
    lr: float = 0.001,
    warmup_steps: int = 1,
    decay_start: int = 0,
    decay_steps: int = 1,
    decay_power: float = 2.0,
    end_lr: float = 0.0,
    max_eval_batches: int = 100,
    batchsize_eval: int = 2048,
    batchsize: int = 2048,
    vvgpu: list[list[int]] | None = None,
    repeat_dataset: bool = True,
    use_mixed_precision: bool = False,
    enable_tf32_compute: bool = False,
    scaler: float = 1.0,
    metrics_spec: dict[Any, float] | None = None,
    i64_input_key: bool = False,
    use_algorithm_search: bool = True,
    use_cuda_graph: bool = True,
    gen_loss_summary: bool = True,
    train_intra_iteration_overlap: bool = False,
    train_inter_iteration_overlap: bool = False,
    eval_intra_iteration_overlap: bool = False,
    eval_inter_iteration_overlap: bool = False,
    device_layout: Any = DeviceLayout.LocalFirst,
    use_embedding_collection: bool = False,
    all_reduce_algo: Any = AllReduceAlgo.NCCL,
    grouped_all_reduce: bool = False,
    num_iterations_statistics: int = 20,
    perf_logging: bool = False,
    drop_incomplete_batch: bool = True,
    kafka_brockers: str = "",  # sic: HugeCTR's binding spells it this way
    training_callbacks: list[Any] | None = None,
) -> Solver:
    """Create the solver (HugeCTR §3). Validates every argument and names the bad one."""
    f = "CreateSolver"
    if vvgpu is None:
        vvgpu = [[0]]
    if not isinstance(vvgpu, (list, tuple)) or not vvgpu or not all(
        isinstance(node, (list, tuple)) and node and all(
            isinstance(g, int) and not isinstance(g, bool) and g >= 0 for g in node)
        for node in vvgpu
    ):
        raise ConfigError(f"{f}(vvgpu=...)", "a non-empty list of non-empty lists of GPU ids",
                          vvgpu)
    if metrics_spec is None:
        metrics_spec = {MetricsType.AUC: 1.0}
    if not isinstance(metrics_spec, dict):
        raise ConfigError(f"{f}(metrics_spec=...)", "a dict {MetricsType: threshold}",
                          metrics_spec)
    metrics = {coerce(MetricsType, k, f"{f}(metrics_spec=...)"): check_float(
        f, "metrics_spec", v) for k, v in metrics_spec.items()}
    if use_mixed_precision and enable_tf32_compute:
        raise ConfigError(f"{f}(use_mixed_precision=..., enable_tf32_compute=...)",
                          "at most one of them True (HugeCTR forbids both)", True)
    batchsize = check_int(f, "batchsize", batchsize, 1)
    batchsize_eval = check_int(f, "batchsize_eval", batchsize_eval, 1)
    solver = Solver(
        model_name=check_str(f, "model_name", model_name),
        seed=check_int(f, "seed", seed, 0),
        lr_policy=coerce(LrPolicy_t, lr_policy, f"{f}(lr_policy=...)"),
        lr=check_float(f, "lr", lr, 0.0),
        warmup_steps=check_int(f, "warmup_steps", warmup_steps, 0),
        decay_start=check_int(f, "decay_start", decay_start, 0),
        decay_steps=check_int(f, "decay_steps", decay_steps, 0),
        decay_power=check_float(f, "decay_power", decay_power, 1.0),
        end_lr=check_float(f, "end_lr", end_lr, 0.0),
        max_eval_batches=check_int(f, "max_eval_batches", max_eval_batches, 0),
        batchsize_eval=batchsize_eval,
        batchsize=batchsize,
        vvgpu=[list(node) for node in vvgpu],
        repeat_dataset=check_bool(f, "repeat_dataset", repeat_dataset),
        use_mixed_precision=check_bool(f, "use_mixed_precision", use_mixed_precision),
        enable_tf32_compute=check_bool(f, "enable_tf32_compute", enable_tf32_compute),
        scaler=check_float(f, "scaler", scaler),
        metrics_spec=metrics,
        i64_input_key=check_bool(f, "i64_input_key", i64_input_key),
        use_algorithm_search=check_bool(f, "use_algorithm_search", use_algorithm_search),
        use_cuda_graph=check_bool(f, "use_cuda_graph", use_cuda_graph),
        gen_loss_summary=check_bool(f, "gen_loss_summary", gen_loss_summary),
        train_intra_iteration_overlap=check_bool(f, "train_intra_iteration_overlap",
                                                 train_intra_iteration_overlap),
        train_inter_iteration_overlap=check_bool(f, "train_inter_iteration_overlap",
                                                 train_inter_iteration_overlap),
        eval_intra_iteration_overlap=check_bool(f, "eval_intra_iteration_overlap",
                                                eval_intra_iteration_overlap),
        eval_inter_iteration_overlap=check_bool(f, "eval_inter_iteration_overlap",
                                                eval_inter_iteration_overlap),
        device_layout=coerce(DeviceLayout, device_layout, f"{f}(device_layout=...)"),
        use_embedding_collection=check_bool(f, "use_embedding_collection",
                                            use_embedding_collection),
        all_reduce_algo=coerce(AllReduceAlgo, all_reduce_algo, f"{f}(all_reduce_algo=...)"),
        grouped_all_reduce=check_bool(f, "grouped_all_reduce", grouped_all_reduce),
        num_iterations_statistics=check_int(f, "num_iterations_statistics",
                                            num_iterations_statistics, 0),
        perf_logging=check_bool(f, "perf_logging", perf_logging),
        drop_incomplete_batch=check_bool(f, "drop_incomplete_batch", drop_incomplete_batch),
        kafka_brokers=check_str(f, "kafka_brockers", kafka_brockers),
        training_callbacks=list(training_callbacks or []),
    )
    if batchsize % solver.num_gpus:
        raise ConfigError(f"{f}(batchsize=...)", f"a multiple of the number of GPUs "
                          f"({solver.num_gpus})", batchsize)
    return solver
