#!/usr/bin/env bash
# Error messages name the real problem: JSON nested past the parser's limit, an option's range, a
# corpus byte outside model.vocab, and no warning standing before an error.
# usage: bash tests/cli/messages.sh path/to/carl   (run from the repository root)
set -u
carl=${1:?path to the carl binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
expect() {
  local code=$1 pat=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ "$rc" -ne "$code" ] || ! grep -q -- "$pat" "$tmp/err"; then
    fail "$* -> exit $rc (want $code), stderr:"; cat "$tmp/err"; echo "(want '$pat')"
  fi
}

# nested deeper than cJSON's limit (1000)
{ printf '{"model": '; for i in $(seq 1 1001); do printf '['; done; for i in $(seq 1 1001); do printf ']'; done; printf '}'; } >"$tmp/deep.json"
expect 1 "deep.json: JSON nested deeper than 1000 levels" "$carl" train --config "$tmp/deep.json"
grep -q malformed "$tmp/err" && fail "deep JSON called malformed: $(cat "$tmp/err")"
expect 1 "nested deeper than 1000 levels" "$carl" sim --config "$tmp/deep.json" --out "$tmp/s"

# an option out of its range states the range
expect 2 "--threads: '100000' must be an integer from 1 to 4096" "$carl" sim --threads 100000

# a corpus byte outside the vocabulary names the file, model.vocab and the config
printf 'abc\n%.0s' $(seq 1 200) >"$tmp/train.txt"
printf 'abc\n%.0s' $(seq 1 50) >"$tmp/val.txt"
printf 'z' >>"$tmp/train.txt"
mkcfg() { # mkcfg FILE VOCAB D_MODEL
  cat >"$1" <<JSON
{"name":"small-vocab","model":{"vocab":$2,"max_seq":16,"d_model":$3,"n_layers":1,"n_heads":2,"d_ff":16,
 "n_experts":4,"top_k":2,"router":"topk"},
 "train":{"batch":2,"seq_len":16,"steps":2,"eval_every":2,"eval_batches":1,"ckpt_every":2,"log_every":1,
 "train_data":"$tmp/train.txt","val_data":"$tmp/val.txt","topology":""}}
JSON
}
mkcfg "$tmp/v.json" 120 16
expect 1 "train.txt: byte 122 at offset 800 is outside the vocabulary: model.vocab is 120 in the config \"small-vocab\"" \
  "$carl" train --config "$tmp/v.json" --out "$tmp/v"
[ ! -e "$tmp/v" ] || fail "vocab: output directory created before the corpus was checked"

# a refused resume prints the error alone: the warning about the changed schedule (--steps 4 where
# the checkpoint's run had 2) is not printed when loading the checkpoint then fails
mkcfg "$tmp/ok.json" 256 16
"$carl" train --config "$tmp/ok.json" --out "$tmp/run" --quiet >/dev/null 2>&1 || fail "good run"
head -c 200 "$tmp/run/ckpt_00000002/model.safetensors" >"$tmp/trunc" && mv "$tmp/trunc" "$tmp/run/ckpt_00000002/model.safetensors"
expect 1 "model.safetensors" "$carl" train --config "$tmp/ok.json" --out "$tmp/run" --resume --steps 4
[ "$(wc -l <"$tmp/err")" -eq 1 ] || fail "more than the error on stderr: $(cat "$tmp/err")"
grep -q warn "$tmp/err" && fail "a warning before the error: $(cat "$tmp/err")"

if [ "$fails" -ne 0 ]; then
  echo "$fails failed"
  exit 1
fi
echo "messages: all passed"
