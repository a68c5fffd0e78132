# PyTorch reference for the loss-curve comparison: GPT-2 124M (nanoGPT-style) with seqtrain's
# init scheme and hyper-parameters (configs/runs/gpt2-curve.yaml) on the same token shard, random
# windows, bf16 autocast. Writes one loss per step to a JSON list.
# Usage: python3 scripts/bench/torch_gpt2_curve.py SHARD.bin OUT.json [--steps 200]
import json, math, sys
import numpy as np, torch, torch.nn as nn, torch.nn.functional as F

shard, out = sys.argv[1], sys.argv[2]
steps = int(sys.argv[sys.argv.index('--steps') + 1]) if '--steps' in sys.argv else 200
B, T, L, D, H, V = 8, 1024, 12, 768, 12, 50304
lr, warmup, min_ratio, wd = 6e-4, 20, 0.1, 0.1
header = np.fromfile(shard, dtype=np.int32, count=256)
assert header[0] == 20240520, "not an llm.c shard"
tokens = torch.from_numpy(np.fromfile(shard, dtype=np.uint16, offset=1024, count=int(header[2])).astype(np.int64))

class Block(nn.Module):
    def __init__(s):
        super().__init__()
        s.ln1, s.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        s.qkv, s.proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
        s.fc, s.fc2 = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)
    def forward(s, x):
        b, t, c = x.shape
        q, k, v = s.qkv(s.ln1(x)).split(c, 2)
        q, k, v = [z.view(b, t, H, c // H).transpose(1, 2) for z in (q, k, v)]
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + s.proj(y)
        return x + s.fc2(F.gelu(s.fc(s.ln2(x)), approximate='tanh'))

class GPT(nn.Module):
    def __init__(s):
        super().__init__()
        s.wte, s.wpe = nn.Embedding(V, D), nn.Embedding(T, D)
        s.blocks = nn.ModuleList([Block() for _ in range(L)])
        s.lnf = nn.LayerNorm(D)
        # seqtrain's init: every matrix N(0, 0.02), residual projections N(0, 0.02/sqrt(2L)),
        # biases 0, norms 1, tied head.
        for name, p in s.named_parameters():
            if p.dim() == 2: nn.init.normal_(p, 0, 0.02 / math.sqrt(2 * L) if name.endswith(('proj.weight', 'fc2.weight')) else 0.02)
            elif 'ln' in name and name.endswith('weight'): nn.init.ones_(p)
            else: nn.init.zeros_(p)
    def forward(s, idx, tgt):
        x = s.wte(idx) + s.wpe(torch.arange(idx.shape[1], device=idx.device))
        for blk in s.blocks: x = blk(x)
        return F.cross_entropy((s.lnf(x) @ s.wte.weight.t()).float().reshape(-1, V), tgt.reshape(-1))

torch.manual_seed(1234)
m = GPT().cuda()
decay = [p for n, p in m.named_parameters() if p.dim() == 2 and 'wte' not in n and 'wpe' not in n]
other = [p for n, p in m.named_parameters() if not (p.dim() == 2 and 'wte' not in n and 'wpe' not in n)]
opt = torch.optim.AdamW([{'params': decay, 'weight_decay': wd}, {'params': other, 'weight_decay': 0.0}],
                        lr=lr, betas=(0.9, 0.95), eps=1e-8, fused=True)
g = torch.Generator().manual_seed(1234)
losses = []
for step in range(steps):
    cur = lr * (step + 1) / warmup if step < warmup else \
        lr * min_ratio + 0.5 * lr * (1 - min_ratio) * (1 + math.cos(math.pi * min(1.0, (step - warmup) / (steps - warmup))))
    for grp in opt.param_groups: grp['lr'] = cur
    starts = torch.randint(0, len(tokens) - T - 1, (B,), generator=g)
    win = torch.stack([tokens[s:s + T + 1] for s in starts.tolist()]).cuda()
    with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = m(win[:, :-1], win[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
    losses.append(loss.item())
    if step % 20 == 0: print(f"torch step {step} loss {losses[-1]:.4f}", flush=True)
json.dump(losses, open(out, 'w'))
