#!/usr/bin/env bash
# carl place: the EPLB README example through the command line, every algorithm on a small case,
# the report's fields.
set -euo pipefail
CARL=${1:?path to carl}
source "$(dirname "$0")/place_lib.inc"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# EPLB README: 12 experts, 16 replicas, 4 groups, 2 nodes x 4 GPUs -> phy2log row 0
mkdir "$T/readme"
npy_f64 "$T/readme/load.npy" 2,12 90 132 40 61 104 165 39 4 73 56 183 86 20 107 104 64 19 197 187 157 172 86 16 27
topo "$T/t24.json" 2 4
"$CARL" place --stats "$T/readme" --topology "$T/t24.json" --algo eplb --replicas 16 --groups 4 --out "$T/p.json" > "$T/out.txt"
got=$(json_get "$T/p.json" "[e for d in j['devices'] for e in d]")
[ "$got" = "[5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1]" ] || fail "eplb README row 0: $got"
# layer 1 of the same example
"$CARL" place --stats "$T/readme" --topology "$T/t24.json" --algo eplb --replicas 16 --groups 4 --layer 1 --out "$T/p1.json" > /dev/null
got=$(json_get "$T/p1.json" "[e for d in j['devices'] for e in d]")
[ "$got" = "[7, 10, 6, 8, 6, 11, 8, 9, 2, 4, 5, 1, 5, 0, 3, 1]" ] || fail "eplb README row 1: $got"
# per-GPU loads by hand from row 0: max 156, mean 1033/8
r=$(json_get "$T/p.report.json" "round(j['placement']['device_max_over_mean'] * 1033 / 8, 6)")
[ "$r" = "156.0" ] || fail "eplb device max: $r"
grep -q "device max/mean" "$T/out.txt" || fail "no report table on stdout"

# 8 experts, 2 nodes x 2 devices: node 0 uses the odd experts, node 1 the even ones
mkdir "$T/s"
npy_f64 "$T/s/load.npy" 1,8 10
npy_f64 "$T/s/traffic.npy" 1,2,8 0 10 0 10 0 10 0 10 10 0 10 0 10 0 10 0
# co-activation: pairs (0,1) (2,3) (4,5) (6,7)
"$PY" - "$T" <<'PY'
import sys
E=8
c=[[0.0]*E for _ in range(E)]
for a,b in [(0,1),(2,3),(4,5),(6,7)]:
    c[a][b]=c[b][a]=20.0
for i in range(E):
    j=(i+2)%E; c[i][j]+=1; c[j][i]+=1
open(sys.argv[1]+'/vals','w').write(' '.join(str(x) for r in c for x in r))
PY
npy_f64 "$T/s/coact.npy" 1,8,8 $(cat "$T/vals")
topo "$T/t22.json" 2 2
for algo in contiguous roundrobin eplb traffic coactivation; do
  "$CARL" place --stats "$T/s" --topology "$T/t22.json" --algo "$algo" --out "$T/$algo.json" > "$T/$algo.txt" 2> "$T/$algo.err" || {
    if [ "$algo" = coactivation ] && grep -q "needs METIS" "$T/$algo.err"; then continue; fi
    cat "$T/$algo.err"; fail "$algo failed"; }
  n=$(json_get "$T/$algo.json" "sorted(e for d in j['devices'] for e in d if e >= 0) == list(range(8))")
  [ "$n" = "True" ] || fail "$algo: not every expert once"
  for k in device_max_over_mean node_max_over_mean inter_node_copies; do
    json_get "$T/$algo.report.json" "j['placement']['$k']" > /dev/null || fail "$algo report lacks $k"
  done
done
# traffic keeps every copy in its node; contiguous sends 40 of 80 across (4 experts x 10)
[ "$(json_get "$T/traffic.report.json" "j['placement']['inter_node_copies']")" = "0" ] || fail "traffic: inter copies"
[ "$(json_get "$T/contiguous.report.json" "j['placement']['inter_node_copies']")" = "40" ] || fail "contiguous: inter copies"
# expected inter bytes = 40 copies x 2 (dispatch + combine) x token bytes
[ "$(json_get "$T/contiguous.report.json" "j['placement']['expected_bytes']['inter']")" = "$((40 * 2 * 14336))" ] || fail "inter bytes"
if [ -f "$T/coactivation.report.json" ]; then
  [ "$(json_get "$T/coactivation.report.json" "j['placement']['coact_local_fraction'] > 0.8")" = "True" ] || fail "coactivation locality"
fi
# replicas: eplb and traffic fill 12 slots
for algo in eplb traffic; do
  "$CARL" place --stats "$T/s" --topology "$T/t22.json" --algo "$algo" --replicas 12 --out "$T/r$algo.json" > /dev/null
  [ "$(json_get "$T/r$algo.json" "sum(len(d) for d in j['devices'])")" = "12" ] || fail "$algo replicas"
done
"$CARL" place --help | grep -q -- "--load-bound X" || fail "help lacks --load-bound"
echo "place_basic: ok"
