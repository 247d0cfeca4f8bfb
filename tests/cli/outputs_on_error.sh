#!/usr/bin/env bash
# carl route, place and sim on an error part way: the outputs of before stay as they were, none of
# this run's appear (no half set, no temporary left), and the error names the user's file or option.
# usage: bash tests/cli/outputs_on_error.sh path/to/carl   (run from the repository root)
set -u
CARL=${1:?path to carl}
source "$(dirname "$0")/place_lib.inc"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# expect CODE PATTERN command...
expect() {
  local code=$1 pat=$2
  shift 2
  "$@" >"$T/out" 2>"$T/err"
  local rc=$?
  if [ "$rc" -ne "$code" ] || ! grep -q -- "$pat" "$T/err"; then
    fail "$* -> exit $rc (want $code), stderr:"; cat "$T/err"; echo "(want '$pat')"
  fi
}
# npy_f32 PATH ROWS COLS: a float32 [ROWS, COLS] .npy of a fixed pattern (no numpy needed)
npy_f32() {
  "$PY" - "$@" <<'PY'
import struct, sys
path, r, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
d = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % (r, c)
hdr = (d + ' ' * (64 - (10 + len(d) + 1) % 64) + '\n').encode()
vals = [((i * 7919) % 97) / 97.0 for i in range(r * c)]
open(path, 'wb').write(b'\x93NUMPY\x01\x00' + struct.pack('<H', len(hdr)) + hdr + struct.pack('<%df' % (r * c), *vals))
PY
}
partials() { find "$1" -name '.carl-partial-*' -o -name '.*.tmp-*' | wc -l | tr -d ' '; }
topo "$T/t22.json" 2 2

# ---- route: a trace whose step 2 is not a .npy file --------------------------------------------
mkdir -p "$T/trace"
for s in 0 1 2; do npy_f32 "$T/trace/logits_0000$s.npy" 64 8; done
"$CARL" route --trace "$T/trace" --topology "$T/t22.json" --router lossfree --k 2 --out "$T/rout" >/dev/null 2>&1 ||
  fail "route: good trace"
sum=$(cat "$T/rout/summary.csv" "$T/rout/step_00002/experts.npy" | cksum)
echo "not an npy file" >"$T/trace/logits_00002.npy"
npy_f32 "$T/trace/logits_00003.npy" 64 8
expect 1 "logits_00002.npy" "$CARL" route --trace "$T/trace" --topology "$T/t22.json" --router lossfree --k 2 --out "$T/rout"
[ "$(cat "$T/rout/summary.csv" "$T/rout/step_00002/experts.npy" | cksum)" = "$sum" ] || fail "route: outputs of before changed"
[ ! -e "$T/rout/step_00003" ] || fail "route: a step of the failed run appeared"
# into a new directory: nothing at all
expect 1 "logits_00002.npy" "$CARL" route --trace "$T/trace" --topology "$T/t22.json" --router lossfree --k 2 --out "$T/rnew"
[ -z "$(ls -A "$T/rnew" 2>/dev/null)" ] || fail "route: the failed run left $(ls -A "$T/rnew")"
[ "$(partials "$T")" = 0 ] || fail "route: temporaries left behind"
# the router state option is named
npy_f32 "$T/l.npy" 64 8
expect 1 "--state: router 'topk' has no state" "$CARL" route --logits "$T/l.npy" --topology "$T/t22.json" --router topk \
  --state "$T/l.npy" --out "$T/rs"

# ---- place: a report that cannot be written leaves no placement --------------------------------
mkdir -p "$T/s"
npy_f64 "$T/s/load.npy" 1,8 10
expect 1 "nodir/r.json" "$CARL" place --stats "$T/s" --topology "$T/t22.json" --out "$T/p.json" --report "$T/nodir/r.json"
[ ! -e "$T/p.json" ] || fail "place: the placement was written without its report"
"$CARL" place --stats "$T/s" --topology "$T/t22.json" --out "$T/p.json" >/dev/null || fail "place: good run"
[ -s "$T/p.json" ] && [ -s "$T/p.report.json" ] || fail "place: outputs missing"
[ "$(partials "$T")" = 0 ] || fail "place: temporaries left behind"

# ---- sim: one report that cannot be replaced (a directory in its place) ------------------------
cat >"$T/sim.json" <<JSON
{"name":"s","steps":4,"tokens":64,"experts":8,"d":8,"routers":["topk"],"topologies":["$T/t22.json"],"scenarios":["zipf"],"seeds":[1]}
JSON
mkdir -p "$T/sout/summary.csv"
expect 1 "summary.csv: exists and is a directory" "$CARL" sim --config "$T/sim.json" --out "$T/sout" --no-plots --quiet
[ -z "$(ls "$T/sout" | grep -v '^summary.csv$')" ] || fail "sim: a part of the reports appeared: $(ls "$T/sout")"
[ "$(partials "$T")" = 0 ] || fail "sim: temporaries left behind"
rmdir "$T/sout/summary.csv"
"$CARL" sim --config "$T/sim.json" --out "$T/sout" --no-plots --quiet >/dev/null 2>&1 || fail "sim: good run"
for f in steps.csv summary.csv summary.md plots.dat plots.gp; do [ -s "$T/sout/$f" ] || fail "sim: $f missing"; done

if [ "$fails" -ne 0 ]; then
  echo "$fails failed"
  exit 1
fi
echo "outputs_on_error: all passed"
