"""Routing statistics, placement algorithms and migration plans (carl/place.h, docs/placement.md)."""

import ctypes
import os

import numpy as np

from . import _lib
from ._arrays import F64, I32, I64, as_input, copy_from, ptr, view
from ._lib import LINK_NAMES, check, enc, lib
from .errors import InvalidError, ShapeError
from .topology import Placement, as_placement, as_topology

# `carl place` defaults: DeepSeek-V3 sizes (hidden 7168 in bf16; an expert's three 7168 x 2048 bf16
# matrices, plus AdamW state of 12 bytes per parameter: fp32 master weights and two fp32 moments)
TOKEN_BYTES = 7168.0 * 2
EXPERT_BYTES = 3.0 * 7168 * 2048 * 2 + 3.0 * 7168 * 2048 * 12


def algorithms():
    """Names of the placement algorithms."""
    out, i = [], 0
    while True:
        n = lib.carl_place_algo_name(i)
        v = ctypes.c_int()
        if not n or lib.carl_place_algo_parse(n, ctypes.byref(v)) != 0 or v.value != i:
            return out
        out.append(n.decode())
        i += 1


class PlaceStats:
    """Per-layer routing statistics for placement (carl_place_stats_t): EMA of the load per
    expert, the traffic per (source node, expert) and the co-activation of expert pairs.

    PlaceStats(layers, experts, nodes, decay=0.9), or PlaceStats.load(dir). loads [L, E],
    traffic [L, N, E], coact [L, E, E] and batches [L] are read-only views of the library's arrays."""

    def __init__(self, layers, experts, nodes, decay=0.9):
        self._c = _lib.PlaceStats()
        self.has_traffic = self.has_coact = True
        check(lib.carl_place_stats_init(ctypes.byref(self._c), int(layers), int(experts), int(nodes), float(decay)))

    @classmethod
    def load(cls, directory, decay=0.9):
        """DIR/load.npy (required), traffic.npy, coact.npy, batches.npy (optional), as `carl place
        --stats DIR` reads them."""
        s = cls.__new__(cls)
        s._c = _lib.PlaceStats()
        ht, hc = ctypes.c_int(), ctypes.c_int()
        check(lib.carl_place_stats_load(enc(directory), float(decay), ctypes.byref(s._c), ctypes.byref(ht),
                                        ctypes.byref(hc)))
        s.has_traffic, s.has_coact = bool(ht.value), bool(hc.value)
        return s

    def __del__(self):
        if getattr(self, "_c", None) is not None and lib is not None:
            lib.carl_place_stats_free(ctypes.byref(self._c))

    L = property(lambda self: self._c.L)
    E = property(lambda self: self._c.E)
    N = property(lambda self: self._c.N)
    decay = property(lambda self: self._c.decay)
    loads = property(lambda self: view(self._c.load, (self.L, self.E), F64, self))
    traffic = property(lambda self: view(self._c.traffic, (self.L, self.N, self.E), F64, self))
    coact = property(lambda self: view(self._c.coact, (self.L, self.E, self.E), F64, self))
    batches = property(lambda self: view(self._c.batches, (self.L,), I64, self))

    def add(self, layer, experts, src_node=None):
        """One batch of layer `layer`: experts [T, k] int32 (-1 ignored), src_node [T] int32 (None:
        token t on node t * N / T)."""
        ex = as_input(experts, "experts", I32, ndims=(2,))
        sn = as_input(src_node, "src_node", I32, shape=(ex.shape[0],), allow_none=True)
        check(lib.carl_place_stats_add(ctypes.byref(self._c), int(layer), ptr(ex), ptr(sn), ex.shape[0], ex.shape[1]))

    def merge(self, other):
        """self += other element-wise (ranks that saw parts of the same batches)."""
        check(lib.carl_place_stats_merge(ctypes.byref(self._c), ctypes.byref(other._c)))

    def save(self, directory):
        check(lib.carl_place_stats_save(ctypes.byref(self._c), enc(directory)))

    def __repr__(self):
        return "PlaceStats(%d layers x %d experts, %d nodes)" % (self.L, self.E, self.N)


