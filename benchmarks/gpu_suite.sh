#!/usr/bin/env bash
# One-call GPU check on the lent machine: GPU-marked tests, the training-path suites on cuda:0,
# the training-throughput benchmark (DLRM, peer vs terarec) and the inference benchmark.
# Usage: bash benchmarks/gpu_suite.sh   (logs under $OUT when set)
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/kernels tests/embedding tests/metrics \
  tests/inference/test_gpu_cache.py tests/optim tests/perf 2>&1 | tail -6 | tee "$OUT/gpu_marked.txt"
python3 -m pytest -q -p no:cacheprovider tests/training tests/compat \
  tests/inference/test_train_to_serve.py tests/data/test_real_data_training.py \
  2>&1 | tail -6 | tee "$OUT/train_on_gpu.txt"
python3 benchmarks/train_throughput.py --config dlrm --steps 40 2>&1 | tail -12 | tee "$OUT/train_dlrm.txt"
python3 benchmarks/inference_gpu.py --batch 65536 --max-rows 100000 2>&1 | tail -3 | tee "$OUT/inference_gpu.txt"
