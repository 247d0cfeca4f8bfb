#!/usr/bin/env bash
# carl route --trace: a stateful router (lossfree with bias step u = 0.05 instead of the default
# 1e-3, so that the effect shows within the trace) over 30 consecutive batches of one stationary skewed input
# (Gaussian logits + 0.3 on experts 0 and 1). Checks: one report per step and a summary row per step;
# the bias state carries across steps (the first step equals plain topk, computed here with numpy,
# later steps differ); expert MaxVio falls from the topk value.
set -euo pipefail
carl=$1
source tests/lib/python.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" - "$tmp/trace" <<'PY'
import os, sys, numpy as np
d = sys.argv[1]; os.makedirs(d)
rng = np.random.default_rng(1)
for s in range(30):
    z = rng.standard_normal((512, 8)).astype(np.float32)
    z[:, :2] += 0.3
    np.save(f"{d}/logits_{s:05d}.npy", z)
    np.save(f"{d}/source_{s:05d}.npy", (np.arange(512) * 4 // 512).astype(np.int32))
PY
"$carl" route --trace "$tmp/trace" --steps 30 --topology configs/topologies/test-2x2.json --router lossfree \
  --k 2 --u 0.05 --out "$tmp/out" >/dev/null
"$py" - "$tmp" <<'PY'
import sys, json, numpy as np
d = sys.argv[1]
rows = open(d + "/out/summary.csv").read().strip().split("\n")
assert len(rows) == 31, len(rows)
mv = [float(r.split(",")[1]) for r in rows[1:]]
# step 0: no bias yet -> plain top-2 by score (ties impossible with continuous noise)
z = np.load(d + "/trace/logits_00000.npy")
top = np.argsort(-z, axis=1, kind="stable")[:, :2]
ex = np.load(d + "/out/step_00000/experts.npy")
assert (np.sort(ex, 1) == np.sort(top, 1)).all()
load = np.bincount(top.ravel(), minlength=8)
assert abs(mv[0] - (load.max() / load.mean() - 1)) < 1e-5, (mv[0], load)
# the bias learned over the trace balances the loads
assert min(mv[-5:]) < 0.5 * mv[0], mv
for s in (0, 29):
    r = json.load(open(f"{d}/out/step_{s:05d}/report.json"))
    assert r["step"] == s and r["router"] == "lossfree"
print("route_trace: ok, MaxVio %.3f -> %.3f" % (mv[0], mv[-1]))
PY
# Resume: steps 0..14 with --save-state, then steps 15..29 (renumbered 0..14) from --state, give
# bitwise the experts and weights of the uninterrupted run.
mkdir -p "$tmp/a" "$tmp/b"
for s in $(seq 0 14); do
  cp "$tmp/trace/logits_$(printf %05d $s).npy" "$tmp/a/"
  cp "$tmp/trace/logits_$(printf %05d $((s + 15))).npy" "$tmp/b/logits_$(printf %05d $s).npy"
done
"$carl" route --trace "$tmp/a" --topology configs/topologies/test-2x2.json --router lossfree --k 2 --u 0.05 \
  --save-state "$tmp/state.bin" --out "$tmp/outa" >/dev/null 2>&1
"$carl" route --trace "$tmp/b" --topology configs/topologies/test-2x2.json --router lossfree --k 2 --u 0.05 \
  --state "$tmp/state.bin" --out "$tmp/outb" >/dev/null 2>&1
for s in $(seq 0 14); do
  for f in experts.npy weights.npy; do
    cmp -s "$tmp/out/step_$(printf %05d $((s + 15)))/$f" "$tmp/outb/step_$(printf %05d $s)/$f" ||
      { echo "resumed step $s: $f differs from the uninterrupted run"; exit 1; }
  done
done
# a state of another router is refused with a clear error
if "$carl" route --trace "$tmp/b" --topology configs/topologies/test-2x2.json --router bip --k 2 \
     --state "$tmp/state.bin" --out "$tmp/outc" 2>"$tmp/err" >/dev/null; then
  echo "bip accepted a lossfree state"; exit 1
fi
grep -q "state.bin" "$tmp/err" || { echo "error does not name the state file: $(cat "$tmp/err")"; exit 1; }
echo "route_trace: resume ok"
