#!/usr/bin/env bash
# carl sim states the grid size up front, reports progress on a non-terminal stderr, and refuses a
# grid of more than 10000 runs (CARL_SIM_MAX_RUNS) without --force, before writing anything; a grid
# of more than 100 runs writes the reports of the runs finished so far at each tenth of the grid,
# so a run killed midway leaves them (checked against the summary rows of the whole grid).
# Usage: bash sim_grid.sh <path-to-carl-binary>
set -uo pipefail
carl=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
topo='{"name":"t","nodes":2,"devices_per_node":2,"links":{"intra":{"GBps":160,"latency_us":3},"inter":{"GBps":50,"latency_us":10}}}'
fail() { echo "FAIL: $*"; exit 1; }
# 2 routers x 1 topology x 1 scenario x 5001 seeds = 10002 runs
seeds=$(seq -s, 0 5000)
printf '{"steps":2,"tokens":64,"experts":8,"routers":["topk","carl"],"topologies":[%s],"scenarios":["zipf"],"seeds":[%s]}' \
  "$topo" "$seeds" > "$tmp/big.json"
err=$("$carl" sim --config "$tmp/big.json" --out "$tmp/out_big" --quiet 2>&1 >/dev/null)
rc=$?
[ $rc -eq 1 ] || fail "big grid: exit $rc (want 1): $err"
grep -qF "2 routers x 1 topologies x 1 scenarios x 5001 seeds = 10002 runs, more than 10000: refused" <<<"$err" ||
  fail "big grid: message '$err'"
grep -qF -- "--force" <<<"$err" || fail "big grid: message does not name --force: $err"
[ ! -e "$tmp/out_big" ] || fail "big grid: output directory created"
echo "ok   big grid refused: $err"
# a small grid, stderr not a terminal: the grid line first, then progress lines, the last one 2/2
printf '{"steps":2,"tokens":64,"experts":8,"routers":["topk","carl"],"topologies":[%s],"scenarios":["zipf"],"seeds":[1]}' \
  "$topo" > "$tmp/small.json"
"$carl" sim --config "$tmp/small.json" --out "$tmp/out_small" --no-plots > /dev/null 2> "$tmp/err" ||
  { cat "$tmp/err"; fail "small grid failed"; }
head -1 "$tmp/err" | grep -qF "2 routers x 1 topologies x 1 scenarios x 1 seeds = 2 runs of 2 steps" ||
  { cat "$tmp/err"; fail "small grid: no grid line first"; }
grep -qF "carl sim: 2/2 runs done" "$tmp/err" || { cat "$tmp/err"; fail "small grid: no progress line"; }
echo "ok   small grid: $(grep -c 'runs done' "$tmp/err") progress line(s)"
# 1 router x 120 seeds, one run at a time: killed after the first interim reports, the output
# directory holds the reports of N runs (N a multiple of 12, one tenth), each row equal to the same
# run's row of the whole grid run to its end
seeds=$(seq -s, 1 120)
printf '{"steps":40,"tokens":512,"experts":16,"routers":["carl"],"topologies":[%s],"scenarios":["zipf"],"seeds":[%s]}' \
  "$topo" "$seeds" > "$tmp/mid.json"
"$carl" sim --config "$tmp/mid.json" --out "$tmp/out_mid" --no-plots --threads 1 > /dev/null 2> "$tmp/err_mid" &
pid=$!
for _ in $(seq 600); do
  [ -f "$tmp/out_mid/summary.md" ] && break
  kill -0 $pid 2>/dev/null || break
  sleep 0.1
done
kill -9 $pid 2>/dev/null
wait $pid 2>/dev/null
[ -f "$tmp/out_mid/summary.md" ] || { cat "$tmp/err_mid"; fail "interim: no summary.md after the first tenth"; }
part=$(grep -o 'partial: [0-9]* of 120 runs' "$tmp/out_mid/summary.md") ||
  fail "interim: summary.md does not say partial: $(head -5 "$tmp/out_mid/summary.md")"
n=$(awk '{print $2}' <<<"$part")
[ $((n % 12)) -eq 0 ] && [ "$n" -gt 0 ] && [ "$n" -lt 120 ] || fail "interim: $n runs (want a multiple of 12 in 12..108)"
rows=$(($(wc -l < "$tmp/out_mid/summary.csv") - 1))
[ "$rows" -eq "$n" ] || fail "interim: summary.csv has $rows rows, summary.md says $n"
"$carl" sim --config "$tmp/mid.json" --out "$tmp/out_full" --no-plots --quiet > /dev/null || fail "whole grid failed"
tail -n +2 "$tmp/out_mid/summary.csv" | while IFS= read -r line; do
  grep -qxF -- "$line" "$tmp/out_full/summary.csv" || { echo "FAIL: interim row not in the whole grid: $line"; exit 1; }
done || exit 1
grep -q partial "$tmp/out_full/summary.md" && fail "whole grid: summary.md says partial"
echo "ok   killed midway: the reports of $n of 120 runs were there, each row equal to the whole grid's"
echo "all sim grid cases passed"
