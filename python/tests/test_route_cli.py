"""carl.route / carl.Router give bitwise what `carl route` writes for the same inputs: experts.npy,
weights.npy and every number of report.json, for every router, with sources, placements,
hierarchical dispatch, capacity, and across the steps of a trace (stateful routers)."""

import os

import numpy as np
import pytest

from conftest import assert_same_tree, load_json, run_cli, topo_path
import carl

T, E = 512, 32


def logits(seed, T=T, E=E):
    # Gaussian noise plus a popularity per expert: skewed loads, as a trained router shows
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((T, E)) - 0.3 * np.log1p(np.arange(E))).astype(np.float32)


def bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


CASES = [
    ("topk", {"k": 2}, {}),
    ("topk", {"k": 4, "capacity_factor": 1.0, "aux": 0.01}, {}),
    ("switch", {}, {}),
    ("sinkhorn", {"k": 2}, {}),
    ("expert_choice", {"k": 2}, {}),
    ("lossfree", {"k": 4}, {}),
    ("grouplimited", {"k": 4}, {}),
    ("bip", {"k": 2}, {}),
    ("carl", {"k": 4}, {}),
    ("carl", {"k": 4, "W": 0, "lambda_loc": 0.1, "capacity_factor": 1.25}, {"mode": "hier"}),
    ("fastermoe", {"k": 2}, {"source": True}),
    ("c2r", {"k": 2, "profile": 1}, {}),
    ("hash", {}, {"tokens": True}),
    ("locmoe", {}, {"features": True}),
    ("topk", {"k": 2}, {"placement": True, "source": True}),
]


@pytest.mark.parametrize("router,opts,extra", CASES, ids=["%s-%d" % (c[0], i) for i, c in enumerate(CASES)])
def test_route_equals_cli(tmp_path, router, opts, extra):
    topo = carl.Topology(topo_path("h800-2x8"))
    z = logits(1)
    lp = tmp_path / "logits.npy"
    np.save(lp, z)
    args = ["route", "--logits", lp, "--topology", topo_path("h800-2x8"), "--router", router, "--out", tmp_path / "out",
            "--seed", 3]
    kw = {}
    if extra.get("source"):
        src = np.random.default_rng(2).integers(0, topo.devices, T).astype(np.int32)
        np.save(tmp_path / "src.npy", src)
        args += ["--source", tmp_path / "src.npy"]
        kw["src"] = src
    if extra.get("tokens"):
        tok = np.random.default_rng(4).integers(0, 1000, T).astype(np.int32)
        np.save(tmp_path / "tok.npy", tok)
        args += ["--tokens", tmp_path / "tok.npy"]
        kw["token_ids"] = tok
    if extra.get("features"):
        x = np.random.default_rng(5).standard_normal((T, 16)).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        args += ["--features", tmp_path / "x.npy"]
        kw["x"] = x
    placement = None
    if extra.get("placement"):
        # a placement with replicas: 32 experts, 16 devices x 3 slots; device d also holds a copy
        # of expert 2 ((d + 3) mod 16), the first expert of a device of the other node or its own
        table = np.empty((16, 3), np.int32)
        table[:, :2] = np.arange(32, dtype=np.int32).reshape(16, 2)
        table[:, 2] = 2 * ((np.arange(16) + 3) % 16)
        placement = carl.Placement.from_table(table, E=E)
        placement.save(tmp_path / "p.json")
        args += ["--placement", tmp_path / "p.json"]
    if "mode" in extra:
        args += ["--mode", extra["mode"]]
    for k, v in opts.items():
        args += ["--" + k.replace("_", "-"), v]
    run_cli(*args)
    res = carl.route(z, router=router, topology=topo, placement=placement, seed=3, mode=extra.get("mode", "flat"),
                     **kw, **opts)
    ex = np.load(tmp_path / "out" / "experts.npy")
    w = np.load(tmp_path / "out" / "weights.npy")
    assert ex.dtype == np.int32 and w.dtype == np.float32
    assert np.array_equal(res.experts, ex)
    assert np.array_equal(bits(res.weights), bits(w))
    assert_same_tree(load_json(tmp_path / "out" / "report.json"), res.report())


