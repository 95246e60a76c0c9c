#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run: the GPU tests, then the two GPU benchmarks.
#
#     bash benchmarks/gpu_checks.sh [RESULTS_DIR]     # default: gpu-results/
#
# Writes env.txt, tests.txt, kernel.md and pipeline.txt into RESULTS_DIR; each step has its own time limit and
# a failing step does not stop the next. Paste kernel.md and pipeline.txt into benchmarks/RESULTS.md.
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $py -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$out/env.txt"

echo "== tests/gpu"
timeout "${TESTS_LIMIT:-240}" $py -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$out/tests.txt"
echo "== bench_mediator_kernel.py"
timeout "${KERNEL_LIMIT:-180}" $py benchmarks/bench_mediator_kernel.py 2>&1 | tee "$out/kernel.md"
echo "== bench_gpu_pipeline.py"
timeout "${PIPELINE_LIMIT:-300}" $py benchmarks/bench_gpu_pipeline.py 2>&1 | tee "$out/pipeline.txt"
