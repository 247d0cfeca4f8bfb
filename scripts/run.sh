#!/usr/bin/env bash
# Quickstart: install missing Debian packages, build, and run the main job on its embedded defaults:
#   1. carl sim: the default simulated study (CARL-MoE against the baselines on a 2 x 8 GPU
#      cluster, three skew scenarios), under a minute; tables in results/default/.
#   2. scripts/main_job.sh: train the default small MoE transformer on the King James Bible with
#      CARL routing and with the top-k + aux-loss baseline on the same tokens (a few minutes),
#      print the comparison and a text sample.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh build
echo
echo "== CARL-MoE: default simulated study (carl sim)"
./build/carl sim
scripts/main_job.sh
