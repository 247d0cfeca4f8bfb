#!/usr/bin/python3
"""Write the safetensors test fixture by hand (struct + json + numpy), independently of the C code.

    /usr/bin/python3 scripts/make_safetensors_fixture.py [OUT_DIR]   (default tests/fixtures/safetensors)

fixture.safetensors holds, in this data order:
  "b"       I64 [4]    = [1, -2, 3, -4]
  "a"       F32 [2, 3] = 0.5 * [[0, 1, 2], [3, 4, 5]]
  "scalar"  F64 []     = 2.25
  "empty"   I32 [0]
  "c.d"     I32 [2, 1, 2] = [[[7, 8]], [[-9, 2147483647]]]
with __metadata__ {"format": "pt", "note": "made by python"}. The header is NOT padded to a
multiple of 8 (the format does not require it), so the reader must cope with unaligned data.
The header's keys are written in a different order from the data ("a" first, data of "b" first).
"""
import json
import os
import struct
import sys

import numpy as np

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "safetensors")
os.makedirs(out, exist_ok=True)

tensors = [
    ("b", "I64", np.array([1, -2, 3, -4], dtype="<i8")),
    ("a", "F32", (0.5 * np.arange(6, dtype="<f4")).reshape(2, 3)),
    ("scalar", "F64", np.array(2.25, dtype="<f8")),
    ("empty", "I32", np.zeros((0,), dtype="<i4")),
    ("c.d", "I32", np.array([[[7, 8]], [[-9, 2147483647]]], dtype="<i4")),
]
header = {}
blob = b""
for name, dt, arr in tensors:
    raw = arr.tobytes(order="C")
    header[name] = {"dtype": dt, "shape": list(arr.shape), "data_offsets": [len(blob), len(blob) + len(raw)]}
    blob += raw
header["__metadata__"] = {"format": "pt", "note": "made by python"}
# key order in the header: a, b, ... (differs from the data order on purpose)
ordered = {k: header[k] for k in ["a", "__metadata__", "b", "scalar", "empty", "c.d"]}
text = json.dumps(ordered, separators=(",", ":")).encode()
if len(text) % 8 == 0:
    text += b" "  # keep it unaligned on purpose
with open(os.path.join(out, "fixture.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + blob)
print("wrote", os.path.join(out, "fixture.safetensors"), 8 + len(text) + len(blob), "bytes")
