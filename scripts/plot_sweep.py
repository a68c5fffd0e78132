#!/usr/bin/env python3
"""Plots and a report for a finished `seqtrain sweep` folder.

usage: plot_sweep.py SWEEP_DIR [--metric val_loss] [--goal minimize]

Reads SWEEP_DIR/results.csv and each trial's metrics.jsonl and writes into SWEEP_DIR:
  loss_vs_tokens.png   training loss (lines) and validation loss (dots) against tokens seen, per trial
  metric_vs_params.png the metric of every ok trial against its parameter count, one series per
                       model.pattern (or per model.code / model.layers when those are swept)
  report.md            the results table, best first, and both images
Needs matplotlib and pandas.
"""
import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def read_metrics(path):
    """(train, eval) DataFrames of a metrics.jsonl; a resumed run repeats steps, the last line wins."""
    train, evals = {}, {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                r = json.loads(line)
                (train if r["kind"] == "train" else evals)[r["step"]] = r
    return pd.DataFrame(sorted(train.values(), key=lambda r: r["step"])), \
        pd.DataFrame(sorted(evals.values(), key=lambda r: r["step"]))


def trial_label(row, swept):
    return " ".join(f"{k.split('.')[-1]}={row[k]}" for k in swept) or row["trial_id"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir")
    p.add_argument("--metric", default="val_loss")
    p.add_argument("--goal", default="minimize", choices=["minimize", "maximize"])
    a = p.parse_args()

    results = pd.read_csv(os.path.join(a.sweep_dir, "results.csv"), dtype={"trial_id": str})
    fixed = {"trial_id", "status", "n_params", "val_loss", "best_val_loss", "val_bpb", "tokens_per_s",
             "tokens_seen", "wall_s"}
    swept = [c for c in results.columns if c not in fixed]

    fig, ax = plt.subplots(figsize=(8, 5))
    for _, row in results.iterrows():
        train, evals = read_metrics(os.path.join(a.sweep_dir, "trials", row["trial_id"], "metrics.jsonl"))
        if train.empty:
            continue
        line, = ax.plot(train["tokens_seen"], train["loss"], label=trial_label(row, swept), linewidth=1)
        if not evals.empty:
            # Eval lines carry the step; tokens per step is constant within a run.
            tokens_per_step = train["tokens_seen"].iloc[-1] / train["step"].iloc[-1]
            ax.plot(evals["step"] * tokens_per_step, evals["loss"], "o", color=line.get_color())
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("loss (nats per token); dots: validation")
    ax.set_title("loss vs tokens")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(a.sweep_dir, "loss_vs_tokens.png"), dpi=120)
    plt.close(fig)

    ok = results[(results["status"] == "ok") & results[a.metric].notna()]
    group = next((k for k in ("model.pattern", "model.code", "model.layers") if k in swept), None)
    fig, ax = plt.subplots(figsize=(7, 5))
    for name, part in (ok.groupby(group) if group else [("all trials", ok)]):
        part = part.sort_values("n_params")
        ax.plot(part["n_params"], part[a.metric], "o-", label=str(name))
    ax.set_xscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel(a.metric)
    ax.set_title(f"{a.metric} vs parameters" + (f" per {group}" if group else ""))
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(os.path.join(a.sweep_dir, "metric_vs_params.png"), dpi=120)
    plt.close(fig)

    table = results.sort_values(a.metric, ascending=a.goal == "minimize", na_position="last")
    with open(os.path.join(a.sweep_dir, "report.md"), "w") as f:
        f.write(f"# Sweep {os.path.basename(os.path.normpath(a.sweep_dir))}\n\n")
        f.write(f"{len(results)} trials, {int((results['status'] == 'ok').sum())} ok; "
                f"sorted by {a.metric} ({a.goal}).\n\n")
        f.write("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns) + "\n")
        for _, row in table.iterrows():
            f.write("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |\n")
        f.write("\n![loss vs tokens](loss_vs_tokens.png)\n\n![metric vs parameters](metric_vs_params.png)\n")
    print(f"wrote {a.sweep_dir}/report.md, loss_vs_tokens.png, metric_vs_params.png")


if __name__ == "__main__":
    main()
