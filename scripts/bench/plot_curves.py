# Plots train-loss curves: seqtrain's metrics.jsonl against PyTorch's JSON list of losses.
# Usage: python3 scripts/bench/plot_curves.py METRICS.jsonl TORCH.json OUT.png
import json, sys
import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
ours = [json.loads(l) for l in open(sys.argv[1])]
ours = [r['loss'] for r in ours if r['kind'] == 'train']
theirs = json.load(open(sys.argv[2]))
n = min(len(ours), len(theirs))
fig, ax = plt.subplots(figsize=(8, 4.5))
ax.plot(range(1, len(ours) + 1), ours, label='seqtrain', lw=1.2)
ax.plot(range(1, len(theirs) + 1), theirs, label='PyTorch (bf16 autocast)', lw=1.2, alpha=0.8)
ax.set_xlabel('step'); ax.set_ylabel('train loss (nats/token)'); ax.set_yscale('log')
ax.set_title('GPT-2 124M on KJV bytes, B=8, T=1024, same init scheme and hyper-parameters')
ax.legend(); ax.grid(alpha=0.3)
fig.tight_layout(); fig.savefig(sys.argv[3], dpi=110)
tail = slice(max(0, n - 50), n)
mean = lambda v: sum(v) / len(v)
print(f"mean loss over steps {tail.start + 1}-{n}: seqtrain {mean(ours[tail]):.4f}, PyTorch {mean(theirs[tail]):.4f}")
