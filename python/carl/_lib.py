"""Loading libcarl.so and the ctypes declarations of the public C API (include/carl/*.h).

The structures below mirror the plain-data structs of the public headers field for field; the
tests compile a small C program against the headers and compare every offset and size
(python/tests/test_abi.py), so a header change that is not mirrored here fails there and not as a
crash. Opaque handles (carl_router_t, carl_step_t, carl_exec_t, carl_sim_config_t) are void
pointers: their insides are never read from Python.
"""

import ctypes
import ctypes.util
import os
from ctypes import (POINTER, Structure, c_char, c_char_p, c_double, c_int, c_int32, c_int64, c_size_t,
                    c_uint64, c_void_p)

from .errors import CarlError, raise_status

_HERE = os.path.dirname(os.path.abspath(__file__))


def _candidates():
    """Where libcarl.so is looked for, in order."""
    env = os.environ.get("CARL_LIB")
    if env:
        yield os.path.join(env, "libcarl.so") if os.path.isdir(env) else env
        return  # an explicit choice is not second-guessed
    yield os.path.join(_HERE, "libcarl.so")                            # copied into the package
    root = os.path.dirname(os.path.dirname(_HERE))                     # python/carl -> repository
    yield os.path.join(root, "build", "libcarl.so")                    # the build tree
    found = ctypes.util.find_library("carl")                           # installed (ldconfig)
    if found:
        yield found


