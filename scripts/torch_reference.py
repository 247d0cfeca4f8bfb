#!/usr/bin/env python3
"""PyTorch reference for one step of the MoE transformer (tests/test_torch_ref.c).

Reads the inputs that `CARL_TORCH_DUMP=<dir> build/test_torch_ref` writes into <dir>
(config.json, layout.json, params.npy, tokens.npy, targets.npy), runs the same model in PyTorch
(forward, loss = cross-entropy + router z-loss + Switch aux loss, autograd backward) and writes
into <dir>/out:
  loss_f32.npy [3]  (ce, router, total) in float32 on the chosen device
  grads_f32.npy     [nparams] gradients in float32 (TF32 off), same flat layout as params.npy
  loss_f64.npy, grads_f64.npy   the same in float64 (to show what fp32 rounding alone moves)
  experts.npy       [L, T, k] int32 experts chosen per layer (float32 run)

Routing semantics (carl/route.h `topk`): s = softmax(z); the k largest scores with the lower
expert index first among equal scores (stable descending sort); gates = s at the chosen experts,
renormalised over them when renorm = 1; dropless (capacity_factor 0). Router losses:
z-loss = z_loss * mean_t logsumexp(z_t)^2; aux = aux * E * sum_e f_e P_e with
f_e = load_e / (T k) (a count, no gradient) and P_e = mean_t s[t, e].

Usage: python3 scripts/torch_reference.py <dir> [cuda|cpu]
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F


def run(inp, cfg, layout, dtype, device):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    flat = torch.tensor(inp["params"], dtype=dtype, device=device)
    params = {}
    for t in layout:
        n = int(np.prod(t["shape"]))
        params[t["name"]] = flat[t["offset"]:t["offset"] + n].view(*t["shape"]).clone().requires_grad_(True)
    tokens = torch.tensor(inp["tokens"], dtype=torch.long, device=device)
    targets = torch.tensor(inp["targets"], dtype=torch.long, device=device)
    B, S = tokens.shape
    d, H, L = cfg["d_model"], cfg["n_heads"], cfg["n_layers"]
    E, k, f, fs = cfg["n_experts"], cfg["top_k"], cfg["d_ff"], cfg["d_shared"]
    eps = cfg["norm_eps"]
    hd = d // H
    T = B * S

    def rms(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    def swiglu(x, w13, w2, width):
        h = x @ w13.t()
        return (F.silu(h[:, :width]) * h[:, width:]) @ w2.t()

    h = params["tok_emb"][tokens] + params["pos_emb"][:S].unsqueeze(0)
    h = h.view(T, d)
    router_loss = torch.zeros((), dtype=dtype, device=device)
    experts_all = []
    mask = torch.ones(S, S, dtype=torch.bool, device=device).tril()
    for l in range(L):
        p = lambda n: params[f"layers.{l}.{n}"]
        x = rms(h, p("attn_norm"))
        qkv = (x @ p("attn.wqkv").t()).view(B, S, 3, H, hd)
        q, kk, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))  # [B, H, S, hd]
        sc = (q @ kk.transpose(-1, -2)) / (hd ** 0.5)
        sc = sc.masked_fill(~mask, float("-inf"))
        a = torch.softmax(sc, dim=-1) @ v
        a = a.transpose(1, 2).reshape(T, d)
        h = h + a @ p("attn.wo").t()
        x = rms(h, p("moe_norm"))
        z = x @ p("moe.router").t()  # [T, E]
        s = torch.softmax(z, dim=-1)
        idx = torch.sort(s.detach(), dim=-1, descending=True, stable=True).indices[:, :k]  # [T, k]
        gates = s.gather(1, idx)
        if cfg["renorm"]:
            gates = gates / gates.sum(-1, keepdim=True)
        y = torch.zeros_like(x)
        for e in range(E):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            ye = swiglu(x[tok], p("moe.w13")[e], p("moe.w2")[e], f)
            y = y.index_add(0, tok, gates[tok, slot].unsqueeze(1) * ye)
        if fs:
            y = y + swiglu(x, p("moe.shared_w13"), p("moe.shared_w2"), fs)
        h = h + y
        if cfg["z_loss"] > 0:
            router_loss = router_loss + cfg["z_loss"] * torch.logsumexp(z, dim=-1).pow(2).mean()
        if cfg["aux"] > 0:
            load = torch.bincount(idx.reshape(-1), minlength=E).to(dtype)
            fe = load / (T * k)
            router_loss = router_loss + cfg["aux"] * E * (fe * s.mean(0)).sum()
        experts_all.append(idx.to(torch.int32).cpu().numpy())
    x = rms(h, params["final_norm"])
    logits = x @ params["tok_emb"].t()
    ce = F.cross_entropy(logits, targets.view(-1), ignore_index=-1)
    total = ce + router_loss
    total.backward()
    grads = np.zeros_like(inp["params"], dtype=np.float64)
    for t in layout:
        n = int(np.prod(t["shape"]))
        grads[t["offset"]:t["offset"] + n] = params[t["name"]].grad.detach().double().cpu().numpy().reshape(-1)
    loss = np.array([ce.item(), router_loss.item(), total.item()], dtype=np.float64)
    return loss, grads, np.stack(experts_all)


def main():
    d = sys.argv[1]
    device = sys.argv[2] if len(sys.argv) > 2 else ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = json.load(open(os.path.join(d, "config.json")))
    layout = json.load(open(os.path.join(d, "layout.json")))
    inp = {
        "params": np.load(os.path.join(d, "params.npy")),
        "tokens": np.load(os.path.join(d, "tokens.npy")),
        "targets": np.load(os.path.join(d, "targets.npy")),
    }
    out = os.path.join(d, "out")
    os.makedirs(out, exist_ok=True)
    loss32, g32, ex32 = run(inp, cfg, layout, torch.float32, device)
    loss64, g64, ex64 = run(inp, cfg, layout, torch.float64, device)
    if not np.array_equal(ex32, ex64):
        print("warning: float32 and float64 routing differ", file=sys.stderr)
    np.save(os.path.join(out, "loss_f32.npy"), loss32)
    np.save(os.path.join(out, "grads_f32.npy"), g32.astype(np.float32))
    np.save(os.path.join(out, "loss_f64.npy"), loss64)
    np.save(os.path.join(out, "grads_f64.npy"), g64)
    np.save(os.path.join(out, "experts.npy"), ex32.astype(np.int32))
    rel = np.abs(g32 - g64).max() / np.abs(g64).max()
    with open(os.path.join(out, "provenance.txt"), "w") as fp:
        fp.write(f"torch {torch.__version__}, device {device}"
                 f"{' (' + torch.cuda.get_device_name(0) + ')' if device == 'cuda' else ''}, TF32 off\n")
        fp.write(f"loss f32 {loss32.tolist()}\nloss f64 {loss64.tolist()}\n")
        fp.write(f"max |g32 - g64| / max |g64| = {rel:.3e}\n")
    print(open(os.path.join(out, "provenance.txt")).read(), end="")


if __name__ == "__main__":
    main()
