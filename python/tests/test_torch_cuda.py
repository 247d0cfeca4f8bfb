"""The PyTorch integration with CUDA tensors (skipped where torch has no CUDA device): routing
logits that live on the GPU gives the experts and gates of the same logits on the CPU, bit for bit,
on the logits' device; the gradients that flow back into GPU logits equal those of the CPU run; a
CarlGate in a small MoE layer on the GPU trains (its loss falls) and keeps the router state in step
with a CPU twin fed the same logits."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device for torch", allow_module_level=True)

from conftest import topo_path  # noqa: E402
import carl  # noqa: E402
import carl.torch as ct  # noqa: E402

TOPO = topo_path("h800-2x8")


@pytest.mark.parametrize("router,opts", [("topk", {"k": 2, "aux": 0.01}), ("lossfree", {"k": 2}),
                                         ("carl", {"k": 2, "W": 0})])
def test_cuda_equals_cpu(router, opts):
    T, E = 256, 16
    g = torch.Generator().manual_seed(5)
    z = torch.randn(T, E, generator=g)
    c = torch.randn(T, 2, generator=g)
    outs = []
    for dev in ("cpu", "cuda"):
        r = carl.Router(router, topology=TOPO, **opts)
        zd = z.detach().clone().to(dev).requires_grad_(True)
        w, e, loss, res = ct.route(zd, r, update="manual")
        assert w.device.type == dev and e.device.type == dev and loss.device.type == dev
        ((w * c.to(dev)).sum() + loss).backward()
        outs.append((w.detach().cpu(), e.cpu(), loss.item(), zd.grad.cpu()))
    (w0, e0, l0, g0), (w1, e1, l1, g1) = outs
    assert torch.equal(e0, e1)
    assert torch.equal(w0, w1)
    assert l0 == l1
    assert torch.equal(g0, g1)


def test_cuda_gate_trains():
    torch.manual_seed(0)
    T, d, E = 512, 32, 16
    x = torch.randn(T, d, device="cuda")
    target = torch.randn(T, d, device="cuda")
    Wr = torch.nn.Linear(d, E, bias=False).cuda()
    experts = torch.nn.ModuleList([torch.nn.Linear(d, d) for _ in range(E)]).cuda()
    gate = ct.CarlGate("lossfree", topology=TOPO, k=2)
    twin = carl.Router("lossfree", topology=TOPO, k=2)
    opt = torch.optim.Adam(list(Wr.parameters()) + list(experts.parameters()), lr=1e-2)
    losses = []
    for step in range(30):
        z = Wr(x)
        zc = z.detach().cpu().numpy()
        w, e, aux = gate(z)
        twin.route(zc)  # the same logits through a CPU router: same state after each update
        y = torch.zeros_like(x)
        for j in range(gate.k):
            for ex in range(E):
                m = e[:, j] == ex
                if m.any():
                    y[m] += w[m, j:j + 1] * experts[ex](x[m])
        loss = ((y - target) ** 2).mean() + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    # same router state: the next routing of fresh logits agrees
    zn = np.random.default_rng(1).standard_normal((T, E)).astype(np.float32)
    a = gate.router.route(zn, update=False)
    b = twin.route(zn, update=False)
    assert np.array_equal(a.experts, b.experts) and np.array_equal(a.weights, b.weights)
