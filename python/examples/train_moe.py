"""Train a PyTorch MoE layer with carl routing and log the dispatch plan's inter-node bytes.

The layer is the usual one (a linear router, E feed-forward experts, outputs combined with the gate
weights); carl.torch.CarlGate takes the place of softmax + topk. Each step routes the batch's
logits through the library (route, dispatch plan on the topology, cost), backpropagates the task
loss plus the router losses into the router (and the experts), and updates the router state.

The task: tokens live on the 16 devices of a 2 x 8 cluster (token t on device t * D / T, as a
data-parallel shard) and come from 32 topics, each with its own linear map to learn; a token's
topic is one of its device's home topics with probability 0.7. A router that sends a topic to
the experts of the node where it is common keeps its tokens inside the node.

    python3 python/examples/train_moe.py --router carl --steps 50
    python3 python/examples/train_moe.py --router topk --aux 0.01 --steps 50
"""

import argparse
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the package of this source tree, when not installed

import carl  # noqa: E402
from carl.torch import CarlGate  # noqa: E402

DEFAULT_TOPOLOGY = os.path.join(os.path.dirname(os.path.dirname(HERE)), "configs", "topologies", "h800-2x8.json")


class MoE(torch.nn.Module):
    def __init__(self, d, hidden, E, gate):
        super().__init__()
        self.router = torch.nn.Linear(d, E, bias=False)
        self.w1 = torch.nn.Parameter(torch.randn(E, d, hidden) / d ** 0.5)
        self.w2 = torch.nn.Parameter(torch.randn(E, hidden, d) / hidden ** 0.5)
        self.gate = gate

    def forward(self, x, src):
        logits = self.router(x)                          # [T, E]
        weights, experts, router_loss = self.gate(logits, src)   # [T, k], [T, k], []
        y = torch.zeros_like(x)
        for e in range(self.w1.shape[0]):
            tok, slot = (experts == e).nonzero(as_tuple=True)
            if tok.numel():
                h = torch.nn.functional.gelu(x[tok] @ self.w1[e]) @ self.w2[e]
                y = y.index_add(0, tok, weights[tok, slot, None] * h)
        return y, router_loss


def batch(gen, T, D, d, centres, maps, home):
    src = torch.arange(T) * D // T
    C = centres.shape[0]
    own = home[src, torch.randint(0, home.shape[1], (T,), generator=gen)]
    anyc = torch.randint(0, C, (T,), generator=gen)
    topic = torch.where(torch.rand(T, generator=gen) < 0.7, own, anyc)
    x = centres[topic] + 0.3 * torch.randn(T, d, generator=gen)
    y = torch.einsum("tij,tj->ti", maps[topic], x)
    return x, y, src.to(torch.int32)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--router", default="carl", help="router name (carl.router_names())")
    ap.add_argument("--topology", default=DEFAULT_TOPOLOGY)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--d", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--aux", type=float, default=None, help="Switch aux loss coefficient (router option aux)")
    a = ap.parse_args(argv)

    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    topo = carl.Topology(a.topology)
    D, C = topo.devices, 32
    centres = torch.randn(C, a.d, generator=gen)
    maps = torch.randn(C, a.d, a.d, generator=gen) / a.d ** 0.5
    home = torch.stack([torch.arange(dev, C, D) for dev in range(D)])  # topics c with c mod D = device

    opts = {"k": a.k}
    if a.aux is not None:
        opts["aux"] = a.aux
    # hidden vectors of d float32 values: the bytes one token copy moves
    gate = CarlGate(a.router, topology=topo, token_bytes=4 * a.d, **opts)
    model = MoE(a.d, a.hidden, a.experts, gate)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    print("router %s on %s (%d devices), %d experts, k = %d, %d tokens per step" % (
        a.router, topo.name, D, a.experts, a.k, a.tokens))
    t0 = time.time()
    for step in range(a.steps):
        x, target, src = batch(gen, a.tokens, D, a.d, centres, maps, home)
        y, router_loss = model(x, src)
        task = torch.nn.functional.mse_loss(y, target)
        opt.zero_grad()
        (task + router_loss).backward()   # gate gradients and router losses flow into the router
        opt.step()
        res = gate.last                   # this step's decision: plan cost, loads
        load = torch.bincount(torch.from_numpy(res.experts[res.experts >= 0]).long(), minlength=a.experts).float()
        print("step %3d  task %.4f  router loss %.5f  inter-node %.4f MB  intra-node %.4f MB  a2a %.4f ms  "
              "expert load max/mean %.2f" % (step, task.item(), router_loss.item(), res.cost.inter_node_bytes / 1e6,
                                             res.cost.bytes["intra"] / 1e6, res.cost.a2a_s * 1e3,
                                             (load.max() / load.mean()).item()))
    print("%d steps in %.1f s" % (a.steps, time.time() - t0))


if __name__ == "__main__":
    main()
