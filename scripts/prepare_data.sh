#!/usr/bin/env bash
# Prepare the training corpus: the King James Bible from Debian's bible-kjv package.
#
#   scripts/prepare_data.sh [DATA_DIR]        (default: data/, which git ignores)
#
# Writes DATA_DIR/kjv.txt (the whole text as `bible gen1:1-rev22:21` prints it, about 4.3 MB) and
# the fixed split used for training: DATA_DIR/kjv.train.txt (the first 95% of the bytes, cut at
# the next line start) and DATA_DIR/kjv.val.txt (the rest). Every file is written to a temporary
# name and renamed, so an interrupted run leaves nothing half-written. Running it again is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-data}
mkdir -p "$dir"

if ! command -v bible >/dev/null 2>&1; then
  echo "prepare_data: the 'bible' program is missing: install the Debian package bible-kjv (scripts/deps.sh)" >&2
  exit 1
fi

if [ -s "$dir/kjv.train.txt" ] && [ -s "$dir/kjv.val.txt" ] && [ -s "$dir/kjv.txt" ]; then
  echo "prepare_data: $dir/kjv.{txt,train.txt,val.txt} already present"
  exit 0
fi

bible gen1:1-rev22:21 >"$dir/kjv.txt.tmp"
total=$(wc -c <"$dir/kjv.txt.tmp")
if [ "$total" -lt 4000000 ]; then
  rm -f "$dir/kjv.txt.tmp"
  echo "prepare_data: 'bible gen1:1-rev22:21' printed only $total bytes (expected about 4.3 MB)" >&2
  exit 1
fi
mv "$dir/kjv.txt.tmp" "$dir/kjv.txt"

# Split: first 95% of the bytes, extended to the end of the line it falls in.
cut=$((total * 95 / 100))
train_bytes=$(head -c "$cut" "$dir/kjv.txt" | wc -c)
extra=$(tail -c +"$((cut + 1))" "$dir/kjv.txt" | { head -n 1; cat >/dev/null; } | wc -c)
train_bytes=$((train_bytes + extra))
head -c "$train_bytes" "$dir/kjv.txt" >"$dir/kjv.train.txt.tmp"
tail -c +"$((train_bytes + 1))" "$dir/kjv.txt" >"$dir/kjv.val.txt.tmp"
mv "$dir/kjv.train.txt.tmp" "$dir/kjv.train.txt"
mv "$dir/kjv.val.txt.tmp" "$dir/kjv.val.txt"
echo "prepare_data: $dir/kjv.txt $total bytes; train $(wc -c <"$dir/kjv.train.txt") bytes, validation $(wc -c <"$dir/kjv.val.txt") bytes"
