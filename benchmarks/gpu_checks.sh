#!/usr/bin/env bash
# The one prepared run for a CUDA GPU machine: most valuable first, each step under its own time limit, rows
# printed as they finish, a failing step never stopping the next.
#
#     bash benchmarks/gpu_checks.sh [OUTDIR]               # on the GPU (OUTDIR default: gpu-results)
#     bash benchmarks/gpu_checks.sh --cpu-smoke OUTDIR     # every step on the CPU, tiny model, < 3 min (CI)
#
# Needs only this checkout, python3 with torch and numpy (triton for the kernels and torch.compile, pytest for
# tests/gpu): medexport runs from here (PYTHONPATH), and no step needs onnx, onnxruntime, click or rich; env.txt
# says which imports work. The SiT-XL/2 rows come from benchmarks/bench_gpu_pipeline.py, which measures with
# `medexport bench`'s own code on models made in memory (see its docstring for why not bundles).
#
# Steps, in order; limits in seconds (H200; they add up to 8 minutes; override one with e.g. TABLE_LIMIT=200):
#   env       env.txt                 GPU, driver, versions, imports                                       15
#   kernels   kernels.txt             precompile_kernels.py: every block launch the table may measure,
#                                     compiled in parallel into Triton's cache before the timing starts     40
#   table     table.md, table/        SiT-XL/2, schedule 16:0.3,32:0.7,64 against the vanilla twin, bf16,
#                                     CUDA graphs both sides: 256 and 512 px (batch 8 with guidance = 16 per
#                                     forward, 50 ODE Euler steps), 1024 px (batch 4, 20 steps: the time)    120
#   forms     kernel.md               bench_mediator_kernel.py: the block table (vanilla attention between
#                                     the projections, decomposed, fused, split, the op's choice, % of copy
#                                     bandwidth, errors against float64) at N 256/1024/4096, batch 1-64      55
#   profile   profile.md, profile/    one forward op by op at 256 and 1024 px, the largest count against
#                                     the vanilla model (and the table's rows again: the run-to-run noise)   50
#   tests     tests.txt               pytest -q tests/gpu                                                    85
#   compiled  compiled.md, compiled/  the 256 px row through torch.compile, both sides (cold start)         75
#   warm      warm.md, warm/          the same in a new process: start-up from inductor's cache             40
# steps.txt gets each step's outcome and seconds. Exit status: non-zero if any step failed or ran out of time.
set -uo pipefail

smoke=0
if [ "${1:-}" = "--cpu-smoke" ]; then
    smoke=1
    shift
    [ $# -ge 1 ] || { echo "usage: bash benchmarks/gpu_checks.sh --cpu-smoke OUTDIR" >&2; exit 2; }
fi
out=${1:-gpu-results}
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 2
mkdir -p "$out" || exit 2
out=$(cd "$out" && pwd)
: > "$out/steps.txt"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
# A fresh inductor cache for this run (outside OUTDIR, which should stay small): the compiled step starts cold,
# the warm step finds what it compiled.
cache=$(mktemp -d "${TMPDIR:-/tmp}/medexport-gpu-checks.XXXXXX")
trap 'rm -rf "$cache"' EXIT

if [ $smoke = 1 ]; then
    # Every step's code path on the CPU, as small and quick as it goes: one block of SiT-S/2, 128 px (64 tokens,
    # room for 64 mediators) and 256 px with its own batch and steps, one thread.
    model=(--model SiT-S/2 --depth 1 --device cpu --precision fp32 --threads 1 --runs 1 --rounds 2)
    table=("${model[@]}" --sizes 128,256 --size-settings "256:batch=1,steps=2" --batch 2 --steps 3)
    profile=("${model[@]}" --sizes 128 --batch 1 --steps 2 --profile)
    compiled=("${model[@]}" --backend inductor --sizes 128 --schedule 16 --batch 1 --steps 2)
    kernels=(env TRITON_INTERPRET=1 "$py" benchmarks/precompile_kernels.py --smoke)
    forms=(env TRITON_INTERPRET=1 "$py" benchmarks/bench_mediator_kernel.py --smoke)
    limits=(60 60 60 60 60 60 120 60)
else
    table=(--sizes 256,512,1024 --size-settings "1024:batch=4,steps=20")
    profile=(--sizes 256,1024 --size-settings "1024:batch=4,steps=20" --runs 1 --rounds 3 --warmup 0 --profile)
    compiled=(--backend inductor --sizes 256)
    kernels=("$py" benchmarks/precompile_kernels.py --jobs 16)
    forms=("$py" benchmarks/bench_mediator_kernel.py --warmup 10 --rep 30)
    limits=(15 40 120 55 50 85 75 40)
fi
warm=("${compiled[@]}" --runs 1 --rounds 1 --warmup 0)

failed=()
# step NAME LIMIT FILE COMMAND...: run COMMAND under LIMIT seconds, its output to the terminal and FILE.
step() {
    local name=$1 limit=$2 file=$3
    shift 3
    echo
    echo "== $name (limit ${limit} s) -> $out/$file"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee "$out/$file"
    local rc=${PIPESTATUS[0]} outcome
    case $rc in
        0) outcome=ok ;;
        124 | 137) outcome="ran out of time" ;;
        *) outcome="failed (exit $rc)" ;;
    esac
    printf '%-9s %-20s %4d s of %d s\n' "$name" "$outcome" $((SECONDS - t0)) "$limit" >> "$out/steps.txt"
    [ "$rc" = 0 ] || failed+=("$name")
}

