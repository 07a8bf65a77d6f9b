#!/bin/bash
# Issue 12, run 8 (bench/KERNEL_NOTES.md): one device call. Run from the repository root with PYTHONPATH set.
# Usage: bench/device_issue12_run8.sh STAGE...   (stages: info tests exec blas kernels flex)
set -o pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
for stage in "$@"; do
  echo "=== $stage $(date -u +%T)"
  case $stage in
    info) nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv
          python3 -c "import torch, triton; print(torch.__version__, triton.__version__, torch.cuda.get_device_name())"
          python3 -c "import vllm; print('vllm', vllm.__version__)" 2>&1 | tail -1 ;;
    tests) python3 -m pytest -q -p no:cacheprovider tests/test_gpu_graphs.py tests/test_kernels.py 2>&1 | tail -5
           python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_gpu_executor.py 2>&1 | tail -3 ;;
    exec) python3 bench/bench_gpu_executor.py --batch 1 8 32 64 128 --eager-batch --fuse on \
            --results "$OUT/exec.json" 2>&1 | tail -12
          python3 bench/bench_gpu_executor.py --batch 1 8 32 --eager-batch --fuse off \
            --results "$OUT/exec_off.json" 2>&1 | tail -8 ;;
    blas) python3 bench/bench_gpu_executor.py --modes model --batch 32 64 --eager-batch --blas cublaslt \
            --results "$OUT/exec_lt.json" 2>&1 | tail -6 ;;
    kernels) python3 bench/bench_kernels.py --tune --prefill --ops --out "$OUT" 2>&1 | grep -v "^kernel " | tail -40 ;;
    prefill) python3 bench/bench_kernels.py --prefill-only --prefill --sweep --out "$OUT" 2>&1 | grep prefix ;;
    flex) python3 bench/bench_kernels.py --prefill-only --flex --out "$OUT" 2>&1 | grep -i flex ;;
  esac
done
echo "=== done $(date -u +%T)"
