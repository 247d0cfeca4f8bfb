#!/usr/bin/env bash
# Train the same model for the same token budget with each router on the simulated 2-node
# topology, then write the summary table and the loss-curve plot used by docs/RESULTS-train.md.
#
#   scripts/train_results.sh [CONFIG] [STEPS] [ROUTER LABELS...]
#     CONFIG  default configs/models/small.json     STEPS  default: the config's train.steps
#     labels  default: topk+aux carl c2r locmoe lossfree bip
#   scripts/train_results.sh --report              (only the table and plot from finished runs)
#
# Runs go one after another (each one uses all OpenMP threads) into out/results/<label>/;
# a finished run (its metrics.csv reached the last step) is not run again.
# Output: out/results/summary.md, docs/train-loss.png (gnuplot).
set -euo pipefail
cd "$(dirname "$0")/.."
report_only=0
if [ "${1:-}" = "--report" ]; then report_only=1; shift; fi
config=${1:-configs/models/small.json}
steps=${2:-}
shift 2 2>/dev/null || shift $# 2>/dev/null || true
labels=("$@")
[ ${#labels[@]} -eq 0 ] && labels=(topk+aux carl c2r locmoe lossfree bip)
topology=configs/topologies/h800-2x8.json
res=out/results
mkdir -p "$res"

router_args() { # label -> carl train arguments
  case "$1" in
    topk+aux) echo "--router topk --router-opt aux=0.01" ;;
    carl) echo "--router carl" ;;
    c2r) echo "--router c2r --router-opt profile=1 --router-opt aux=0.01" ;;
    locmoe) echo "--router locmoe --router-opt k=1" ;;
    lossfree) echo "--router lossfree" ;;
    bip) echo "--router bip" ;;
    *) echo "--router $1" ;;
  esac
}

if [ "$report_only" -eq 0 ]; then
  carl=${CARL_BIN:-build/carl}
  [ -x "$carl" ] || scripts/build.sh build
  scripts/prepare_data.sh
  for label in "${labels[@]}"; do
    out="$res/$label"
    want=${steps:-$(/usr/bin/python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['train']['steps'])" "$config")}
    if [ -f "$out/metrics.csv" ] && tail -1 "$out/metrics.csv" | grep -q "^$want,"; then
      echo "train_results: $label already done"
      continue
    fi
    rm -rf "$out"
    echo "train_results: $label ($(date -u +%H:%M:%S))"
    # C2R profiles first: the first c2r_profile steps route as topk and count co-activations (the
    # counts are saved with the router state in the checkpoint); training then resumes from that
    # checkpoint, whose loaded counts give the collaboration table that constrains routing.
    first=""
    if [ "$label" = c2r ]; then first="--stop-after ${C2R_PROFILE_STEPS:-25}"; fi
    # shellcheck disable=SC2046,SC2086
    "$carl" train --config "$config" $(router_args "$label") --topology "$topology" \
      ${steps:+--steps "$steps"} --out "$out" $first >"$res/$label.log" 2>&1 || { echo "train_results: $label failed:"; tail -3 "$res/$label.log"; }
    if [ -n "$first" ]; then
      # shellcheck disable=SC2046
      "$carl" train --config "$config" $(router_args "$label") --topology "$topology" \
        ${steps:+--steps "$steps"} --out "$out" --resume >>"$res/$label.log" 2>&1 || { echo "train_results: $label failed:"; tail -3 "$res/$label.log"; }
    fi
  done
fi

# ---- summary: last validation row of each run ----------------------------------------------------
{
  echo "| router | val loss (nats/byte) | val bits/byte | vs topk+aux | inter-node bytes (total) | vs topk+aux | expert skew (max/mean) | device skew | node skew | tokens/s |"
  echo "|---|---|---|---|---|---|---|---|---|---|"
  base_bpb=""; base_inter=""
  for label in "${labels[@]}"; do
    f="$res/$label/metrics.csv"
    [ -f "$f" ] || { echo "| $label | (no run) | | | | | | | | |"; continue; }
    # mean skew and tokens/s over all rows; last validation; total inter bytes from the last row
    read -r vce vbpb inter se sd sn tps < <(awk -F, 'NR>1 { if ($5 != "") { vce=$5; vbpb=$6 } inter=$15; se+=$10; sd+=$11; sn+=$12; tps+=$9; n++ }
      END { printf "%s %s %s %.3f %.3f %.3f %.0f\n", vce, vbpb, inter, se/n, sd/n, sn/n, tps/n }' "$f")
    if [ "$label" = "topk+aux" ]; then base_bpb=$vbpb; base_inter=$inter; fi
    dl=""; di=""
    if [ -n "$base_bpb" ]; then
      dl=$(awk -v a="$vbpb" -v b="$base_bpb" 'BEGIN { printf "%+.2f%%", 100 * (a - b) / b }')
      di=$(awk -v a="$inter" -v b="$base_inter" 'BEGIN { if (b > 0) printf "%+.1f%%", 100 * (a - b) / b }')
    fi
    printf "| %s | %.4f | %.4f | %s | %.3g | %s | %s | %s | %s | %s |\n" "$label" "$vce" "$vbpb" "$dl" "$inter" "$di" "$se" "$sd" "$sn" "$tps"
  done
} >"$res/summary.md"
cat "$res/summary.md"

# ---- plot: validation bits/byte and training cross-entropy per router -------------------------------
if command -v gnuplot >/dev/null; then
  plot_val=""; plot_train=""; plot_bytes=""
  for label in "${labels[@]}"; do
    f="$res/$label/metrics.csv"
    [ -f "$f" ] || continue
    awk -F, 'NR>1 && $5 != "" { print $1, $6 }' "$f" >"$res/$label.val.dat"
    awk -F, 'NR>1 { print $1, $3 / log(2), $15 / 1e9 }' "$f" >"$res/$label.train.dat"
    plot_val+="'$res/$label.val.dat' using 1:2 with linespoints title '$label', "
    plot_train+="'$res/$label.train.dat' using 1:2 with lines title '$label', "
    plot_bytes+="'$res/$label.train.dat' using 1:3 with lines title '$label', "
  done
  mkdir -p docs
  gnuplot <<GP
set terminal pngcairo size 1500,450 font ",10"
set output 'docs/train-loss.png'
set multiplot layout 1,3
set xlabel 'step'
set ylabel 'bits per byte'
set grid
set key top right
set title 'validation loss'
plot ${plot_val%, }
set title 'training cross-entropy'
plot ${plot_train%, }
set title 'simulated inter-node bytes (cumulative)'
set ylabel 'GB'
set key top left
plot ${plot_bytes%, }
unset multiplot
GP
  echo "train_results: wrote docs/train-loss.png"
fi
