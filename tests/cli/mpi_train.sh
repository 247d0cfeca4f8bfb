#!/usr/bin/env bash
# carl train --expert-parallel 4 under mpirun (4 ranks, one per device of test-2x2) against the
# same run in one process: the losses of every step agree for topk, lossfree and carl (and with a
# placement refresh, whose expert migration crosses ranks, and with hierarchical dispatch); a resume
# is bitwise; the checkpoint samples in one process;
# bad input stops every rank with a message and no hang; a rank killed with SIGKILL ends the run,
# and the restart from its last checkpoint continues bitwise as if nothing had happened.
# usage: bash tests/cli/mpi_train.sh path/to/carl   (run from the repository root)
set -eu
carl=${1:?path to the carl binary}
if ! command -v mpirun >/dev/null; then
  echo "skip: no mpirun (Debian package openmpi-bin)"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
MPI=(mpirun --oversubscribe --allow-run-as-root)
for i in $(seq 1 400); do echo "And God said, Let there be light: and there was light. $i"; done >"$tmp/train.txt"
for i in $(seq 1 60); do echo "In the beginning God created the heaven and the earth. $i"; done >"$tmp/val.txt"
mkcfg() { # name experts batch steps
  cat >"$tmp/$1.json" <<JSON
{"name":"$1","model":{"vocab":256,"max_seq":16,"d_model":16,"n_layers":2,"n_heads":2,"d_ff":16,
 "n_experts":$2,"top_k":2,"router":"topk","router_opts":{"aux":0.01}},
 "train":{"batch":$3,"seq_len":16,"steps":$4,"eval_every":3,"eval_batches":1,"ckpt_every":3,"log_every":1,
 "train_data":"$tmp/train.txt","val_data":"$tmp/val.txt","topology":"configs/topologies/test-2x2.json"}}
JSON
}
mkcfg t 4 4 6

# without mpirun: one process, not the 4 asked for (or a build without MPI: skip)
if "$carl" train --config "$tmp/t.json" --out "$tmp/solo" --expert-parallel 4 >"$tmp/solo.log" 2>&1; then
  echo "FAIL: --expert-parallel 4 without mpirun succeeded"; cat "$tmp/solo.log"; exit 1
fi
if grep -q "this build has no MPI" "$tmp/solo.log"; then
  echo "skip: carl is built without MPI"
  exit 77
fi
grep -q "expert-parallel 4: this run has 1 MPI process (start it with mpirun -np 4)" "$tmp/solo.log" ||
  { echo "FAIL: no clear message without mpirun"; cat "$tmp/solo.log"; exit 1; }

# Tolerance: the MoE layers are the same computation in both runs (same rows per slot, same sums
# in the same order); what differs is the order of the fp32 sums over ranks (cross-entropy,
# gradients). Those differ by a few ulps (fp32 eps 6e-8 x loss 5.5 = 3e-7 per step); 1e-5 leaves
# room for the few optimizer steps that carry them, and is 100x below the losses' change per step.
compare() { # a b what
  paste -d, <(cut -d, -f1,2 "$1") <(cut -d, -f1,2 "$2") | awk -F, -v what="$3" '
    NR == 1 { next }
    $1 != $3 { print "FAIL " what ": step " $1 " vs " $3; bad = 1; exit }
    { d = $2 - $4; if (d < 0) d = -d; if (d > 1e-5) { print "FAIL " what ": step " $1 " loss " $2 " vs " $4; bad = 1 }; n++ }
    END { if (bad) exit 1; if (n != 6) { print "FAIL " what ": " n " rows"; exit 1 }; print what ": " n " steps agree" }'
}
for r in topk lossfree carl; do
  "$carl" train --config "$tmp/t.json" --router "$r" --out "$tmp/one-$r" --quiet >/dev/null
  timeout 300 "${MPI[@]}" -np 4 "$carl" train --config "$tmp/t.json" --router "$r" --out "$tmp/ep-$r" \
    --expert-parallel 4 >"$tmp/ep-$r.log" 2>&1 || { echo "FAIL: mpirun $r"; cat "$tmp/ep-$r.log"; exit 1; }
  compare "$tmp/one-$r/metrics.csv" "$tmp/ep-$r/metrics.csv" "$r"
