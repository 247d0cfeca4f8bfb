#!/usr/bin/env python3
"""PyTorch's side of bench/gpu/route: the same routing policies in PyTorch eager mode on the same
GPU, at the same shape (default 1,048,576 x 256 fp32 logits, k = 8), timed with CUDA events
(median of the repeats after warm-ups), plus the device-to-device copy rate and the dense bf16
GEMM rate (8192^3) of this GPU in this run.

Each policy computes what ours returns: experts, gate weights, per-expert loads and, where ours
does, the loss statistics (sum of p over tokens, sum of logsumexp^2) and the per-(source,
destination)-device copy counts.
usage: torch_route.py [T] [E] [k] [repeats]"""
import sys

import torch

T = int(sys.argv[1]) if len(sys.argv) > 1 else 1048576
E = int(sys.argv[2]) if len(sys.argv) > 2 else 256
K = int(sys.argv[3]) if len(sys.argv) > 3 else 8
REPS = int(sys.argv[4]) if len(sys.argv) > 4 else 10
dev = torch.device("cuda")


def timed(fn, reps=REPS, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b))
    ts.sort()
    return ts[len(ts) // 2]


z = torch.randn(T, E, device=dev)
bias = 0.01 * torch.randn(E, device=dev)
D, P = 64, 8  # carl: 8 nodes x 8 devices
G, M = 8, 4
cost = torch.zeros(D, E, device=dev)  # c^(a, e): 0 self, 160/50 intra... the normalised costs
edev = torch.arange(E, device=dev) * D // E
for a in range(D):
    same_node = (edev // P) == (a // P)
    cost[a] = torch.where(edev == a, 0.0, torch.where(same_node, 50.0 / 160.0, 1.0))
cbias = -0.1 * cost
src = torch.arange(T, device=dev) * D // T


def topk_plain():
    s = torch.softmax(z, -1)
    w, idx = s.topk(K, -1)
    w = w / w.sum(-1, keepdim=True)
    load = torch.bincount(idx.reshape(-1), minlength=E)
    return idx, w, load


def topk_stats():
    lse = torch.logsumexp(z, -1)
    s = torch.exp(z - lse[:, None])
    w, idx = s.topk(K, -1)
    w = w / w.sum(-1, keepdim=True)
    load = torch.bincount(idx.reshape(-1), minlength=E)
    return idx, w, load, s.sum(0), (lse * lse).sum()


def lossfree():
    s = torch.sigmoid(z)
    _, idx = (s + bias).topk(K, -1)
    w = s.gather(1, idx)
    w = w / w.sum(-1, keepdim=True)
    return idx, w, torch.bincount(idx.reshape(-1), minlength=E)


def deepseek_v3():
    s = torch.sigmoid(z)
    sc = s + bias
    gs = sc.view(T, G, E // G).topk(2, -1).values.sum(-1)
    gi = gs.topk(M, -1).indices
    gm = torch.zeros(T, G, device=dev, dtype=torch.bool).scatter_(1, gi, True)
    em = gm[:, :, None].expand(T, G, E // G).reshape(T, E)
    _, idx = sc.masked_fill(~em, float("-inf")).topk(K, -1)
    w = s.gather(1, idx)
    w = w / w.sum(-1, keepdim=True)
    return idx, w, torch.bincount(idx.reshape(-1), minlength=E)


def grouplimited():
    s = torch.softmax(z, -1)
    gs = s.view(T, G, E // G).topk(2, -1).values.sum(-1)
    gi = gs.topk(M, -1).indices
    gm = torch.zeros(T, G, device=dev, dtype=torch.bool).scatter_(1, gi, True)
    em = gm[:, :, None].expand(T, G, E // G).reshape(T, E)
    w, idx = s.masked_fill(~em, 0.0).topk(K, -1)
    w = w / w.sum(-1, keepdim=True)
    return idx, w, torch.bincount(idx.reshape(-1), minlength=E)


def hop_counts(idx):
    dv = idx // (E // D)  # destination device of each slot
    hit = torch.zeros(T, D, device=dev, dtype=torch.int32).scatter_(1, dv, 1)
    return torch.zeros(D, D, device=dev, dtype=torch.int32).index_add_(0, src, hit)


def carl_nodes():
    lse = torch.logsumexp(z, -1)
    s = torch.exp(z - lse[:, None])
    u = s + cbias[src]
    ns = u.view(T, D // P, E // (D // P)).topk(2, -1).values.sum(-1)
    ni = ns.topk(M, -1).indices
    nm = torch.zeros(T, D // P, device=dev, dtype=torch.bool).scatter_(1, ni, True)
    em = nm[:, :, None].expand(T, D // P, E // (D // P)).reshape(T, E)
    _, idx = u.masked_fill(~em, float("-inf")).topk(K, -1)
    w = s.gather(1, idx)
    w = w / w.sum(-1, keepdim=True)
    w, o = w.sort(-1, descending=True)
    idx = idx.gather(1, o)
    return idx, w, torch.bincount(idx.reshape(-1), minlength=E), s.sum(0), (lse * lse).sum(), hop_counts(idx)


def carl_flat():
    s = torch.softmax(z, -1)
    u = s + cbias[src]
    _, idx = u.topk(K, -1)
    w = s.gather(1, idx)
    w = w / w.sum(-1, keepdim=True)
    w, o = w.sort(-1, descending=True)
    idx = idx.gather(1, o)
    return idx, w, torch.bincount(idx.reshape(-1), minlength=E), hop_counts(idx)


def main():
    print(f"bench/gpu/torch_route: torch {torch.__version__}, {torch.cuda.get_device_name()}, T {T} E {E} k {K}")
    zz = torch.empty_like(z)
    cp = timed(lambda: zz.copy_(z))
    print(f"RESULT torch copy GBps {2 * z.numel() * 4 / (cp * 1e-3) / 1e9:.1f}")
    a = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=dev, dtype=torch.bfloat16)
    mm = timed(lambda: a @ b, reps=20)
    print(f"RESULT torch gemm8192 TFLOPs {2 * 8192 ** 3 / (mm * 1e-3) / 1e12:.1f}")
    del a, b, zz
    print("| policy (PyTorch eager) | ms (median) |\n|---|---|")
    for name, fn in (("topk (softmax, renorm, loads)", topk_plain), ("topk (+ loss statistics)", topk_stats),
                     ("lossfree (sigmoid + bias)", lossfree), ("DeepSeek-V3", deepseek_v3),
                     ("grouplimited (softmax, 8 groups, 4 kept)", grouplimited),
                     ("carl (cost bias, 4 of 8 nodes, stats, hop counts)", carl_nodes),
                     ("carl flat (cost bias, hop counts)", carl_flat)):
        t = timed(fn)
        print(f"| {name} | {t:.3f} |")
        print(f"RESULT torch route {fn.__name__} ms {t:.4f}")
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
