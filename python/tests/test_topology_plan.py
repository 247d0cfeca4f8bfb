"""Topologies and placements to and from dicts, JSON text and files; the plan and the cost of a
decision small enough to work out by hand."""

import gc
import json
import os

import numpy as np
import pytest

from conftest import TOPOS, topo_path
import carl


@pytest.mark.parametrize("name", sorted(f[:-5] for f in os.listdir(TOPOS) if f.endswith(".json")))
def test_topology_round_trip(tmp_path, name):
    path = topo_path(name)
    with open(path) as f:
        filed = json.load(f)
    t = carl.Topology(path)
    # the file's content (without its comments) is what to_dict gives back
    want = {k: v for k, v in filed.items() if k != "comment"}
    if "flops" in want:
        want["flops"] = {k: v for k, v in want["flops"].items() if k != "comment"}
    assert t.to_dict() == want
    for other in (carl.Topology(filed), carl.Topology(json.dumps(filed)), carl.Topology.from_dict(t.to_dict()),
                  carl.Topology.from_json(t.to_json()), carl.Topology(t)):
        assert other == t
    t.save(tmp_path / "t.json")
    assert carl.Topology.load(tmp_path / "t.json") == t


def test_topology_fields():
    t = carl.Topology(topo_path("h800-2x8"))
    assert (t.nodes, t.devices_per_node, t.devices, t.name) == (2, 8, 16, "h800-2x8")
    assert t.link(3, 3) == "self" and t.link(0, 7) == "intra" and t.link(7, 8) == "inter"
    assert t.cost(0, 1) == 50 / 160 and t.cost(0, 8) == 1.0 and t.cost(4, 4) == 0.0
    assert t.flops == pytest.approx(989.4e12 * 0.6, rel=1e-15)
    # one NIC per node of 2 devices: each device gets half of the NIC's 100 (rack) and 50 (inter) GB/s
    r = carl.Topology(topo_path("test-rack-4x2"))
    assert r.links == {"intra": (200.0, 1.0), "rack": (50.0, 4.0), "inter": (25.0, 8.0)}
    assert r.link(1, 2) == "rack" and r.link(3, 4) == "inter"
    m = carl.Topology.make(2, 4, inter_GBps=25)
    assert m.name == "2x4" and m.links["inter"] == (25.0, 10.0)


def test_placement_round_trip(tmp_path):
    t = carl.Topology(topo_path("test-2x2"))
    p = carl.Placement.contiguous(8, 4)
    assert p.table.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]  # expert e on device e * 4 / 8
    assert p.to_dict() == {"experts": 8, "devices": [[0, 1], [2, 3], [4, 5], [6, 7]]}
    # replicas: expert 0 on devices 0 and 3, one empty slot
    d = {"experts": 6, "devices": [[0, 1], [2, 3], [4, -1], [5, 0]]}
    q = carl.Placement.from_dict(d, t)
    assert q.replicas(0).tolist() == [0, 3] and q.replicas(5).tolist() == [3]
    assert q.home.tolist() == [0, 0, 1, 1, 2, 3] and q.n_replicas == 7
    assert carl.Placement.from_table(np.array(d["devices"], np.int32)) == q
    assert carl.Placement.from_json(q.to_json(), t, 6) == q
    q.save(tmp_path / "q.json")
    assert carl.Placement.load(tmp_path / "q.json", t) == q
    assert q.copy() == q and q.copy() is not q
    with pytest.raises(carl.InvalidError, match="devices"):
        carl.Placement.from_dict(d, carl.Topology(topo_path("h800-2x8")))  # 4 lists for 16 devices


def hand_case():
    # 2 nodes x 1 device; experts 0 (device 0) and 1 (device 1); tokens 0, 1 on device 0, 2, 3 on 1
    topo = carl.Topology.make(2, 1, inter_GBps=50, inter_latency_us=10)
    experts = np.array([[0], [1], [1], [0]], np.int32)
    src = np.array([0, 0, 1, 1], np.int32)
    return topo, experts, src


def test_plan_by_hand():
    topo, experts, src = hand_case()
    p = carl.plan(experts, topo, src=src, E=2)
    assert p.hop.tolist() == [[1, 1], [1, 1]] and p.copies == 4
    # first-hop copies grouped by (source, destination): (0,0) t0, (0,1) t1, (1,0) t3, (1,1) t2
    assert p.send_off.tolist() == [0, 1, 2, 3, 4] and p.send_tok.tolist() == [0, 1, 3, 2]
    # rows by (device, slot): device 0 holds tokens 0 and 3 (copies 0, 2), device 1 tokens 1, 2
    assert p.recv_off.tolist() == [0, 2, 4]
    assert p.row_copy.tolist() == [0, 2, 1, 3] and p.row_slot.tolist() == [0, 3, 1, 2]
    assert p.tok_off.tolist() == [0, 1, 2, 3, 4] and p.tok_copy.tolist() == [0, 1, 3, 2]
    assert p.n_fwd == 0 and p.fwd_parent.size == 0
    # views stay valid after the Plan object is gone
    rows = p.row_copy
    del p
    gc.collect()
    assert rows.tolist() == [0, 2, 1, 3] and not rows.flags.writeable


def test_cost_by_hand():
    """Two copies cross the node boundary, each way (dispatch, then combine): 2 x 2 x 1000 bytes
    inter; the two local copies are self. Each phase: every device sends and receives one
    1000-byte message over inter: 1000 / 50e9 s + 10 us."""
    topo, experts, src = hand_case()
    c = carl.cost(experts, topo, src=src, token_bytes=1000, E=2)
    assert c.bytes == {"self": 4000.0, "intra": 0.0, "rack": 0.0, "inter": 4000.0}
    assert c.inter_node_bytes == 4000.0 and c.inter_fraction == 1.0 and c.copies == 4
    assert c.traffic.tolist() == [[2000.0, 2000.0], [2000.0, 2000.0]]
    assert c.send_bytes[:, 3].tolist() == [2000.0, 2000.0] and c.send_msgs[:, 3].tolist() == [2, 2]
    assert c.a2a_s == pytest.approx(2 * (1000 / 50e9 + 10e-6), rel=1e-12)
    p = carl.plan(experts, topo, src=src, E=2)
    assert p.cost(1000).to_dict() == c.to_dict()
    assert carl.cost(p, topo, token_bytes=1000).to_dict() == c.to_dict()


def test_hier_plan():
    """Hierarchical dispatch: the same (token, device) pairs as flat; a copy for several devices of
    one node crosses inter once and is forwarded inside the node."""
    t = carl.Topology(topo_path("h800-2x8"))
    # token 0 on device 0 goes to experts on devices 8 and 9 (node 1): one inter copy, one forward
    ex = np.array([[16, 18]], np.int32)
    f = carl.plan(ex, t, src=np.array([0], np.int32), E=32)
    h = carl.plan(ex, t, src=np.array([0], np.int32), E=32, mode="hier")
    assert f.copies == h.copies == 2
    assert f.n_send == 2 and f.n_fwd == 0
    assert h.n_send == 1 and h.n_fwd == 1
    cf = carl.cost(ex, t, src=np.array([0], np.int32), E=32, token_bytes=1000)
    ch = carl.cost(ex, t, src=np.array([0], np.int32), E=32, token_bytes=1000, mode="hier")
    assert cf.bytes["inter"] == 4000.0 and ch.bytes["inter"] == 2000.0 and ch.bytes["intra"] == 2000.0
