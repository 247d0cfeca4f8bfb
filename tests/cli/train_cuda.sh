#!/usr/bin/env bash
# carl train --device cuda against the CPU trainer, the reference: configs/models/tiny.json (on a
# generated corpus) for its 20 steps on the CPU and on the GPU; every step's loss, cross-entropy and
# router loss (metrics.csv, one row per step) and both validations agree within 1e-4 relative (both
# float32; only the order of the sums differs). A GPU run stopped at step 10 and resumed from its
# checkpoint gives the same rows 11-20 (same bound against the CPU), and `carl sample` reads its
# checkpoint. Bad input: an unknown --device, and a batch that does not fit in the device's memory
# (a clear error naming both sizes, nothing written). Skips (77) without CUDA or without a device.
# usage: bash tests/cli/train_cuda.sh path/to/carl   (run from the repository root)
set -eu
carl=${1:?path to the carl binary}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in $(seq 1 400); do echo "And God said, Let there be light: and there was light. $i"; done >"$tmp/train.txt"
for i in $(seq 1 60); do echo "In the beginning God created the heaven and the earth. $i"; done >"$tmp/val.txt"
sed -e "s|data/kjv.train.txt|$tmp/train.txt|" -e "s|data/kjv.val.txt|$tmp/val.txt|" configs/models/tiny.json >"$tmp/tiny.json"
grep -q "$tmp/train.txt" "$tmp/tiny.json"

# an unknown device is refused by name, on any machine
if "$carl" train --config "$tmp/tiny.json" --out "$tmp/bad" --device gpu0 --quiet >"$tmp/log_bad" 2>&1; then
  echo "FAIL: --device gpu0 was accepted"; exit 1
fi
grep -q "device 'gpu0': must be cpu, cuda or cuda:N" "$tmp/log_bad" || { echo "FAIL: message"; cat "$tmp/log_bad"; exit 1; }
"$carl" train --help | grep -q -- "--device DEV"

if ! "$carl" train --config "$tmp/tiny.json" --out "$tmp/gpu" --device cuda --log-every 1 --quiet >"$tmp/log_gpu" 2>&1; then
  if grep -qE "no CUDA device is visible|this build has no GPU path" "$tmp/log_gpu"; then
    echo "SKIP: $(grep -oE "no CUDA device is visible|this build has no GPU path" "$tmp/log_gpu" | head -1)"
    exit 77
  fi
  echo "FAIL: carl train --device cuda"; cat "$tmp/log_gpu"; exit 1
fi
"$carl" train --config "$tmp/tiny.json" --out "$tmp/cpu" --log-every 1 --quiet >"$tmp/log_cpu"
[ "$(wc -l <"$tmp/gpu/metrics.csv")" -eq 21 ] || { echo "FAIL: GPU metrics rows"; cat "$tmp/gpu/metrics.csv"; exit 1; }

# columns 2-6: loss, ce, router_loss, val_ce, val_bpb (empty where no validation ran)
compare() { # cpu.csv gpu.csv first_row
  paste -d, "$1" "$2" | awk -F, -v first="$3" -v n="$(head -1 "$1" | tr , '\n' | wc -l)" '
    NR == 1 { next }
    $1 >= first {
      rows++
      if ($1 != $(n + 1)) { print "FAIL: step " $1 " vs " $(n + 1); bad = 1 }
      for (c = 2; c <= 6; c++) {
        a = $c; b = $(n + c)
        if ((a == "") != (b == "")) { print "FAIL: step " $1 " column " c ": \"" a "\" vs \"" b "\""; bad = 1; continue }
        if (a == "") continue
        r = (a - b) / (a < 0 ? -a : a); if (r < 0) r = -r
        if (r > worst) worst = r
        if (r > 1e-4) { print "FAIL: step " $1 " column " c ": cpu " a " gpu " b " (relative " r ")"; bad = 1 }
      }
    }
    END { printf "rows from step %d: %d, largest relative difference %.3g\n", first, rows, worst; exit bad }'
}
compare "$tmp/cpu/metrics.csv" "$tmp/gpu/metrics.csv" 1

# stop at 10, resume from the GPU checkpoint on the GPU: rows 11-20 as the CPU's
"$carl" train --config "$tmp/tiny.json" --out "$tmp/gpu2" --device cuda --log-every 1 --quiet --stop-after 10 >/dev/null
[ "$(cat "$tmp/gpu2/latest")" = "ckpt_00000010" ]
"$carl" train --config "$tmp/tiny.json" --out "$tmp/gpu2" --device cuda --log-every 1 --quiet --resume >/dev/null
[ "$(cat "$tmp/gpu2/latest")" = "ckpt_00000020" ]
compare "$tmp/cpu/metrics.csv" "$tmp/gpu2/metrics.csv" 11
"$carl" sample --checkpoint "$tmp/gpu" --prompt "And God" --length 20 --seed 3 >"$tmp/s1" 2>/dev/null
[ "$(wc -c <"$tmp/s1")" -ge 20 ]

# a batch that does not fit: refused before the first step, naming both sizes; nothing written
sed -e 's|"max_seq": 32|"max_seq": 2048|' -e 's|"batch": 4, "seq_len": 32|"batch": 8192, "seq_len": 2048|' "$tmp/tiny.json" >"$tmp/big.json"
grep -q '"batch": 8192' "$tmp/big.json"
if "$carl" train --config "$tmp/big.json" --out "$tmp/big" --device cuda --quiet >"$tmp/log_big" 2>&1; then
  echo "FAIL: the large batch was accepted"; exit 1
fi
grep -q "training needs .* bytes .* free of .*cudaMemGetInfo" "$tmp/log_big" || { echo "FAIL: message"; cat "$tmp/log_big"; exit 1; }
[ ! -e "$tmp/big/metrics.csv" ] || { echo "FAIL: metrics.csv written"; exit 1; }
cat "$tmp/log_big"
echo "train_cuda: ok"
