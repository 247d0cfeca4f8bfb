#!/usr/bin/env bash
# CARL_ROUTE_SIMD: 0 keeps the routing kernels on the portable variant. The experts chosen must not
# depend on it (both variants take the same decisions; random logits have no near-ties), the
# weights agree to float rounding, and each run's weights are softmax(z) at the chosen experts,
# renormalised, as numpy computes them here. A value other than 0 or 1 is reported and ignored.
set -euo pipefail
carl=$1
source tests/lib/python.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" - "$tmp" <<'PY'
import sys, numpy as np
np.save(sys.argv[1] + "/logits.npy", np.random.default_rng(7).normal(0, 2, (1003, 256)).astype(np.float32))
PY
CARL_ROUTE_SIMD=0 "$carl" route --logits "$tmp/logits.npy" --topology configs/topologies/h800-2x8.json --router topk --k 8 --out "$tmp/portable" >/dev/null
"$carl" route --logits "$tmp/logits.npy" --topology configs/topologies/h800-2x8.json --router topk --k 8 --out "$tmp/default" >/dev/null
"$py" - "$tmp" <<'PY'
import sys, numpy as np
d = sys.argv[1]
z = np.load(d + "/logits.npy").astype(np.float64)
a, b = np.load(d + "/portable/experts.npy"), np.load(d + "/default/experts.npy")
assert (a == b).all(), np.argwhere(a != b)[:5]
ref = np.sort(np.argsort(-z, axis=1, kind="stable")[:, :8], axis=1)
assert (np.sort(a, axis=1) == ref).all()
s = np.exp(z - z.max(1, keepdims=True)); s /= s.sum(1, keepdims=True)
g = np.take_along_axis(s, a.astype(np.int64), 1); g /= g.sum(1, keepdims=True)
for run in ("portable", "default"):
    w = np.load(d + "/" + run + "/weights.npy").astype(np.float64)
    assert np.abs(w - g).max() < 1e-6, (run, np.abs(w - g).max())
PY
err=$(CARL_ROUTE_SIMD=yes "$carl" --help 2>&1 >/dev/null)
grep -q "CARL_ROUTE_SIMD=yes: expected 0 (portable) or 1" <<<"$err" || { echo "no warning for CARL_ROUTE_SIMD=yes: $err"; exit 1; }
echo "route_simd_env: ok"