done
# hierarchical dispatch (one copy per destination node, forwarded inside the node: a second
# all-to-all between the ranks of a node)
"$carl" train --config "$tmp/t.json" --router carl --dispatch hier --out "$tmp/one-hier" --quiet >/dev/null
timeout 300 "${MPI[@]}" -np 4 "$carl" train --config "$tmp/t.json" --router carl --dispatch hier --out "$tmp/ep-hier" \
  --expert-parallel 4 --quiet >"$tmp/ep-hier.log" 2>&1 || { echo "FAIL: mpirun hier"; cat "$tmp/ep-hier.log"; exit 1; }
compare "$tmp/one-hier/metrics.csv" "$tmp/ep-hier/metrics.csv" "carl, hierarchical"
# only rank 0 prints progress and the summary
[ "$(grep -c '^done: 6 steps' "$tmp/ep-topk.log")" -eq 1 ] || { echo "FAIL: summary lines"; cat "$tmp/ep-topk.log"; exit 1; }
[ "$(grep -c '^step      6/6' "$tmp/ep-topk.log")" -eq 1 ]

# placement refresh every 2 steps: experts migrate between ranks; same losses, same placements
"$carl" train --config "$tmp/t.json" --router lossfree --refresh-every 2 --out "$tmp/one-rf" --quiet >/dev/null
timeout 300 "${MPI[@]}" -np 4 "$carl" train --config "$tmp/t.json" --router lossfree --refresh-every 2 \
  --out "$tmp/ep-rf" --expert-parallel 4 --quiet >"$tmp/ep-rf.log" 2>&1 || { echo "FAIL: mpirun refresh"; cat "$tmp/ep-rf.log"; exit 1; }
compare "$tmp/one-rf/metrics.csv" "$tmp/ep-rf/metrics.csv" "lossfree + refresh"
for l in 0 1; do cmp -s "$tmp/one-rf/ckpt_00000006/placement_$l.json" "$tmp/ep-rf/ckpt_00000006/placement_$l.json" ||
  { echo "FAIL: placement $l differs"; exit 1; }; done

# stop after 3 steps, resume under mpirun: the same checkpoint bits as the uninterrupted run
timeout 300 "${MPI[@]}" -np 4 "$carl" train --config "$tmp/t.json" --out "$tmp/ep-rs" --expert-parallel 4 --stop-after 3 \
  --quiet >"$tmp/rs.log" 2>&1 || { echo "FAIL: mpirun stop-after"; cat "$tmp/rs.log"; exit 1; }
timeout 300 "${MPI[@]}" -np 4 "$carl" train --config "$tmp/t.json" --out "$tmp/ep-rs" --expert-parallel 4 --resume \
  --quiet >"$tmp/rs.log" 2>&1 || { echo "FAIL: mpirun resume"; cat "$tmp/rs.log"; exit 1; }
for f in model.safetensors optimizer.safetensors; do
  cmp -s "$tmp/ep-rs/ckpt_00000006/$f" "$tmp/ep-topk/ckpt_00000006/$f" || { echo "FAIL: resumed $f differs"; exit 1; }
done
echo "resume across 4 ranks: bitwise"

# the expert-parallel checkpoint is an ordinary one: carl sample reads it in one process
"$carl" sample --checkpoint "$tmp/ep-topk" --prompt "And God" --length 8 >"$tmp/sample.txt" 2>&1 ||
  { echo "FAIL: carl sample of the mpi checkpoint"; cat "$tmp/sample.txt"; exit 1; }

