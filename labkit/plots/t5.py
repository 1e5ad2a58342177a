"""Notebook 07: T5 question answering — workers, precision, data parallel and model parallel."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from labkit import results
from labkit.plots.common import PRECISION_NAMES, bars, devices_in, legend_outside, ms_of
from labkit.results import device_label
from labkit.results import n_devices as gpus_of  # noqa: F401 - the name notebook 07 uses


def parallelism(record: dict) -> str:
    p, t = record["params"], record["params"]["train"]
    if p["model"]["split_devices"] > 1:
        return f"layer split over {p['model']['split_devices']} GPUs"
    # What each strategy shards: ZeRO stage 2 (the original lab's ddp_sharded) keeps every parameter on every GPU.
    names = {"dp": "DataParallel", "ddp": "DDP", "fsdp": "FSDP2, fully sharded (ZeRO-3)",
             "deepspeed": f"DeepSpeed ZeRO-{t.get('zero_stage', 2)}"}
    if t["strategy"] in names:
        return f"{names[t['strategy']]} x {t['devices'] * t['num_nodes']}"
    return "one device"


def t5_table(records: Sequence[dict]) -> pd.DataFrame:
    """One row per configuration: how it ran, what it cost (time, memory per GPU, GPU load) and what it reached."""
    rows = []
    for r in records:
        p, s = r["params"], r.get("summary", {})
        per_gpu = [s[k] for k in sorted(s) if k.startswith("peak_allocated_gb_gpu")]
        rows.append({"config": r["run"]["config"], "status": r["status"], "device": device_label(r.get("env", {})),
                     "data set": p["data"]["dataset"], "model": f"t5-{p['model']['preset']}",
                     "parallelism": parallelism(r), "precision": PRECISION_NAMES[p["train"]["precision"]],
                     "attention": p["model"]["attn_implementation"] + (f", compiled ({p['model'].get('compile_mode', 'default')})" if p["model"]["compile"] else ""),
                     "workers": p["data"]["num_workers"], "training time (s)": s.get("train_time_s"),
                     "samples/s": s.get("samples_per_s"), "step (ms)": ms_of(s, "step_s"),
                     "peak allocated (GB)": s.get("peak_allocated_gb"),
                     "per GPU (GB)": " / ".join(f"{v:.2f}" for v in per_gpu) or None,
                     "GPU util (%)": s.get("gpu_util_mean_pct"), "max temp (°C)": s.get("gpu_temp_max_c"),
                     "SM clock (MHz)": s.get("gpu_sm_clock_mean_mhz"),
                     "final val loss": s.get("final_val_loss"), "best step": s.get("best_step"),
                     "test loss": s.get("test_loss"), "accuracy (%)": s.get("accuracy"), "F1": s.get("f1"),
                     "max |activation|": s.get("act_absmax"), "fp16 overflows": s.get("act_over_fp16"),
                     "note": r.get("error") or ""})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).set_index("config")
    for r in records:  # a finished run without the best step or the test loss others have says why
        why = [reason for column, reason in _missing(r).items() if df[column].notna().any()]
        if why:
            config = r["run"]["config"]
            df.loc[config, "note"] = "; ".join(filter(None, [df.loc[config, "note"], *why]))
    return df.dropna(axis=1, how="all")


def _missing(record: dict) -> dict[str, str]:
    """The table columns a finished run left empty, each with its reason."""
    if record.get("status") != "ok":
        return {}
    s, t = record.get("summary", {}), record["params"]["train"]
    reasons = {}
    if s.get("best_step") is None:
        reasons["best step"] = ("best step: FSDP keeps no best checkpoint (sharded weights)" if t["strategy"] == "fsdp"
                                else "best step: train.keep_best is off" if not t.get("keep_best")
                                else "best step: not in this record (run it again)")
    if s.get("test_loss") is None:
        reasons["test loss"] = ("test loss: the data set has no test split here" if record.get("info", {}).get("test_examples") == 0
                                else "test loss: not in this record (run it again)")
    return reasons


def _by_dataset(records: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["params"]["data"].get("dataset") or r["params"]["task"], []).append(r)
    return groups


def val_loss_curves(records: Sequence[dict]) -> plt.Figure | None:
    """Validation loss after each epoch, one line per configuration, one panel per data set."""
    groups = {k: [r for r in v if r.get("curves", {}).get("val_loss")] for k, v in _by_dataset(records).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        print("No validation loss: no run of these finished an epoch.")
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    for ax, (name, group) in zip(axes[0], groups.items()):
        df = pd.DataFrame([{"config": r["run"]["config"], "epoch": e, "val loss": v}
                           for r in group for _, e, v in r["curves"]["val_loss"]])
        sns.lineplot(data=df, x="epoch", y="val loss", hue="config", marker="o", ax=ax)
        ax.set(title=name, xticks=sorted(df["epoch"].unique()))
        legend_outside(ax, fontsize=7)
    fig.suptitle(f"Validation loss ({devices_in(records)})")
    fig.tight_layout()
    return fig


def metric_bars(records: Sequence[dict], metrics: dict[str, str]) -> plt.Figure | None:
    """One panel per measured metric (summary key -> label), a bar per finished configuration."""
    df = pd.DataFrame([{"config": r["run"]["config"], "device": device_label(r.get("env", {})), **r["summary"]}
                       for r in records if r.get("status") == "ok"])
    present = {k: v for k, v in metrics.items() if k in df and df[k].notna().any()}
    for key in set(metrics) - set(present):
        print(f"No {metrics[key]}: " + ("these runs had no GPU to sample (CPU smoke run)." if key.startswith("gpu_")
                                         else "not measured in these runs."))
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(5.5 * len(present), 0.35 * len(df) + 2), squeeze=False)
    for ax, (key, label) in zip(axes[0], present.items()):
        bars(df.dropna(subset=[key]), x=key, y="config", title=label, ax=ax)
        ax.set(xlabel=label, ylabel="")
    for ax in axes[0][1:]:
        ax.set_yticklabels([])
    fig.tight_layout()
    return fig


def scaling_table(records: Sequence[dict]) -> pd.DataFrame:
    """Scaling efficiency = samples/s on N GPUs / (N x samples/s of the one-GPU baseline), the baseline being
    ``results.comparison``'s: the fastest finished one-GPU run of the same device, task (data set), model,
    precision and per-GPU batch. 100%: N GPUs do N times the work; a layer-split model runs its GPUs one after
    the other, so it is measured by what it makes possible (memory per GPU), not by this."""
    by_name = {results.name(r): r for r in records}
    rows = []
    for c in results.comparison(records).itertuples():
        r = by_name[c.run]
        if c.devices == 1 or r.get("status") != "ok":
            continue
        base = by_name.get(c.baseline)
        efficiency = 100 * c.scaling_efficiency if pd.notna(c.scaling_efficiency) else None
        rows.append({"config": c.config, "device": c.device, "parallelism": parallelism(r), "devices": c.devices,
                     "samples/s": c.samples_per_s, "one-GPU baseline": base["run"]["config"] if base else "none finished",
                     "baseline samples/s": results.rate(base), "speed-up": c.speedup if pd.notna(c.speedup) else None,
                     "scaling efficiency (%)": efficiency,
                     "peak allocated (GB)": r["summary"].get("peak_allocated_gb"),
                     "baseline peak (GB)": base["summary"].get("peak_allocated_gb") if base else None})
    return pd.DataFrame(rows).set_index("config").dropna(axis=1, how="all") if rows else pd.DataFrame()


def scaling_bars(table: pd.DataFrame) -> plt.Figure | None:
    """Scaling efficiency per multi-GPU configuration, against the 100% of perfect scaling."""
    if table.empty or "scaling efficiency (%)" not in table:
        print("No scaling efficiency: no multi-GPU run finished beside a one-GPU run of the same model and precision.")
        return None
    df = table.dropna(subset=["scaling efficiency (%)"]).reset_index()
    ax = bars(df, x="scaling efficiency (%)", y="config", title="Scaling efficiency, N GPUs against one")
    ax.axvline(100, color="black", ls="--", lw=1)
    ax.set(ylabel="")
    return ax.figure


def pareto(records: Sequence[dict], x: str = "train_time_s", y: str = "accuracy") -> plt.Figure | None:
    """Accuracy against training time, a point per finished configuration and a panel per data set; the line
    joins the configurations no other beats on both (``results.pareto_front``: faster and at least as accurate).
    Points are numbered, and the numbers named beside the panel, so no label covers another."""
    groups = {k: [r for r in v if results.rate(r, x) is not None and results.rate(r, y) is not None]
              for k, v in _by_dataset(records).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        print(f"No time-accuracy plot: no finished run has both {x} and {y}.")
        return None
    front = results.pareto_front([r for g in groups.values() for r in g], y, lower_is_better=False, time=x)
    fig, axes = plt.subplots(1, len(groups), figsize=(8.5 * len(groups), 4.5), squeeze=False)
    for ax, (name, group) in zip(axes[0], groups.items()):
        group = sorted(group, key=lambda r: results.rate(r, x))
        line = [r for r in group if results.name(r) in front]
        ax.plot([results.rate(r, x) for r in line], [results.rate(r, y) for r in line], "-", color="grey", zorder=1)
        for i, r in enumerate(group, 1):
            colour = "C3" if r in line else "C0"
            ax.scatter(results.rate(r, x), results.rate(r, y), color=colour, s=60, zorder=2,
                       label=f"{i}  {r['run']['config']}" + ("  (front)" if r in line else ""))
            ax.annotate(str(i), (results.rate(r, x), results.rate(r, y)), xytext=(4, 4), textcoords="offset points",
                        fontsize=8, color=colour)
        ax.set(title=name, xlabel="training time (s)" if x == "train_time_s" else x, ylabel=f"{y} (%)")
        legend_outside(ax, fontsize=7, title="red: no run faster and better")
    fig.suptitle(f"Time against accuracy ({devices_in(records)})")
    fig.tight_layout()
    return fig


def precision_speedups(records: Sequence[dict], baseline: str = "tf32") -> pd.DataFrame:
    """Each one-GPU run's samples/s over the run of the same device, data set, model and batch in ``baseline``
    precision (``results.comparison`` with that reference)."""
    one = [r for r in records if gpus_of(r) == 1]
    if not one:
        return pd.DataFrame()
    compared = results.comparison(one, reference={"train.precision": baseline}).set_index("config")
    rows = [{"config": r["run"]["config"], "status": r["status"], "device": device_label(r.get("env", {})),
             "model": f"t5-{r['params']['model']['preset']}", "data set": r["params"]["data"].get("dataset"),
             "precision": r["params"]["train"]["precision"],
             "attention": r["params"]["model"]["attn_implementation"] + (f", compiled ({r['params']['model'].get('compile_mode', 'default')})" if r["params"]["model"]["compile"] else ""),
             "step (ms)": ms_of(r.get("summary", {}), "step_s"),
             "forward+backward (ms)": ms_of(r.get("summary", {}), "fwd_bwd_s"),
             "MFU": r.get("summary", {}).get("mfu"),
             f"speed-up over {PRECISION_NAMES.get(baseline, baseline)}": compared.loc[r["run"]["config"], "speedup"],
             "note": r.get("error") or ""}
            for r in one]
    return pd.DataFrame(rows).set_index("config").dropna(axis=1, how="all")


def scaling_curve(records: Sequence[dict]) -> plt.Figure | None:
    """Speed-up over the one-GPU baseline (``results.comparison``) against the number of GPUs, for every GPU count
    that has a finished run: one line per way of parallelising (and model and precision), from the baseline's 1.0 at
    one GPU; dashed, perfect scaling (N GPUs, N times the samples/s). One panel per data set."""
    by_name = {results.name(r): r for r in records}
    compared = results.comparison(records)
    rows = []
    for c in compared.itertuples():
        r = by_name[c.run]
        if c.devices == 1 or pd.isna(c.speedup):
            continue
        # the way of parallelising without its GPU count ('DDP x 2' -> 'DDP'): its line runs over the counts
        kind = "layer split" if r["params"]["model"]["split_devices"] > 1 else parallelism(r).rsplit(" x ", 1)[0]
        line = f"{kind}, t5-{c.model}, {PRECISION_NAMES.get(c.precision, c.precision)}"
        dataset = r["params"]["data"].get("dataset") or r["params"]["task"]
        rows += [{"data set": dataset, "line": line, "GPUs": 1, "speed-up": 1.0, "config": by_name[c.baseline]["run"]["config"]},
                 {"data set": dataset, "line": line, "GPUs": c.devices, "speed-up": c.speedup, "config": c.config}]
    if not rows:
        print("No scaling curve: it needs a finished multi-GPU run beside a finished one-GPU run of the same data set, "
              "model, precision and per-GPU batch.")
        return None
    df = pd.DataFrame(rows).drop_duplicates(["data set", "line", "GPUs", "config"])
    groups = list(dict.fromkeys(df["data set"]))
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    for ax, name in zip(axes[0], groups):
        group = df[df["data set"] == name].sort_values("GPUs")
        counts = sorted(group["GPUs"].unique())
        ax.plot(counts, counts, ls="--", color="grey", label="perfect scaling")
        sns.lineplot(data=group, x="GPUs", y="speed-up", hue="line", marker="o", estimator=None, units="line", ax=ax)
        ax.set(title=name, xticks=counts, xlabel="GPUs", ylabel="speed-up over one GPU")
        legend_outside(ax, fontsize=7, title="parallelism, model, precision")
    fig.suptitle(f"Scaling with the number of GPUs ({devices_in(records)})")
    fig.tight_layout()
    return fig
