#!/usr/bin/env bash
# Multi-GPU check on a lent 2- or 4-GPU machine: NCCL tests, the scaling benchmark, and the
# single-GPU training suites on cuda:0. Usage: bash benchmarks/multigpu_suite.sh 1,2
set -u
GPUS=${1:-1,2}
OUT=${OUT:-/tmp/mgpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/cards.txt"
python3 -m pytest -q -p no:cacheprovider tests/distributed 2>&1 | tail -5 | tee "$OUT/distributed.txt"
python3 -m pytest -q -p no:cacheprovider tests/training tests/compat \
  tests/inference/test_train_to_serve.py 2>&1 | tail -4 | tee "$OUT/train_on_gpu.txt"
timeout 240 python3 benchmarks/scaling.py --gpus "$GPUS" --steps 15 2>&1 | tail -14 | tee "$OUT/scaling.txt"
