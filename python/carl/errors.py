"""Exceptions: one class per carl_status code of include/carl/core.h.

Every class derives from CarlError and from the closest built-in exception, so that
``except ValueError`` catches a shape error and ``except OSError`` an I/O error. ``str(e)`` is the
library's detail message (carl_errmsg()), ``e.status`` the code and ``e.reason`` its short text
(carl_strerror()). Checks done in Python before a call (dtype, layout, shape of numpy arrays) raise
the same classes.
"""


class CarlError(Exception):
    """Base of every error raised by the carl package."""

    status = None
    reason = "error"

    def __init__(self, message, status=None, reason=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if reason is not None:
            self.reason = reason


class InvalidError(CarlError, ValueError):
    """CARL_ERR_INVALID: an argument or a value in a file is out of range or inconsistent."""
    status, reason = -1, "invalid argument"


class CarlIOError(CarlError, OSError):
    """CARL_ERR_IO: a file could not be opened, read, written or renamed."""
    status, reason = -2, "I/O error"

    def __str__(self):  # OSError's own __str__ would format errno/strerror
        return self.message


class ParseError(CarlError, ValueError):
    """CARL_ERR_PARSE: malformed file content (JSON, .npy header, safetensors)."""
    status, reason = -3, "parse error"


class ShapeError(CarlError, ValueError):
    """CARL_ERR_SHAPE: an array has the wrong number of dimensions or sizes."""
    status, reason = -4, "shape error"


class DtypeError(CarlError, TypeError):
    """CARL_ERR_DTYPE: an array has the wrong element type (or byte order, or memory layout)."""
    status, reason = -5, "dtype error"


class NoMemError(CarlError, MemoryError):
    """CARL_ERR_NOMEM: allocation failed."""
    status, reason = -6, "out of memory"


class NumericError(CarlError, ArithmeticError):
    """CARL_ERR_NUMERIC: NaN or Inf where finite values are required."""
    status, reason = -7, "numeric error"


class UnsupportedError(CarlError, NotImplementedError):
    """CARL_ERR_UNSUPPORTED: a feature this build does not have (MPI, METIS, CUDA)."""
    status, reason = -8, "unsupported"


class NotFoundError(CarlError, LookupError):
    """CARL_ERR_NOT_FOUND: unknown name (router, algorithm, option, scenario)."""
    status, reason = -9, "not found"


class StateError(CarlError, RuntimeError):
    """CARL_ERR_STATE: call out of order, or saved state that does not match."""
    status, reason = -10, "bad state"


BY_STATUS = {c.status: c for c in (InvalidError, CarlIOError, ParseError, ShapeError, DtypeError, NoMemError,
                                   NumericError, UnsupportedError, NotFoundError, StateError)}


def raise_status(status, message, reason=None):
    cls = BY_STATUS.get(status)
    if cls is None:
        raise CarlError(message or "unknown status %d" % status, status, reason)
    raise cls(message or reason or cls.reason, status, reason)
