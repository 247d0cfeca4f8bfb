#!/usr/bin/env bash
# numpy reads what carl_npy_write writes: test_npy --write DIR writes every dtype (f4 f8 i4 i8) in
# shapes 0-d .. 8-d and empty, with values from closed formulas; numpy loads each file and compares
# with the same formulas computed here, and each file must equal byte for byte what np.save writes.
# Usage: bash npy_numpy_roundtrip.sh <path-to-carl-binary>
set -euo pipefail
bindir=$(cd "$(dirname "$1")" && pwd)
writer="$bindir/test_npy"
[ -x "$writer" ] || { echo "npy_numpy_roundtrip: $writer not built" >&2; exit 1; }
py=""
for cand in python3 /usr/bin/python3; do
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c 'import numpy' >/dev/null 2>&1; then py=$cand; break; fi
done
[ -n "$py" ] || { echo "npy_numpy_roundtrip: no python3 with numpy (Debian package python3-numpy)" >&2; exit 1; }
out="$bindir/npy_numpy_roundtrip"
rm -rf "$out"
mkdir -p "$out"
"$writer" --write "$out"
"$py" - "$out" <<'PY'
import io, os, sys
import numpy as np
out = sys.argv[1]
shapes = {"0d": (), "1d": (5,), "2d": (3, 4), "3d": (2, 3, 4), "empty": (0,), "empty3d": (2, 0, 3),
          "8d": (1, 2, 1, 2, 1, 1, 2, 1)}
dtypes = {"f4": np.float32, "f8": np.float64, "i4": np.int32, "i8": np.int64}
def formula(dt, n):
    i = np.arange(n, dtype=np.int64)
    if dt in ("f4", "f8"):
        return (i - 7).astype(np.float64) * 0.25          # exact in float32 and float64
    if dt == "i4":
        return i * i - 50
    return (i - 3) * 1000000007 * 1000
checked = 0
for dt, npdt in dtypes.items():
    for tag, shape in shapes.items():
        path = os.path.join(out, f"{dt}_{tag}.npy")
        with open(path, "rb") as f:
            major, minor = np.lib.format.read_magic(f)
            hshape, fortran, hdtype = np.lib.format.read_array_header_1_0(f)
            assert (major, minor) == (1, 0) and f.tell() % 64 == 0, (path, major, f.tell())
        a = np.load(path, allow_pickle=False)
        assert a.dtype == np.dtype(npdt), (path, a.dtype)
        assert a.shape == shape and hshape == shape and not fortran, (path, a.shape)
        want = formula(dt, int(np.prod(shape, dtype=np.int64))).astype(npdt).reshape(shape)
        assert np.array_equal(a, want), (path, a, want)
        # byte for byte what np.save writes for the same array
        buf = io.BytesIO()
        np.save(buf, want)
        with open(path, "rb") as f:
            assert f.read() == buf.getvalue(), (path, "differs from np.save output")
        checked += 1
assert checked == 28, checked
print(f"numpy {np.__version__} read {checked} files written by carl_npy_write")
PY
rm -rf "$out"
