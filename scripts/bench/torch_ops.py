# PyTorch side of scripts/bench/ops_bench.cpp, for ratios taken in the same device run:
# bf16 a @ b at 8192^3, device-to-device copy, F.cross_entropy and F.layer_norm on the same shapes.
# Usage: python3 scripts/bench/torch_ops.py   (the GPU machine's python3 has PyTorch)
import torch, torch.nn.functional as F

def median_ms(fn, warmup=5, reps=30):
    for _ in range(warmup): fn()
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record(); fn(); e.record(); e.synchronize(); times.append(s.elapsed_time(e))
    return sorted(times)[len(times) // 2]

dev = 'cuda'
n = 8192
a = torch.randn(n, n, device=dev, dtype=torch.bfloat16); b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
ms = median_ms(lambda: a @ b, reps=20)
print(f"| torch gemm bf16 8192^3 NN | {ms:.3f} | {2*n**3/ms/1e9:.1f} TFLOP/s |")
ms = median_ms(lambda: a @ b.t(), reps=20)
print(f"| torch gemm bf16 8192^3 NT | {ms:.3f} | {2*n**3/ms/1e9:.1f} TFLOP/s |")
del a, b
x = torch.empty(2**31 // 4, device=dev); y = torch.empty_like(x)
ms = median_ms(lambda: y.copy_(x)); print(f"| torch copy f32 2 GiB | {ms:.3f} | {2*2**31/ms/1e6:.1f} GB/s |")
del x, y
N, V = 16384, 50304
logits = (torch.randn(N, V, device=dev) * 2).bfloat16().requires_grad_(); t = torch.randint(0, V, (N,), device=dev)
ms = median_ms(lambda: F.cross_entropy(logits, t)); print(f"| torch cross_entropy fwd bf16 {N}x{V} | {ms:.3f} | {N*V*2/ms/1e6:.1f} GB/s |")
ms = median_ms(lambda: F.cross_entropy(logits, t).backward()); print(f"| torch cross_entropy fwd+bwd bf16 {N}x{V} | {ms:.3f} | |")
for D in (768, 4096):
    x = torch.randn(N, D, device=dev, dtype=torch.bfloat16); w = torch.randn(D, device=dev, dtype=torch.bfloat16); bb = torch.randn(D, device=dev, dtype=torch.bfloat16)
    ms = median_ms(lambda: F.layer_norm(x, (D,), w, bb)); print(f"| torch layernorm fwd bf16 {N}x{D} | {ms:.3f} | {2*N*D*2/ms/1e6:.1f} GB/s |")
