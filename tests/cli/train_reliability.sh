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
  expect 1 "metrics.csv: cannot write: No space left" train --out "$tmp/r2" --overwrite
  [ ! -e "$tmp/r2/latest" ] || fail "r2: training went on after metrics.csv could not be written"
  # standard output
  expect 1 "standard output" sh -c "'$carl' train --config '$tmp/cfg.json' --out '$tmp/r2b' >/dev/full"
fi

# ---- 3. a kill after a checkpoint is complete but before 'latest' names it ------------------------
train --out "$tmp/r3" --steps 2 >/dev/null 2>&1 || fail "r3: first run"
rm "$tmp/r3/latest"
expect 0 "no 'latest' file: using .*ckpt_00000002" train --out "$tmp/r3" --resume
[ "$(cat "$tmp/r3/latest")" = "ckpt_00000004" ] || fail "r3: latest is '$(cat "$tmp/r3/latest")' after the resume"
[ "$(steps_of "$tmp/r3/metrics.csv")" = "1 2 3 4 " ] || fail "r3: rows $(steps_of "$tmp/r3/metrics.csv")"
# 'latest' naming a checkpoint that is missing, or incomplete (no state.json): the newest complete one
echo ckpt_00000006 >"$tmp/r3/latest"
expect 0 "missing or incomplete: using .*ckpt_00000004" train --out "$tmp/r3" --resume --steps 6
mkdir -p "$tmp/r3/ckpt_00000008"
echo ckpt_00000008 >"$tmp/r3/latest"
expect 0 "using .*ckpt_00000006" train --out "$tmp/r3" --resume --steps 8
[ -f "$tmp/r3/ckpt_00000008/state.json" ] || fail "r3: ckpt_00000008 not written"
[ "$(steps_of "$tmp/r3/metrics.csv")" = "1 2 3 4 5 6 7 8 " ] || fail "r3: rows $(steps_of "$tmp/r3/metrics.csv")"
# nothing complete at all: refused, naming what is missing
mkdir -p "$tmp/r3b/ckpt_00000002"
expect 1 "no complete ckpt_<step>" train --out "$tmp/r3b" --resume

# ---- 4. a fresh run into another run's directory ------------------------------------------------
train --out "$tmp/r4" >/dev/null 2>&1 || fail "r4: first run"
sum=$(cksum <"$tmp/r4/metrics.csv")
expect 1 "already holds a training run.*--resume.*--overwrite" train --out "$tmp/r4" --steps 3
[ "$(cksum <"$tmp/r4/metrics.csv")" = "$sum" ] || fail "r4: metrics.csv changed by a refused run"
[ -d "$tmp/r4/ckpt_00000002" ] && [ -d "$tmp/r4/ckpt_00000004" ] || fail "r4: checkpoints changed by a refused run"
# with --overwrite: the new run keeps its own two newest (2, 3), the old run's ckpt_00000004 stays
train --out "$tmp/r4" --steps 3 --ckpt-every 1 --overwrite >/dev/null 2>&1 || fail "r4: --overwrite run"
for c in 2 3 4; do [ -f "$tmp/r4/ckpt_0000000$c/state.json" ] || fail "r4: ckpt_0000000$c missing"; done
[ ! -e "$tmp/r4/ckpt_00000001" ] || fail "r4: the new run's oldest checkpoint was not pruned"
[ "$(cat "$tmp/r4/latest")" = "ckpt_00000003" ] || fail "r4: latest is $(cat "$tmp/r4/latest")"
[ "$(steps_of "$tmp/r4/metrics.csv")" = "1 2 3 " ] || fail "r4: rows $(steps_of "$tmp/r4/metrics.csv")"
expect 2 "exclude each other" train --out "$tmp/r4" --resume --overwrite

# ---- 7. a trace path that is not a directory is refused before training --------------------------
echo "a file" >"$tmp/not-a-dir"
expect 1 "not-a-dir: exists and is not a directory" train --out "$tmp/r7" --dump-trace "$tmp/not-a-dir"
[ ! -e "$tmp/r7/metrics.csv" ] || fail "r7: training ran before the trace path was checked"

if [ "$fails" -ne 0 ]; then
  echo "$fails failed"
  exit 1
fi
echo "train_reliability: all passed"
