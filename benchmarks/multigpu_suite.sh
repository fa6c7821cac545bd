#!/usr/bin/env bash
# Multi-GPU check on a lent 2-GPU machine (H200 x2). Every step is bounded by `timeout` and
# finishes well under 8 minutes; results land in $OUT. Usage: bash benchmarks/multigpu_suite.sh
#   1. NCCL tests (marked multigpu) and the gloo suites on a GPU machine (CPU tensors there)
#   2. weak scaling, DLRM MLPerf v1 (Kaggle tables, 65,536 samples per GPU), terarec vs the
#      plain PyTorch peer (DDP + table-wise), torchrun on 1 then 2 GPUs
#   3. the MLPerf Criteo 1TB tables (204M rows, 104.5 GB fp32 at dim 128) row-wise over 2 GPUs
#   4. the single-GPU training suites on cuda:0
set -u
OUT=${OUT:-/tmp/mgpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-}
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/cards.txt"
timeout 420 python3 -m pytest -q -p no:cacheprovider -m multigpu tests/distributed tests/compat \
  2>&1 | tail -5 | tee "$OUT/nccl_tests.txt"
timeout 420 python3 -m pytest -q -p no:cacheprovider -m "not multigpu" tests/distributed \
  tests/compat/test_embedding_collection.py 2>&1 | tail -5 | tee "$OUT/gloo_on_gpu_machine.txt"
RES="$OUT/scaling.jsonl"
rm -f "$RES"
for n in 1 2; do
  timeout 360 torchrun --standalone --nproc-per-node "$n" benchmarks/scaling.py --results "$RES" \
    2>&1 | tail -6 | tee "$OUT/scaling_${n}gpu.txt"
done
timeout 420 torchrun --standalone --nproc-per-node 2 benchmarks/scaling.py --criteo-1tb \
  --steps 10 --warmup 3 --results "$OUT/criteo_1tb.jsonl" 2>&1 | tail -8 | tee "$OUT/criteo_1tb.txt"
timeout 420 python3 -m pytest -q -p no:cacheprovider tests/training tests/compat \
  tests/inference/test_train_to_serve.py 2>&1 | tail -4 | tee "$OUT/train_on_gpu.txt"
