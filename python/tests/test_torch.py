"""The PyTorch integration: gradients of the autograd Function by finite differences (float32,
with the error bound worked out below), against the C router backward, against the gate and loss
gradients written from their formulas (ALGORITHMS.md 2.1, 2.11); the gate module's update order;
bad tensors. The routers compute in float32 only, so torch.autograd.gradcheck (float64) does not
apply: the finite differences below are its float32 counterpart."""

import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import PYDIR, topo_path  # noqa: E402
import carl  # noqa: E402
import carl.torch as ct  # noqa: E402

TOPO = topo_path("h800-2x8")


def separated_logits(T, E, k, seed, gap=2.0, spacing=0.75):
    """Logits with no near-ties inside a token: the other experts' logits are evenly spaced
    (0.1 apart, small jitter, random order) below the k best, which lead them by at least `gap`
    and each other by about `spacing`; the lead grows by 0.03 per token, so that routers that rank
    tokens against each other see fewer near-ties too."""
    rng = np.random.default_rng(seed)
    z = np.empty((T, E))
    for t in range(T):
        perm = rng.permutation(E)
        z[t, perm[k:]] = -0.1 * np.arange(E - k) + rng.uniform(0, 0.02, E - k)
        z[t, perm[:k]] = gap + 0.03 * t + spacing * np.arange(k)[::-1] + rng.uniform(0, 0.01, k)
    return z.astype(np.float32)


# (router, options) whose gates are differentiable functions of the logits at fixed selection
FD_ROUTERS = [
    ("topk", {"k": 2}), ("topk", {"k": 3, "aux": 0.05, "z_loss": 0.01}), ("topk", {"k": 2, "score": 1}),
    ("switch", {}), ("sinkhorn", {"k": 2}), ("lossfree", {"k": 2}), ("grouplimited", {"k": 2}), ("bip", {"k": 2}),
    ("carl", {"k": 2}), ("carl", {"k": 2, "W": 0, "alpha_E0": 0.02, "alpha_G0": 0.05, "adaptive": 0}),
    ("fastermoe", {"k": 2}), ("expert_choice", {"k": 2}), ("locmoe", {}), ("hash", {}),
]


def fd_case(router, opts):
    T, E = 64, 16
    r = carl.Router(router, topology=TOPO, **opts)
    k = r.k
    ids = np.arange(T, dtype=np.int32)
    # a few updates first, so that stateful routers (bias, duals, controller) are not at zero
    for s in range(3):
        r.route(separated_logits(T, E, k, 100 + s), token_ids=ids)
    z = separated_logits(T, E, k, 7)
    c = np.random.default_rng(3).uniform(-1, 1, (T, k)).astype(np.float32)
    return r, z, ids, c


def objective(r, z, ids, c, step):
    res = r.route(z, token_ids=ids, step=step, update=False)
    return res, float(np.sum(c.astype(np.float64) * res.weights)) + 0.5 * res.loss_total


