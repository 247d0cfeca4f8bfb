#!/usr/bin/env bash
# carl route with bad input: each case must exit non-zero (not by a signal) and print an error
# that names the input. Listed in docs/errors.md.
set -uo pipefail
carl=$1
source tests/lib/python.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
topo=configs/topologies/test-2x2.json
fx=tests/fixtures/npy
"$py" - "$tmp" <<'PY'
import sys, numpy as np
d = sys.argv[1]
z = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
np.save(d + "/ok.npy", z)
np.save(d + "/f64.npy", z.astype(np.float64))
np.save(d + "/one_d.npy", z[:, 0].copy())
np.save(d + "/fortran.npy", np.asfortranarray(z))
zn = z.copy(); zn[3, 2] = np.nan; np.save(d + "/nan.npy", zn)
zi = z.copy(); zi[5, 1] = np.inf; np.save(d + "/inf.npy", zi)
np.save(d + "/src_bad.npy", np.array([0, 1, 2, 3, 4, 0, 1, 2], dtype=np.int32))
np.save(d + "/src_short.npy", np.array([0, 1, 2], dtype=np.int32))
np.save(d + "/src_i64.npy", np.zeros(8, dtype=np.int64))
open(d + "/trunc.npy", "wb").write(open(d + "/ok.npy", "rb").read()[:100])
open(d + "/malformed.json", "w").write('{"nodes": 2, "devices_per_node": 2, "links": {"intra": {"GBps": 160')
open(d + "/missing.json", "w").write('{"nodes": 2, "links": {"intra": {"GBps": 160, "latency_us": 3}, "inter": {"GBps": 50, "latency_us": 10}}}')
open(d + "/negbw.json", "w").write('{"nodes": 2, "devices_per_node": 2, "links": {"intra": {"GBps": -1, "latency_us": 3}, "inter": {"GBps": 50, "latency_us": 10}}}')
open(d + "/p_missing.json", "w").write('{"experts": 4, "devices": [[0], [1], [2], [2]]}')
open(d + "/p_baddev.json", "w").write('{"experts": 4, "devices": [[0], [1], [2], [3], [0]]}')
np.save(d + "/e16.npy", np.random.default_rng(1).standard_normal((12, 16)).astype(np.float32))
open(d + "/t3x2.json", "w").write('{"nodes": 3, "devices_per_node": 2, "links": {"intra": {"GBps": 160, "latency_us": 3}, "inter": {"GBps": 50, "latency_us": 10}}}')
import os
os.makedirs(d + "/tr")
for s in range(3): np.save(d + "/tr/logits_%05d.npy" % s, z)
PY
fail=0
# the table of docs/errors.md between its route-errors markers is these cases' commands and messages
# (TMP for the temporary directory, FIX for tests/fixtures/npy); scripts/errors_doc.sh rewrites it
rows="$tmp/rows.md"
: > "$rows"
# expect "<substring>" args...: exit code 1..127 and stderr containing the substring
expect() {
  local want=$1; shift
  local err rc
  err=$("$carl" route "$@" --out "$tmp/out" 2>&1 >/dev/null); rc=$?
  if [ $rc -eq 0 ] || [ $rc -ge 128 ]; then
    echo "FAIL (exit $rc): carl route $*"; fail=1; return
  fi
  if ! grep -qF -- "$want" <<<"$err"; then
    echo "FAIL: carl route $*"; echo "  wanted: $want"; echo "  got:    $err"; fail=1; return
  fi
  echo "ok: $want"
  local cmd="carl route $*"
  printf '| `%s` | %s |\n' "${cmd//$tmp/TMP}" "${err//$tmp/TMP}" | sed "s#$fx/#FIX/#" >> "$rows"
}
expect "no/such.npy"        --logits "$tmp/no/such.npy" --topology $topo
expect "f64.npy"            --logits "$tmp/f64.npy" --topology $topo
expect "one_d.npy"          --logits "$tmp/one_d.npy" --topology $topo
expect "fortran"            --logits "$tmp/fortran.npy" --topology $topo
expect "trunc.npy"          --logits "$tmp/trunc.npy" --topology $topo
expect "bad_magic.npy"      --logits $fx/bad_magic.npy --topology $topo
expect "non-finite"         --logits "$tmp/nan.npy" --topology $topo
expect "non-finite"         --logits "$tmp/inf.npy" --topology $topo
expect "k"                  --logits "$tmp/ok.npy" --topology $topo --k 5
expect "k"                  --logits "$tmp/ok.npy" --topology $topo --k 0
expect "capacity"           --logits "$tmp/ok.npy" --topology $topo --capacity-factor -1
expect "src_bad.npy"        --logits "$tmp/ok.npy" --topology $topo --source "$tmp/src_bad.npy"
expect "src_short.npy"      --logits "$tmp/ok.npy" --topology $topo --source "$tmp/src_short.npy"
expect "src_i64.npy"        --logits "$tmp/ok.npy" --topology $topo --source "$tmp/src_i64.npy"
expect "malformed JSON"     --logits "$tmp/ok.npy" --topology "$tmp/malformed.json"
expect "devices_per_node"   --logits "$tmp/ok.npy" --topology "$tmp/missing.json"
expect "GBps"               --logits "$tmp/ok.npy" --topology "$tmp/negbw.json"
expect "expert 3"           --logits "$tmp/ok.npy" --topology $topo --placement "$tmp/p_missing.json"
expect "devices"            --logits "$tmp/ok.npy" --topology $topo --placement "$tmp/p_baddev.json"
expect "unknown router"     --logits "$tmp/ok.npy" --topology $topo --router nosuch
expect "no_such_option"     --logits "$tmp/ok.npy" --topology $topo --no-such-option 1
expect "must be a number"   --logits "$tmp/ok.npy" --topology $topo --k two
expect "--topology is required" --logits "$tmp/ok.npy"
expect "no logits_00000.npy" --trace "$tmp" --topology $topo
# grouplimited: E = 16 over 3 nodes x 2 devices (the command line passes the contiguous placement)
expect "E = 16 experts are not divisible over 3 nodes" --logits "$tmp/e16.npy" --topology "$tmp/t3x2.json" --router grouplimited
expect "E = 16 experts are not divisible over 6 devices" --logits "$tmp/e16.npy" --topology "$tmp/t3x2.json" --router grouplimited --level 0
# carl: M above the 2 nodes is refused at the first route, also while the warm start runs
expect "M: 3 nodes per token exceeds the 2 nodes" --logits "$tmp/ok.npy" --topology $topo --router carl --M 3
expect "step 0: M: 3 nodes per token exceeds the 2 nodes" --trace "$tmp/tr" --steps 3 --topology $topo --router carl --M 3 --W 1
if [ -n "${CARL_ERRORS_DOC_ROWS:-}" ]; then
  cp "$rows" "$CARL_ERRORS_DOC_ROWS"
elif ! diff <(sed -n '/<!-- route-errors:begin -->/,/<!-- route-errors:end -->/p' docs/errors.md | grep '^| `carl') \
     "$rows" > "$tmp/doc.diff"; then
  echo "FAIL: the table of docs/errors.md differs from the messages (run scripts/errors_doc.sh):"
  cat "$tmp/doc.diff"
  fail=1
fi
exit $fail
