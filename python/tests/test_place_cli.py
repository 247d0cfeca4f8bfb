"""carl.place / carl.evaluate / carl.migrate give what `carl place` writes for the same statistics:
the placement file and every number of its report (the placement's quality, the current one's,
the migration and its move list), for each algorithm."""

import numpy as np
import pytest

from conftest import assert_same_tree, load_json, run_cli, topo_path
import carl

E = 32


@pytest.fixture(scope="module")
def stats_dir(tmp_path_factory):
    """Statistics of 3 batches of skewed routing decisions on 2 nodes, accumulated by PlaceStats
    (the library's EMA) and saved as `carl place --stats` reads them."""
    d = tmp_path_factory.mktemp("stats")
    topo = carl.Topology(topo_path("h800-2x8"))
    st = carl.PlaceStats(layers=2, experts=E, nodes=topo.nodes, decay=0.9)
    rng = np.random.default_rng(0)
    pop = 1.0 / (1 + np.arange(E)) ** 0.8
    for b in range(3):
        T = 1024
        src_node = (np.arange(T) * topo.nodes // T).astype(np.int32)
        # tokens of node n prefer the experts of node n's half of the id range
        p = np.tile(pop, (T, 1))
        p[np.arange(T)[:, None], np.arange(E)[None, :]] *= np.where((np.arange(E)[None, :] * 2 // E) == src_node[:, None], 3.0, 1.0)
        p /= p.sum(1, keepdims=True)
        ex = np.stack([rng.choice(E, size=4, replace=False, p=p[t]) for t in range(T)]).astype(np.int32)
        for layer in range(2):
            st.add(layer, ex, src_node)
    st.save(d)
    return d, st


ALGOS = [("eplb", []), ("eplb-nodup", ["--replicas", 48]), ("traffic", ["--replicas", 48]), ("contiguous", []),
         ("roundrobin", []), ("coactivation", ["--slots", 3]), ("eplb", ["--global", "--replicas", 64, "--layer", 1])]


@pytest.mark.parametrize("algo,args", ALGOS, ids=["%s-%d" % (a, i) for i, (a, _) in enumerate(ALGOS)])
def test_place_equals_cli(tmp_path, stats_dir, algo, args):
    d, st = stats_dir
    topo = carl.Topology(topo_path("h800-2x8"))
    kw = {"replicas": 0, "slots": 0, "eplb_global": False, "layer": 0}
    it = iter(args)
    for a in it:
        if a == "--global":
            kw["eplb_global"] = True
        else:
            kw[{"--replicas": "replicas", "--slots": "slots", "--layer": "layer"}[a]] = int(next(it))
    old = carl.Placement.contiguous(E, topo.devices)
    old.save(tmp_path / "old.json")
    p = run_cli("place", "--stats", d, "--topology", topo_path("h800-2x8"), "--algo", algo, "--out", tmp_path / "p.json",
                "--from", tmp_path / "old.json", *args, ok=False)
    if p.returncode != 0 and "not built" in p.stderr:
        with pytest.raises(carl.UnsupportedError):
            carl.place(d, topo, algo=algo, **kw)
        return
    assert p.returncode == 0, p.stderr
    # the statistics as a directory, as the PlaceStats that wrote it, and as arrays: one placement
    pl = carl.place(d, topo, algo=algo, **kw)
    assert pl == carl.place(st, topo, algo=algo, **kw)
    layer = kw["layer"]
    arrays = {"load": np.array(st.loads[layer]), "traffic": np.array(st.traffic[layer]), "coact": np.array(st.coact[layer])}
    kw2 = dict(kw, layer=0)
    assert pl == carl.place(arrays, topo, algo=algo, **kw2)
    ev = carl.evaluate(d, topo, pl, layer=layer)
    ev_old = carl.evaluate(d, topo, old, layer=layer)
    mig = carl.migrate(old, pl, topo)
    # the CLI writes the placement after the migration relabelled it
    cli_pl = carl.Placement.load(tmp_path / "p.json", topo, E)
    assert mig.placement == cli_pl
    assert mig.placement.to_json() == (tmp_path / "p.json").read_text()
    rep = load_json(tmp_path / "p.report.json")
    assert rep["algorithm"] == algo and rep["slots"] == cli_pl.slots and rep["replicas"] == cli_pl.n_replicas
    # the CLI evaluates the placement as computed, then relabels it for the migration
    assert_same_tree(rep["placement"], ev)
    # relabelling devices inside nodes keeps loads and traffic (up to the order of the sums)
    ev_rel = carl.evaluate(d, topo, mig.placement, layer=layer)
    for key in ("device_load_max", "device_load_mean", "node_load_max", "node_load_mean", "inter_node_copies"):
        assert ev_rel[key] == pytest.approx(ev[key], rel=1e-12)
    assert_same_tree(rep["current"], ev_old)
    assert_same_tree(rep["migration"], mig.to_dict())


def test_keep_labels(tmp_path, stats_dir):
    d, _ = stats_dir
    topo = carl.Topology(topo_path("h800-2x8"))
    old = carl.Placement.contiguous(E, topo.devices)
    old.save(tmp_path / "old.json")
    run_cli("place", "--stats", d, "--topology", topo_path("h800-2x8"), "--algo", "traffic", "--replicas", 48,
            "--out", tmp_path / "p.json", "--from", tmp_path / "old.json", "--keep-labels")
    pl = carl.place(d, topo, algo="traffic", replicas=48)
    mig = carl.migrate(old, pl, topo, relabel=False)
    assert mig.placement == carl.Placement.load(tmp_path / "p.json", topo, E)
    # without relabelling every device keeps the set of experts the algorithm gave it (staying
    # experts keep their old slot, so the order inside a device may change)
    for a, b in zip(mig.placement.table, pl.table):
        assert sorted(a) == sorted(b)
    assert_same_tree(load_json(tmp_path / "p.report.json")["migration"], mig.to_dict())


def test_eplb_readme_example():
    """DeepSeek EPLB's README example (2 layers, 12 experts, 16 replicas, 4 groups, 2 nodes, 8 GPUs),
    layer 0, with the output published there."""
    w = np.array([90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86], np.float64)
    phy, cnt = carl.eplb(w, replicas=16, groups=4, nodes=2, gpus=8)
    assert phy.tolist() == [5, 6, 5, 7, 8, 4, 3, 4, 10, 9, 10, 2, 0, 1, 11, 1]
    assert cnt.tolist() == [1, 2, 1, 1, 2, 2, 1, 1, 1, 1, 2, 1]