@pytest.mark.parametrize("router,opts", FD_ROUTERS, ids=["%s-%d" % (r, i) for i, (r, _) in enumerate(FD_ROUTERS)])
def test_autograd_by_finite_differences(router, opts):
    """L = sum(c * weights) + 0.5 * loss; dL/dz by autograd against central differences over the
    logits of 4 of the 64 tokens (every expert).

    The derivative exists where the selection is locally constant. Routers that balance a batch
    (sinkhorn, bip, expert_choice, fastermoe's quota) couple the tokens, so a perturbation of one
    token can change another's choice; such coordinates (the whole decision is compared) are left
    out, and at least 90% of them must remain.

    Error bound of the differences, h = 1e-2: a perturbation of z[t, e] changes token t's k
    weights only (the other tokens' are recomputed bit for bit), each rounded to float32 (relative
    2^-24), so rounding contributes at most 2 k max|c| 2^-24 / (2h) = 2.4e-5 for k = 2, 3.6e-5 for
    k = 3; the losses are double sums (rounding 1e-16 relative). Truncation is h^2 / 6 |d3L|;
    for softmax and sigmoid gates every third derivative of a weight is below 1 in magnitude, so
    it contributes at most k max|c| h^2 / 6 <= 5e-5 (plus the losses' much smaller share). The
    tolerance 1e-4 covers both; a wrong gradient term (a missing renormalisation, a dropped loss)
    is of the order of the gradient itself (0.01 .. 1)."""
    r, z, ids, c = fd_case(router, opts)
    step = r.step
    base, _ = objective(r, z, ids, c, step)
    if router == "hash":  # gates are constant 1: no gradient
        assert np.all(base.weights == 1.0) and not r.backward(base, c).any()
        return
    zt = torch.from_numpy(z.copy()).requires_grad_(True)
    w, e, loss, res = ct.route(zt, r, update="manual")
    assert np.array_equal(res.experts, base.experts)
    (torch.sum(torch.from_numpy(c) * w) + 0.5 * loss).backward()
    g = zt.grad.numpy()
    h = 1e-2
    checked, err = 0, 0.0
    coords = [(t, j) for t in range(4) for j in range(z.shape[1])]
    for t, j in coords:
        zp, zm = z.copy(), z.copy()
        zp[t, j] += h
        zm[t, j] -= h
        rp, lp = objective(r, zp, ids, c, step)
        rm, lm = objective(r, zm, ids, c, step)
        if not (np.array_equal(rp.experts, base.experts) and np.array_equal(rm.experts, base.experts)):
            continue
        checked += 1
        err = max(err, abs(g[t, j] - (lp - lm) / (2 * h)))
    assert checked >= 0.9 * len(coords), "selection changed at %d of %d coordinates" % (len(coords) - checked, len(coords))
    assert err <= 1e-4, err
    assert np.abs(g[:4]).max() > 1e-3  # not vacuous


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def gate_grad_reference(z, experts, c, score, renorm):
    """dL/dz of L = sum_j c_j w_j, w_j = s[e_j] / Z (Z = sum over the kept experts, renorm) or
    s[e_j]; s = softmax(z) or sigmoid(z): the chain rule in float64."""
    z = z.astype(np.float64)
    s = softmax(z) if score == 0 else 1 / (1 + np.exp(-z))
    T, E = z.shape
    g = np.zeros((T, E))
    for t in range(T):
        kept = [(j, ex) for j, ex in enumerate(experts[t]) if ex >= 0]
        ds = np.zeros(E)
        Z = sum(s[t, ex] for _, ex in kept) if renorm else 1.0
        for j, ex in kept:
            ds[ex] += c[t, j] / Z
        if renorm:
            dot = sum(c[t, j] * s[t, ex] for j, ex in kept) / Z ** 2
            for _, ex in kept:
                ds[ex] -= dot
        if score == 0:
            g[t] = s[t] * (ds - np.dot(s[t], ds))
        else:
            g[t] = ds * s[t] * (1 - s[t])
    return g


def loss_grad_reference(z, experts, k, z_coef, aux_coef):
    """z-loss coef * mean_t lse_t^2 and Switch aux coef * E * sum_e f_e P_e (softmax) with their
    gradients, f_e = load_e / (T k) held constant, P_e = mean_t softmax(z_t)_e."""
    z = z.astype(np.float64)
    T, E = z.shape
    m = z.max(1, keepdims=True)
    lse = (m + np.log(np.exp(z - m).sum(1, keepdims=True)))[:, 0]
    p = softmax(z)
    val = {"z": z_coef * np.mean(lse ** 2)}
    g = z_coef * 2 * lse[:, None] * p / T
    if aux_coef > 0:
        load = np.bincount(experts[experts >= 0], minlength=E).astype(np.float64)
        f = load / (T * k)
        val["aux"] = aux_coef * E * np.dot(f, p.mean(0))
        g += aux_coef * E / T * p * (f[None, :] - (p * f[None, :]).sum(1, keepdims=True))
    return val, g


@pytest.mark.parametrize("router,opts,score,renorm", [
    ("topk", {"k": 4, "aux": 0.01}, 0, 1), ("switch", {"aux": 0.01}, 0, 0), ("lossfree", {"k": 4, "z_loss": 1e-3}, 1, 1),
    ("sinkhorn", {"k": 2, "aux": 0.02}, 0, 0), ("carl", {"k": 4, "W": 0}, 0, 1)])
def test_gradients_against_formulas(router, opts, score, renorm):
    """The Function's gradient is the C router backward plus the losses' dlogits, bit for bit; and
    both agree with the formulas above to float32 accuracy (relative 1e-5 of the largest entry)."""
    rng = np.random.default_rng(11)
    T, E = 256, 32
    z = rng.standard_normal((T, E)).astype(np.float32)
    r = carl.Router(router, topology=TOPO, **opts)
    zt = torch.from_numpy(z.copy()).requires_grad_(True)
    w, e, loss, res = ct.route(zt, r, update="manual")
    c = rng.uniform(-1, 1, w.shape).astype(np.float32)
    (torch.sum(torch.from_numpy(c) * w) + 3.0 * loss).backward()
    g = zt.grad.numpy()
    # the C router backward, called directly: (0 + gate part) + 3 * dlogits in float32
    want = r.backward(res, c) + np.float32(3.0) * res.dlogits
    assert np.array_equal(g.view(np.uint32), want.view(np.uint32))
    # gate part against the chain rule
    gate = r.backward(res, c)
    ref = gate_grad_reference(z, res.experts, c, score, renorm)
    assert np.abs(gate - ref).max() <= 1e-5 * np.abs(ref).max()
    # losses (not carl's L_E / L_G: with W = 0 and zero initial coefficients carl has only z)
    if router != "lossfree" or opts.get("z_loss"):
        val, lref = loss_grad_reference(z, res.experts, res.experts.shape[1], r.get("z_loss"),
                                        r.get("aux") if router != "carl" else 0.0)
        assert set(res.losses) == set(val), (res.losses, val)
        for key in val:
            assert res.losses[key] == pytest.approx(val[key], rel=1e-6)
        assert np.abs(res.dlogits - lref).max() <= 1e-5 * np.abs(lref).max()