def _input(stats, topo, layer):
    """(carl_place_input_t, objects to keep alive) for one layer of stats, as `carl place` builds it."""
    layer = int(layer)
    if isinstance(stats, (str, bytes, os.PathLike)):
        stats = PlaceStats.load(stats)
    keep = [stats]
    if isinstance(stats, PlaceStats):
        if not 0 <= layer < stats.L:
            raise InvalidError("layer %d: the statistics have %d layers" % (layer, stats.L))
        if stats.has_traffic and stats.N != topo.nodes:
            raise ShapeError("traffic has %d source nodes but the topology has %d nodes" % (stats.N, topo.nodes))
        E, N = stats.E, stats.N
        c = stats._c
        base = ctypes.cast(c.load, ctypes.c_void_p).value
        load = base + layer * E * 8
        traffic = ctypes.cast(c.traffic, ctypes.c_void_p).value + layer * N * E * 8 if stats.has_traffic else None
        coact = ctypes.cast(c.coact, ctypes.c_void_p).value + layer * E * E * 8 if stats.has_coact else None
    else:
        if isinstance(stats, dict):
            unknown = set(stats) - {"load", "traffic", "coact"}
            if unknown:
                raise InvalidError("stats: unknown key(s) %s (load, traffic, coact)" % ", ".join(sorted(unknown)))
            d = stats
        else:
            d = {"load": stats}
        ld = as_input(d.get("load"), "stats load", F64, ndims=(1, 2))
        if ld.ndim == 2:
            if not 0 <= layer < ld.shape[0]:
                raise InvalidError("layer %d: the statistics have %d layers" % (layer, ld.shape[0]))
            ld = ld[layer]
        E = ld.shape[0]
        tr = d.get("traffic")
        if tr is not None:
            tr = as_input(tr, "stats traffic", F64, ndims=(2, 3))
            if tr.ndim == 3:
                tr = tr[layer]
            if tr.shape != (topo.nodes, E):
                raise ShapeError("stats traffic: shape %s, expected [nodes = %d, E = %d]" % (list(tr.shape), topo.nodes, E))
        co = d.get("coact")
        if co is not None:
            co = as_input(co, "stats coact", F64, ndims=(2, 3))
            if co.ndim == 3:
                co = co[layer]
            if co.shape != (E, E):
                raise ShapeError("stats coact: shape %s, expected [E, E] = [%d, %d]" % (list(co.shape), E, E))
        keep += [ld, tr, co]
        load, traffic, coact = ptr(ld), ptr(tr), ptr(co)
    return _lib.PlaceInput(E=E, N=topo.nodes, load=load, traffic=traffic, coact=coact), keep


def place(stats, topology, algo="eplb", layer=0, replicas=0, slots=0, groups=0, eplb_global=False, load_bound=1.25,
          passes=8, seed=1):
    """A placement of one layer's experts from routing statistics (carl_place_compute), as
    `carl place` computes it.

    stats: a PlaceStats, a directory (load.npy, traffic.npy, coact.npy), a dict {"load": [E] or
    [L, E], "traffic": [N, E] or [L, N, E], "coact": [E, E] or [L, E, E]} of float64 arrays, or a
    float64 load vector. algo: contiguous, roundrobin, eplb, eplb-nodup, traffic, coactivation,
    smartmoe.
    replicas: physical experts in all (0: ceil(E / D) * D); slots per device (0: replicas / D)."""
    topo = as_topology(topology)
    cin, keep = _input(stats, topo, layer)
    o = _lib.PlaceOpts()
    lib.carl_place_opts_default(ctypes.byref(o))
    a = ctypes.c_int()
    check(lib.carl_place_algo_parse(enc(algo), ctypes.byref(a)))
    o.algo, o.replicas, o.slots, o.groups = a.value, int(replicas), int(slots), int(groups)
    o.eplb_global, o.load_bound, o.refine_passes, o.seed = int(bool(eplb_global)), float(load_bound), int(passes), int(seed)
    out = _lib.Placement()
    check(lib.carl_place_compute(ctypes.byref(topo._t), ctypes.byref(cin), ctypes.byref(o), ctypes.byref(out)))
    del keep
    return Placement._adopt(out)


