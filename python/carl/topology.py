"""Topologies and placements (carl/topo.h): from and to dicts, JSON text and files.

The library parses and checks both formats (docs/topologies.md); errors name the field.
"""

import ctypes
import json
import os

import numpy as np

from . import _lib
from ._arrays import I32, as_input, copy_from
from ._lib import LINK_NAMES, check, enc, lib
from .errors import InvalidError


def _is_json_text(s):
    return isinstance(s, str) and s.lstrip().startswith("{")


class Topology:
    """A cluster: nodes x devices per node, link classes self / intra / rack / inter.

    Topology(spec) takes a dict, JSON text, a file path or another Topology. The struct is the
    library's carl_topo_t (plain data), held by value."""

    __slots__ = ("_t",)

    def __init__(self, spec=None):
        self._t = _lib.Topo()
        if spec is None:
            raise InvalidError("topology: give a dict, JSON text, a file path or Topology.make(...)")
        if isinstance(spec, Topology):
            ctypes.pointer(self._t)[0] = spec._t
        elif isinstance(spec, dict):
            self._parse(json.dumps(spec))
        elif _is_json_text(spec):
            self._parse(spec)
        elif isinstance(spec, (str, bytes, os.PathLike)):
            check(lib.carl_topo_load(enc(spec), ctypes.byref(self._t)))
        else:
            raise InvalidError("topology: %s is not a dict, JSON text, a path or a Topology" % type(spec).__name__)

    def _parse(self, text):
        b = text.encode()
        check(lib.carl_topo_parse(b, len(b), ctypes.byref(self._t)))

    @classmethod
    def from_dict(cls, d):
        return cls(dict(d))

    @classmethod
    def from_json(cls, text):
        t = cls.__new__(cls)
        t._t = _lib.Topo()
        t._parse(text)
        return t

    @classmethod
    def load(cls, path):
        t = cls.__new__(cls)
        t._t = _lib.Topo()
        check(lib.carl_topo_load(enc(path), ctypes.byref(t._t)))
        return t

    @classmethod
    def make(cls, nodes, devices_per_node, intra_GBps=160.0, intra_latency_us=3.0, inter_GBps=50.0,
             inter_latency_us=10.0):
        """A uniform topology built in code (carl_topo_make), named "<nodes>x<devices_per_node>"."""
        t = cls.__new__(cls)
        t._t = _lib.Topo()
        check(lib.carl_topo_make(ctypes.byref(t._t), int(nodes), int(devices_per_node), float(intra_GBps),
                                 float(intra_latency_us), float(inter_GBps), float(inter_latency_us)))
        return t

    # ---- out ----------------------------------------------------------------------------------
    def to_json(self):
        p = ctypes.c_void_p()
        n = ctypes.c_size_t()
        check(lib.carl_topo_to_json(ctypes.byref(self._t), ctypes.byref(p), ctypes.byref(n)))
        return _lib.take_text(p.value, n.value)

    def to_dict(self):
        return json.loads(self.to_json())

    def save(self, path):
        check(lib.carl_topo_save(enc(path), ctypes.byref(self._t)))

    # ---- fields -------------------------------------------------------------------------------
    nodes = property(lambda self: self._t.nodes)
    devices_per_node = property(lambda self: self._t.devices_per_node)
    devices = property(lambda self: self._t.devices)
    nodes_per_rack = property(lambda self: self._t.nodes_per_rack)
    nics_per_node = property(lambda self: self._t.nics_per_node)
    flops = property(lambda self: self._t.flops, doc="FLOP/s of one device (peak x efficiency); 0 when not given")
    name = property(lambda self: self._t.name.decode())
    device = property(lambda self: self._t.device.decode())

    @property
    def links(self):
        """{class: (GBps per device, latency_us)} of the classes present (the library's values)."""
        out = {}
        for c, n in enumerate(LINK_NAMES):
            if c == 0 or (c == 2 and self._t.nodes_per_rack == 0):
                continue
            out[n] = (self._t.link[c].GBps, self._t.link[c].latency_us)
        return out

    def node(self, device):
        return int(device) // self._t.devices_per_node

    def _dev(self, d):
        d = int(d)
        if not 0 <= d < self._t.devices:
            raise InvalidError("device %d is outside 0..%d" % (d, self._t.devices - 1))
        return d

    def link(self, a, b):
        """Link class name between devices a and b: "self", "intra", "rack" or "inter"."""
        return LINK_NAMES[lib.carl_topo_link(ctypes.byref(self._t), self._dev(a), self._dev(b))]

    def cost(self, a, b):
        """Normalised cost of one copy a -> b: 0 self, B_inter / B_class otherwise."""
        return lib.carl_topo_cost(ctypes.byref(self._t), self._dev(a), self._dev(b))

    def __eq__(self, other):
        return isinstance(other, Topology) and bytes(self._t) == bytes(other._t)

    def __repr__(self):
        return "Topology(%r: %d nodes x %d devices)" % (self.name, self.nodes, self.devices_per_node)


def as_topology(x, allow_none=False):
    if x is None:
        if allow_none:
            return None
        raise InvalidError("topology: required")
    return x if isinstance(x, Topology) else Topology(x)


