#!/usr/bin/env bash
# Numbers and names that would overflow or break the reports are refused at parse time, naming the
# field and its valid range: topology bandwidths/latencies/peak rates, statistics counts, JSON text
# that is not UTF-8 or holds NUL, and a sim study name that would leave results/.
# Usage: bash limits.sh <path-to-carl-binary>
set -uo pipefail
CARL=$(cd "$(dirname "${1:?path to carl}")" && pwd)/$(basename "$1")
source "$(dirname "$0")/place_lib.inc"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir "$T/s" "$T/huge"
npy_f64 "$T/s/load.npy" 1,8 10
npy_f64 "$T/s/traffic.npy" 1,2,8 1
npy_f64 "$T/huge/load.npy" 1,8 1e308
npy_f64 "$T/huge/traffic.npy" 1,2,8 1
topo "$T/t22.json" 2 2
link() { # FILE INTRA_GBPS INTRA_LAT
  printf '{"nodes":2,"devices_per_node":2,"links":{"intra":{"GBps":%s,"latency_us":%s},"inter":{"GBps":50,"latency_us":10}}}\n' "$2" "$3" > "$1"
}
link "$T/bw_big.json" 1e308 3
link "$T/bw_tiny.json" 1e-300 3
link "$T/lat_big.json" 160 1e308
printf '{"nodes":2,"devices_per_node":2,"links":{"intra":{"GBps":160,"latency_us":3},"inter":{"GBps":50,"latency_us":10}},"flops":{"peak_TFLOPS":1e308,"efficiency":0.5}}\n' > "$T/tflops.json"
printf '{"name":"a\xff\xfeb","nodes":2,"devices_per_node":2,"links":{"intra":{"GBps":160,"latency_us":3},"inter":{"GBps":50,"latency_us":10}}}\n' > "$T/latin1.json"
printf '{"name":"a\\u0000b","nodes":2,"devices_per_node":2,"links":{"intra":{"GBps":160,"latency_us":3},"inter":{"GBps":50,"latency_us":10}}}\n' > "$T/nul.json"
printf '{"name":"caf\xc3\xa9","nodes":2,"devices_per_node":2,"links":{"intra":{"GBps":160,"latency_us":3},"inter":{"GBps":50,"latency_us":10}}}\n' > "$T/utf8.json"

# expect STATUS PATTERN ARGS...: run carl, check the status and that stderr holds PATTERN
expect() {
  local want=$1 pat=$2
  shift 2
  "$CARL" "$@" > "$T/out" 2> "$T/err"
  local rc=$?
  [ "$rc" = "$want" ] || { cat "$T/err"; fail "status $rc (want $want) for: $*"; }
  grep -qF -- "$pat" "$T/err" || { cat "$T/err"; fail "stderr lacks '$pat' for: $*"; }
  echo "ok: $(head -1 "$T/err")"
}
O="--out $T/p.json"
expect 1 "links.intra.GBps must be in [1e-06, 1e+06], got 1e+308" place --stats "$T/s" --topology "$T/bw_big.json" $O
expect 1 "links.intra.GBps must be in [1e-06, 1e+06], got 1e-300" place --stats "$T/s" --topology "$T/bw_tiny.json" $O
expect 1 "links.intra.latency_us must be in [0, 1e+09], got 1e+308" place --stats "$T/s" --topology "$T/lat_big.json" $O
expect 1 "flops.peak_TFLOPS must be in [1e-06, 1e+09], got 1e+308" place --stats "$T/s" --topology "$T/tflops.json" $O
expect 1 "load.npy: element 0 is 1e+308 (counts must be in [0, 1e+15])" place --stats "$T/huge" --topology "$T/t22.json" $O
expect 1 "not UTF-8" place --stats "$T/s" --topology "$T/latin1.json" $O
expect 1 "NUL" place --stats "$T/s" --topology "$T/nul.json" $O
# a UTF-8 name is fine and report.json stays valid JSON holding it
"$CARL" place --stats "$T/s" --topology "$T/utf8.json" $O > "$T/out" 2> "$T/err" || { cat "$T/err"; fail "a UTF-8 topology name was refused"; }
"$PY" -c "import json,sys; json.load(open(sys.argv[1], encoding='utf-8'))" "$T/p.report.json" || fail "p.report.json is not valid JSON"

# sim: the study name must stay inside results/
cd "$T"
base='"routers":["topk"],"topologies":["t22.json"],"scenarios":["zipf"],"seeds":[1],"steps":2,"tokens":64,"experts":8,"layers":1'
printf '{"name":"../../x",%s}' "$base" > esc.json
expect 1 "name: '../../x' must be 1 to 64 characters of A-Z a-z 0-9 . _ -" sim --config esc.json --quiet
[ ! -e "$T/../x" ] && [ ! -e results ] || fail "sim wrote outside results/ (or at all) for name ../../x"
printf '{"name":"a/b",%s}' "$base" > slash.json
expect 1 "name: 'a/b' must be" sim --config slash.json --quiet
printf '{"name":"",%s}' "$base" > empty.json
expect 1 "name: '' must be" sim --config empty.json --quiet
echo "all limits cases passed"
