#!/usr/bin/env bash
# carl place on instances that have a valid placement: every replicating algorithm must give one.
# Replica counts by hand with EPLB's rule capped at D replicas (each extra replica to the largest
# load per replica among experts with fewer than D replicas; ties: lower id).
set -euo pipefail
CARL=${1:?path to carl}
source "$(dirname "$0")/place_lib.inc"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT

# traffic, 2 nodes x 1 device, 3 slots each, loads [292, 57, 58, 51], 6 replicas.
# Counts: 292 -> 2 (146 > 58), then 58 -> 2 (cap 2 reached by expert 0): [2, 1, 2, 1]. Both devices
# hold experts 0 and 2; experts 1 and 3 take the third slot of one device each. Node 1 asks for
# expert 1 (57) and expert 3 (51) but has one slot for them: the fewest inter-node copies is 51
# (expert 1 at node 1, expert 3 at node 0), by hand.
mkdir "$T/s"
npy_f64 "$T/s/load.npy" 1,4 292 57 58 51
topo "$T/t21.json" 2 1
for tr in "292 0 58 0 0 57 0 51" "0 57 0 51 292 0 58 0"; do
  npy_f64 "$T/s/traffic.npy" 1,2,4 $tr
  "$CARL" place --stats "$T/s" --topology "$T/t21.json" --algo traffic --replicas 6 --out "$T/p.json" > /dev/null 2> "$T/err" ||
    { cat "$T/err"; fail "traffic refused a feasible instance (traffic $tr)"; }
  got=$(json_get "$T/p.json" "sorted(sorted(d) for d in j['devices'])")
  [ "$got" = "[[0, 1, 2], [0, 2, 3]]" ] || fail "traffic ($tr): devices $got"
  ic=$(json_get "$T/p.report.json" "j['placement']['inter_node_copies']")
  [ "$ic" = "51" ] || fail "traffic ($tr): inter-node copies $ic, 51 by hand"
done
# eplb, 1 node x 2 devices, 3 slots each, loads [100, 1, 1], 6 replicas. EPLB gives expert 0 all
# three extra replicas (100/1, 100/2, 100/3 > 1): counts [4, 1, 1]; per-replica loads 25, 1, 1;
# packing (heaviest first, lightest GPU with room, first of equals) gives GPU 0 = [0, 0, 1] and
# GPU 1 = [0, 0, 2], which is eplb.py's phy2log [0, 0, 1, 0, 0, 2]. A placement holds an expert
# once per device: the second copies become empty slots.
mkdir "$T/e"
npy_f64 "$T/e/load.npy" 1,3 100 1 1
topo "$T/t12.json" 1 2
"$CARL" place --stats "$T/e" --topology "$T/t12.json" --algo eplb --replicas 6 --out "$T/e.json" > /dev/null 2> "$T/err" ||
  { cat "$T/err"; fail "eplb refused a feasible instance"; }
got=$(json_get "$T/e.json" "j['devices']")
[ "$got" = "[[0, -1, 1], [0, -1, 2]]" ] || fail "eplb: devices $got"
# eplb-nodup: at most 2 replicas (2 devices): counts [2, 2, 2] (0 first, then 1 before 2 on equal
# load), so each device holds all three experts.
"$CARL" place --stats "$T/e" --topology "$T/t12.json" --algo eplb-nodup --replicas 6 --out "$T/n.json" > /dev/null 2> "$T/err" ||
  { cat "$T/err"; fail "eplb-nodup refused a feasible instance"; }
got=$(json_get "$T/n.json" "[sorted(d) for d in j['devices']]")
[ "$got" = "[[0, 1, 2], [0, 1, 2]]" ] || fail "eplb-nodup: devices $got"
echo "place_feasible: ok"
