#!/usr/bin/env python3
"""Plots and a report for a finished `seqtrain sweep` folder.

usage: plot_sweep.py SWEEP_DIR [--metric val_loss] [--goal minimize] [--x SWEPT_KEY]

Reads SWEEP_DIR/results.csv and each trial's metrics.jsonl and writes into SWEEP_DIR:
  loss_vs_tokens.png   training loss (lines) and validation loss (dots) against tokens seen, per trial
  metric_vs_params.png the metric of every ok trial against its parameter count, one series per
                       model.pattern (or per model.code / model.layers when those are swept)
  metric_vs_x.png      task sweeps (a val_acc column with values) or --x: the metric against a swept
                       key (--x, default the first swept key besides the series key), one series per
                       mixer and per value of the remaining swept keys
  acc_vs_length.png    task sweeps with data.task.eval_lengths: answer accuracy against the evaluation
                       length (training length first), one line per trial
  report.md            the results table, best first, and the images
Needs matplotlib and pandas.
"""
import argparse
import json
import os
import re

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


def numeric(series):
    """The column as numbers when every value is one, else as it is (plotted as categories)."""
    converted = pd.to_numeric(series, errors="coerce")
    return converted if converted.notna().all() else series.astype(str)


def plot_metric_vs_x(results, swept, group, x, metric, path):
    ok = results[(results["status"] == "ok") & results[metric].notna()].copy()
    # Keys set in step with x (a grouped axis, e.g. num_kv_pairs with seq_len) do not split series.
    rest = [k for k in swept if k not in (group, x) and ok.groupby(x)[k].nunique().max() > 1]
    fig, ax = plt.subplots(figsize=(7, 5))
    keys = ([group] if group else []) + rest
    series = ok.groupby(keys if len(keys) > 1 else keys[0]) if keys else [("all trials", ok)]
    # Colour by the first key's value (e.g. the mixer), line style by the rest (e.g. the width), so
    # that a dozen series stay apart.
    colours, styles = {}, {}
    for name, part in series:
        part = part.assign(_x=numeric(part[x])).sort_values("_x")
        values = name if len(keys) > 1 else (name,)
        label = " ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, values))
        colour = colours.setdefault(values[0], f"C{len(colours) % 10}")
        style = styles.setdefault(tuple(values[1:]), ["-", "--", ":", "-."][len(styles) % 4])
        ax.plot(part["_x"], part[metric], marker="o", linestyle=style, color=colour, label=label or name)
    ax.set_xlabel(x)
    ax.set_ylabel(metric)
    if "acc" in metric:
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(f"{metric} vs {x}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_acc_vs_length(sweep_dir, results, swept, path):
    """Answer accuracy at the training length and every data.task.eval_lengths entry, per trial."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for _, row in results[results["status"] == "ok"].iterrows():
        trial = os.path.join(sweep_dir, "trials", row["trial_id"])
        _, evals = read_metrics(os.path.join(trial, "metrics.jsonl"))
        if evals.empty or "acc" not in evals:
            continue
        with open(os.path.join(trial, "trial.yaml")) as f:
            seq_len = int(re.search(r"^\s*seq_len: (\d+)", f.read(), re.M).group(1))
        last = evals.iloc[-1]
        points = [(seq_len, last["acc"])] + sorted(
            (int(k[4:]), last[k]) for k in evals.columns if k.startswith("acc@") and pd.notna(last[k]))
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", label=trial_label(row, swept))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("evaluation length (tokens); the first point is the training length")
    ax.set_ylabel("answer accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("accuracy vs evaluation length")
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep_dir")
    p.add_argument("--metric", default="val_loss")
    p.add_argument("--goal", default="minimize", choices=["minimize", "maximize"])
    p.add_argument("--x", help="swept key for metric_vs_x.png (default: the first besides the series key)")
    a = p.parse_args()

    results = pd.read_csv(os.path.join(a.sweep_dir, "results.csv"), dtype={"trial_id": str})
    fixed = {"trial_id", "status", "code", "n_params", "flops_per_token", "val_loss", "best_val_loss", "val_bpb",
             "val_acc", "best_val_acc", "val_seq_acc", "tokens_per_s", "mfu", "peak_mem_gib", "tokens_seen", "wall_s"}
    swept = [c for c in results.columns if c not in fixed and not c.startswith("val_acc@")]
    if a.x and a.x not in swept:
        p.error(f"--x {a.x} is not a swept key; expected one of {', '.join(swept)}")

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
    images = ["loss_vs_tokens.png", "metric_vs_params.png"]
    is_task = "val_acc" in results and results["val_acc"].notna().any()
    x = a.x or next((k for k in swept if k != group), None)
    if (a.x or is_task) and x:
        plot_metric_vs_x(results, swept, group, x, a.metric, os.path.join(a.sweep_dir, "metric_vs_x.png"))
        images.append("metric_vs_x.png")
    if any(c.startswith("val_acc@") for c in results.columns):
        plot_acc_vs_length(a.sweep_dir, results, swept, os.path.join(a.sweep_dir, "acc_vs_length.png"))
        images.append("acc_vs_length.png")
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
        f.write("".join(f"\n![{image[:-4].replace('_', ' ')}]({image})\n" for image in images))
    print(f"wrote {a.sweep_dir}/report.md, " + ", ".join(images))


if __name__ == "__main__":
    main()
