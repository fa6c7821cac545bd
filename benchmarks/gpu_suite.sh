#!/usr/bin/env bash
# One-call GPU check on the lent machine. Every log lands under $OUT (default /tmp/gpu_out).
# Usage: bash benchmarks/gpu_suite.sh [tests|train|inference|data|all]   (default all)
#   tests     GPU-marked tests (kernels, fast paths, embedding, inference, optim, metrics)
#   train     training throughput: DLRM (peer + terarec, profile), DCNv2 and DCN
#   tune      in-step A/B of the kernels' prepared knobs (benchmarks/step_parts.py --parts train)
#   inference predict samples/s of the inference session vs Model.predict
#   data      reader rows/s with 16 workers
#   dist      (2+ GPUs) NCCL tests, weak scaling 1 -> 2 (-> 4) GPUs, then the opt-in
#             exchanges (TERAREC_OVERLAP_INPUT_DIST, TERAREC_REPLICATE_SLOT_ROWS) at 2 (4) GPUs
#   dist1tb   (2 GPUs) the Criteo 1TB tables (104.5 GB) through hugectr.Model
#   exchange1 (1 GPU) the sharded path at one rank (TERAREC_EXCHANGE_AT_ONE_RANK=1): its cost
#             without the link, for each opt-in exchange switch, and a profile
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
what=${1:-all}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader | tee "$OUT/card.txt"
git log --oneline 2>/dev/null | head -1 | tee -a "$OUT/card.txt"
if [[ $what == tests || $what == all ]]; then
  timeout 300 python3 -m pytest -q -rf -m gpu -p no:cacheprovider tests/kernels tests/perf \
    tests/embedding tests/metrics tests/optim tests/inference > "$OUT/gpu_tests.txt" 2>&1
  tail -4 "$OUT/gpu_tests.txt"; grep -E "^FAILED|^ERROR" "$OUT/gpu_tests.txt" | head -20
fi
if [[ $what == train || $what == all ]]; then
  { timeout 150 python3 benchmarks/train_throughput.py --config dlrm --steps 40 --profile 3
    timeout 120 python3 benchmarks/train_throughput.py --config dcnv2 --steps 10 --warmup 3 \
      --skip-peer
    timeout 90 python3 benchmarks/train_throughput.py --config dcn --steps 30
  } 2>&1 | grep -v -i "warn" > "$OUT/bench_train.txt"
  grep -E "config|ms/step|ratio|fraction|host" "$OUT/bench_train.txt"
fi
if [[ $what == tune ]]; then
  # In-step A/B of the kernels' module constants (prepared knobs: flip a default only where
  # both of its runs beat both "defaults" runs).
  timeout 300 python3 benchmarks/step_parts.py --parts train --steps 30 2>&1 \
    | grep -E "CUDA graph|faster than" | tee "$OUT/tune.txt"
fi
if [[ $what == inference || $what == all ]]; then
  timeout 150 python3 benchmarks/inference_gpu.py --batch 65536 --max-rows 100000 \
    > "$OUT/bench_inference.txt" 2>&1
  tail -10 "$OUT/bench_inference.txt"
fi
if [[ $what == data || $what == all ]]; then
  timeout 240 python3 benchmarks/data_readers.py --workers 16 > "$OUT/bench_data.txt" 2>&1
  tail -15 "$OUT/bench_data.txt"
