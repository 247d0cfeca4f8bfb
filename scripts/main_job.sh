#!/usr/bin/env bash
# The main job: train the default small MoE transformer (configs/models/small.json: 4 layers,
# width 128, 16 experts, top-2) on the King James Bible with CARL routing on a simulated cluster of
# 2 nodes x 8 GPUs, train the topk + auxiliary-loss baseline on the same tokens, print the
# comparison (validation bits per byte, simulated inter-node bytes, load skew) and a text sample.
#
#   scripts/main_job.sh            (CARL_MAIN_STEPS=N for another length, CARL_MAIN_OUT=DIR)
#
# Takes a few minutes on 2 cores. Runs: out/main/carl, out/main/topk-aux (metrics.csv, checkpoints).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${CARL_MAIN_STEPS:-100}
out=${CARL_MAIN_OUT:-out/main}
[ -x build/carl ] || scripts/build.sh build
scripts/prepare_data.sh
rm -rf "$out/carl" "$out/topk-aux"

echo
echo "== 1/2  CARL routing (communication-aware, locality-biased, adaptive balancing)"
build/carl train --config configs/models/small.json --router carl --steps "$steps" --log-every 25 --out "$out/carl"
echo
echo "== 2/2  baseline: top-k with the auxiliary balancing loss (aux = 0.01), same tokens"
build/carl train --config configs/models/small.json --router topk --router-opt aux=0.01 --steps "$steps" \
  --log-every 25 --out "$out/topk-aux"

# final validation, total inter-node bytes, mean skews and throughput from each metrics.csv
summary() {
  awk -F, 'NR>1 { if ($6 != "") vbpb=$6; inter=$15; se+=$10; sd+=$11; tps+=$9; n++ }
           END { printf "%s %s %.3f %.3f %.0f\n", vbpb, inter, se/n, sd/n, tps/n }' "$1"
}
read -r c_bpb c_inter c_se c_sd c_tps < <(summary "$out/carl/metrics.csv")
read -r b_bpb b_inter b_se b_sd b_tps < <(summary "$out/topk-aux/metrics.csv")
echo
echo "== comparison after $steps steps ($((steps * 16 * 128)) training tokens each), simulated 2 x 8 H800 cluster"
printf "%-10s %16s %26s %14s %14s %10s\n" router "val bits/byte" "inter-node bytes (total)" "expert skew" "device skew" "tokens/s"
printf "%-10s %16.4f %26.4g %14.2f %14.2f %10.0f\n" carl "$c_bpb" "$c_inter" "$c_se" "$c_sd" "$c_tps"
printf "%-10s %16.4f %26.4g %14.2f %14.2f %10.0f\n" topk+aux "$b_bpb" "$b_inter" "$b_se" "$b_sd" "$b_tps"
awk -v cb="$c_bpb" -v bb="$b_bpb" -v ci="$c_inter" -v bi="$b_inter" 'BEGIN {
  dl = 100 * (cb - bb) / bb; di = (bi > 0) ? 100 * (bi - ci) / bi : 0
  printf "validation loss: carl %+.2f%% vs topk+aux (target: within 1%%): %s\n", dl, (dl <= 1) ? "met" : "NOT met"
  printf "inter-node bytes: carl moves %.1f%% less than topk+aux (target: at least 30%%): %s\n", di, (di >= 30) ? "met" : "NOT met"
}'
echo
echo "== sample from the CARL model (temperature 0.8)"
build/carl sample --checkpoint "$out/carl" --prompt "And God said" --length 200 --temperature 0.8 --seed 1
