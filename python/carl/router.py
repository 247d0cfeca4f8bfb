"""Routing (carl/route.h) through the one step (carl/step.h): route -> plan -> cost -> update.

A Router owns a carl_router_t (its state: lossfree's bias, carl's controller and warm start, duals,
tables) and, when it has a topology, a carl_step_t of one layer that builds the dispatch plan of
every decision, prices it, gives the router its update from the loads, and refreshes the
placement every `refresh_every` steps. This is the sequence `carl route` runs for each batch, so
the same inputs give bitwise the same outputs.
"""

import ctypes
import math
from collections import namedtuple

import numpy as np

from . import _lib
from ._arrays import F32, F64, I32, as_input, ptr
from ._lib import LINK_NAMES, check, enc, lib
from .errors import InvalidError, NotFoundError, ShapeError, StateError
from .plan import Cost, mode_of
from .topology import Placement, as_placement, as_topology

Option = namedtuple("Option", "name default help")


def router_names():
    """Names of the registered routers."""
    p = lib.carl_router_names()
    out, i = [], 0
    while p[i]:
        out.append(p[i].decode())
        i += 1
    return out


def router_help(name):
    """One line of help on router `name` (NotFoundError for an unknown name)."""
    h = lib.carl_router_help(enc(name))
    if h is None:
        raise NotFoundError("router '%s': unknown router (known: %s)" % (name, ", ".join(router_names())))
    return h.decode()


def router_options(name):
    """{option: Option(name, default, help)} of router `name`, common options first."""
    cap = 64
    while True:
        arr = (ctypes.POINTER(_lib.Opt) * cap)()
        n = lib.carl_router_options(enc(name), arr, cap)
        if n < 0:
            check(n)
        if n <= cap:
            break
        cap = n
    out = {}
    for i in range(n):
        o = arr[i].contents
        nm = o.name.decode()
        out[nm] = Option(nm, o.default, o.help.decode() if o.help else "")
    return out


def _place_algo(name):
    v = ctypes.c_int()
    check(lib.carl_place_algo_parse(enc(name), ctypes.byref(v)))
    return v.value


