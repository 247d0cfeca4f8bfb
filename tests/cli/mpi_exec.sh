#!/usr/bin/env bash
# The mpi executor's test program (tests/test_exec_mpi.c) under mpirun -np 4: dispatch, combine,
# bytes on the wire per rank pair against the plan's accounting, collectives, migration, the
# model's own-slot storage.
# usage: bash tests/cli/mpi_exec.sh path/to/carl   (run from the repository root; the test
# program lies beside carl in the build directory)
set -eu
carl=${1:?path to the carl binary}
prog=$(dirname "$carl")/test_exec_mpi
if ! command -v mpirun >/dev/null; then
  echo "skip: no mpirun (Debian package openmpi-bin)"
  exit 77
fi
[ -x "$prog" ] || { echo "FAIL: $prog not built"; exit 1; }
export OMP_NUM_THREADS=1
timeout 120 mpirun --oversubscribe --allow-run-as-root -np 4 "$prog" >"${TMPDIR:-/tmp}/mpi_exec.$$.log" 2>&1 || {
  cat "${TMPDIR:-/tmp}/mpi_exec.$$.log"; rm -f "${TMPDIR:-/tmp}/mpi_exec.$$.log"; echo "FAIL: test_exec_mpi under mpirun"; exit 1; }
log="${TMPDIR:-/tmp}/mpi_exec.$$.log"
n=$(grep -c "PASSED.*7 test" "$log" || true)
skipped=$(grep -c "SKIPPED" "$log" || true)
rm -f "$log"
[ "$n" -eq 4 ] && [ "$skipped" -eq 0 ] || { echo "FAIL: $n of 4 ranks passed all 7 tests ($skipped skips)"; exit 1; }
echo "ok: 4 ranks passed dispatch/combine/wire bytes (flat, hierarchical), collectives, migration (every slot, own slots), own-slot model storage"
