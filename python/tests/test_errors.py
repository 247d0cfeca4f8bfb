"""Bad input raises a clear exception of the status's class, with the library's message where the
library finds the fault; nothing crashes."""

import json

import numpy as np
import pytest

from conftest import topo_path
import carl


@pytest.fixture
def z():
    return np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32)


def test_one_class_per_status():
    assert sorted(carl.BY_STATUS) == list(range(-10, 0))
    for st, cls in carl.BY_STATUS.items():
        assert issubclass(cls, carl.CarlError) and cls.status == st
    assert issubclass(carl.ShapeError, ValueError) and issubclass(carl.CarlIOError, OSError)
    assert issubclass(carl.DtypeError, TypeError) and issubclass(carl.NotFoundError, LookupError)


def test_logits_dtype_layout_shape(z):
    topo = topo_path("h800-2x8")
    with pytest.raises(carl.DtypeError, match=r"logits: float64 array, expected float32.*astype"):
        carl.route(z.astype(np.float64), topology=topo)
    with pytest.raises(carl.DtypeError, match="byte order"):
        carl.route(z.astype(">f4"), topology=topo)
    with pytest.raises(carl.DtypeError, match="int32 array"):
        carl.route(z.astype(np.int32), topology=topo)
    with pytest.raises(carl.InvalidError, match="not C-contiguous"):
        carl.route(np.asfortranarray(z), topology=topo)
    with pytest.raises(carl.InvalidError, match="not C-contiguous"):
        carl.route(z[:, ::2], topology=topo)
    with pytest.raises(carl.ShapeError, match=r"logits: 1 dimensions"):
        carl.route(z[0], topology=topo)
    with pytest.raises(carl.ShapeError, match=r"logits: 3 dimensions"):
        carl.route(z[None], topology=topo)
    with pytest.raises(carl.ShapeError, match=r"T, E >= 1"):
        carl.route(z[:0], topology=topo)
    with pytest.raises(carl.DtypeError, match="cannot be read as float32"):
        carl.route([["a", "b"]], topology=topo)


def test_logits_not_finite(z):
    for bad in (np.nan, np.inf, -np.inf):
        y = z.copy()
        y[5, 3] = bad
        for router in ("topk", "carl", "sinkhorn", "lossfree"):
            with pytest.raises(carl.NumericError, match="token 5"):
                carl.route(y, router=router, topology=topo_path("h800-2x8"))


def test_inputs_beside_logits(z):
    topo = topo_path("h800-2x8")
    with pytest.raises(carl.ShapeError, match=r"src: shape \[63\], expected \[64\]"):
        carl.route(z, topology=topo, src=np.zeros(63, np.int32))
    with pytest.raises(carl.DtypeError, match="src: int64 array, expected int32"):
        carl.route(z, topology=topo, src=np.zeros(64, np.int64))
    with pytest.raises(carl.InvalidError, match="src: token 0 is on device 16, outside 0..15"):
        carl.route(z, topology=topo, src=np.full(64, 16, np.int32))
    with pytest.raises(carl.ShapeError, match="token_ids"):
        carl.route(z, router="hash", topology=topo, token_ids=np.zeros(3, np.int32))
    with pytest.raises(carl.ShapeError, match=r"x: shape \[64\]"):
        carl.route(z, router="locmoe", topology=topo, x=np.zeros(64, np.float32))
    with pytest.raises(carl.InvalidError, match="k: 17 experts per token but only E = 16|k = 17 must be in 1..E = 16"):
        carl.route(z, topology=topo, k=17)
    with pytest.raises(carl.ShapeError, match="logits have 16 experts but the placement has 32"):
        carl.route(z, topology=topo, placement=carl.Placement.contiguous(32, 16))
    r = carl.Router("topk", topology=topo)
    r.route(z)
    with pytest.raises(carl.ShapeError, match="logits have 8 experts, but this router routed 16"):
        r.route(z[:, :8].copy())


def test_router_names_and_options(z):
    with pytest.raises(carl.NotFoundError, match=r"router 'nosuch': unknown router \(known: topk, switch"):
        carl.Router("nosuch")
    with pytest.raises(carl.NotFoundError, match=r"unknown option 'kk' \(options: k, capacity_factor"):
        carl.Router("topk", kk=2)
    with pytest.raises(carl.InvalidError, match="option k = 0 is out of range"):
        carl.Router("topk", k=0)
    with pytest.raises(carl.InvalidError, match="option k must be a number"):
        carl.Router("topk", k="two")
    with pytest.raises(carl.NotFoundError):
        carl.router_options("nosuch")
    with pytest.raises(carl.NotFoundError, match="unknown router"):
        carl.router_help("nosuch")
    assert "DeepSeek" in carl.router_help("lossfree") and carl.Router("lossfree").has_state
    assert not carl.Router("topk").has_state
    with pytest.raises(carl.InvalidError, match="mode"):
        carl.Router("topk", mode="tree")
    with pytest.raises(carl.NotFoundError, match="algo|algorithm"):
        carl.Router("topk", place_algo="nosuch")
    with pytest.raises(carl.StateError, match="no collaboration table"):
        carl.route(z, router="c2r", topology=topo_path("h800-2x8"))
    with pytest.raises(carl.CarlIOError, match="/nonexistent/state.bin"):
        carl.Router("lossfree", state="/nonexistent/state.bin")
    with pytest.raises(carl.StateError, match="no state to save"):
        carl.Router("topk").save("/tmp/x.bin")


