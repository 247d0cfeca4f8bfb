#!/usr/bin/env bash
# carl sim states the grid size up front, reports progress on a non-terminal stderr, and refuses a
# grid of more than 10000 runs (CARL_SIM_MAX_RUNS) without --force, before writing anything.
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
echo "all sim grid cases passed"
