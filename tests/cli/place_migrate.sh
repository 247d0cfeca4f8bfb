#!/usr/bin/env bash
# carl place --from: migration bytes in the report (moves x (weights + optimizer state)), nothing
# moves when the placement is unchanged, experts that stay keep their slot.
set -euo pipefail
CARL=${1:?path to carl}
source "$(dirname "$0")/place_lib.inc"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
mkdir "$T/s"
npy_f64 "$T/s/load.npy" 1,8 10
npy_f64 "$T/s/traffic.npy" 1,2,8 0 10 0 10 0 10 0 10 10 0 10 0 10 0 10 0
topo "$T/t22.json" 2 2
"$CARL" place --stats "$T/s" --topology "$T/t22.json" --algo contiguous --out "$T/old.json" > /dev/null
# the same placement again: no move, no bytes
"$CARL" place --stats "$T/s" --topology "$T/t22.json" --algo contiguous --out "$T/same.json" --from "$T/old.json" > /dev/null
[ "$(json_get "$T/same.report.json" "j['migration']['total_bytes']")" = "0" ] || fail "unchanged placement moved bytes"
# contiguous {0,1}{2,3}|{4,5}{6,7} -> traffic (odd experts on node 0, even on node 1): with the devices
# of a node relabelled, device 0 keeps 1 and device 1 keeps 3 (or the mirror), so exactly half of the
# 8 experts stay: the brute force below checks the plan is minimal over the 2! x 2! relabellings.
"$CARL" place --stats "$T/s" --topology "$T/t22.json" --algo traffic --out "$T/new.json" --from "$T/old.json" \
  --expert-bytes 100 --state-bytes 600 > "$T/out.txt"
"$PY" - "$T" <<'PY'
import json, sys, itertools
T = sys.argv[1]
old = json.load(open(T + '/old.json'))['devices']
new = json.load(open(T + '/new.json'))['devices']
rep = json.load(open(T + '/new.report.json'))['migration']
moves = rep['moves']
def cost(perm):
    return sum(sum(1 for e in new[i] if e not in old[perm[i]]) for i in range(4))
best = min(cost(list(a) + [2 + b for b in bb]) for a in itertools.permutations([0, 1]) for bb in itertools.permutations([0, 1]))
# new.json is already relabelled, so the identity must be optimal
assert cost([0, 1, 2, 3]) == best == moves, (cost([0, 1, 2, 3]), best, moves)
assert rep['total_bytes'] == moves * 700, rep
assert rep['bytes']['intra'] + rep['bytes']['inter'] == rep['total_bytes']
for d in range(4):  # experts that stay keep their slot
    for s, e in enumerate(old[d]):
        if e in new[d]:
            assert new[d][s] == e, (d, s, e, new[d])
for m in rep['moves_list']:
    assert m['expert'] in old[m['from']] and new[m['to']][m['slot']] == m['expert'], m
print('moves', moves)
PY
grep -q "migration:" "$T/out.txt" || fail "no migration line on stdout"
# --keep-labels can only move as much or more
"$CARL" place --stats "$T/s" --topology "$T/t22.json" --algo traffic --out "$T/new2.json" --from "$T/old.json" --keep-labels > /dev/null
a=$(json_get "$T/new.report.json" "j['migration']['moves']"); b=$(json_get "$T/new2.report.json" "j['migration']['moves']")
[ "$a" -le "$b" ] || fail "relabelling moved more ($a > $b)"
echo "place_migrate: ok"
