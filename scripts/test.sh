#!/usr/bin/env bash
# The whole test suite: installs missing packages, builds, runs ctest and the Python tests, then ctest
# again under ASan+UBSan.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh build
(cd build && ctest --output-on-failure -j 2)
# the Python package (python/) against the Release build: /usr/bin/python3 with numpy and pytest
# (python3-torch, when installed, adds the PyTorch tests)
if [ ! -x /usr/bin/python3 ]; then
  echo "test.sh: SKIPPED the Python tests: /usr/bin/python3 is not installed"
elif ! /usr/bin/python3 -c "import numpy, pytest" 2>/dev/null; then
  echo "test.sh: SKIPPED the Python tests: /usr/bin/python3 lacks numpy or pytest (Debian python3-numpy, python3-pytest)"
else
  CARL_BUILD="$PWD/build" CARL_LIB="$PWD/build/libcarl.so" /usr/bin/python3 -m pytest -q -rs python/tests
fi
scripts/build.sh build-asan -DCMAKE_BUILD_TYPE=Debug -DCARL_SANITIZE=ON -DCARL_WITH_CUDA=OFF
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ctest --output-on-failure -j 2)
