"""The routing simulator (carl/sim.h, docs/sim.md): a router x topology x scenario x seed grid."""

import ctypes
import json
import os

import numpy as np

from . import _lib
from ._arrays import F64, view
from ._lib import check, enc, lib
from .errors import InvalidError


class SimRun:
    """One grid cell: router (label), topology (name), scenario (label), seed; steps [nrow, ncol]
    float64 per-step values (a read-only view of the library's table) and summary [ncol] (mean
    over steps >= summary_from); columns name them."""

    def __init__(self, res, c, i):
        d = res.config
        self.index = i
        self.router = d["routers"][c.router]["label"]
        self.topology = d["topologies"][c.topo]["name"]
        self.scenario = d["scenarios"][c.scen]["label"]
        self.seed = int(d["seeds"][c.seed])
        self.columns = res.columns
        self.steps = view(c.rows, (c.nrow, len(res.columns)), F64, res)
        self.summary = np.array(c.summary[:], dtype=F64)
        self.summary.flags.writeable = False
        self.wall_s = c.wall_s

    def column(self, name):
        return self.steps[:, self.columns.index(name)]

    def __repr__(self):
        return "SimRun(%s, %s, %s, seed %d: %d steps)" % (self.router, self.topology, self.scenario, self.seed,
                                                         self.steps.shape[0])


class SimResult:
    """The tables of a study: runs (SimRun, in grid order router, topology, scenario, seed with
    the seed fastest), columns, config (the grid as the library describes it); steps [nrun, nrow,
    ncol] and summary [nrun, ncol] as arrays; table_md() and write_reports(dir) as `carl sim`
    prints and writes them."""

    def __init__(self, cfg_handle):
        self._cfg = cfg_handle
        p, n = ctypes.c_void_p(), ctypes.c_size_t()
        check(lib.carl_sim_config_describe(cfg_handle, ctypes.byref(p), ctypes.byref(n)))
        self.config = json.loads(_lib.take_text(p.value, n.value))
        self.columns = list(self.config["columns"])
        self.name = self.config["name"]
        _, Res = _lib.sim_run_type(len(self.columns))
        self._res = Res()
        self._have = False
        check(lib.carl_sim_run(cfg_handle, None, None, ctypes.addressof(self._res)))
        self._have = True
        self.runs = [SimRun(self, self._res.runs[i], i) for i in range(self._res.nrun)]

    def __del__(self):
        if lib is None:
            return
        if getattr(self, "_have", False):
            lib.carl_sim_result_free(ctypes.addressof(self._res))
            self._have = False
        if getattr(self, "_cfg", None):
            lib.carl_sim_config_destroy(self._cfg)
            self._cfg = None

    @property
    def steps(self):
        return np.stack([r.steps for r in self.runs]) if self.runs else np.zeros((0, 0, len(self.columns)))

    @property
    def summary(self):
        return np.stack([r.summary for r in self.runs]) if self.runs else np.zeros((0, len(self.columns)))

    def table_md(self):
        """The Markdown comparison table `carl sim` prints."""
        p = ctypes.c_void_p()
        check(lib.carl_sim_table_md(self._cfg, ctypes.addressof(self._res), ctypes.byref(p)))
        return _lib.take_text(p.value)

    def write_reports(self, directory):
        """steps.csv, summary.csv, summary.md, plots.dat, plots.gp into directory (as `carl sim --out`)."""
        check(lib.carl_sim_write_reports(self._cfg, ctypes.addressof(self._res), enc(directory)))

    def __repr__(self):
        return "SimResult(%r: %d runs x %d steps, %d columns)" % (self.name, len(self.runs), self.config["steps"],
                                                                 len(self.columns))


def sim(config=None, base_dir=None):
    """Run a study and return its tables (SimResult).

    config: None (the default study of `carl sim`), a dict (the JSON config of docs/sim.md), JSON
    text, or a file path. Relative paths inside a dict or text resolve against base_dir (None: the
    current directory), inside a file against the current directory (as `carl sim --config`).
    Results do not depend on the number of OpenMP threads (OMP_NUM_THREADS)."""
    h = ctypes.c_void_p()
    bd = enc(os.fspath(base_dir)) if base_dir is not None else None
    if config is None:
        check(lib.carl_sim_config_create(None, None, 0, None, ctypes.byref(h)))
    elif isinstance(config, dict):
        b = json.dumps(config).encode()
        check(lib.carl_sim_config_create(None, b, len(b), bd, ctypes.byref(h)))
    elif isinstance(config, str) and config.lstrip().startswith("{"):
        b = config.encode()
        check(lib.carl_sim_config_create(None, b, len(b), bd, ctypes.byref(h)))
    elif isinstance(config, (str, bytes, os.PathLike)):
        check(lib.carl_sim_config_create(enc(config), None, 0, None, ctypes.byref(h)))
    else:
        raise InvalidError("sim: config must be None, a dict, JSON text or a path, got %s" % type(config).__name__)
    return SimResult(h)  # owns the handle from here on, also when it raises
