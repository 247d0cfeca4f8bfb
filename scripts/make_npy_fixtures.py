#!/usr/bin/env python3
"""Write the .npy test fixtures into tests/fixtures/npy/ with numpy, and a manifest of what they hold.

The manifest (tests/fixtures/npy/MANIFEST.txt) has one line per file:
  good <file> <dtype> <ndim> <dim>... <count> <value>...
      values in C order, as numpy reads them: floats as float.hex() (or nan, inf, -inf),
      integers in decimal.
  bad <file> <status> <numpy>
      status: the carl_status the reader must return (PARSE, DTYPE, SHAPE, UNSUPPORTED);
      numpy: 'rejects' when numpy.load also fails on the file, 'reads' when the file is valid for
      numpy but outside what CARL-MoE supports (other dtypes, fortran order, more than 8 dims,
      trailing bytes after the data).
The script checks every claim it writes: good files load in numpy to the listed values, files
marked 'rejects' make numpy.load raise. Run: python3 scripts/make_npy_fixtures.py
"""
import io
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "npy")
DTYPES = {"float32": np.float32, "float64": np.float64, "int32": np.int32, "int64": np.int64}

manifest = []


def fmt_value(x, dtype):
    if dtype.kind == "f":
        x = float(x)
        if x != x:
            return "nan"
        if x in (float("inf"), float("-inf")):
            return "inf" if x > 0 else "-inf"
        return x.hex()
    return str(int(x))


def good(name, arr):
    """Save arr with np.save and record it."""
    path = os.path.join(OUT, name)
    np.save(path, arr)
    record_good(name, arr)


def record_good(name, arr):
    path = os.path.join(OUT, name)
    back = np.load(path)
    assert back.dtype == arr.dtype and back.shape == arr.shape, name
    assert np.array_equal(back, arr, equal_nan=(arr.dtype.kind == "f")), name
    flat = back.ravel(order="C")
    line = ["good", name, back.dtype.name, str(back.ndim)] + [str(d) for d in back.shape]
    line += [str(flat.size)] + [fmt_value(v, back.dtype) for v in flat]
    manifest.append(" ".join(line))


def numpy_rejects(path):
    try:
        np.load(path, allow_pickle=False)
    except Exception:  # noqa: BLE001 - any failure counts as a rejection
        return True
    return False


def bad(name, data, status, numpy_ok):
    """Write raw bytes; numpy_ok says whether numpy itself reads the file (checked unless None)."""
    path = os.path.join(OUT, name)
    with open(path, "wb") as f:
        f.write(data)
    rej = numpy_rejects(path)
    if numpy_ok is not None:  # None: numpy's behaviour is not pinned (it varies across versions)
        assert rej == (not numpy_ok), f"{name}: numpy {'rejects' if rej else 'reads'} it"
    manifest.append(f"bad {name} {status} {'rejects' if rej else 'reads'}")


def npy_bytes(arr, version=None):
    buf = io.BytesIO()
    if version is None:
        np.save(buf, arr, allow_pickle=True)
    else:
        np.lib.format.write_array(buf, arr, version=version, allow_pickle=True)
    return buf.getvalue()


def raw_npy(header_text, data=b"", version=1):
    """A .npy image with the given header dict text (padded to 64 bytes like numpy does)."""
    h = header_text.encode("latin1")
    pre = 10 if version == 1 else 12
    total = pre + len(h) + 1
    pad = (-total) % 64
    h = h + b" " * pad + b"\n"
    if version == 1:
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data
    return b"\x93NUMPY" + bytes([version, 0]) + struct.pack("<I", len(h)) + h + data