# bad input: a message on every rank, exit non-zero, no hang
bad() { # what np expected-message args...
  local what=$1 np=$2 msg=$3
  shift 3
  if timeout 120 "${MPI[@]}" -np "$np" "$carl" train "$@" >"$tmp/bad.log" 2>&1; then
    echo "FAIL: $what accepted"; cat "$tmp/bad.log"; exit 1
  fi
  local n
  n=$(grep -c -- "$msg" "$tmp/bad.log" || true)
  [ "$n" -eq "$np" ] || { echo "FAIL: $what: '$msg' on $n of $np ranks"; cat "$tmp/bad.log"; exit 1; }
  echo "$what: refused on all $np ranks"
}
bad "rank count != --expert-parallel" 2 "expert-parallel 4: this run has 2 MPI processes" \
  --config "$tmp/t.json" --out "$tmp/b1" --expert-parallel 4
bad "rank count != topology devices" 2 "the topology configs/topologies/test-2x2.json has 4 devices, the run has 2 ranks" \
  --config "$tmp/t.json" --out "$tmp/b2" --expert-parallel 2
mkcfg e2 2 4 6
bad "more ranks than experts" 4 "4 ranks for 2 experts" --config "$tmp/e2.json" --out "$tmp/b3" --expert-parallel 4
mkcfg b6 4 6 6
bad "batch not divisible" 4 "train.batch = 6 does not split evenly over 4 ranks" --config "$tmp/b6.json" --out "$tmp/b4" --expert-parallel 4

# a rank killed with SIGKILL mid-run: mpirun ends the others and exits non-zero within seconds
mkcfg long 4 4 100000
"${MPI[@]}" -np 4 "$carl" train --config "$tmp/long.json" --out "$tmp/kill" --expert-parallel 4 --quiet \
  >"$tmp/kill.log" 2>&1 &
mp=$!
for i in $(seq 1 600); do [ -s "$tmp/kill/latest" ] && break; sleep 0.1; done
victim=$(pgrep -P "$mp" | tail -1)
[ -n "$victim" ] || { echo "FAIL: no rank process under mpirun"; kill "$mp"; exit 1; }
kill -9 "$victim"
t0=$(date +%s)
for i in $(seq 1 300); do kill -0 "$mp" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$mp" 2>/dev/null; then
  kill "$mp"; echo "FAIL: the run did not end within 30 s of a killed rank"; cat "$tmp/kill.log"; exit 1
fi
rc=0; wait "$mp" || rc=$?
[ "$rc" -ne 0 ] || { echo "FAIL: mpirun exited 0 after a killed rank"; exit 1; }
echo "killed rank: run ended in $(( $(date +%s) - t0 )) s, mpirun exit $rc"
# the restart from the last checkpoint continues as the run that was never killed: the same bits
last=$(cat "$tmp/kill/latest")
K=$(( 10#${last#ckpt_} + 3 ))
ck=$(printf "ckpt_%08d" "$K")
timeout 300 "${MPI[@]}" -np 4 "$carl" train --config "$tmp/long.json" --out "$tmp/kill" --expert-parallel 4 --resume \
  --stop-after "$K" --quiet >"$tmp/kr.log" 2>&1 || { echo "FAIL: resume after the kill"; cat "$tmp/kr.log"; exit 1; }
timeout 300 "${MPI[@]}" -np 4 "$carl" train --config "$tmp/long.json" --out "$tmp/nokill" --expert-parallel 4 \
  --stop-after "$K" --quiet >"$tmp/nk.log" 2>&1 || { echo "FAIL: the run without a kill"; cat "$tmp/nk.log"; exit 1; }
for f in model.safetensors optimizer.safetensors; do
  cmp -s "$tmp/kill/$ck/$f" "$tmp/nokill/$ck/$f" || { echo "FAIL: $ck/$f after the kill and restart differs"; exit 1; }
done
echo "restart after the kill (from $last to step $K): bitwise the uninterrupted run"
echo "ok"
