"""The dispatch plan and the communication cost model (carl/plan.h, docs/cost-model.md)."""

import ctypes

import numpy as np

from . import _lib
from ._arrays import F64, I32, I64, as_input, copy_from, ptr, view
from ._lib import LINK_NAMES, NLINK, check, lib
from .errors import InvalidError
from .topology import as_placement, as_topology

MODES = {"flat": _lib.PLAN_FLAT, "hier": _lib.PLAN_HIER}


def mode_of(mode):
    if mode in MODES.values():
        return int(mode)
    try:
        return MODES[mode]
    except (KeyError, TypeError):
        raise InvalidError("mode: %r is not 'flat' or 'hier'" % (mode,)) from None


class Cost:
    """The traffic of a decision (carl_cost_t), copied out of the library.

    bytes: {class: bytes} totals, dispatch + combine; inter_node_bytes: rack + inter (the bytes that
    leave their node); send_bytes, recv_bytes [D, 4] and send_msgs, recv_msgs [D, 4] per device
    and link class (columns self, intra, rack, inter); traffic [D, D] bytes a -> b; dispatch [D, D]
    dispatch-phase bytes of the last call; a2a_s all-to-all time; copies; calls."""

    def __init__(self, c):
        D = c.D
        self.D = D
        self.bytes = {n: c.bytes[i] for i, n in enumerate(LINK_NAMES)}
        self.inter_fraction = c.inter_fraction
        self.a2a_s = c.a2a_s
        self.copies = c.copies
        self.calls = c.calls
        self.send_bytes = copy_from(c.send_bytes, (D, NLINK), F64)
        self.recv_bytes = copy_from(c.recv_bytes, (D, NLINK), F64)
        self.send_msgs = copy_from(c.send_msgs, (D, NLINK), I64)
        self.recv_msgs = copy_from(c.recv_msgs, (D, NLINK), I64)
        self.traffic = copy_from(c.traffic, (D, D), F64)
        self.dispatch = copy_from(c.dispatch, (D, D), F64)

    @property
    def inter_node_bytes(self):
        return self.bytes["rack"] + self.bytes["inter"]

    def to_dict(self):
        """The "communication" part of `carl route`'s report.json (without mode and token_bytes)."""
        return {
            "bytes": dict(self.bytes),
            "inter_fraction": self.inter_fraction,
            "a2a_time_s": self.a2a_s,
            "copies": float(self.copies),
            "devices": [{
                "send_bytes": {n: float(self.send_bytes[d, i]) for i, n in enumerate(LINK_NAMES)},
                "recv_bytes": {n: float(self.recv_bytes[d, i]) for i, n in enumerate(LINK_NAMES)},
                "send_msgs": {n: float(self.send_msgs[d, i]) for i, n in enumerate(LINK_NAMES)},
                "recv_msgs": {n: float(self.recv_msgs[d, i]) for i, n in enumerate(LINK_NAMES)},
            } for d in range(self.D)],
            "traffic_matrix": self.traffic.tolist(),
        }

    def __repr__(self):
        return "Cost(inter-node %.6g B, intra %.6g B, a2a %.4g ms)" % (self.inter_node_bytes, self.bytes["intra"],
                                                                        self.a2a_s * 1e3)


def _decision_inputs(experts, topology, placement, src):
    topo = as_topology(topology)
    ex = as_input(experts, "experts", I32, ndims=(2,))
    T, k = ex.shape
    s = as_input(src, "src", I32, shape=(T,), allow_none=True)
    pl = as_placement(placement, topo)
    return topo, ex, T, k, s, pl


class _CCost:
    """An accumulator owned here (carl_cost_init / carl_cost_free)."""

    def __init__(self, topo):
        self.c = _lib.Cost()
        check(lib.carl_cost_init(ctypes.byref(self.c), ctypes.byref(topo._t)))

    def __del__(self):
        if lib is not None:
            lib.carl_cost_free(ctypes.byref(self.c))


def _placement_for(pl, topo, E):
    from .topology import Placement
    if pl is None:
        if E is None:
            raise InvalidError("placement: give placement= or the number of experts E= (contiguous placement)")
        return Placement.contiguous(E, topo.devices)
    return pl


