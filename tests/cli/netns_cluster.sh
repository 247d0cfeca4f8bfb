#!/usr/bin/env bash
# The emulated 2-node cluster (scripts/netns_cluster.sh: network namespaces, a bridge, tbf-shaped
# links, Open MPI over TCP between the nodes): carl train --expert-parallel 4 across it gives the
# one-process run's losses, and nothing of the cluster is left afterwards, also after SIGTERM.
# Skipped (visibly) where network namespaces are not permitted or mpirun is missing.
# usage: bash tests/cli/netns_cluster.sh path/to/carl   (run from the repository root)
set -eu
carl=${1:?path to the carl binary}
command -v mpirun >/dev/null || { echo "skip: no mpirun"; exit 77; }
if [ "$(id -u)" -ne 0 ] || ! command -v ip >/dev/null || ! command -v tc >/dev/null; then
  echo "skip: the emulated cluster needs root, ip and tc"
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
for i in $(seq 1 400); do echo "And God said, Let there be light: and there was light. $i"; done >"$tmp/train.txt"
for i in $(seq 1 60); do echo "In the beginning God created the heaven and the earth. $i"; done >"$tmp/val.txt"
cat >"$tmp/t.json" <<JSON
{"name":"t","model":{"vocab":256,"max_seq":16,"d_model":16,"n_layers":2,"n_heads":2,"d_ff":16,
 "n_experts":4,"top_k":2,"router":"topk","router_opts":{"aux":0.01}},
 "train":{"batch":4,"seq_len":16,"steps":4,"eval_every":0,"eval_batches":1,"ckpt_every":0,"log_every":1,
 "train_data":"$tmp/train.txt","val_data":"$tmp/val.txt","topology":"configs/topologies/test-2x2.json"}}
JSON
"$carl" train --config "$tmp/t.json" --out "$tmp/one" --quiet >/dev/null
rc=0
timeout 300 scripts/netns_cluster.sh -- "$carl" train --config "$tmp/t.json" --out "$tmp/ns" --expert-parallel 4 \
  --quiet >"$tmp/ns.log" 2>&1 || rc=$?
if [ "$rc" -eq 77 ]; then echo "skip: network namespaces are not permitted here"; exit 77; fi
[ "$rc" -eq 0 ] || { echo "FAIL: the run on the emulated cluster (exit $rc)"; cat "$tmp/ns.log"; exit 1; }
if grep -q "system call failed\|WARNING" "$tmp/ns.log"; then echo "FAIL: Open MPI warnings"; cat "$tmp/ns.log"; exit 1; fi
paste -d, <(cut -d, -f1,2 "$tmp/one/metrics.csv") <(cut -d, -f1,2 "$tmp/ns/metrics.csv") | awk -F, '
  NR == 1 { next }
  { d = $2 - $4; if (d < 0) d = -d; if ($1 != $3 || d > 1e-5) { print "FAIL: step " $1 ": " $2 " vs " $4; bad = 1 }; n++ }
  END { if (bad || n != 4) exit 1; print "emulated 2 nodes x 2 ranks: " n " steps agree with one process" }'
left() { ip netns list | grep -c "^c$1n" || true; }
# terminated while training: the script stops mpirun and tears the cluster down
cat >"$tmp/long.json" <<JSON
{"name":"l","model":{"vocab":256,"max_seq":16,"d_model":16,"n_layers":2,"n_heads":2,"d_ff":16,
 "n_experts":4,"top_k":2,"router":"topk"},
 "train":{"batch":4,"seq_len":16,"steps":100000,"eval_every":0,"ckpt_every":0,"log_every":1,
 "train_data":"$tmp/train.txt","val_data":"$tmp/val.txt","topology":"configs/topologies/test-2x2.json"}}
JSON
scripts/netns_cluster.sh -- "$carl" train --config "$tmp/long.json" --out "$tmp/long" --expert-parallel 4 --quiet \
  >"$tmp/long.log" 2>&1 &
pid=$!
for i in $(seq 1 600); do [ -s "$tmp/long/metrics.csv" ] && break; sleep 0.1; done
[ "$(left $((pid % 100000)))" -eq 2 ] || { echo "FAIL: the running cluster has not 2 namespaces"; kill "$pid"; exit 1; }
kill -TERM "$pid" # (SIGTERM: a script ignores SIGINT in the jobs it starts in the background)
for i in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$pid" 2>/dev/null; then kill -TERM "$pid"; echo "FAIL: no exit within 30 s of SIGTERM"; exit 1; fi
wait "$pid" || true
[ "$(left $((pid % 100000)))" -eq 0 ] || { echo "FAIL: namespaces left after SIGTERM"; ip netns list; exit 1; }
! ip link show "c$((pid % 100000))br" >/dev/null 2>&1 || { echo "FAIL: bridge left after SIGTERM"; exit 1; }
echo "terminated: cluster torn down"
echo ok