class Router:
    """A router with its state, kept across steps.

    Router(name="topk", topology=None, placement=None, *, mode="flat", token_bytes=8192,
           refresh_every=0, place_algo="traffic", stats_decay=0.9, expert_bytes=0, state=None,
           **options)

    options are the router's named numbers (carl.router_options(name) lists them with defaults),
    e.g. k=8, capacity_factor=1.25, aux=0.01; an unknown name raises NotFoundError naming the
    valid ones. Without a topology the router sees one device and there is no cost. state: a file
    written by save() (or `carl route --save-state`) to start from.

    route(logits) routes one batch with the current state and, by default, updates the state from
    its loads (update=False defers that to update(result), e.g. until after the backward pass, as
    the C trainer does). step numbers count up from 0 by themselves (warm start, schedules, jitter)
    unless given.
    """

    def __init__(self, name="topk", topology=None, placement=None, *, mode="flat", token_bytes=8192,
                 refresh_every=0, place_algo="traffic", stats_decay=0.9, expert_bytes=0.0, state=None, **options):
        self._r = ctypes.c_void_p()
        self._s = ctypes.c_void_p()
        if not isinstance(name, str):
            raise InvalidError("router: the name must be a string, got %s" % type(name).__name__)
        keys, vals = [], []
        for k, v in options.items():
            if isinstance(v, bool):
                v = float(v)
            if not isinstance(v, (int, float, np.integer, np.floating)):
                raise InvalidError("router '%s': option %s must be a number, got %r" % (name, k, v))
            keys.append(k.encode())
            vals.append(float(v))
        ck = (ctypes.c_char_p * max(1, len(keys)))(*keys)
        cv = (ctypes.c_double * max(1, len(vals)))(*vals)
        check(lib.carl_router_create(name.encode(), len(keys), ck, cv, ctypes.byref(self._r)))
        self.name = name
        self.topology = as_topology(topology, allow_none=True)
        self._placement = as_placement(placement, self.topology)
        if self._placement is not None and self.topology is None:
            raise InvalidError("router: a placement needs a topology")
        self.mode = "hier" if mode_of(mode) == _lib.PLAN_HIER else "flat"
        if int(token_bytes) < 1:
            raise InvalidError("token_bytes: %r must be >= 1" % (token_bytes,))
        self.token_bytes = int(token_bytes)
        self.refresh_every = int(refresh_every)
        self.place_algo = place_algo
        self._algo = _place_algo(place_algo)
        self.stats_decay = float(stats_decay)
        self.expert_bytes = float(expert_bytes)
        self.E = None
        self.step = 0
        self._refreshes = 0
        if state is not None:
            self.load(state)

    # ---- options and state ---------------------------------------------------------------------
    def get(self, key):
        v = lib.carl_router_get(self._r, enc(key))
        if math.isnan(v):
            raise InvalidError("router '%s': no option '%s'" % (self.name, key))
        return v

    @property
    def options(self):
        """{option: current value} in the router's order (common options first)."""
        return {k: lib.carl_router_get(self._r, k.encode()) for k in router_options(self.name)}

    k = property(lambda self: int(self.get("k")))
    score = property(lambda self: int(self.get("score")))

    @property
    def has_state(self):
        """True when the router keeps state that save() writes (lossfree, carl, bip, c2r, ...)."""
        return bool(lib.carl_router_has_state(self._r))

    def save(self, path):
        """Write the router state (bias, duals, coefficients, tables) to path."""
        check(lib.carl_router_save(self._r, enc(path)))

    def load(self, path):
        check(lib.carl_router_load(self._r, enc(path)))

    @property
    def placement(self):
        """The placement routing uses now (None without a topology; contiguous until set or refreshed)."""
        if self._placement is None and self.topology is not None and self.E is not None:
            self._placement = Placement.contiguous(self.E, self.topology.devices)
        return self._placement

    def close(self):
        if getattr(self, "_s", None) and lib is not None:
            lib.carl_step_free(self._s)
            self._s = ctypes.c_void_p()
        if getattr(self, "_r", None) and lib is not None:
            lib.carl_router_free(self._r)
            self._r = ctypes.c_void_p()

    __del__ = close

    # ---- the step ------------------------------------------------------------------------------
    def _ensure_step(self, E):
        if self.E is not None:
            if E != self.E:
                raise ShapeError("logits have %d experts, but this router routed %d before" % (E, self.E))
            return
        k = self.k
        if not 1 <= k <= E:
            raise InvalidError("k = %d must be in 1..E = %d" % (k, E))
        if self.topology is not None:
            if self._placement is not None and self._placement.E != E:
                raise ShapeError("logits have %d experts but the placement has %d" % (E, self._placement.E))
            o = _lib.StepOpts()
            lib.carl_step_opts_default(ctypes.byref(o))
            o.topo = ctypes.pointer(self.topology._t)
            o.layers, o.E, o.k = 1, E, k
            self._routers = (ctypes.c_void_p * 1)(self._r.value)
            o.routers = self._routers
            if self._placement is not None:
                o.place = ctypes.pointer(self._placement._p)
            o.mode = mode_of(self.mode)
            o.token_bytes = self.token_bytes
            o.refresh_every = self.refresh_every
            o.place_opts.algo = self._algo
            o.stats_decay = self.stats_decay
            o.expert_bytes = self.expert_bytes
            self._opts = o
            check(lib.carl_step_create(ctypes.byref(o), ctypes.byref(self._s)))
            if self._placement is None:
                self._placement = Placement._copy_of(lib.carl_step_placement(self._s, 0))
        self.E = E

    # ---- routing -------------------------------------------------------------------------------
    def route(self, logits, src=None, token_ids=None, x=None, step=None, seed=0, update=True, grad=True):
        """Route one batch. logits: float32 [T, E] (C order); src: int32 [T] device of each token
        (None: token t on device t * D / T); token_ids: int32 [T] (hash router); x: float32 [T, d]
        router inputs (locmoe). grad: also compute d(router losses)/d(logits) (result.dlogits).
        Returns a RouteResult."""
        z = as_input(logits, "logits", F32, ndims=(2,))
        T, E = z.shape
        if T < 1 or E < 1:
            raise ShapeError("logits: must be [T, E] with T, E >= 1, got [%d, %d]" % (T, E))
        s = as_input(src, "src", I32, shape=(T,), allow_none=True)
        tok = as_input(token_ids, "token_ids", I32, shape=(T,), allow_none=True)
        xx = as_input(x, "x", F32, shape=(T, None), allow_none=True)
        self._ensure_step(E)
        k = self.k
        res = RouteResult()
        res.router, res.logits, res.src, res.token_ids, res.x = self, z, s, tok, xx
        res.step = self.step if step is None else int(step)
        res.experts = np.empty((T, k), I32)
        res.weights = np.empty((T, k), F32)
        res.dlogits = np.empty((T, E), F32) if grad else None
        res.placement = self._placement
        cin = _lib.RouteIn(T=T, E=E, logits=ptr(z), src=ptr(s), token_ids=ptr(tok), x=ptr(xx),
                           d=0 if xx is None else xx.shape[1], step=res.step, seed=int(seed))
        cout = _lib.RouteOut(experts=ptr(res.experts), weights=ptr(res.weights), dlogits=ptr(res.dlogits))
        res._in, res._out = cin, cout
        if self._s:
            check(lib.carl_step_route(self._s, 0, ctypes.byref(cin), ctypes.byref(cout)))
            res.cost = Cost(lib.carl_step_cost(self._s, 0).contents)
            # the step set in.place to its own placement, which a refresh replaces: point at the copy
            # this result keeps (the same table), so that a later update or backward reads valid memory
            cin.place = ctypes.pointer(res.placement._p)
        else:
            check(lib.carl_router_route(self._r, ctypes.byref(cin), ctypes.byref(cout)))
            res.cost = None
        res._refreshes = self._refreshes
        res.losses = {cout.loss[i].name.decode(): cout.loss[i].value for i in range(cout.nloss)}
        res.loss_total = cout.loss_total
        res.dropped = cout.dropped
        res.capacity = cout.capacity
        if update:
            self.update(res)
        return res

    def update(self, result):
        """The router's update from a routed batch (loads -> bias, duals, controller), the
        placement statistics, and at the end of every refresh_every-th step the placement refresh.
        Called by route() unless update=False; once per result."""
        if result.router is not self:
            raise StateError("update: the result was routed by another router")
        if result.updated:
            raise StateError("update: this result was already used for an update (step %d)" % result.step)
        if result._refreshes != self._refreshes:
            raise StateError("update: the placement was refreshed after this result was routed")
        if self._s:
            check(lib.carl_step_observe(self._s, 0, ctypes.byref(result._in), ctypes.byref(result._out)))
            info = _lib.StepRefresh()
            check(lib.carl_step_end(self._s, result.step, 0, ctypes.byref(info)))
            if info.refreshed:
                self._placement = Placement._copy_of(lib.carl_step_placement(self._s, 0))
                self._refreshes += 1
                result.refresh = {"migrate_s": info.migrate_s, "migrate_bytes": info.migrate_bytes,
                                  "moves": info.moves, "placement": self._placement}
        else:
            check(lib.carl_router_update(self._r, ctypes.byref(result._in), ctypes.byref(result._out)))
        result.updated = True
        self.step = result.step + 1

    def backward(self, result, dweights, out=None):
        """d(gate weights)/d(logits)^T dweights (carl_router_backward): dweights float32 [T, k];
        returns float32 [T, E] (added into `out` when given). The router losses' gradient is
        result.dlogits, to be added with the loss's own upstream gradient."""
        if result.router is not self:
            raise StateError("backward: the result was routed by another router")
        T, k = result.experts.shape
        dw = as_input(dweights, "dweights", F32, shape=(T, k))
        if out is None:
            out = np.zeros((T, result.logits.shape[1]), F32)
        else:
            out = as_input(out, "out", F32, shape=(T, result.logits.shape[1]))
            if not out.flags.writeable:
                raise InvalidError("out: array is read-only")
        if not np.isfinite(dw).all():
            raise _nonfinite("dweights", dw)
        check(lib.carl_router_backward(self._r, ctypes.byref(result._in), ctypes.byref(result._out), ptr(dw), ptr(out)))
        return out

    def __repr__(self):
        return "Router(%r, k=%d%s)" % (self.name, self.k, ", topology=%r" % self.topology.name if self.topology else "")


