"""PyTorch counterpart of seqtrain_attention_bench: F.scaled_dot_product_attention(is_causal=True)
on [B, H, T, d] bf16 (H = 12, d = 64, 16K tokens per call); median CUDA-event times after warmup,
forward and forward + backward; causal FLOPs (forward 2*2*B*H*T^2*d/2, backward 2.5x)."""
import torch
import torch.nn.functional as F


def median_ms(fn, warmup=5, reps=20):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return sorted(times)[len(times) // 2]


def main():
    H, d = 12, 64
    print("| B | T | fwd ms | fwd TFLOP/s | fwd+bwd ms | fwd+bwd TFLOP/s |")
    print("|---|---|---|---|---|---|")
    for B, T in [(8, 2048), (2, 8192), (1, 32768)]:
        q, k, v = (torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))
        dout = torch.randn(B, H, T, d, device="cuda", dtype=torch.bfloat16)
        flops = 2 * 2 * B * H * T * T * d / 2

        def fwd():
            with torch.no_grad():
                F.scaled_dot_product_attention(q, k, v, is_causal=True)

        def both():
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            torch.autograd.grad(o, (q, k, v), dout)

        t_f, t_b = median_ms(fwd), median_ms(both)
        print(f"| {B} | {T} | {t_f:.3f} | {flops / t_f * 1e-9:.1f} | {t_b:.3f} | {3.5 * flops / t_b * 1e-9:.1f} |")


if __name__ == "__main__":
    main()