def test_gate_update_order(tmp_path):
    """update="backward": lossfree's bias moves after the backward pass, as in the C trainer (the
    same state as Router.route + update on the same logits); eval mode and no_grad leave it."""
    z = torch.randn(128, 16, generator=torch.Generator().manual_seed(0))
    gate = ct.CarlGate("lossfree", topology=TOPO, k=2)
    ref = carl.Router("lossfree", topology=TOPO, k=2)
    x = z.clone().requires_grad_(True)
    w, e, loss = gate(x)
    # after the forward: the state of a router that routed this batch without an update
    carl.Router("lossfree", topology=TOPO, k=2).route(z.numpy(), update=False).router.save(tmp_path / "s0.bin")
    gate.router.save(tmp_path / "s_fwd.bin")
    assert (tmp_path / "s_fwd.bin").read_bytes() == (tmp_path / "s0.bin").read_bytes() and gate.router.step == 0
    w.sum().backward()
    ref.route(z.numpy())
    gate.router.save(tmp_path / "s1.bin")
    ref.save(tmp_path / "r1.bin")
    assert (tmp_path / "s1.bin").read_bytes() == (tmp_path / "r1.bin").read_bytes() != (tmp_path / "s0.bin").read_bytes()
    assert gate.router.step == 1 and gate.last.updated
    # eval mode / no_grad: no update
    gate.eval()
    with torch.no_grad():
        gate(z)
    gate.train()
    gate(z)  # forward without backward: nothing either
    gate.router.save(tmp_path / "s2.bin")
    assert (tmp_path / "s2.bin").read_bytes() == (tmp_path / "s1.bin").read_bytes() and gate.router.step == 1
    # update="forward" updates at once; "manual" on gate.update()
    g2 = ct.CarlGate("lossfree", topology=TOPO, k=2, update="forward")
    g2(z.clone().requires_grad_(True))
    assert g2.router.step == 1
    g3 = ct.CarlGate("lossfree", topology=TOPO, k=2, update="manual")
    g3(z.clone().requires_grad_(True))[0].sum().backward()
    assert g3.router.step == 0
    g3.update()
    g3.router.save(tmp_path / "s3.bin")
    assert g3.router.step == 1 and (tmp_path / "s3.bin").read_bytes() == (tmp_path / "r1.bin").read_bytes()


def test_cost_and_devices():
    gate = ct.CarlGate("carl", topology=TOPO, k=2)
    z = torch.randn(256, 32, dtype=torch.float64, requires_grad=True)  # routed in float32
    w, e, loss = gate(z)
    assert w.dtype == torch.float32 and e.dtype == torch.int64 and e.shape == (256, 2)
    res = gate.last
    assert res.cost.inter_node_bytes == res.cost.bytes["rack"] + res.cost.bytes["inter"] > 0
    (w.sum() + loss).backward()
    assert z.grad.dtype == torch.float64 and torch.isfinite(z.grad).all()
    src = torch.arange(256) * 16 // 256
    w2, e2, _ = ct.CarlGate("topk", topology=TOPO, k=2)(torch.randn(256, 32), src=src)
    assert e2.shape == (256, 2)


def test_bad_tensors():
    gate = ct.CarlGate("topk", topology=TOPO, k=2)
    with pytest.raises(carl.DtypeError, match="expected a floating dtype"):
        gate(torch.zeros(8, 4, dtype=torch.int32))
    with pytest.raises(carl.ShapeError, match="3 dimensions"):
        gate(torch.zeros(2, 8, 4))
    with pytest.raises(carl.NumericError, match="token 1"):
        z = torch.zeros(8, 4)
        z[1, 2] = float("nan")
        gate(z)
    with pytest.raises(carl.DtypeError, match="src"):
        gate(torch.zeros(8, 4), src=torch.zeros(8))
    with pytest.raises(carl.InvalidError, match="update"):
        ct.CarlGate("topk", update="sometimes")
    # an in-place change of the logits between forward and backward is refused by autograd
    x = torch.randn(8, 4, requires_grad=True)
    y = x * 1.0
    w, _, _ = gate(y)
    y.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        w.sum().backward()


def test_example_runs(tmp_path):
    p = subprocess.run([sys.executable, os.path.join(PYDIR, "examples", "train_moe.py"), "--steps", "4", "--tokens",
                        "256"], capture_output=True, text=True, env=dict(os.environ), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    lines = [l for l in p.stdout.splitlines() if l.startswith("step ")]
    assert len(lines) == 4 and all("inter-node" in l for l in lines)