fi
if [[ $what == dist ]]; then
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  export TERAREC_TEST_DUMP_DIR="$OUT"  # stacks of a hung rank (test_step_graph_multigpu)
  timeout 240 python3 -m pytest -q -rf -m multigpu -p no:cacheprovider tests/distributed \
    tests/compat > "$OUT/multigpu_tests.txt" 2>&1
  tail -3 "$OUT/multigpu_tests.txt"; grep -E "^FAILED|^ERROR" "$OUT/multigpu_tests.txt" | head
  for f in "$OUT"/step_graph_rank*.txt; do [[ -s $f ]] && { echo "== $f"; head -40 "$f"; }; done
  res="$OUT/scaling.jsonl"; rm -f "$res"
  gpus=$(nvidia-smi -L | wc -l)
  # One log for every run below ($OUT brings back only a few files, none with "=" in its name).
  log="$OUT/scaling_runs.txt"; : > "$log"
  for n in 1 2 4; do
    (( n > gpus )) && break
    echo "== default ($n GPUs)" | tee -a "$log"
    timeout 200 torchrun --standalone --nproc-per-node $n benchmarks/scaling.py --steps 20 \
      --warmup 5 --results "$res" > "$OUT/run.txt" 2>&1
    cat "$OUT/run.txt" >> "$log"; grep -E "terarec path|^\|" "$OUT/run.txt" | tail -5
  done
  # Opt-in exchanges at the largest count: the next batch's keys ahead, small slots replicated.
  n=$(( gpus >= 4 ? 4 : 2 ))
  for v in TERAREC_OVERLAP_INPUT_DIST=1 TERAREC_REPLICATE_SLOT_ROWS=32768 \
           "TERAREC_OVERLAP_INPUT_DIST=1 TERAREC_REPLICATE_SLOT_ROWS=32768" \
           TERAREC_SLOT_MAJOR_EXCHANGE=1 "TERAREC_SLOT_MAJOR_EXCHANGE=1 TERAREC_DP_STEP_GRAPH=1" \
           "TERAREC_SLOT_MAJOR_EXCHANGE=1 TERAREC_OVERLAP_INPUT_DIST=1" \
           "TERAREC_SLOT_MAJOR_EXCHANGE=1 TERAREC_REPLICATE_SLOT_ROWS=32768 TERAREC_DP_STEP_GRAPH=1"; do
    echo "== $v ($n GPUs)" | tee -a "$log"
    env $v timeout 200 torchrun --standalone --nproc-per-node $n benchmarks/scaling.py \
      --steps 20 --warmup 5 --no-peer > "$OUT/run.txt" 2>&1
    cat "$OUT/run.txt" >> "$log"; grep -E "terarec path|^\|" "$OUT/run.txt" | tail -3
  done
  rm -f "$OUT/run.txt"
fi
if [[ $what == exchange1 ]]; then
  res="$OUT/exchange1.jsonl"; rm -f "$res" "$OUT/exchange1_runs.txt"; i=0
  for v in "TERAREC_EXCHANGE_AT_ONE_RANK=0" "TERAREC_EXCHANGE_AT_ONE_RANK=1" \
           "TERAREC_EXCHANGE_AT_ONE_RANK=1 TERAREC_DP_STEP_GRAPH=1" \
           "TERAREC_EXCHANGE_AT_ONE_RANK=1 TERAREC_SLOT_MAJOR_EXCHANGE=1" \
           "TERAREC_EXCHANGE_AT_ONE_RANK=1 TERAREC_SLOT_MAJOR_EXCHANGE=1 TERAREC_DP_STEP_GRAPH=1" \
           "TERAREC_EXCHANGE_AT_ONE_RANK=1 TERAREC_SLOT_MAJOR_EXCHANGE=1 TERAREC_DP_STEP_GRAPH=1 TERAREC_REPLICATE_SLOT_ROWS=32768"; do
    i=$((i + 1)); echo "== $v"
    env $v timeout 100 torchrun --standalone --nproc-per-node 1 benchmarks/scaling.py \
      --steps 20 --warmup 5 --no-peer --results "$res" > "$OUT/run.txt" 2>&1
    { echo "== $v"; cat "$OUT/run.txt"; } >> "$OUT/exchange1_runs.txt"
    grep -E "^\| 1" "$OUT/run.txt" | tail -1
  done
  rm -f "$OUT/run.txt"
  env TERAREC_EXCHANGE_AT_ONE_RANK=1 TERAREC_SLOT_MAJOR_EXCHANGE=1 \
    TERAREC_REPLICATE_SLOT_ROWS=32768 timeout 100 torchrun \
    --standalone --nproc-per-node 1 benchmarks/scaling.py --steps 10 --warmup 3 --no-peer \
    --profile 3 --results "$OUT/exchange1_profile.jsonl" > "$OUT/exchange1_profile.txt" 2>&1
  grep -A36 "self device" "$OUT/exchange1_profile.txt" | cut -c1-92,150-200
fi
if [[ $what == dist1tb ]]; then
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  timeout 300 torchrun --standalone --nproc-per-node 2 benchmarks/scaling.py --criteo-1tb \
    --steps 10 --warmup 3 --results "$OUT/criteo1tb.jsonl" > "$OUT/criteo1tb.txt" 2>&1
  grep -E "placement|terarec path|^\|" "$OUT/criteo1tb.txt" | tail -5
fi
