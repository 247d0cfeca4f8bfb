#!/usr/bin/env bash
# carl place: bad inputs get exit status 1 or 2 and a message naming the input, never a crash.
set -uo pipefail
CARL=${1:?path to carl}
source "$(dirname "$0")/place_lib.inc"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir "$T/s" "$T/bad" "$T/empty" "$T/nan"
npy_f64 "$T/s/load.npy" 1,8 10
npy_f64 "$T/s/traffic.npy" 1,2,8 1
npy_f64 "$T/bad/load.npy" 1,8 10
npy_f64 "$T/bad/traffic.npy" 1,3,8 1      # 3 source nodes, topology has 2
npy_f64 "$T/nan/load.npy" 1,8 nan
topo "$T/t22.json" 2 2
printf '{"nodes":0,"devices_per_node":2,"links":{"intra":{"GBps":160,"latency_us":3},"inter":{"GBps":50,"latency_us":10}}}\n' > "$T/zero.json"

# expect STATUS PATTERN ARGS...: run carl place, check the status and that stderr matches
expect() {
  local want=$1 pat=$2
  shift 2
  "$CARL" place "$@" > "$T/out" 2> "$T/err"
  local rc=$?
  [ "$rc" = "$want" ] || { cat "$T/err"; fail "status $rc (want $want) for: $*"; }
  grep -q -- "$pat" "$T/err" || { cat "$T/err"; fail "stderr lacks '$pat' for: $*"; }
  echo "ok: $(head -1 "$T/err")"
}
O="--out $T/p.json"
expect 1 "traffic.npy has 3 source nodes" --stats "$T/bad" --topology "$T/t22.json" --algo traffic $O
expect 1 "cannot hold 8 experts" --stats "$T/s" --topology "$T/t22.json" --slots 1 $O
expect 1 "fewer than the 8 experts" --stats "$T/s" --topology "$T/t22.json" --algo eplb --replicas 6 $O
expect 1 "not a multiple of the 4 devices" --stats "$T/s" --topology "$T/t22.json" --algo eplb --replicas 10 $O
expect 1 "nodes" --stats "$T/s" --topology "$T/zero.json" $O
expect 1 "load.npy" --stats "$T/empty" --topology "$T/t22.json" $O
expect 1 "load.npy: element 0 is nan" --stats "$T/nan" --topology "$T/t22.json" $O
expect 1 "coact.npy" --stats "$T/s" --topology "$T/t22.json" --algo coactivation $O
expect 1 "algorithm 'metis' is unknown" --stats "$T/s" --topology "$T/t22.json" --algo metis $O
expect 1 "places each expert once" --stats "$T/s" --topology "$T/t22.json" --algo contiguous --replicas 12 $O
expect 1 "replicas: 12 but slots 2" --stats "$T/s" --topology "$T/t22.json" --algo eplb --slots 2 --replicas 12 $O
expect 1 "layer 3" --stats "$T/s" --topology "$T/t22.json" --layer 3 $O
expect 1 "--replicas: 'x'" --stats "$T/s" --topology "$T/t22.json" --replicas x $O
expect 1 "--load-bound" --stats "$T/s" --topology "$T/t22.json" --load-bound 0.5 $O
expect 2 "are required" --stats "$T/s"
expect 2 "unknown option '--bogus'" --bogus 1
expect 2 "needs a value" --stats
# a placement for another expert count as --from
"$CARL" place --stats "$T/s" --topology "$T/t22.json" $O > /dev/null || fail "good run failed"
printf '{"experts":4,"devices":[[0],[1],[2],[3]]}\n' > "$T/old4.json"
expect 1 "experts is 4" --stats "$T/s" --topology "$T/t22.json" --from "$T/old4.json" --out "$T/q.json"
[ ! -e "$T/q.json" ] || fail "a failed run wrote its output"
echo "place_errors: ok"
