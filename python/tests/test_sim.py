"""carl.sim returns the tables `carl sim` writes: each value of steps.csv and summary.csv is the
array's value as the CLI prints it (%.9g), for a config given as a file, a dict or JSON text."""

import csv
import json
import math

import numpy as np

from conftest import run_cli, topo_path
import carl

CONFIG = {
    "name": "pytest-sim", "steps": 12, "tokens": 256, "layers": 2, "d": 16, "experts": 16, "summary_from": 4,
    "csv_every": 1,
    "routers": [{"name": "carl", "opts": {"k": 2}, "refresh_every": 5},
                {"label": "topk+aux", "name": "topk", "opts": {"k": 2, "aux": 0.01}},
                {"name": "lossfree", "opts": {"k": 2}}],
    "topologies": [topo_path("test-2x2"), topo_path("h800-2x8")],
    "scenarios": ["zipf", "hot_device"],
    "seeds": [1, 7],
}


def fmt(v):
    return "nan" if math.isnan(v) else "%.9g" % v


def test_sim_equals_cli(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(CONFIG))
    run_cli("sim", "--config", cfg, "--out", tmp_path / "out", "--no-plots", "--quiet")
    res = carl.sim(cfg)
    assert res.name == "pytest-sim"
    assert len(res.runs) == 3 * 2 * 2 * 2
    assert res.steps.shape == (24, 12, len(res.columns)) and res.summary.shape == (24, len(res.columns))
    with open(tmp_path / "out" / "steps.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["router", "topology", "scenario", "seed", "step"] + res.columns
    body = rows[1:]
    assert len(body) == 24 * 12
    i = 0
    for run in res.runs:  # grid order: router, topology, scenario, seed (fastest)
        for step in range(12):
            r = body[i]
            i += 1
            assert r[:5] == [run.router, run.topology, run.scenario, str(run.seed), str(step)]
            assert r[5:] == [fmt(v) for v in run.steps[step]], (run, step)
    with open(tmp_path / "out" / "summary.csv") as f:
        srows = list(csv.reader(f))[1:]
    for run, r in zip(res.runs, srows):
        assert r[:4] == [run.router, run.topology, run.scenario, str(run.seed)]
        assert r[4:] == [fmt(v) for v in run.summary]
    # the summary is the mean over steps >= summary_from of the per-step values (nan columns stay nan)
    for run in res.runs:
        want = run.steps[4:].mean(axis=0)
        ok = np.isnan(want) == np.isnan(run.summary)
        assert ok.all()
        assert np.allclose(run.summary[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-12, atol=0)
    # the markdown table and the report files, through the library's writers
    assert "| topk+aux |" in res.table_md()
    res.write_reports(tmp_path / "again")
    assert (tmp_path / "again" / "steps.csv").read_text() == (tmp_path / "out" / "steps.csv").read_text()


def test_sim_dict_text_file_agree(tmp_path):
    small = dict(CONFIG, steps=4, summary_from=1, layers=1, seeds=[3], topologies=[carl.Topology(topo_path("test-2x2")).to_dict()])
    a = carl.sim(small)
    b = carl.sim(json.dumps(small))
    (tmp_path / "c.json").write_text(json.dumps(small))
    c = carl.sim(tmp_path / "c.json")
    for x in (b, c):
        assert [(r.router, r.topology, r.scenario, r.seed) for r in x.runs] == \
               [(r.router, r.topology, r.scenario, r.seed) for r in a.runs]
        assert np.array_equal(x.steps, a.steps, equal_nan=True)
    assert a.config["routers"][1]["label"] == "topk+aux" and a.config["routers"][1]["opts"]["aux"] == 0.01
    col = a.runs[0].column("bytes_inter")
    assert col.shape == (4,) and (col >= 0).all()
    assert not a.runs[0].steps.flags.writeable


def test_default_study_grid():
    """The default study is described, not run here (it takes seconds): six routers, one
    topology, three scenarios, one seed, as docs/sim.md states."""
    h = carl._lib.ctypes.c_void_p()
    carl._lib.check(carl._lib.lib.carl_sim_config_create(None, None, 0, None, carl._lib.ctypes.byref(h)))
    p, n = carl._lib.ctypes.c_void_p(), carl._lib.ctypes.c_size_t()
    carl._lib.check(carl._lib.lib.carl_sim_config_describe(h, carl._lib.ctypes.byref(p), carl._lib.ctypes.byref(n)))
    d = json.loads(carl._lib.take_text(p.value, n.value))
    carl._lib.lib.carl_sim_config_destroy(h)
    assert [r["label"] for r in d["routers"]] == ["carl", "topk+aux", "lossfree", "grouplimited", "sinkhorn", "fastermoe"]
    assert [s["label"] for s in d["scenarios"]] == ["zipf", "hot_device", "rotating"] and d["seeds"] == [1]
