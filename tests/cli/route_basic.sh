#!/usr/bin/env bash
# carl route on a hand-computed case: 4 tokens x 4 experts on 2 nodes x 2 devices (test-2x2),
# contiguous placement (expert e on device e), token t on device t (the default), top-1.
#   t0 [3,1,0,0] -> e0 on dev0: self          t1 [0,0,2,1] -> e2 on dev2: inter (node 0 -> 1)
#   t2 [1,0,0,5] -> e3 on dev3: intra (node 1) t3 [0,4,0,0] -> e1 on dev1: inter (node 1 -> 0)
# token copy = 8 x 2 bytes = 16; dispatch + combine doubles it:
#   inter = 2 copies x 16 x 2 = 64 bytes, intra = 1 x 16 x 2 = 32 bytes, loads all 1 (MaxVio 0).
set -euo pipefail
carl=$1
source tests/lib/python.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$py" - "$tmp" <<'PY'
import sys, numpy as np
d = sys.argv[1]
np.save(d + "/logits.npy", np.array([[3,1,0,0],[0,0,2,1],[1,0,0,5],[0,4,0,0]], dtype=np.float32))
PY
"$carl" route --logits "$tmp/logits.npy" --topology configs/topologies/test-2x2.json --router topk --k 1 \
  --hidden 8 --elem-bytes 2 --out "$tmp/out" >/dev/null
"$py" - "$tmp/out" <<'PY'
import sys, json, numpy as np
d = sys.argv[1]
ex = np.load(d + "/experts.npy"); w = np.load(d + "/weights.npy")
assert ex.dtype == np.int32 and ex.shape == (4, 1), (ex.dtype, ex.shape)
assert w.dtype == np.float32 and w.shape == (4, 1)
assert ex[:, 0].tolist() == [0, 2, 3, 1], ex
assert np.allclose(w, 1.0)
r = json.load(open(d + "/report.json"))
c = r["communication"]
assert c["bytes"]["inter"] == 64 and c["bytes"]["intra"] == 32 and c["bytes"]["self"] in (0, 32), c["bytes"]
assert abs(c["inter_fraction"] - 64 / 96) < 1e-12, c["inter_fraction"]
assert r["load"]["expert"] == [1, 1, 1, 1] and r["load"]["node"] == [2, 2]
assert r["skew"]["expert"]["maxvio"] == 0 and r["drop_rate"] == 0
# retained mass of top-1 with itself is 1, Jaccard with unconstrained top-k is 1
assert abs(r["selectivity"]["retained_mass"] - 1) < 1e-12 and abs(r["selectivity"]["jaccard_topk"] - 1) < 1e-12
# z-loss (coefficient 1) = mean_t logsumexp(z_t)^2, computed here independently
z = np.array([[3,1,0,0],[0,0,2,1],[1,0,0,5],[0,4,0,0]], dtype=np.float64)
lse = np.log(np.exp(z).sum(1))
assert abs(r["losses"]["z"] - (lse ** 2).mean()) < 1e-5, (r["losses"]["z"], (lse ** 2).mean())
# aux = E * sum_e f_e P_e with f_e = 1/4 for all e: = E * sum_e P_e / 4 = 1
assert abs(r["losses"]["aux"] - 1.0) < 1e-6, r["losses"]["aux"]
print("route_basic: ok")
PY
