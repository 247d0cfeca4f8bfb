#!/usr/bin/env bash
# carl train / carl sample on bad input: clear errors naming the input, non-zero exit, nothing lost.
# usage: bash tests/cli/train_bad_input.sh path/to/carl   (run from the repository root)
set -u
carl=${1:?path to the carl binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
# expect CODE PATTERN -- command...: exit code must be CODE and stderr must contain PATTERN
expect() {
  local code=$1 pat=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ "$rc" -ne "$code" ] || ! grep -q -- "$pat" "$tmp/err"; then
    echo "FAIL: $* -> exit $rc (want $code), stderr:"; cat "$tmp/err"; echo "(want '$pat')"
    fails=$((fails + 1))
  fi
}

# a small corpus and config
for i in $(seq 1 400); do echo "And God said, Let there be light: and there was light. $i"; done >"$tmp/train.txt"
for i in $(seq 1 60); do echo "In the beginning God created the heaven and the earth. $i"; done >"$tmp/val.txt"
mkcfg() { # mkcfg FILE TRAIN_DATA [D_MODEL]
  cat >"$1" <<JSON
{"name":"t","model":{"vocab":256,"max_seq":16,"d_model":${3:-16},"n_layers":1,"n_heads":2,"d_ff":16,
 "n_experts":4,"top_k":2,"router":"topk"},
 "train":{"batch":2,"seq_len":16,"steps":4,"eval_every":2,"eval_batches":1,"ckpt_every":2,"log_every":1,
 "train_data":"$2","val_data":"$tmp/val.txt","topology":"configs/topologies/test-2x2.json"}}
JSON
}
mkcfg "$tmp/ok.json" "$tmp/train.txt"

expect 1 "nosuch.json" "$carl" train --config "$tmp/nosuch.json"
expect 2 "unknown option" "$carl" train --config "$tmp/ok.json" --bogus 1
expect 2 "needs a value" "$carl" train --config "$tmp/ok.json" --out
expect 2 "KEY=NUMBER" "$carl" train --config "$tmp/ok.json" --router-opt aux
expect 2 "integer" "$carl" train --config "$tmp/ok.json" --steps many
expect 1 "nosuchrouter" "$carl" train --config "$tmp/ok.json" --router nosuchrouter
expect 1 "no option \"bogus\"" "$carl" train --config "$tmp/ok.json" --router-opt bogus=1
expect 1 "topo" "$carl" train --config "$tmp/ok.json" --topology "$tmp/missing-topology.json" --out "$tmp/o0"
# malformed config: the line and column are named
printf '{"model": {"d_model": 16,,}}' >"$tmp/bad.json"
expect 1 "malformed JSON" "$carl" train --config "$tmp/bad.json"
printf '{"model": {}, "train": {"stpes": 3}}' >"$tmp/typo.json"
expect 1 "stpes" "$carl" train --config "$tmp/typo.json"
# corpus not prepared
mkcfg "$tmp/nodata.json" "data/never-prepared.txt"
expect 1 "scripts/prepare_data.sh" "$carl" train --config "$tmp/nodata.json" --out "$tmp/o1"
# resume with nothing to resume
expect 1 "no such checkpoint" "$carl" train --config "$tmp/ok.json" --out "$tmp/none" --resume

# a good run, then resume with a different model: refused, checkpoint untouched
"$carl" train --config "$tmp/ok.json" --out "$tmp/run" --quiet >"$tmp/out" 2>"$tmp/err" || { echo "FAIL: good run"; cat "$tmp/err"; fails=$((fails + 1)); }
sum_before=$(cat "$tmp/run/ckpt_00000004/model.safetensors" | cksum)
mkcfg "$tmp/wide.json" "$tmp/train.txt" 32
expect 1 "model.d_model" "$carl" train --config "$tmp/wide.json" --out "$tmp/run" --resume --steps 6
expect 1 "model.router" "$carl" train --config "$tmp/ok.json" --router lossfree --out "$tmp/run" --resume --steps 6
[ "$(cat "$tmp/run/ckpt_00000004/model.safetensors" | cksum)" = "$sum_before" ] || { echo "FAIL: checkpoint changed by a refused resume"; fails=$((fails + 1)); }

# sample: missing and corrupt checkpoints
expect 2 "required" "$carl" sample
expect 1 "no such checkpoint" "$carl" sample --checkpoint "$tmp/nothing-here"
cp -r "$tmp/run/ckpt_00000004" "$tmp/broken"
head -c 100 "$tmp/run/ckpt_00000004/model.safetensors" >"$tmp/broken/model.safetensors"
expect 1 "model.safetensors" "$carl" sample --checkpoint "$tmp/broken"
echo '{"format": "carl-checkpoint-1", "step": ' >"$tmp/broken/state.json"
expect 1 "state.json" "$carl" sample --checkpoint "$tmp/broken"
expect 2 "temperature" "$carl" sample --checkpoint "$tmp/run" --temperature -1

if [ "$fails" -ne 0 ]; then
  echo "$fails failed"
  exit 1
fi
echo "train_bad_input: all passed"