class Placement:
    """Expert placement: a [D, slots] table of expert ids (-1: empty slot), replicas allowed.

    Owns a carl_placement_t (freed with the object). Build it with Placement.contiguous(E, D),
    Placement.from_table(table), from_dict/from_json/load, or get it from carl.place()."""

    __slots__ = ("_p", "__weakref__")

    def __init__(self):
        self._p = _lib.Placement()

    def __del__(self):
        p = getattr(self, "_p", None)
        if p is not None and lib is not None:
            lib.carl_placement_free(ctypes.byref(p))

    @classmethod
    def contiguous(cls, E, D):
        """Expert e on device e * D / E, once."""
        pl = cls()
        check(lib.carl_placement_contiguous(ctypes.byref(pl._p), int(E), int(D)))
        return pl

    @classmethod
    def from_table(cls, table, E=None):
        """From a [D, slots] int32 table (copied); E defaults to the largest id + 1."""
        t = as_input(table, "table", I32, ndims=(2,))
        if E is None:
            E = int(t.max()) + 1 if t.size else 0
        pl = cls()
        check(lib.carl_placement_from_table(ctypes.byref(pl._p), int(E), t.shape[0], t.shape[1], t.ctypes.data))
        return pl

    @classmethod
    def from_json(cls, text, topology=None, E=0):
        """From JSON text {"experts": E, "devices": [[...], ...]}; with a topology the number of
        device lists must match it; E > 0 must equal "experts"."""
        pl = cls()
        b = text.encode() if isinstance(text, str) else text
        t = as_topology(topology, allow_none=True)
        check(lib.carl_placement_parse(b, len(b), ctypes.byref(t._t) if t else None, int(E), ctypes.byref(pl._p)))
        return pl

    @classmethod
    def from_dict(cls, d, topology=None, E=0):
        return cls.from_json(json.dumps(d), topology, E)

    @classmethod
    def load(cls, path, topology=None, E=0):
        pl = cls()
        t = as_topology(topology, allow_none=True)
        check(lib.carl_placement_load(enc(path), ctypes.byref(t._t) if t else None, int(E), ctypes.byref(pl._p)))
        return pl

    @classmethod
    def _adopt(cls, cstruct):
        """Take ownership of a filled carl_placement_t."""
        pl = cls.__new__(cls)
        pl._p = cstruct
        return pl

    @classmethod
    def _copy_of(cls, cptr):
        """A copy of a placement owned by the library (e.g. a step's)."""
        c = cptr.contents
        pl = cls()
        check(lib.carl_placement_from_table(ctypes.byref(pl._p), c.E, c.D, c.slots,
                                            ctypes.cast(c.slot_expert, ctypes.c_void_p)))
        return pl

    def copy(self):
        return Placement._copy_of(ctypes.pointer(self._p))

    # ---- out ----------------------------------------------------------------------------------
    def to_json(self):
        p = ctypes.c_void_p()
        n = ctypes.c_size_t()
        check(lib.carl_placement_to_json(ctypes.byref(self._p), ctypes.byref(p), ctypes.byref(n)))
        return _lib.take_text(p.value, n.value)

    def to_dict(self):
        return json.loads(self.to_json())

    def save(self, path):
        check(lib.carl_placement_save(enc(path), ctypes.byref(self._p)))

    # ---- fields -------------------------------------------------------------------------------
    E = property(lambda self: self._p.E)
    D = property(lambda self: self._p.D)
    slots = property(lambda self: self._p.slots)

    @property
    def table(self):
        """[D, slots] int32 expert id per slot, -1 empty (a copy)."""
        return copy_from(self._p.slot_expert, (self._p.D, self._p.slots), I32)

    @property
    def home(self):
        """[E] device of each expert's first replica."""
        return copy_from(self._p.home, (self._p.E,), I32)

    def replicas(self, e):
        """Devices (ascending) holding expert e."""
        e = int(e)
        if not 0 <= e < self._p.E:
            raise InvalidError("expert %d is outside 0..%d" % (e, self._p.E - 1))
        off = copy_from(self._p.rep_off, (self._p.E + 1,), I32)
        return copy_from(self._p.rep_dev, (int(off[-1]),), I32)[off[e]:off[e + 1]]

    @property
    def n_replicas(self):
        """Physical experts in all (occupied slots)."""
        return int(copy_from(self._p.rep_off, (self._p.E + 1,), I32)[-1])

    def __eq__(self, other):
        return (isinstance(other, Placement) and self.E == other.E and self.D == other.D
                and np.array_equal(self.table, other.table))

    def __repr__(self):
        return "Placement(%d experts on %d devices x %d slots)" % (self.E, self.D, self.slots)


def as_placement(x, topology=None, E=0):
    """None, a Placement, a [D, slots] table, a dict, JSON text or a file path."""
    if x is None or isinstance(x, Placement):
        return x
    if isinstance(x, dict):
        return Placement.from_dict(x, topology, E)
    if _is_json_text(x):
        return Placement.from_json(x, topology, E)
    if isinstance(x, (str, bytes, os.PathLike)):
        return Placement.load(x, topology, E)
    return Placement.from_table(x, E or None)
