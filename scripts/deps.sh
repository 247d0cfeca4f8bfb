#!/usr/bin/env bash
# Install the Debian packages CARL-MoE needs (idempotent: does nothing when all are present).
set -euo pipefail
PKGS=(build-essential cmake pkg-config libopenblas-dev libcjson-dev libcmocka-dev
      libopenmpi-dev openmpi-bin libmetis-dev gnuplot-nox bible-kjv python3 python3-numpy python3-pytest python3-venv python3-torch
      clang libclang-rt-14-dev)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all Debian packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "deps: installing ${missing[*]}"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
