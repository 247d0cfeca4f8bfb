"""numpy inputs and outputs: checks before a pointer goes to C, and read-only views of C-owned arrays.

Inputs are passed to the library without a copy. A numpy array must therefore already have the
element type the library computes in and C (row-major) layout: a float64 array where float32 is
expected, a transposed or sliced view, an unaligned or byte-swapped buffer is refused with an
exception that says what to do, never converted silently. Python lists (and other non-array
sequences) are converted, since they must be copied anyway; objects with ``__array__`` (a CPU
torch tensor, for instance) are viewed without a copy and then checked as arrays.
"""

import ctypes

import numpy as np

from .errors import DtypeError, InvalidError, ShapeError

F32, F64, I32, I64 = np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.int64)


def _shape_text(shape):
    return "[" + ", ".join("?" if s is None else str(s) for s in shape) + "]"


def as_input(x, name, dtype, shape=None, ndims=None, allow_none=False):
    """A C-contiguous, aligned, native-endian ndarray of dtype for the library to read.

    shape: tuple of int or None (any size) per dimension; ndims: allowed numbers of dimensions
    when shape is None. Raises DtypeError, InvalidError (layout) or ShapeError."""
    if x is None:
        if allow_none:
            return None
        raise InvalidError("%s: required, got None" % name)
    dtype = np.dtype(dtype)
    if not isinstance(x, np.ndarray):
        if hasattr(x, "__array__") and not isinstance(x, (list, tuple)):
            x = np.asarray(x)
        else:
            try:
                x = np.asarray(x, dtype=dtype)
            except (TypeError, ValueError, OverflowError) as e:
                raise DtypeError("%s: cannot be read as %s: %s" % (name, dtype.name, e)) from None
    if x.dtype != dtype:
        hint = " (the library computes in %s: pass %s.astype(numpy.%s))" % (dtype.name, name, dtype.name)
        if x.dtype.kind == dtype.kind and x.dtype.itemsize == dtype.itemsize:
            hint = " (byte order %r: pass %s.astype(numpy.%s))" % (x.dtype.byteorder, name, dtype.name)
        raise DtypeError("%s: %s array, expected %s%s" % (name, x.dtype, dtype.name, hint))
    if shape is not None:
        if x.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, x.shape)):
            raise ShapeError("%s: shape %s, expected %s" % (name, _shape_text(x.shape), _shape_text(shape)))
    elif ndims is not None and x.ndim not in ndims:
        raise ShapeError("%s: %d dimensions (shape %s), expected %s" % (
            name, x.ndim, _shape_text(x.shape), " or ".join(str(n) for n in ndims)))
    if not x.flags.c_contiguous:
        raise InvalidError("%s: array is not C-contiguous (strides %s); pass numpy.ascontiguousarray(%s)" % (
            name, x.strides, name))
    if not x.flags.aligned:
        raise InvalidError("%s: array is not aligned to its element size; pass %s.copy()" % (name, name))
    return x


def ptr(a):
    """The data pointer of an ndarray (None for None)."""
    return None if a is None else a.ctypes.data


def view(p, shape, dtype, owner):
    """A read-only ndarray over C-owned memory at pointer p, keeping `owner` alive with it."""
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    n = int(np.prod(shape)) if shape else 1
    addr = ctypes.cast(p, ctypes.c_void_p).value if p is not None else None
    if n == 0 or not addr:
        a = np.zeros(shape, dtype)
    else:
        buf = (ctypes.c_char * (n * dtype.itemsize)).from_address(addr)
        buf._carl_owner = owner
        a = np.frombuffer(buf, dtype=dtype, count=n).reshape(shape)
    a.flags.writeable = False
    return a


def copy_from(p, shape, dtype):
    """A fresh ndarray with a copy of the C array at p."""
    return np.array(view(p, shape, dtype, None), copy=True)
