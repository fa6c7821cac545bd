#!/usr/bin/env bash
# One-call GPU check on the lent machine: every GPU-marked test, then the CPU suites that
# exercise the training path (they run on cuda:0 when a GPU is present), then a small example.
# Writes logs under $OUT (when set). Usage: bash benchmarks/gpu_suite.sh
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/kernels tests/embedding tests/metrics \
  tests/inference/test_gpu_cache.py tests/optim tests/perf 2>&1 | tail -15 | tee "$OUT/gpu_marked.txt"
python3 -m pytest -q -p no:cacheprovider -x tests/training tests/compat \
  tests/inference/test_train_to_serve.py tests/data/test_real_data_training.py tests/layers \
  2>&1 | tail -15 | tee "$OUT/train_on_gpu.txt"
python3 examples/dlrm.py --data-dir /tmp/dlrm_gpu --samples 200000 --batchsize 8192 --iters 60 \
  2>&1 | tail -4 | tee "$OUT/example_dlrm.txt"
python3 benchmarks/inference_gpu.py --batch 65536 --max-rows 100000 2>&1 | tail -3 | tee "$OUT/inference_gpu.txt"
python3 benchmarks/data_readers.py --workers 16 2>&1 | tail -16 | tee "$OUT/data_readers_16.txt"
