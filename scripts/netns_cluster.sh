#!/usr/bin/env bash
# An emulated cluster on one machine: NODES network namespaces, each with one veth into a bridge,
# every link shaped with tc tbf to RATE (both directions); Open MPI starts RANKS_PER_NODE ranks in
# each (TCP between the namespaces, shared memory inside one) and runs COMMAND under mpirun.
# Everything is removed again on exit, interrupt or termination. Needs root (ip netns, ip link, tc).
#
#   scripts/netns_cluster.sh [--nodes 2] [--ranks-per-node 2] [--rate 1gbit] -- COMMAND [ARGS...]
#   e.g. scripts/netns_cluster.sh -- build/carl train --config configs/models/tiny.json --expert-parallel 4
#
# Node i is the namespace c<pid>n<i> with address 10.77.0.<i+1> and host name c<pid>n<i> (its own
# UTS namespace, so that Open MPI's shared-memory segments of different nodes do not collide); the
# names carry the script's pid, so several runs can share the machine. mpirun runs in node 0 and
# starts its daemons on the other nodes through a launcher that enters their namespaces (the ssh
# of a real cluster). Ranks fill the nodes in order (--map-by slot): ranks 0..RPN-1 on node 0, as
# the topology numbers its devices. Latency is what the path gives (no netem on these kernels).
# Exit status: COMMAND's (mpirun's); 77 when network namespaces cannot be made here.
set -euo pipefail
nodes=2 rpn=2 rate=1gbit
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) nodes=$2; shift 2 ;;
    --ranks-per-node) rpn=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "netns_cluster: unknown option '$1' (usage: see the head of $0)" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "netns_cluster: no command given after --" >&2; exit 2; }
id=c$(($$ % 100000))
if ! ip netns add "${id}probe" 2>/dev/null; then
  echo "netns_cluster: cannot create network namespaces here (ip netns add refused: needs root / CAP_SYS_ADMIN)" >&2
  exit 77
fi
ip netns del "${id}probe"
work=$(mktemp -d)
br=${id}br
mp=
cleanup() {
  if [ -n "$mp" ] && kill -0 "$mp" 2>/dev/null; then
    kill -TERM "$mp" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$mp" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$mp" 2>/dev/null || true
  fi
  for ((i = 0; i < nodes; i++)); do
    # processes still inside a node's namespace (ranks of a killed launcher) go with it
    for p in $(ip netns pids "${id}n$i" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
    ip netns del "${id}n$i" 2>/dev/null || true
    ip link del "${id}v$i" 2>/dev/null || true
  done
  ip link del "$br" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ip link add "$br" type bridge
ip link set "$br" up
: >"$work/hosts"
for ((i = 0; i < nodes; i++)); do
  ns=${id}n$i
  ip netns add "$ns"
  ip link add "${id}v$i" type veth peer name eth0 netns "$ns"
  ip link set "${id}v$i" master "$br" up
  ip -n "$ns" addr add "10.77.0.$((i + 1))/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
  # the node's outgoing link, and the bridge port toward it (its incoming link)
  ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 256kbit latency 50ms
  tc qdisc add dev "${id}v$i" root tbf rate "$rate" burst 256kbit latency 50ms
  echo "10.77.0.$((i + 1)) slots=$rpn" >>"$work/hosts"
done
# the launcher mpirun uses instead of ssh: the daemon's command line in the node's namespaces
{
  echo '#!/usr/bin/env bash'
  echo "id=$id"
  # shellcheck disable=SC2016
  echo 'node=${id}n$(( ${1##*.} - 1 )); shift'
  # shellcheck disable=SC2016
  echo 'exec ip netns exec "$node" unshare --uts /bin/sh -c "hostname $node; $*"'
} >"$work/agent"
chmod +x "$work/agent"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export CARL_NETNS_NODE0=${id}n0 CARL_NETNS_HOSTS=$work/hosts CARL_NETNS_AGENT=$work/agent CARL_NETNS_NP=$((nodes * rpn))
# in the background, so that a signal reaches the traps at once (bash runs them after a foreground
# child only); cleanup then stops mpirun, which stops its ranks
ip netns exec "${id}n0" unshare --uts /bin/bash -c 'hostname "$CARL_NETNS_NODE0"; exec mpirun \
  --hostfile "$CARL_NETNS_HOSTS" -np "$CARL_NETNS_NP" --map-by slot --mca plm_rsh_agent "$CARL_NETNS_AGENT" \
  --mca btl tcp,self,vader --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 \
  -x OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" -x ASAN_OPTIONS="${ASAN_OPTIONS:-}" -x PATH "$@"' mpirun "$@" &
mp=$!
rc=0
wait "$mp" || rc=$?
mp=
exit "$rc"