def cost(experts, topology, placement=None, src=None, token_bytes=8192, mode="flat", E=None):
    """The communication cost of a routing decision: experts [T, k] int32 (-1 dropped), src [T]
    int32 devices (None: token t on device t * D / T), on the topology and placement (None:
    the contiguous placement of E experts).
    token_bytes: bytes of one hidden vector. Returns a Cost. A Plan may be given for experts."""
    if isinstance(experts, Plan):
        return experts.cost(token_bytes)
    topo, ex, T, k, s, pl = _decision_inputs(experts, topology, placement, src)
    pl = _placement_for(pl, topo, E)
    acc = _CCost(topo)
    check(lib.carl_plan_cost_decision(ctypes.byref(topo._t), ctypes.byref(pl._p), ptr(ex), ptr(s), T, k,
                                      int(token_bytes), mode_of(mode), ctypes.byref(acc.c)))
    return Cost(acc.c)


class Plan:
    """The dispatch plan of one decision (carl_plan_t), owned by this object.

    hop [D, D] copies per hop a -> b. With rows (the default), the lists an executor moves the data
    with, as read-only numpy views of the library's arrays (valid while the Plan lives): send_off
    [D*D+1], send_tok [n_send], fwd_off [D*D+1], fwd_parent [n_fwd], tok_off [T+1], tok_copy
    [n_send], recv_off [D*S+1], row_copy [n_rows], row_slot [n_rows], copy_row_off
    [n_send+n_fwd+1], copy_row [n_rows]. See carl/plan.h for their meaning."""

    def __init__(self, experts, topology, placement=None, src=None, mode="flat", device=-1, rows=True, E=None):
        topo, ex, T, k, s, pl = _decision_inputs(experts, topology, placement, src)
        pl = _placement_for(pl, topo, E)
        self.topology, self.placement = topo, pl
        self._c = _lib.Plan()
        check(lib.carl_plan_build(ctypes.byref(topo._t), ctypes.byref(pl._p), ptr(ex), ptr(s), T, k, mode_of(mode),
                                  int(device), _lib.PLAN_ROWS if rows else _lib.PLAN_COUNTS, ctypes.byref(self._c)))

    def __del__(self):
        if getattr(self, "_c", None) is not None and lib is not None:
            lib.carl_plan_free(ctypes.byref(self._c))

    D = property(lambda self: self._c.D)
    E = property(lambda self: self._c.E)
    k = property(lambda self: self._c.k)
    S = property(lambda self: self._c.S)
    T = property(lambda self: self._c.T)
    mode = property(lambda self: "hier" if self._c.mode == _lib.PLAN_HIER else "flat")
    device = property(lambda self: self._c.device)
    has_rows = property(lambda self: bool(self._c.has_rows))
    copies = property(lambda self: self._c.copies)
    n_send = property(lambda self: self._c.n_send)
    n_fwd = property(lambda self: self._c.n_fwd)
    n_rows = property(lambda self: self._c.n_rows)

    @property
    def hop(self):
        return view(self._c.hop, (self.D, self.D), I64, self)

    def _rows(self, name, n, dtype):
        if not self._c.has_rows:
            raise InvalidError("plan: built without rows (rows=False): no %s" % name)
        return view(getattr(self._c, name), (n,), dtype, self)

    send_off = property(lambda self: self._rows("send_off", self.D * self.D + 1, I64))
    send_tok = property(lambda self: self._rows("send_tok", self.n_send, I32))
    fwd_off = property(lambda self: self._rows("fwd_off", self.D * self.D + 1, I64))
    fwd_parent = property(lambda self: self._rows("fwd_parent", self.n_fwd, I64))
    tok_off = property(lambda self: self._rows("tok_off", self.T + 1, I64))
    tok_copy = property(lambda self: self._rows("tok_copy", self.n_send, I64))
    recv_off = property(lambda self: self._rows("recv_off", self.D * self.S + 1, I64))
    row_copy = property(lambda self: self._rows("row_copy", self.n_rows, I64))
    row_slot = property(lambda self: self._rows("row_slot", self.n_rows, I32))
    copy_row_off = property(lambda self: self._rows("copy_row_off", self.n_send + self.n_fwd + 1, I64))
    copy_row = property(lambda self: self._rows("copy_row", self.n_rows, I64))

    def cost(self, token_bytes=8192):
        """The Cost of one all-to-all of this plan (carl_plan_cost)."""
        acc = _CCost(self.topology)
        check(lib.carl_plan_cost(ctypes.byref(self.topology._t), ctypes.byref(self._c), int(token_bytes),
                                 ctypes.byref(acc.c)))
        return Cost(acc.c)

    def __repr__(self):
        return "Plan(T=%d, k=%d, %d devices, %s, %d copies)" % (self.T, self.k, self.D, self.mode, self.copies)


def plan(experts, topology, placement=None, src=None, mode="flat", device=-1, rows=True, E=None):
    """Build the dispatch plan of a decision (carl_plan_build): see Plan."""
    return Plan(experts, topology, placement, src, mode, device, rows, E)
