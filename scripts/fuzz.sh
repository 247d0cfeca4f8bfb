#!/usr/bin/env bash
# Build the libFuzzer harnesses (clang, ASan+UBSan) and run each for N seconds, one after another.
# Usage: scripts/fuzz.sh [seconds-per-harness (default 60)] [harness names (default: all)]
#   scripts/fuzz.sh            # every fuzz/fuzz_*.c for 60 s
#   scripts/fuzz.sh 180 npy    # fuzz_npy for 3 minutes
# Seeds come from fuzz/corpus/<name>/ (committed, read only); inputs the fuzzer finds go to
# build-fuzz/found/<name>/, crashes to build-fuzz/crashes/, logs to build-fuzz/logs/. Exit status 1
# when a harness crashed (the reproducer path is printed; replay it with build-fuzz/fuzz_<name> FILE).
# CARL_FUZZ_RUNS=N makes a run reproducible: N inputs per harness from seed 1 and the committed seeds
# only (the inputs found go to a fresh folder that is removed), so the same tree gives the same result
# on every machine; the seconds argument is then ignored. scripts/test.sh runs this way.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
if [ $# -gt 0 ]; then
  names=("$@")
else
  names=()
  for f in fuzz/fuzz_*.c; do n=${f#fuzz/fuzz_}; names+=("${n%.c}"); done
fi
CC=${CC:-clang} scripts/build.sh build-fuzz -DCARL_FUZZ=ON -DCARL_WERROR=OFF -DCARL_WITH_CUDA=OFF \
  -DCARL_WITH_MPI=OFF >/dev/null
mkdir -p build-fuzz/logs build-fuzz/crashes
failed=0
printf '%-13s %8s %12s %9s %6s %7s  %s\n' harness "$(if [ -n "${CARL_FUZZ_RUNS:-}" ]; then echo runs; else echo seconds; fi)" executions exec/s cov ft result
for n in "${names[@]}"; do
  bin=build-fuzz/fuzz_$n
  [ -x "$bin" ] || { echo "no harness $bin" >&2; exit 2; }
  dict=fuzz/json.dict
  [ "$n" = npy ] && dict=fuzz/npy.dict
  log=build-fuzz/logs/$n.log
  rc=0
  if [ -n "${CARL_FUZZ_RUNS:-}" ]; then
    found=build-fuzz/found-fixed/$n
    rm -rf "$found"
    limit=(-runs="$CARL_FUZZ_RUNS" -seed=1)
  else
    found=build-fuzz/found/$n
    limit=(-max_total_time="$secs")
  fi
  mkdir -p "$found"
  "$bin" "${limit[@]}" -timeout=10 -print_final_stats=1 -dict="$dict" \
    -artifact_prefix="build-fuzz/crashes/$n-" "$found" "fuzz/corpus/$n" >"$log" 2>&1 || rc=$?
  if [ -n "${CARL_FUZZ_RUNS:-}" ]; then rm -rf "$found"; fi
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  last=$(grep -E '^#[0-9]+' "$log" | tail -1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  result=ok
  if [ $rc -ne 0 ]; then
    result="CRASH (exit $rc): $(grep -o 'Test unit written to .*' "$log" | head -1)"
    failed=1
  fi
  printf '%-13s %8s %12s %9s %6s %7s  %s\n' "$n" "${CARL_FUZZ_RUNS:-$secs}" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$result"
done
exit $failed
