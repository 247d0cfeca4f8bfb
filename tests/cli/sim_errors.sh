#!/usr/bin/env bash
# carl sim refuses bad input before any run starts: unknown router or scenario, fields of the wrong
# type, trace shapes that do not match the config or the topology. Each case must exit 1, name the
# offending field in its message, and leave no output directory behind.
# Usage: bash sim_errors.sh <path-to-carl-binary>
set -uo pipefail
carl=$1
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
topo='{"name":"t","nodes":2,"devices_per_node":2,"links":{"intra":{"GBps":160,"latency_us":3},"inter":{"GBps":50,"latency_us":10}}}'
fail=0
check() { # name, expected message part, config text
  local name=$1 want=$2 cfg=$3
  printf '%s' "$cfg" > "$tmp/$name.json"
  local err
  err=$("$carl" sim --config "$tmp/$name.json" --out "$tmp/out_$name" --quiet 2>&1 >/dev/null)
  local rc=$?
  if [ $rc -ne 1 ]; then echo "FAIL $name: exit $rc (want 1): $err"; fail=1; return; fi
  if ! grep -qF -- "$want" <<<"$err"; then echo "FAIL $name: message '$err' lacks '$want'"; fail=1; return; fi
  if [ -e "$tmp/out_$name" ]; then echo "FAIL $name: output directory created"; fail=1; return; fi
  echo "ok   $name: $err"
}
check router 'routers[0]: unknown router '"'"'nosuch'"'" \
  '{"routers":["nosuch"],"topologies":['"$topo"'],"scenarios":["zipf"],"seeds":[1]}'
check scenario 'scenarios[1]: unknown scenario '"'"'hotspot'"'" \
  '{"routers":["topk"],"topologies":['"$topo"'],"scenarios":["zipf","hotspot"],"seeds":[1]}'
check type_steps 'steps: must be a number' \
  '{"steps":"100","routers":["topk"],"topologies":['"$topo"'],"scenarios":["zipf"],"seeds":[1]}'
check type_opts 'routers[0].opts.k: must be a number' \
  '{"routers":[{"name":"topk","opts":{"k":[2]}}],"topologies":['"$topo"'],"scenarios":["zipf"],"seeds":[1]}'
check type_workload 'workload.hot: must be a number' \
  '{"workload":{"hot":true},"routers":["topk"],"topologies":['"$topo"'],"scenarios":["zipf"],"seeds":[1]}'
check type_routers 'routers: must be a non-empty array' \
  '{"routers":"topk","topologies":['"$topo"'],"scenarios":["zipf"],"seeds":[1]}'
check bad_option 'kk' \
  '{"routers":[{"name":"topk","opts":{"kk":2}}],"topologies":['"$topo"'],"scenarios":["zipf"],"seeds":[1]}'
check missing_file 'configs/topologies/nosuch.json' \
  '{"routers":["topk"],"topologies":["configs/topologies/nosuch.json"],"scenarios":["zipf"],"seeds":[1]}'
# traces: made with numpy when it is there, otherwise skipped
py=""
for cand in python3 /usr/bin/python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import numpy' >/dev/null 2>&1; then py=$cand; break; fi
done
if [ -n "$py" ]; then
  "$py" - "$tmp" <<'PY'
import os, sys
import numpy as np
d = sys.argv[1]
for name, E, dev in (("trace_e", 6, 1), ("trace_dev", 8, 4), ("trace_ok", 8, 1)):
    os.makedirs(os.path.join(d, name))
    np.save(os.path.join(d, name, "layer_0.npy"), np.zeros((256, E), np.float32))
    src = np.zeros(256, np.int32); src[-1] = dev
    np.save(os.path.join(d, name, "src.npy"), src)
os.makedirs(os.path.join(d, "trace_tok"))
np.save(os.path.join(d, "trace_tok", "layer_0.npy"), np.zeros((256, 8), np.float32))
tok = np.arange(256, dtype=np.int64); tok[7] = -3
np.save(os.path.join(d, "trace_tok", "tokens.npy"), tok)
os.makedirs(os.path.join(d, "trace_layers"))
np.save(os.path.join(d, "trace_layers", "layer_0.npy"), np.zeros((256, 8), np.float32))
PY
  check trace_experts 'has 6 experts per row, the config says experts = 8' \
    '{"experts":8,"tokens":64,"routers":["topk"],"topologies":['"$topo"'],"scenarios":[{"trace":"'"$tmp"'/trace_e"}],"seeds":[1]}'
  check trace_devices "names device 4 but topology 't' has 4 devices" \
    '{"experts":8,"tokens":64,"routers":["topk"],"topologies":['"$topo"'],"scenarios":[{"trace":"'"$tmp"'/trace_dev"}],"seeds":[1]}'
  check trace_short 'fewer than one step' \
    '{"experts":8,"tokens":512,"routers":["topk"],"topologies":['"$topo"'],"scenarios":[{"trace":"'"$tmp"'/trace_ok"}],"seeds":[1]}'
  check trace_tokens 'token 7 has id -3' \
    '{"experts":8,"tokens":64,"routers":["hash"],"topologies":['"$topo"'],"scenarios":[{"trace":"'"$tmp"'/trace_tok"}],"seeds":[1]}'
  check trace_hash 'routes by token id but the trace has no tokens.npy' \
    '{"experts":8,"tokens":64,"routers":["topk","hash"],"topologies":['"$topo"'],"scenarios":[{"trace":"'"$tmp"'/trace_ok"}],"seeds":[1]}'
  check trace_layer 'layer_1.npy' \
    '{"experts":8,"tokens":64,"layers":2,"routers":["topk"],"topologies":['"$topo"'],"scenarios":[{"trace":"'"$tmp"'/trace_layers"}],"seeds":[1]}'
else
  echo "skip trace cases: no python3 with numpy"
fi
exit $fail