def _nonfinite(name, a):
    from .errors import NumericError
    i = np.flatnonzero(~np.isfinite(a))[0]
    return NumericError("%s: element %s is %r (finite values required)" % (name, np.unravel_index(i, a.shape), a.flat[i]))


class RouteResult:
    """The outcome of one route: experts [T, k] int32 (-1 dropped), weights [T, k] float32,
    dlogits [T, E] float32 (gradient of the router losses; None with grad=False), losses
    {name: value} (coefficients applied), loss_total, dropped, capacity, cost (Cost of the plan;
    None without a topology), step, placement, refresh (after a placement refresh at this step)."""

    refresh = None
    updated = False

    def report(self):
        """The dict `carl route` writes as report.json for this batch: loads, skew, selectivity,
        the reference losses (aux and z with coefficient 1), the router's losses and the
        communication of the plan."""
        r = self.router
        if r.topology is None:
            raise StateError("report: the router has no topology (Router(..., topology=...))")
        topo, pl = r.topology, self.placement
        z, ex = self.logits, self.experts
        T, E = z.shape
        k, score = ex.shape[1], r.score
        D, N = topo.devices, topo.nodes
        eload, dload, nload = np.zeros(E), np.zeros(D), np.zeros(N)
        m = _lib.StepMetrics()
        check(lib.carl_step_metrics(ctypes.byref(topo._t), ctypes.byref(pl._p), T, E, k, score, ptr(z), ptr(ex),
                                    ctypes.byref(m), ptr(eload), ptr(dload), ptr(nload)))
        load_ent, aux, zl = ctypes.c_double(), ctypes.c_double(), ctypes.c_double()
        check(lib.carl_routing_entropy(ptr(z), T, E, score, ptr(ex), k, None, ctypes.byref(load_ent)))
        check(lib.carl_loss_expert(ptr(z), T, E, score, ptr(ex), k, 1.0, ctypes.byref(aux), None))
        check(lib.carl_loss_z(ptr(z), T, E, 1.0, ctypes.byref(zl), None))
        com = {"mode": r.mode, "token_bytes": float(r.token_bytes)}
        com.update(self.cost.to_dict())
        router_losses = dict(self.losses)
        router_losses["total"] = self.loss_total
        return {
            "router": r.name,
            "options": r.options,
            "step": float(self.step),
            "T": float(T), "E": float(E), "k": float(k),
            "topology": topo.name, "devices": float(D), "nodes": float(N),
            "load": {"expert": eload.tolist(), "device": dload.tolist(), "node": nload.tolist()},
            "skew": {"expert": skew(eload), "device": skew(dload), "node": skew(nload)},
            "capacity": float(self.capacity), "dropped": float(self.dropped), "drop_rate": m.drop_rate,
            "selectivity": {"retained_mass": m.retained, "jaccard_topk": m.jaccard, "token_entropy": m.entropy,
                            "load_entropy": load_ent.value},
            "losses": {"aux": aux.value, "z": zl.value, "router": router_losses},
            "communication": com,
        }

    def __repr__(self):
        T, k = self.experts.shape
        return "RouteResult(step %d, T=%d, k=%d, loss %.6g%s)" % (
            self.step, T, k, self.loss_total, ", %r" % self.cost if self.cost else "")