def main():
    os.makedirs(OUT, exist_ok=True)
    for f in os.listdir(OUT):
        if f.endswith(".npy"):
            os.remove(os.path.join(OUT, f))

    # ---- good files: every dtype, 1-d/2-d/3-d --------------------------------------------------
    specials32 = np.array([0.0, -0.0, 1.5, -2.25, np.float32(1e-45), np.finfo(np.float32).max,
                           np.finfo(np.float32).tiny, np.inf, -np.inf, np.nan, 1.0 / 3.0, np.pi],
                          dtype=np.float32)
    specials64 = np.array([0.0, -0.0, 1.5, -2.25, 5e-324, np.finfo(np.float64).max,
                           np.finfo(np.float64).tiny, np.inf, -np.inf, np.nan, 1.0 / 3.0, np.pi],
                          dtype=np.float64)
    i32 = np.array([0, 1, -1, 2**31 - 1, -(2**31), 123456, -7, 42, 1000, -1000, 5, 6], dtype=np.int32)
    i64 = np.array([0, 1, -1, 2**63 - 1, -(2**63), 2**40 + 3, -7, 42, 10**15, -(10**15), 5, 6],
                   dtype=np.int64)
    base = {"float32": specials32, "float64": specials64, "int32": i32, "int64": i64}
    short = {"float32": "f4", "float64": "f8", "int32": "i4", "int64": "i8"}
    rng = np.random.RandomState(1234)
    for name, vals in base.items():
        s = short[name]
        good(f"{s}_1d.npy", vals)
        good(f"{s}_2d.npy", vals.reshape(3, 4))
        if vals.dtype.kind == "f":
            a3 = rng.standard_normal((2, 3, 4)).astype(vals.dtype)
        else:
            a3 = rng.randint(-1000, 1000, size=(2, 3, 4)).astype(vals.dtype)
        good(f"{s}_3d.npy", a3)
    good("f8_scalar.npy", np.array(3.25))                   # 0-d
    good("i4_scalar.npy", np.array(-17, dtype=np.int32))    # 0-d
    good("f4_empty.npy", np.zeros((0,), dtype=np.float32))
    good("i8_empty_2x0x3.npy", np.zeros((2, 0, 3), dtype=np.int64))
    good("f4_8d.npy", np.arange(16, dtype=np.float32).reshape(1, 2, 1, 2, 1, 2, 2, 1))
    # a row of a larger array: not contiguous in memory, np.save writes it in C order
    good("f8_sliced.npy", np.arange(30, dtype=np.float64).reshape(5, 6)[:, 1:4])

    # format versions 2.0 and 3.0 (numpy writes them on request)
    a = np.arange(6, dtype=np.float32).reshape(2, 3) * 0.5
    for ver in ((2, 0), (3, 0)):
        name = f"f4_v{ver[0]}.npy"
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(npy_bytes(a, version=ver))
        record_good(name, a)

    # hand-written headers numpy accepts: double quotes, other key order, no trailing comma,
    # tabs and newlines inside the dict, the legacy 'L' suffix of Python 2 files.
    b = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.int64)
    variants = {
        "hdr_dquote.npy": '{"descr": "<i8", "fortran_order": False, "shape": (2, 3)}',
        "hdr_order.npy": "{'shape': (2,3,), 'fortran_order': False, 'descr': '<i8'}",
        "hdr_space.npy": "{ 'descr' :'<i8' ,\t'fortran_order':False,\n 'shape':( 2 , 3 ) , }",
        "hdr_long.npy": "{'descr': '<i8', 'fortran_order': False, 'shape': (2L, 3L), }",
    }
    for name, text in variants.items():
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(raw_npy(text, b.tobytes()))
        record_good(name, b)

    # ---- bad files -----------------------------------------------------------------------------
    ok = npy_bytes(np.arange(12, dtype=np.float32).reshape(3, 4))
    hdr_end = 10 + struct.unpack("<H", ok[8:10])[0]
    bad("bad_magic.npy", b"\x93NUMPX" + ok[6:], "PARSE", False)
    bad("bad_text.npy", b"this is not a numpy file at all\n", "PARSE", False)
    bad("bad_empty.npy", b"", "PARSE", False)
    bad("trunc_preamble.npy", ok[:8], "PARSE", False)
    bad("trunc_header.npy", ok[:40], "PARSE", False)
    bad("trunc_data.npy", ok[:hdr_end + 20], "PARSE", False)
    bad("trunc_data_v2.npy", npy_bytes(np.arange(6.0), version=(2, 0))[:-1], "PARSE", False)
    bad("bad_version.npy", b"\x93NUMPY\x04\x00" + ok[8:], "PARSE", False)
    bad("trailing_data.npy", ok + b"\x00" * 8, "PARSE", True)
    # dtypes we do not support: numpy reads them fine
    bad("dtype_f2.npy", npy_bytes(np.arange(4, dtype=np.float16)), "DTYPE", True)
    bad("dtype_big_endian.npy", npy_bytes(np.arange(4, dtype=">f4")), "DTYPE", True)
    bad("dtype_bool.npy", npy_bytes(np.array([True, False])), "DTYPE", True)
    bad("dtype_u4.npy", npy_bytes(np.arange(4, dtype=np.uint32)), "DTYPE", True)
    bad("dtype_c8.npy", npy_bytes(np.arange(4, dtype=np.complex64)), "DTYPE", True)
    bad("dtype_struct.npy", npy_bytes(np.zeros(2, dtype=[("a", "<f4"), ("b", "<i4")])), "DTYPE", True)
    # object arrays need pickle: numpy.load refuses them with allow_pickle=False
    bad("dtype_object.npy", npy_bytes(np.array([1, "x"], dtype=object)), "DTYPE", False)
    bad("fortran.npy", npy_bytes(np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3))),
        "UNSUPPORTED", True)
    bad("dims_9.npy", npy_bytes(np.zeros((1,) * 9, dtype=np.float32)), "SHAPE", True)
    # shapes: bad text and overflow
    d = np.zeros(2, dtype=np.float32).tobytes()
    # numpy 1.24 reads (2, -1) as a reshape wildcard; a negative dimension is refused here
    bad("shape_negative.npy", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }", d),
        "PARSE", None)
    bad("shape_text.npy", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", d),
        "PARSE", False)
    bad("shape_list.npy", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': [2], }", d),
        "PARSE", False)
    bad("shape_float.npy", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2.0,), }", d),
        "PARSE", False)
    bad("shape_double_comma.npy", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,,), }", d),
        "PARSE", False)
    bad("shape_overflow.npy",
        raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4), }", d),
        "SHAPE", False)
    bad("shape_huge_dim.npy",
        raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999999,), }", d),
        "SHAPE", False)
    bad("shape_mismatch.npy", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }", d),
        "PARSE", False)
    # header dict problems
    bad("hdr_missing_key.npy", raw_npy("{'descr': '<f4', 'shape': (2,), }", d), "PARSE", False)
    bad("hdr_extra_key.npy", raw_npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", d),
        "PARSE", False)
    bad("hdr_not_dict.npy", raw_npy("['<f4', False, (2,)]", d), "PARSE", False)
    bad("hdr_unterminated.npy", raw_npy("{'descr': '<f4, 'fortran_order': False, 'shape': (2,), }", d),
        "PARSE", False)
    bad("hdr_bool.npy", raw_npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (2,), }", d), "PARSE", False)
    bad("hdr_len_beyond.npy", b"\x93NUMPY\x01\x00\xff\xff" + ok[10:], "PARSE", False)
    bad("hdr_garbage.npy", b"\x93NUMPY\x01\x00\x10\x00" + bytes(range(0xf0, 0x100)) + d, "PARSE", False)

    with open(os.path.join(OUT, "MANIFEST.txt"), "w") as f:
        f.write("# written by scripts/make_npy_fixtures.py with numpy %s; do not edit\n" % np.__version__)
        f.write("\n".join(manifest) + "\n")
    total = sum(os.path.getsize(os.path.join(OUT, x)) for x in os.listdir(OUT))
    print(f"{len(manifest)} fixtures, {total} bytes in {os.path.normpath(OUT)}")


if __name__ == "__main__":
    sys.exit(main())
