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
# the libFuzzer harnesses (fuzz/fuzz_*.c) must build with clang and survive a short reproducible
# run each: CARL_FUZZ_RUNS inputs (default 20000) from seed 1 and the committed seeds, so a failure
# here is the same on every machine (longer, open-ended runs: scripts/fuzz.sh SECONDS)
fz=$(mktemp -d)
if ! command -v "${CC_FUZZ:-clang}" >/dev/null; then
  echo "test.sh: SKIPPED the fuzz harnesses: clang is not installed (Debian clang, libclang-rt-14-dev)"
elif ! printf 'int LLVMFuzzerTestOneInput(const char *d, unsigned long n) { return 0; }\n' >"$fz/t.c" ||
     ! "${CC_FUZZ:-clang}" -fsanitize=fuzzer "$fz/t.c" -o "$fz/t" 2>/dev/null; then
  echo "test.sh: SKIPPED the fuzz harnesses: clang has no libFuzzer (Debian libclang-rt-14-dev)"
else
  CC="${CC_FUZZ:-clang}" CARL_FUZZ_RUNS="${CARL_FUZZ_RUNS:-20000}" scripts/fuzz.sh
fi
rm -rf "$fz"
