#!/usr/bin/env bash
# The whole test suite: installs missing packages, builds, runs ctest, then again under ASan+UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh build
(cd build && ctest --output-on-failure -j 2)
scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DCARL_SANITIZE=ON -DCARL_WITH_CUDA=OFF
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j 2)
