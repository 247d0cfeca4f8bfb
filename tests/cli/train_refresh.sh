#!/usr/bin/env bash
# carl train with placement refresh and replicas: a run stopped after a refresh and resumed ends
# bitwise equal to the uninterrupted run (weights, optimizer, placements); checkpoints record each
# layer's placement (every expert on as many slots as replicas allow); bad refresh options are
# refused with a message naming the option.
# usage: bash tests/cli/train_refresh.sh path/to/carl   (run from the repository root)
set -eu
carl=${1:?path to the carl binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 300); do echo "And God said, Let there be light: and there was light. $i"; done >"$tmp/train.txt"
for i in $(seq 1 40); do echo "In the beginning God created the heaven and the earth. $i"; done >"$tmp/val.txt"
cat >"$tmp/cfg.json" <<JSON
{"name":"t","model":{"vocab":256,"max_seq":16,"d_model":16,"n_layers":2,"n_heads":2,"d_ff":16,
 "n_experts":4,"top_k":2,"router":"topk","router_opts":{"aux":0.01}},
 "train":{"batch":2,"seq_len":16,"steps":10,"eval_every":5,"eval_batches":1,"ckpt_every":5,"log_every":5,
 "train_data":"$tmp/train.txt","val_data":"$tmp/val.txt","topology":"configs/topologies/test-2x2.json"}}
JSON
opts="--refresh-every 2 --replicas 8 --place traffic --quiet"
"$carl" train --config "$tmp/cfg.json" --out "$tmp/a" $opts >/dev/null
"$carl" train --config "$tmp/cfg.json" --out "$tmp/b" $opts --stop-after 5 >/dev/null
"$carl" train --config "$tmp/cfg.json" --out "$tmp/b" $opts --resume >/dev/null
for f in model.safetensors optimizer.safetensors placement_0.json placement_1.json; do
  cmp "$tmp/a/ckpt_00000010/$f" "$tmp/b/ckpt_00000010/$f" || { echo "FAIL: resumed run differs in $f"; exit 1; }
done
# 4 experts on 8 slots: each expert twice, on two devices
python3 - "$tmp/a/ckpt_00000010/placement_0.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))
slots = [e for dev in p["devices"] for e in dev]
assert p["experts"] == 4 and len(p["devices"]) == 4 and len(slots) == 8, p
assert sorted(slots) == [0, 0, 1, 1, 2, 2, 3, 3], p
for dev in p["devices"]:
    assert len(set(dev)) == len(dev), p
PY
# the refresh ran: the config in state.json says so
grep -q '"refresh_every":	2' "$tmp/a/ckpt_00000010/state.json" || grep -q '"refresh_every": *2' "$tmp/a/ckpt_00000010/state.json"
# errors name the option
check() {
  local want=$1
  shift
  if "$carl" train --config "$tmp/cfg.json" --out "$tmp/bad" --quiet "$@" >"$tmp/err" 2>&1; then
    echo "FAIL: accepted $*"; exit 1
  fi
  grep -q -- "$want" "$tmp/err" || { echo "FAIL: '$*' did not say '$want':"; cat "$tmp/err"; exit 1; }
}
check "train.replicas = 6 must be >= n_experts (4) and a multiple of the 4 devices" --replicas 6
check "train.replicas = 8 needs a topology" --replicas 8 --topology none
check "train.place" --place nosuch
check "needs an integer >= 0" --refresh-every -1
echo "ok"
