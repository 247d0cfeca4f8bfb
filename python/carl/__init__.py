"""carl: Python bindings of CARL-MoE (communication-aware routing, balancing and expert placement).

Pure Python over the C library libcarl.so with ctypes; numpy arrays in and out, passed to the
library without copies. Entry points:

    carl.route(logits, router="carl", topology=..., **options)   -> RouteResult
    carl.Router(name, topology=..., **options)                    state across steps
    carl.plan(experts, topology, ...) / carl.cost(experts, topology, ...)
    carl.place(stats, topology, algo="eplb") / carl.evaluate / carl.migrate
    carl.sim(config)                                             -> SimResult (tables as arrays)
    carl.Topology(...), carl.Placement.*                         from and to dicts and JSON files
    carl.torch (import separately): an autograd Function and a gate module for PyTorch

libcarl.so is found through $CARL_LIB (the file or its directory), the package folder, the
repository's build/ directory, or the system's library path. Errors raise carl.CarlError
subclasses, one per status code of the library, carrying its message. docs/python.md has an
example of each.
"""

from . import _lib
from .errors import (BY_STATUS, CarlError, CarlIOError, DtypeError, InvalidError, NoMemError, NotFoundError,
                     NumericError, ParseError, ShapeError, StateError, UnsupportedError)
from .place import EXPERT_BYTES, TOKEN_BYTES, Migration, PlaceStats, algorithms, eplb, evaluate, migrate, place
from .plan import Cost, Plan, cost, plan
from .router import Option, RouteResult, Router, route, router_help, router_names, router_options, skew
from .sim import SimResult, SimRun, sim
from .topology import Placement, Topology

__version__ = "0.1.0"
library_path = _lib.path

__all__ = [
    "route", "Router", "RouteResult", "router_names", "router_help", "router_options", "Option", "skew",
    "plan", "Plan", "cost", "Cost",
    "place", "evaluate", "migrate", "Migration", "PlaceStats", "algorithms", "eplb", "TOKEN_BYTES", "EXPERT_BYTES",
    "sim", "SimResult", "SimRun",
    "Topology", "Placement",
    "CarlError", "InvalidError", "CarlIOError", "ParseError", "ShapeError", "DtypeError", "NoMemError",
    "NumericError", "UnsupportedError", "NotFoundError", "StateError", "BY_STATUS",
    "library_path", "__version__",
]
