#!/usr/bin/env bash
# Quickstart: install missing packages, build, and run the main job on its embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
scripts/build.sh build
./build/carl route --demo
