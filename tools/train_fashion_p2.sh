#!/usr/bin/env bash
# Train the fashion-mnist-p2 demo family (28x28 at patch 2: 196 tokens; 4, 16 and 48 mediators), round robin:
# every count advances 500 steps at a time, so an interrupted family is evenly trained and resumes where it
# stopped (tools/train_demo.py resumes each run from its last.pt). One torch thread; bf16 autocast.
#
#     bash tools/train_fashion_p2.sh [STEPS]          # default 6000 steps per count, runs in runs/fashion-p2/
#     python tools/train_demo.py --ship runs/fashion-p2/m4 runs/fashion-p2/m16 runs/fashion-p2/m48 \
#         --demo fashion-mnist-p2 --ship-dtype fp16 --recommend '{...}'   # into medexport/demo/fashion-mnist-p2
#
# The shipped weights are 6000 steps of each count; models/fashion-mnist-p2-demo.md has the --recommend text.
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-6000}
for ((target = 500; target <= steps; target += 500)); do
  for n in 48 4 16; do
    python tools/train_demo.py --mediators "$n" --patch-size 2 --autocast bf16 --steps "$target" \
        --run "runs/fashion-p2/m$n"
  done
done