def _load():
    tried = []
    for path in _candidates():
        if os.path.sep in path and not os.path.exists(path):
            tried.append(path + " (missing)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append("%s (%s)" % (path, e))
    raise ImportError("carl: libcarl.so not found; build it (scripts/build.sh) and set CARL_LIB to the file or "
                      "its directory. Tried: " + "; ".join(tried or ["nothing"]))


lib, path = _load()

# ---- constants (carl/core.h, topo.h, plan.h, place.h, route.h, sim.h) ----------------------------
NLINK = 4
LINK_NAMES = ("self", "intra", "rack", "inter")
MAX_LOSSES = 8
PLAN_FLAT, PLAN_HIER = 0, 1
PLAN_COUNTS, PLAN_ROWS = 0, 1


# ---- plain-data structs -------------------------------------------------------------------------
class Link(Structure):
    _cname_ = "carl_link_t"
    _fields_ = [("GBps", c_double), ("latency_us", c_double)]


class Topo(Structure):
    _cname_ = "carl_topo_t"
    _fields_ = [("nodes", c_int), ("devices_per_node", c_int), ("devices", c_int), ("nodes_per_rack", c_int),
                ("nics_per_node", c_int), ("link", Link * NLINK), ("flops", c_double), ("peak_TFLOPS", c_double),
                ("efficiency", c_double), ("device", c_char * 32), ("name", c_char * 64)]


class Placement(Structure):
    _cname_ = "carl_placement_t"
    _fields_ = [("E", c_int), ("D", c_int), ("slots", c_int), ("slot_expert", POINTER(c_int32)),
                ("rep_off", POINTER(c_int32)), ("rep_dev", POINTER(c_int32)), ("home", POINTER(c_int32))]


class RouteIn(Structure):
    _cname_ = "carl_route_in_t"
    _fields_ = [("T", c_int64), ("E", c_int), ("logits", c_void_p), ("src", c_void_p), ("token_ids", c_void_p),
                ("x", c_void_p), ("d", c_int), ("topo", POINTER(Topo)), ("place", POINTER(Placement)),
                ("step", c_int64), ("seed", c_uint64)]


class Loss(Structure):
    _cname_ = "carl_loss_t"
    _fields_ = [("name", c_char_p), ("value", c_double)]


class RouteOut(Structure):
    _cname_ = "carl_route_out_t"
    _fields_ = [("experts", c_void_p), ("weights", c_void_p), ("dlogits", c_void_p), ("nloss", c_int),
                ("loss", Loss * MAX_LOSSES), ("loss_total", c_double), ("dropped", c_int64), ("capacity", c_int64),
                ("global_load", c_void_p)]


class Opt(Structure):
    _cname_ = "carl_opt_t"
    _fields_ = [("name", c_char_p), ("default", c_double), ("help", c_char_p)]
    _cfield_ = {"default": "def"}


class Cost(Structure):
    _cname_ = "carl_cost_t"
    _fields_ = [("D", c_int), ("send_bytes", POINTER(c_double)), ("recv_bytes", POINTER(c_double)),
                ("send_msgs", POINTER(c_int64)), ("recv_msgs", POINTER(c_int64)), ("traffic", POINTER(c_double)),
                ("bytes", c_double * NLINK), ("inter_fraction", c_double), ("a2a_s", c_double), ("copies", c_int64),
                ("dispatch", POINTER(c_double)), ("calls", c_int64)]


class Plan(Structure):
    _cname_ = "carl_plan_t"
    _fields_ = [("D", c_int), ("E", c_int), ("k", c_int), ("S", c_int), ("dpn", c_int), ("T", c_int64), ("mode", c_int),
                ("device", c_int), ("has_rows", c_int), ("hop", POINTER(c_int64)), ("copies", c_int64),
                ("n_send", c_int64), ("send_off", POINTER(c_int64)), ("send_tok", POINTER(c_int32)),
                ("n_fwd", c_int64), ("fwd_off", POINTER(c_int64)), ("fwd_parent", POINTER(c_int64)),
                ("tok_off", POINTER(c_int64)), ("tok_copy", POINTER(c_int64)), ("n_rows", c_int64),
                ("recv_off", POINTER(c_int64)), ("row_copy", POINTER(c_int64)), ("row_slot", POINTER(c_int32)),
                ("copy_row_off", POINTER(c_int64)), ("copy_row", POINTER(c_int64)), ("cap_", c_int64 * 8)]


class PlaceStats(Structure):
    _cname_ = "carl_place_stats_t"
    _fields_ = [("L", c_int), ("E", c_int), ("N", c_int), ("decay", c_double), ("batches", POINTER(c_int64)),
                ("load", POINTER(c_double)), ("traffic", POINTER(c_double)), ("coact", POINTER(c_double))]


class PlaceInput(Structure):
    _cname_ = "carl_place_input_t"
    _fields_ = [("E", c_int), ("N", c_int), ("load", c_void_p), ("traffic", c_void_p), ("coact", c_void_p),
                ("prev", c_void_p)]


class PlaceOpts(Structure):
    _cname_ = "carl_place_opts_t"
    _fields_ = [("algo", c_int), ("replicas", c_int), ("slots", c_int), ("groups", c_int), ("eplb_global", c_int),
                ("load_bound", c_double), ("refine_passes", c_int), ("seed", c_uint64)]


class PlaceEval(Structure):
    _cname_ = "carl_place_eval_t"
    _fields_ = [("dev_max", c_double), ("dev_mean", c_double), ("node_max", c_double), ("node_mean", c_double),
                ("bytes", c_double * NLINK), ("inter_copies", c_double), ("traffic_cost", c_double),
                ("coact_local", c_double)]


class Move(Structure):
    _cname_ = "carl_move_t"
    _fields_ = [("expert", c_int32), ("src", c_int32), ("dst", c_int32), ("slot", c_int32), ("link", c_int32)]


class Migration(Structure):
    _cname_ = "carl_migration_t"
    _fields_ = [("n_moves", c_int64), ("moves", POINTER(Move)), ("kept", c_int64), ("bytes", c_double * NLINK),
                ("total_bytes", c_double), ("time_s", c_double)]


class StepOpts(Structure):
    _cname_ = "carl_step_opts_t"
    _fields_ = [("topo", POINTER(Topo)), ("layers", c_int), ("E", c_int), ("k", c_int), ("routers", POINTER(c_void_p)),
                ("place", POINTER(Placement)), ("mode", c_int), ("token_bytes", c_size_t), ("exec", c_void_p),
                ("refresh_every", c_int64), ("place_opts", PlaceOpts), ("stats_decay", c_double),
                ("expert_bytes", c_double)]


class StepRefresh(Structure):
    _cname_ = "carl_step_refresh_t"
    _fields_ = [("refreshed", c_int), ("migrate_s", c_double), ("migrate_bytes", c_double), ("moves", c_int64)]


class StepMetrics(Structure):
    _cname_ = "carl_step_metrics_t"
    _fields_ = [(n, c_double) for n in ("skew_expert", "skew_device", "skew_node", "cv_expert", "drop_rate",
                                         "retained", "jaccard", "entropy")]


class Skew(Structure):
    _cname_ = "carl_skew_t"
    _fields_ = [(n, c_double) for n in ("max", "min", "mean", "max_over_mean", "maxvio", "cv", "gini")]


# carl_sim_run_t holds summary[CARL_SIM_NCOL]: its layout follows the number of columns, which the
# library states (carl_sim_col_names through carl_sim_config_describe); SimRun is made for it.
_sim_run_types = {}


def sim_run_type(ncol):
    if ncol not in _sim_run_types:
        run = type("SimRun", (Structure,), {
            "_cname_": "carl_sim_run_t",
            "_fields_": [("router", c_int), ("topo", c_int), ("scen", c_int), ("seed", c_int), ("nrow", c_int64),
                         ("rows", POINTER(c_double)), ("summary", c_double * ncol), ("wall_s", c_double)]})
        res = type("SimResult", (Structure,), {"_cname_": "carl_sim_result_t",
                                               "_fields_": [("nrun", c_int), ("runs", POINTER(run))]})
        _sim_run_types[ncol] = (run, res)
    return _sim_run_types[ncol]


STRUCTS = [Link, Topo, Placement, RouteIn, Loss, RouteOut, Opt, Cost, Plan, PlaceStats, PlaceInput, PlaceOpts,
           PlaceEval, Move, Migration, StepOpts, StepRefresh, StepMetrics, Skew]

# ---- prototypes ---------------------------------------------------------------------------------
P = c_void_p  # opaque handles and raw buffers
St = c_int    # carl_status


def _proto(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


_proto("carl_strerror", c_char_p, c_int)
_proto("carl_errmsg", c_char_p)
_proto("carl_mem_free", None, P)
_proto("carl_log_set_level", None, c_int)
# topology and placement
_proto("carl_link_name", c_char_p, c_int)
_proto("carl_topo_parse", St, c_char_p, c_size_t, POINTER(Topo))
_proto("carl_topo_load", St, c_char_p, POINTER(Topo))
_proto("carl_topo_make", St, POINTER(Topo), c_int, c_int, c_double, c_double, c_double, c_double)
_proto("carl_topo_link", c_int, POINTER(Topo), c_int, c_int)
_proto("carl_topo_cost", c_double, POINTER(Topo), c_int, c_int)
_proto("carl_topo_to_json", St, POINTER(Topo), POINTER(c_void_p), POINTER(c_size_t))
_proto("carl_topo_save", St, c_char_p, POINTER(Topo))
_proto("carl_placement_index", St, POINTER(Placement))
_proto("carl_placement_contiguous", St, POINTER(Placement), c_int, c_int)
_proto("carl_placement_from_table", St, POINTER(Placement), c_int, c_int, c_int, P)
_proto("carl_placement_parse", St, c_char_p, c_size_t, POINTER(Topo), c_int, POINTER(Placement))
_proto("carl_placement_load", St, c_char_p, POINTER(Topo), c_int, POINTER(Placement))
_proto("carl_placement_save", St, c_char_p, POINTER(Placement))
_proto("carl_placement_to_json", St, POINTER(Placement), POINTER(c_void_p), POINTER(c_size_t))
_proto("carl_placement_free", None, POINTER(Placement))
# routers
_proto("carl_router_names", POINTER(c_char_p))
_proto("carl_router_options", c_int, c_char_p, POINTER(POINTER(Opt)), c_int)
_proto("carl_router_help", c_char_p, c_char_p)
_proto("carl_router_has_state", c_int, P)
_proto("carl_router_create", St, c_char_p, c_int, POINTER(c_char_p), POINTER(c_double), POINTER(P))
_proto("carl_router_get", c_double, P, c_char_p)
_proto("carl_router_route", St, P, POINTER(RouteIn), POINTER(RouteOut))
_proto("carl_router_update", St, P, POINTER(RouteIn), POINTER(RouteOut))
_proto("carl_router_backward", St, P, POINTER(RouteIn), POINTER(RouteOut), P, P)
_proto("carl_router_save", St, P, c_char_p)
_proto("carl_router_load", St, P, c_char_p)
_proto("carl_router_free", None, P)
# plan and cost
_proto("carl_cost_init", St, POINTER(Cost), POINTER(Topo))
_proto("carl_cost_reset", None, POINTER(Cost))
_proto("carl_cost_free", None, POINTER(Cost))
_proto("carl_plan_build", St, POINTER(Topo), POINTER(Placement), P, P, c_int64, c_int, c_int, c_int, c_int,
       POINTER(Plan))
_proto("carl_plan_free", None, POINTER(Plan))
_proto("carl_plan_cost", St, POINTER(Topo), POINTER(Plan), c_size_t, POINTER(Cost))
_proto("carl_plan_cost_decision", St, POINTER(Topo), POINTER(Placement), P, P, c_int64, c_int, c_size_t, c_int,
       POINTER(Cost))
_proto("carl_plan_replica", c_int, POINTER(Topo), POINTER(Placement), c_int, c_int, c_int64)
# the step
_proto("carl_step_opts_default", None, POINTER(StepOpts))
_proto("carl_step_create", St, POINTER(StepOpts), POINTER(P))
_proto("carl_step_free", None, P)
_proto("carl_step_route", St, P, c_int, POINTER(RouteIn), POINTER(RouteOut))
_proto("carl_step_observe", St, P, c_int, POINTER(RouteIn), POINTER(RouteOut))
_proto("carl_step_end", St, P, c_int64, c_int64, POINTER(StepRefresh))
_proto("carl_step_placement", POINTER(Placement), P, c_int)
_proto("carl_step_cost", POINTER(Cost), P, c_int)
_proto("carl_step_set_placement", St, P, c_int, POINTER(Placement))
_proto("carl_step_metrics", St, POINTER(Topo), POINTER(Placement), c_int64, c_int, c_int, c_int, P, P,
       POINTER(StepMetrics), P, P, P)
# balance
_proto("carl_skew", None, P, c_int, POINTER(Skew))
_proto("carl_routing_entropy", St, P, c_int64, c_int, c_int, P, c_int, POINTER(c_double), POINTER(c_double))
_proto("carl_loss_expert", St, P, c_int64, c_int, c_int, P, c_int, c_double, POINTER(c_double), P)
_proto("carl_loss_z", St, P, c_int64, c_int, c_double, POINTER(c_double), P)
# placement
_proto("carl_place_stats_init", St, POINTER(PlaceStats), c_int, c_int, c_int, c_double)
_proto("carl_place_stats_free", None, POINTER(PlaceStats))
_proto("carl_place_stats_add", St, POINTER(PlaceStats), c_int, P, P, c_int64, c_int)
_proto("carl_place_stats_merge", St, POINTER(PlaceStats), POINTER(PlaceStats))
_proto("carl_place_stats_save", St, POINTER(PlaceStats), c_char_p)
_proto("carl_place_stats_load", St, c_char_p, c_double, POINTER(PlaceStats), POINTER(c_int), POINTER(c_int))
_proto("carl_place_algo_name", c_char_p, c_int)
_proto("carl_place_algo_parse", St, c_char_p, POINTER(c_int))
_proto("carl_place_opts_default", None, POINTER(PlaceOpts))
_proto("carl_place_compute", St, POINTER(Topo), POINTER(PlaceInput), POINTER(PlaceOpts), POINTER(Placement))
_proto("carl_place_evaluate", St, POINTER(Topo), POINTER(PlaceInput), POINTER(Placement), c_double,
       POINTER(PlaceEval))
_proto("carl_place_migrate", St, POINTER(Topo), POINTER(Placement), POINTER(Placement), c_int, c_double,
       POINTER(Migration))
_proto("carl_migration_free", None, POINTER(Migration))
_proto("carl_eplb_rebalance", St, P, c_int, c_int, c_int, c_int, c_int, P, P)
_proto("carl_eplb_rebalance_nodup", St, P, c_int, c_int, c_int, c_int, c_int, P, P)
# the simulator
_proto("carl_sim_config_create", St, c_char_p, c_char_p, c_size_t, c_char_p, POINTER(P))
_proto("carl_sim_config_destroy", None, P)
_proto("carl_sim_config_describe", St, P, POINTER(c_void_p), POINTER(c_size_t))
_proto("carl_sim_run", St, P, c_void_p, c_void_p, c_void_p)
_proto("carl_sim_result_free", None, c_void_p)
_proto("carl_sim_write_reports", St, P, c_void_p, c_char_p)
_proto("carl_sim_table_md", St, P, c_void_p, POINTER(c_void_p))


# ---- helpers ------------------------------------------------------------------------------------
def errmsg():
    m = lib.carl_errmsg()
    return m.decode("utf-8", "replace") if m else ""


def check(st):
    """Raise the exception of status st (with the library's detail message) unless it is CARL_OK."""
    if st != 0:
        raise_status(st, errmsg(), lib.carl_strerror(st).decode())
    return st


def take_text(ptr, n=None):
    """A malloc'ed NUL-terminated text from the library as str; the buffer is freed."""
    if not ptr:
        return ""
    try:
        return ctypes.string_at(ptr, n).decode("utf-8") if n is not None else ctypes.string_at(ptr).decode("utf-8")
    finally:
        lib.carl_mem_free(ptr)


def enc(s):
    return os.fsencode(s) if isinstance(s, os.PathLike) else (s.encode() if isinstance(s, str) else s)


__all__ = ["lib", "path", "check", "errmsg", "CarlError"]