def skew(load):
    """max, mean, max_over_mean, maxvio, cv, gini of a load vector (carl_skew)."""
    a = as_input(load, "load", F64, ndims=(1,))
    s = _lib.Skew()
    lib.carl_skew(ptr(a), a.shape[0], ctypes.byref(s))
    return {"max": s.max, "mean": s.mean, "max_over_mean": s.max_over_mean, "maxvio": s.maxvio, "cv": s.cv,
            "gini": s.gini}


def route(logits, router="topk", topology=None, placement=None, src=None, token_ids=None, x=None, step=None, seed=0,
          mode="flat", token_bytes=8192, state=None, update=True, grad=True, **options):
    """Route one batch of logits [T, E] float32 with a router (a name, with its **options, or a
    Router, whose state is used and updated; step None: the Router's next step, 0 for a new
    one) on a topology and placement. Returns a RouteResult:
    experts, weights, losses, dlogits, cost (and .report(), the dict of `carl route`'s report.json).

        res = carl.route(logits, router="carl", topology="configs/topologies/h800-2x8.json", k=8)
        res.experts, res.weights, res.losses, res.cost.bytes["inter"]
    """
    if isinstance(router, Router):
        if options or topology is not None or placement is not None or state is not None:
            raise InvalidError("route: with a Router, give options, topology, placement and state to the Router")
        return router.route(logits, src, token_ids, x, step, seed, update, grad)
    r = Router(router, topology, placement, mode=mode, token_bytes=token_bytes, state=state, **options)
    return r.route(logits, src, token_ids, x, step, seed, update, grad)
