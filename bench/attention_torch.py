"""PyTorch's scaled_dot_product_attention (causal, bf16, grouped-query
heads) at one shape, forward and backward timed apart, for bench/gpu.sh to
print beside lmc's bench_attention: the same FLOP counts (forward causal
2 b h t^2 k, backward 2.5 times that).
Usage: attention_torch.py B T H G K [REPS]"""
import sys

import torch
import torch.nn.functional as F

B, T, H, G, K = (int(a) for a in sys.argv[1:6])
reps = int(sys.argv[6]) if len(sys.argv) > 6 else 20
dev = torch.device("cuda")
q = torch.randn(B, H, T, K, device=dev, dtype=torch.bfloat16, requires_grad=True)
k = torch.randn(B, G, T, K, device=dev, dtype=torch.bfloat16, requires_grad=True)
v = torch.randn(B, G, T, K, device=dev, dtype=torch.bfloat16, requires_grad=True)
dout = torch.randn(B, H, T, K, device=dev, dtype=torch.bfloat16)


def fwd():
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=G != H)


def timed(f):
    f()
    torch.cuda.synchronize()
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    for _ in range(reps):
        f()
    b.record()
    torch.cuda.synchronize()
    return a.elapsed_time(b) / reps / 1e3


o = fwd()
tf = timed(fwd)
tb = timed(lambda: torch.autograd.grad(o, (q, k, v), dout, retain_graph=True))
flops = 2.0 * B * H * T * T * K
print("torch %s sdpa: b %d t %d h %d (kv %d) k %d, bf16" % (torch.__version__, B, T, H, G, K))
print("  forward:  %.3f ms | %.1f TFLOP/s" % (tf * 1e3, flops / tf / 1e12))
print("  backward: %.3f ms | %.1f TFLOP/s (2.5x the forward's FLOPs)" % (tb * 1e3, 2.5 * flops / tb / 1e12))