@pytest.mark.parametrize("router,opts", [("lossfree", {"k": 4}), ("carl", {"k": 4, "W": 2}), ("bip", {"k": 2}),
                                         ("c2r", {"k": 2, "profile": 1})])
def test_trace_equals_cli(tmp_path, router, opts):
    """A trace of 4 steps: the router state carries over (bias, controller, warm start, duals,
    profile), step by step as in `carl route --trace`, and the saved state is the same file."""
    tr = tmp_path / "trace"
    tr.mkdir()
    zs = [logits(10 + s) for s in range(4)]
    for s, z in enumerate(zs):
        np.save(tr / ("logits_%05d.npy" % s), z)
    args = ["route", "--trace", tr, "--topology", topo_path("h800-2x8"), "--router", router, "--out", tmp_path / "out"]
    for k, v in opts.items():
        args += ["--" + k.replace("_", "-"), v]
    run_cli(*args)
    r = carl.Router(router, topology=topo_path("h800-2x8"), **opts)
    for s, z in enumerate(zs):
        res = r.route(z) if s % 2 else carl.route(z, router=r)  # both keep the Router's step count
        assert res.step == s
        d = tmp_path / "out" / ("step_%05d" % s)
        assert np.array_equal(res.experts, np.load(d / "experts.npy")), "step %d" % s
        assert np.array_equal(bits(res.weights), bits(np.load(d / "weights.npy"))), "step %d" % s
        assert_same_tree(load_json(d / "report.json"), res.report())
    r.save(tmp_path / "state.bin")
    assert (tmp_path / "state.bin").read_bytes() == (tmp_path / "out" / "state.bin").read_bytes()
    # and a router loaded from that state routes the next batch as the one that kept it (not c2r:
    # a profiling c2r routes as topk, the one loaded from its counts builds a table from them)
    if router == "c2r":
        return
    z = logits(99)
    r2 = carl.Router(router, topology=topo_path("h800-2x8"), state=tmp_path / "state.bin", **opts)
    a, b = r.route(z, step=4), r2.route(z, step=4)
    assert np.array_equal(a.experts, b.experts) and np.array_equal(bits(a.weights), bits(b.weights))


def test_demo_equals_cli(tmp_path):
    """No topology given to the Router: one device, no cost; the decision is that of a 1x1 run."""
    z = logits(7, T=64, E=8)
    np.save(tmp_path / "z.npy", z)
    one = carl.Topology.make(1, 1)
    one.save(tmp_path / "one.json")
    run_cli("route", "--logits", tmp_path / "z.npy", "--topology", tmp_path / "one.json", "--router", "topk",
            "--out", tmp_path / "o")
    res = carl.route(z, router="topk")
    assert res.cost is None
    assert np.array_equal(res.experts, np.load(tmp_path / "o" / "experts.npy"))
    assert np.array_equal(bits(res.weights), bits(np.load(tmp_path / "o" / "weights.npy")))
    rep = load_json(tmp_path / "o" / "report.json")
    assert rep["losses"]["router"]["total"] == res.loss_total


def test_zero_copy():
    """The logits go to the library as they are (the result keeps the caller's array, not a
    copy); a CPU torch tensor is viewed, not copied; the plan's row lists are views of the
    library's memory."""
    z = logits(3)
    res = carl.route(z, router="topk", topology=topo_path("h800-2x8"), k=2)
    assert res.logits is z
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(z.copy())
    res2 = carl.route(t, router="topk", topology=topo_path("h800-2x8"), k=2)
    assert np.shares_memory(res2.logits, t.numpy()) and np.array_equal(res2.experts, res.experts)
    p = carl.plan(res.experts, topo_path("h800-2x8"), E=E)
    a, b = p.row_copy, p.row_copy
    assert np.shares_memory(a, b) and not a.flags.owndata
