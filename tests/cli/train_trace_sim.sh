#!/usr/bin/env bash
# carl train --dump-trace writes a directory that carl sim replays as a trace scenario.
# usage: bash tests/cli/train_trace_sim.sh path/to/carl   (run from the repository root)
set -eu
carl=${1:?path to the carl binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 300); do echo "And God said, Let there be light: and there was light. $i"; done >"$tmp/train.txt"
for i in $(seq 1 60); do echo "In the beginning God created the heaven and the earth. $i"; done >"$tmp/val.txt"
cat >"$tmp/cfg.json" <<JSON
{"name":"t","model":{"vocab":256,"max_seq":16,"d_model":16,"n_layers":2,"n_heads":2,"d_ff":16,
 "n_experts":4,"top_k":2,"router":"topk","router_opts":{"aux":0.01}},
 "train":{"batch":4,"seq_len":16,"steps":4,"eval_every":0,"eval_batches":1,"ckpt_every":0,"log_every":1,
 "train_data":"$tmp/train.txt","val_data":"$tmp/val.txt","topology":"configs/topologies/test-2x2.json"}}
JSON
"$carl" train --config "$tmp/cfg.json" --out "$tmp/run" --dump-trace "$tmp/trace" --dump-every 1 --quiet >/dev/null
for f in layer_0.npy layer_1.npy src.npy tokens.npy; do [ -s "$tmp/trace/$f" ] || { echo "FAIL: $f missing"; exit 1; }; done
# 4 steps x 64 tokens recorded; the simulator replays them on the same topology
cat >"$tmp/sim.json" <<JSON
{"name":"trace","steps":4,"tokens":64,"layers":2,"d":16,"experts":4,"lr":1.0,"token_bytes":64,
 "routers":[{"label":"topk+aux","name":"topk","opts":{"k":2,"aux":0.01}},{"name":"carl","opts":{"k":2}}],
 "topologies":["configs/topologies/test-2x2.json"],"scenarios":[{"trace":"$tmp/trace","label":"kjv"}],"seeds":[1]}
JSON
"$carl" sim --config "$tmp/sim.json" --out "$tmp/sim" --no-plots --quiet
grep -q "topk+aux" "$tmp/sim/summary.md" && grep -q "carl" "$tmp/sim/summary.md" || { echo "FAIL: sim summary"; cat "$tmp/sim/summary.md"; exit 1; }
# a trace with the wrong number of experts is refused by name
sed -i 's/"experts":4/"experts":8/' "$tmp/sim.json"
if "$carl" sim --config "$tmp/sim.json" --out "$tmp/sim2" --no-plots --quiet 2>"$tmp/err"; then echo "FAIL: E mismatch accepted"; exit 1; fi
grep -q "layer_0.npy" "$tmp/err" || { echo "FAIL: error does not name the file:"; cat "$tmp/err"; exit 1; }
echo "train_trace_sim: all passed"