def test_update_and_backward_misuse(z):
    r = carl.Router("lossfree", topology=topo_path("h800-2x8"))
    res = r.route(z)
    with pytest.raises(carl.StateError, match="already used"):
        r.update(res)
    with pytest.raises(carl.StateError, match="another router"):
        carl.Router("lossfree").update(res)
    with pytest.raises(carl.ShapeError, match=r"dweights: shape \[64, 1\], expected \[64, 2\]"):
        r.backward(res, np.zeros((64, 1), np.float32))
    dw = np.zeros((64, 2), np.float32)
    dw[1, 1] = np.nan
    with pytest.raises(carl.NumericError, match=r"dweights: element \(1, 1\) is nan"):
        r.backward(res, dw)
    with pytest.raises(carl.StateError, match="no topology"):
        carl.route(z).report()


def test_topology_and_placement_files(tmp_path):
    with pytest.raises(carl.InvalidError, match="nodes must be in"):
        carl.Topology({"nodes": 0, "devices_per_node": 2, "links": {"intra": {"GBps": 1, "latency_us": 1},
                                                                     "inter": {"GBps": 1, "latency_us": 1}}})
    with pytest.raises(carl.InvalidError, match="GBPS"):
        carl.Topology({"nodes": 1, "devices_per_node": 2, "links": {"intra": {"GBPS": 1, "latency_us": 1},
                                                                     "inter": {"GBps": 1, "latency_us": 1}}})
    with pytest.raises(carl.ParseError, match="malformed JSON"):
        carl.Topology('{"nodes": 2,')
    with pytest.raises(carl.CarlIOError, match="/nonexistent/t.json"):
        carl.Topology("/nonexistent/t.json")
    with pytest.raises(carl.InvalidError, match="not a dict"):
        carl.Topology(3.5)
    with pytest.raises(carl.InvalidError, match="device 4 is outside 0..3"):
        carl.Topology(topo_path("test-2x2")).cost(0, 4)
    with pytest.raises(carl.InvalidError, match="twice"):
        carl.Placement.from_table(np.array([[0, 0], [1, 2]], np.int32))
    with pytest.raises(carl.ShapeError, match="table: 1 dimensions"):
        carl.Placement.from_table(np.array([0, 1], np.int32))
    (tmp_path / "p.json").write_text(json.dumps({"experts": 4, "devices": [[0, 1], [2]]}))
    with pytest.raises(carl.CarlError, match="p.json"):
        carl.Placement.load(tmp_path / "p.json")


def test_plan_and_cost_inputs():
    t = carl.Topology(topo_path("test-2x2"))
    ex = np.array([[0, 1], [2, 3]], np.int32)
    with pytest.raises(carl.InvalidError, match="placement: give placement= or the number of experts E="):
        carl.cost(ex, t)
    with pytest.raises(carl.InvalidError, match="expert"):
        carl.cost(np.array([[0, 9]], np.int32), t, E=4)
    with pytest.raises(carl.DtypeError, match="experts: int64 array"):
        carl.plan(ex.astype(np.int64), t, E=4)
    with pytest.raises(carl.InvalidError, match="token_bytes"):
        carl.cost(ex, t, E=4, token_bytes=0)
    with pytest.raises(carl.InvalidError, match="rows=False"):
        carl.plan(ex, t, E=4, rows=False).row_copy


def test_place_inputs(tmp_path):
    t = carl.Topology(topo_path("test-2x2"))
    with pytest.raises(carl.DtypeError, match="stats load: int64 array, expected float64"):
        carl.place(np.arange(8), t)
    with pytest.raises(carl.InvalidError, match="load"):
        carl.place(np.array([1, 2, -1, 4, 5, 6, 7, 8], np.float64), t)
    with pytest.raises(carl.CarlError, match="load"):
        carl.place(np.array([1, 2, np.nan, 4, 5, 6, 7, 8], np.float64), t)
    with pytest.raises(carl.NotFoundError, match="nosuch"):
        carl.place(np.ones(8), t, algo="nosuch")
    with pytest.raises(carl.ShapeError, match=r"stats traffic: shape \[3, 8\], expected \[nodes = 2, E = 8\]"):
        carl.place({"load": np.ones(8), "traffic": np.ones((3, 8))}, t, algo="traffic")
    with pytest.raises(carl.InvalidError, match="unknown key"):
        carl.place({"load": np.ones(8), "trafic": np.ones((2, 8))}, t)
    with pytest.raises(carl.InvalidError, match="traffic"):
        carl.place({"load": np.ones(8)}, t, algo="traffic")
    with pytest.raises(carl.CarlIOError, match="load.npy"):
        carl.place(tmp_path, t)
    with pytest.raises(carl.InvalidError, match="layer 2"):
        carl.place(np.ones((2, 8)), t, layer=2)
    st = carl.PlaceStats(1, 8, 2)
    with pytest.raises(carl.InvalidError):
        st.add(0, np.array([[0, 9]], np.int32))
    with pytest.raises(carl.InvalidError, match="layer"):
        st.add(3, np.array([[0, 1]], np.int32))
    with pytest.raises(carl.InvalidError, match="10 replicas are not a multiple of the 8 gpus"):
        carl.eplb(np.ones(12), replicas=10, groups=4, nodes=2, gpus=8)


def test_sim_config_errors(tmp_path):
    with pytest.raises(carl.InvalidError, match="stepz: unknown field"):
        carl.sim({"stepz": 3})
    with pytest.raises(carl.NotFoundError, match="routers\\[0\\]: unknown router 'nosuch'"):
        carl.sim({"routers": ["nosuch"], "topologies": [topo_path("test-2x2")], "scenarios": ["zipf"], "seeds": [1]})
    with pytest.raises(carl.ParseError):
        carl.sim("{\"steps\": ")
    with pytest.raises(carl.CarlIOError, match="nofile.json"):
        carl.sim(tmp_path / "nofile.json")
    with pytest.raises(carl.InvalidError, match="config must be"):
        carl.sim(42)
