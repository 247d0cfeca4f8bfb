#!/usr/bin/env python3
"""PyTorch's side of bench/gpu/moe: the bf16 MoE expert layer forward + backward through
torch._grouped_mm on the same three shapes, the same GPU, in the same run. Routing: softmax top-k
of random logits, rows sorted by expert (not timed, as in ours). Timed: gather of the rows,
grouped GEMM, SwiGLU, grouped GEMM, gated index_add (forward) and autograd's backward (dx, dW13,
dW2, d(gates)), CUDA events, median of the repeats after 2 warm-ups.
usage: torch_moe.py [repeats] [config index or -1]"""
import sys

import torch

REPS = int(sys.argv[1]) if len(sys.argv) > 1 else 10
ONLY = int(sys.argv[2]) if len(sys.argv) > 2 else -1
CFG = [(16384, 4096, 14336, 8, 2), (16384, 2048, 1408, 64, 6), (65536, 1024, 512, 128, 8)]
dev = torch.device("cuda")


def main():
    print(f"bench/gpu/torch_moe: torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print("| T | d | f | E | k | forward ms | fwd+bwd ms | TFLOP/s |\n|---|---|---|---|---|---|---|---|")
    for ci, (T, d, f, E, k) in enumerate(CFG):
        if ONLY >= 0 and ci != ONLY:
            continue
        g = torch.Generator(device=dev).manual_seed(ci)
        logits = torch.rand(T, E, device=dev, generator=g)
        w, idx = torch.softmax(logits, -1).topk(k, -1)
        w = w / w.sum(-1, keepdim=True)
        flat = idx.reshape(-1)
        order = torch.argsort(flat, stable=True)
        tok = order // k
        offs = torch.cumsum(torch.bincount(flat, minlength=E), 0).int()
        x = torch.randn(T, d, device=dev, dtype=torch.bfloat16, requires_grad=True)
        w13 = (0.02 * torch.randn(E, 2 * f, d, device=dev, dtype=torch.bfloat16)).requires_grad_()
        w2 = (0.02 * torch.randn(E, d, f, device=dev, dtype=torch.bfloat16)).requires_grad_()
        gates = w.clone().requires_grad_()
        dy = torch.randn(T, d, device=dev, dtype=torch.bfloat16)

        def fwd():
            xs = x[tok]
            h = torch._grouped_mm(xs, w13.transpose(-2, -1), offs=offs)
            a = torch.nn.functional.silu(h[:, :f]) * h[:, f:]
            ys = torch._grouped_mm(a, w2.transpose(-2, -1), offs=offs)
            gs = gates.reshape(-1)[order]
            return torch.zeros(T, d, device=dev, dtype=torch.bfloat16).index_add_(0, tok, ys * gs[:, None].to(ys.dtype))

        fms, tms = [], []
        for i in range(2 + REPS):
            a, b, c = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            x.grad = w13.grad = w2.grad = gates.grad = None
            a.record()
            y = fwd()
            b.record()
            y.backward(dy)
            c.record()
            c.synchronize()
            if i >= 2:
                fms.append(a.elapsed_time(b))
                tms.append(a.elapsed_time(c))
            del y
        fms.sort()
        tms.sort()
        rows = T * k
        fl = 18.0 * rows * d * f
        t = tms[len(tms) // 2]
        print(f"| {T} | {d} | {f} | {E} | {k} | {fms[len(fms) // 2]:.2f} | {t:.2f} | {fl / (t * 1e-3) / 1e12:.0f} |")
        print(f"RESULT torch moe T={T} d={d} f={f} E={E} k={k} fwd_ms {fms[len(fms) // 2]:.3f} fwdbwd_ms {t:.3f} "
              f"tflops {fl / (t * 1e-3) / 1e12:.1f}", flush=True)
        del x, w13, w2, gates, dy
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