read -r -d '' ENV_PY <<'EOF'
import importlib, platform, sys, warnings
warnings.simplefilter("ignore")  # a deprecated __version__ is still the version
print("python", sys.version.split()[0], "on", platform.platform())
needs = {"torch": "every step", "numpy": "every step (the models)", "triton": "the CUDA kernels, torch.compile",
         "pytest": "the tests step", "click": "the medexport CLI (no step needs it)",
         "rich": "the medexport CLI (no step needs it)", "onnx": "export (no step needs it)",
         "onnxruntime": "ONNX Runtime engines (no step needs it)"}
for name, why in needs.items():
    try:
        module = importlib.import_module(name)
        print(f"{name:12} {getattr(module, '__version__', '?')}")
    except ImportError as e:
        print(f"{name:12} MISSING, needed by {why}: {e}")
import torch
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU visible"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}: {gpu}")
EOF

{
    date -u
    echo "git $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null ||
        echo ' (with local changes)')"
    [ $smoke = 1 ] && echo "CPU smoke run: every step on the CPU with a tiny model; the numbers check the" \
        "scripts, they measure nothing"
    if command -v nvidia-smi > /dev/null; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    fi
} > "$out/env.txt" 2>&1
cat "$out/env.txt"
step env "${limits[0]}" env.txt.log "$py" -c "$ENV_PY"
cat "$out/env.txt.log" >> "$out/env.txt" && rm -f "$out/env.txt.log"

step kernels "${KERNELS_LIMIT:-${limits[1]}}" kernels.txt "${kernels[@]}"
step table "${TABLE_LIMIT:-${limits[2]}}" table.md "$py" benchmarks/bench_gpu_pipeline.py "${table[@]}" \
    --out "$out/table"
step forms "${FORMS_LIMIT:-${limits[3]}}" kernel.md "${forms[@]}"
step profile "${PROFILE_LIMIT:-${limits[4]}}" profile.md "$py" benchmarks/bench_gpu_pipeline.py "${profile[@]}" \
    --out "$out/profile"
step tests "${TESTS_LIMIT:-${limits[5]}}" tests.txt "$py" -m pytest -q -p no:cacheprovider tests/gpu
step compiled "${COMPILED_LIMIT:-${limits[6]}}" compiled.md env TORCHINDUCTOR_CACHE_DIR="$cache" \
    "$py" benchmarks/bench_gpu_pipeline.py "${compiled[@]}" --out "$out/compiled"
step warm "${WARM_LIMIT:-${limits[7]}}" warm.md env TORCHINDUCTOR_CACHE_DIR="$cache" \
    "$py" benchmarks/bench_gpu_pipeline.py "${warm[@]}" --out "$out/warm"

echo
echo "== steps (also in $out/steps.txt)"
cat "$out/steps.txt"
for f in table compiled; do
    [ -f "$out/$f/summary-torch.md" ] && cat "$out/$f/summary-torch.md"
    [ -f "$out/$f/summary-inductor.md" ] && cat "$out/$f/summary-inductor.md"
done
if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
