#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one run: the GPU tests, then the two GPU benchmarks.
#
#     bash benchmarks/gpu_checks.sh [RESULTS_DIR]     # default: gpu-results/
#
# Writes env.txt, tests.txt, kernel.md, pipeline.txt and compile.txt into RESULTS_DIR; each step has its own time limit (about
# 8.5 minutes in all on an H200, the first call's machine start not counted) and a failing step does not stop the
# next. Paste kernel.md and pipeline.txt into benchmarks/RESULTS.md.
set -uo pipefail
out=${1:-gpu-results}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  $py -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
} 2>&1 | tee "$out/env.txt"

echo "== tests/gpu"
timeout "${TESTS_LIMIT:-110}" $py -m pytest -q -p no:cacheprovider tests/gpu 2>&1 | tee "$out/tests.txt"
echo "== bench_mediator_kernel.py"
timeout "${KERNEL_LIMIT:-110}" $py benchmarks/bench_mediator_kernel.py --sweep --write-table "$out/forms.json" 2>&1 | tee "$out/kernel.md"
echo "== bench_gpu_pipeline.py"
# rows print as they finish and the slow eager fp32 column comes last, so a time limit costs only that column
timeout "${PIPELINE_LIMIT:-170}" $py benchmarks/bench_gpu_pipeline.py --sizes 256,512,1024 --runs 2 --no-eager 2>&1 \
    | tee "$out/pipeline.txt"
echo "== bench_gpu_pipeline.py, torch.compile"
timeout "${COMPILE_LIMIT:-120}" $py benchmarks/bench_gpu_pipeline.py --sizes "" --compile-sizes 256,1024 --runs 2 \
    --no-eager 2>&1 | tee "$out/compile.txt"
