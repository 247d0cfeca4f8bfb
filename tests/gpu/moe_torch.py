#!/usr/bin/env python3
"""The GPU MoE layer against PyTorch, on the GPU machine.

Runs the dump program (tests/gpu/moe_dump.c) on fresh random inputs (a new seed each run, printed),
then computes the same layer with PyTorch on the GPU from the same bf16 values and the same routing:
  reference: float32 autograd (upcast bf16 inputs; TF32 off), per-expert matmuls;
  PyTorch bf16: torch._grouped_mm forward and autograd backward, for context.
Checks: relative L2 error of our y, dx, dW13, dW2, d(gates) against the float32 reference under
1e-2 (bf16 operands, METHOD.md), and d(logits) of the gate backward against autograd through
softmax, gather and renormalisation (float32 both: under 1e-5). Exit status 1 on a failure.

usage: moe_torch.py DUMP_PROGRAM [T d f E k] [--gemm 0|1]
"""
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch


def rel(a, b):
    a = a.double()
    b = b.double()
    den = b.norm().item()
    return (a - b).norm().item() / (den if den > 0 else 1.0)


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    gemm = "1" if "--gemm=1" in sys.argv else "0"
    prog = args[0]
    T, d, f, E, k = (int(v) for v in (args[1:6] if len(args) >= 6 else (4096, 1024, 512, 16, 4)))
    seed = int(time.time() * 1000) % (1 << 31)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([prog, tmp, str(T), str(d), str(f), str(E), str(k), gemm, str(seed)], check=True)
        L = {n[:-4]: torch.from_numpy(np.load(os.path.join(tmp, n))).to(dev) for n in os.listdir(tmp)}
    x, w13, w2, dy = L["x"], L["w13"], L["w2"], L["dy"]
    experts, gates, logits = L["experts"].long(), L["gates"], L["logits"]
    print(f"moe_torch: seed {seed}, T {T} d {d} f {f} E {E} k {k}, gemm mode {gemm}, torch {torch.__version__}, "
          f"{torch.cuda.get_device_name()}")

    # routing as rows grouped by expert, token order inside an expert (the plan's order)
    flat = experts.reshape(-1)
    keep = flat >= 0
    slots = torch.arange(T * k, device=dev)[keep]
    order = torch.argsort(flat[keep], stable=True)
    slot_sorted = slots[order]
    tok_sorted = slot_sorted // k
    counts = torch.bincount(flat[keep], minlength=E)
    offs = torch.cumsum(counts, 0)

    def layer(x, w13, w2, g, grouped):
        xs = x[tok_sorted]
        gs = g.reshape(-1)[slot_sorted]
        if grouped:
            h = torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offs.int())
        else:
            parts, a0 = [], 0
            for e in range(E):
                a1 = int(offs[e])
                parts.append(xs[a0:a1] @ w13[e].t())
                a0 = a1
            h = torch.cat(parts)
        a = torch.nn.functional.silu(h[:, :f]) * h[:, f:]
        if grouped:
            ys = torch._grouped_mm(a, w2.transpose(-2, -1), offs=offs.int())
        else:
            parts, a0 = [], 0
            for e in range(E):
                a1 = int(offs[e])
                parts.append(a[a0:a1] @ w2[e].t())
                a0 = a1
            ys = torch.cat(parts)
        y = torch.zeros_like(x).index_add_(0, tok_sorted, ys * gs[:, None].to(ys.dtype))
        return y

    res = {}
    for name, dt, grouped in (("ref", torch.float32, False), ("torch_bf16", torch.bfloat16, True)):
        xx = x.detach().to(dt).clone().requires_grad_()
        a13 = w13.detach().to(dt).clone().requires_grad_()
        a2 = w2.detach().to(dt).clone().requires_grad_()
        gg = gates.clone().requires_grad_()
        y = layer(xx, a13, a2, gg, grouped)
        y.backward(dy.to(dt))
        res[name] = dict(y=y.detach().float(), dx=xx.grad.float(), dw13=a13.grad.float(), dw2=a2.grad.float(),
                         dgates=gg.grad.float())
    ours = dict(y=L["y"], dx=L["dx"], dw13=L["dw13"], dw2=L["dw2"], dgates=L["dgates"])
    ok = True
    print("| tensor | ours vs float32 reference | PyTorch bf16 (_grouped_mm) vs reference |")
    print("|---|---|---|")
    for n in ("y", "dx", "dw13", "dw2", "dgates"):
        e_ours = rel(ours[n], res["ref"][n])
        e_t = rel(res["torch_bf16"][n], res["ref"][n])
        print(f"| {n} | {e_ours:.3e} | {e_t:.3e} |")
        ok &= e_ours < 1e-2
    # gate backward: autograd through softmax, gather, renormalisation, with our d(gates) upstream
    z = logits.clone().requires_grad_()
    s = torch.softmax(z, -1)
    w = s.gather(1, experts.clamp(min=0)) * (experts >= 0)
    w = w / w.sum(-1, keepdim=True)
    w.backward(L["dgates"])
    e_gb = rel(L["dlogits"], z.grad)
    print(f"| dlogits (gate backward) | {e_gb:.3e} | |")
    ok &= e_gb < 1e-5
    print("moe_torch:", "PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
