# Sourced by the command-line tests: sets $py to a python3 that has numpy (Debian python3-numpy).
py=""
for cand in python3 /usr/bin/python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import numpy' >/dev/null 2>&1; then py=$cand; break; fi
done
[ -n "$py" ] || { echo "no python3 with numpy (Debian package python3-numpy)" >&2; exit 1; }