def evaluate(stats, topology, placement, token_bytes=TOKEN_BYTES, layer=0):
    """Quality of a placement under the statistics (carl_place_evaluate), as the dict `carl place`
    reports: device and node load max/mean, expected bytes per link class, inter-node copies,
    traffic cost, co-activation locality."""
    topo = as_topology(topology)
    cin, keep = _input(stats, topo, layer)
    pl = as_placement(placement, topo, cin.E)
    ev = _lib.PlaceEval()
    check(lib.carl_place_evaluate(ctypes.byref(topo._t), ctypes.byref(cin), ctypes.byref(pl._p), float(token_bytes),
                                  ctypes.byref(ev)))
    del keep
    return {
        "device_load_max": ev.dev_max, "device_load_mean": ev.dev_mean,
        "device_max_over_mean": ev.dev_max / ev.dev_mean if ev.dev_mean > 0 else 0.0,
        "node_load_max": ev.node_max, "node_load_mean": ev.node_mean,
        "node_max_over_mean": ev.node_max / ev.node_mean if ev.node_mean > 0 else 0.0,
        "expected_bytes": {n: ev.bytes[i] for i, n in enumerate(LINK_NAMES)},
        "inter_node_copies": ev.inter_copies, "traffic_cost": ev.traffic_cost,
        "coact_local_fraction": ev.coact_local,
    }


MOVE_DTYPE = np.dtype([("expert", np.int32), ("src", np.int32), ("dst", np.int32), ("slot", np.int32),
                       ("link", np.int32)])


class Migration:
    """The move from one placement to another (carl_migration_t): moves (a structured array with
    fields expert, src, dst, slot, link), kept, bytes {class: bytes}, total_bytes, time_s, and
    placement: the new placement as migrated (devices relabelled inside nodes with relabel=True)."""

    def __init__(self, c, placement, expert_bytes):
        n = c.n_moves
        self.moves = np.array(view(c.moves, (n, 5), I32, None), copy=True).view(MOVE_DTYPE).reshape(n)
        self.kept = c.kept
        self.bytes = {nm: c.bytes[i] for i, nm in enumerate(LINK_NAMES)}
        self.total_bytes = c.total_bytes
        self.time_s = c.time_s
        self.expert_bytes = expert_bytes
        self.placement = placement

    n_moves = property(lambda self: len(self.moves))

    def to_dict(self):
        """The "migration" part of `carl place --from`'s report."""
        return {
            "moves": float(self.n_moves), "kept": float(self.kept), "bytes_per_expert": self.expert_bytes,
            "total_bytes": self.total_bytes, "bytes": dict(self.bytes), "time_s": self.time_s,
            "moves_list": [{"expert": int(m["expert"]), "from": int(m["src"]), "to": int(m["dst"]),
                            "slot": int(m["slot"]), "link": LINK_NAMES[m["link"]]} for m in self.moves],
        }

    def __repr__(self):
        return "Migration(%d moves, %d kept, %.6g bytes, %.4g ms)" % (self.n_moves, self.kept, self.total_bytes,
                                                                     self.time_s * 1e3)


def migrate(old, new, topology, expert_bytes=EXPERT_BYTES, relabel=True):
    """Plan the move from placement `old` to `new` (carl_place_migrate). With relabel, the devices
    of each node in the new placement are first permuted to keep the most experts in place (loads
    and traffic unchanged); the result's .placement is that relabelled copy (`new` is not changed).
    expert_bytes: weights plus optimizer state of one expert."""
    topo = as_topology(topology)
    o = as_placement(old, topo)
    nw = as_placement(new, topo).copy()
    c = _lib.Migration()
    check(lib.carl_place_migrate(ctypes.byref(topo._t), ctypes.byref(o._p), ctypes.byref(nw._p), int(bool(relabel)),
                                 float(expert_bytes), ctypes.byref(c)))
    try:
        return Migration(c, nw, float(expert_bytes))
    finally:
        lib.carl_migration_free(ctypes.byref(c))


def eplb(weights, replicas, groups, nodes, gpus, nodup=False):
    """DeepSeek EPLB rebalance_experts for one layer, as eplb.py (carl_eplb_rebalance; nodup:
    carl_eplb_rebalance_nodup). weights [E] float64. Returns (phy2log [replicas], logcnt [E])
    int32: GPU g holds phy2log[g * replicas / gpus : (g + 1) * replicas / gpus]."""
    w = as_input(weights, "weights", F64, ndims=(1,))
    E, R = w.shape[0], int(replicas)
    if R < 1:
        raise InvalidError("replicas: %d must be >= 1" % R)
    phy = np.empty(R, I32)
    cnt = np.empty(E, I32)
    f = lib.carl_eplb_rebalance_nodup if nodup else lib.carl_eplb_rebalance
    check(f(ptr(w), E, R, int(groups), int(nodes), int(gpus), ptr(phy), ptr(cnt)))
    return phy, cnt
