#!/usr/bin/env bash
# carl train end to end on a tiny model: progress lines, metrics.csv, checkpoints that an independent
# reader (python: struct + json + numpy) parses as safetensors, resume, trace .npy files, carl sample.
# usage: bash tests/cli/train_run.sh path/to/carl   (run from the repository root)
set -eu
carl=${1:?path to the carl binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 400); do echo "And God said, Let there be light: and there was light. $i"; done >"$tmp/train.txt"
for i in $(seq 1 60); do echo "In the beginning God created the heaven and the earth. $i"; done >"$tmp/val.txt"
cat >"$tmp/cfg.json" <<JSON
{"name":"t","model":{"vocab":256,"max_seq":16,"d_model":16,"n_layers":2,"n_heads":2,"d_ff":16,
 "n_experts":4,"top_k":2,"router":"topk","router_opts":{"aux":0.01}},
 "train":{"batch":2,"seq_len":16,"steps":6,"eval_every":3,"eval_batches":1,"ckpt_every":3,"log_every":1,
 "train_data":"$tmp/train.txt","val_data":"$tmp/val.txt","topology":"configs/topologies/test-2x2.json"}}
JSON
"$carl" train --help | grep -q -- "--dump-trace"
"$carl" train --config "$tmp/cfg.json" --out "$tmp/run" --dump-trace "$tmp/trace" >"$tmp/log"
grep -q "^step      6/6 | loss" "$tmp/log" || { echo "FAIL: no progress line for step 6"; cat "$tmp/log"; exit 1; }
grep -q "bpb" "$tmp/log"
grep -q "^done: 6 steps" "$tmp/log"
[ "$(wc -l <"$tmp/run/metrics.csv")" -eq 7 ] || { echo "FAIL: metrics.csv rows"; cat "$tmp/run/metrics.csv"; exit 1; }
head -1 "$tmp/run/metrics.csv" | grep -q "^step,loss,ce,router_loss,val_ce,val_bpb"
[ "$(cat "$tmp/run/latest")" = "ckpt_00000006" ]
for f in model.safetensors optimizer.safetensors state.json; do [ -s "$tmp/run/ckpt_00000006/$f" ]; done
# resume to 8 steps
"$carl" train --config "$tmp/cfg.json" --out "$tmp/run" --resume --steps 8 --quiet >"$tmp/log2" 2>&1
grep -q "^done: 8 steps" "$tmp/log2"
[ "$(cat "$tmp/run/latest")" = "ckpt_00000008" ]
# an independent reader: the safetensors layout by hand, and the trace files with numpy
py=/usr/bin/python3
if [ -x "$py" ] && "$py" -c "import numpy" 2>/dev/null; then
  "$py" - "$tmp/run/ckpt_00000008/model.safetensors" "$tmp/trace" <<'PY'
import json, struct, sys
import numpy as np
path, trace = sys.argv[1], sys.argv[2]
raw = open(path, "rb").read()
(n,) = struct.unpack("<Q", raw[:8])
hdr = json.loads(raw[8:8 + n])
meta = hdr.pop("__metadata__")
assert meta["format"] == "pt" and meta["step"] == "8", meta
cfg = json.loads(meta["config"])
d, E = cfg["model"]["d_model"], cfg["model"]["n_experts"]
data = raw[8 + n:]
assert hdr["tok_emb"]["shape"] == [256, d], hdr["tok_emb"]
assert hdr["layers.0.moe.router"]["shape"] == [E, d]
end = 0
for name, t in sorted(hdr.items(), key=lambda kv: kv[1]["data_offsets"][0]):
    b, e = t["data_offsets"]
    assert b == end, (name, b, end)
    assert t["dtype"] == "F32"
    a = np.frombuffer(data[b:e], dtype="<f4").reshape(t["shape"])
    assert np.isfinite(a).all(), name
    end = e
assert end == len(data)
l0 = np.load(trace + "/layer_0.npy"); src = np.load(trace + "/src.npy")
assert l0.dtype == np.float32 and l0.shape == (6 * 32, E), l0.shape
assert src.dtype == np.int32 and src.shape == (6 * 32,) and src.min() == 0 and src.max() == 3
print("python reader: ok")
PY
fi
# sampling
"$carl" sample --checkpoint "$tmp/run" --prompt "And God" --length 20 --seed 3 >"$tmp/s1" 2>/dev/null
"$carl" sample --checkpoint "$tmp/run/ckpt_00000008" --prompt "And God" --length 20 --seed 3 >"$tmp/s2" 2>/dev/null
cmp "$tmp/s1" "$tmp/s2"
grep -q "^And God" "$tmp/s1"
"$carl" sample --help | grep -q -- "--temperature"
echo "train_run: all passed"
