"""What every lab shows: the banner, the summary table, loss curves, the GPU timeline, the step split,
and the helpers the per-lab modules share. Every figure and table names the device it ran on."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from labkit.precision import PRECISIONS
from labkit.plots.tables import number
from labkit.results import device_label, each_rank, step_spread, time_split

sns.set_theme(style="whitegrid", context="notebook")

PRECISION_NAMES = {key: p.label for key, p in PRECISIONS.items()}  # fp32, tf32, fp16, bf16



def banner(record: dict) -> str:
    """What a reader must know before reading any number of a run, as Markdown."""
    env, info, status = record.get("env", {}), record.get("info", {}), record.get("status")
    lines = [f"**{record['run']['notebook']} / {record['run']['config']}** (profile `{record['run']['profile']}`): "
             f"status **{status}**" + (f" — {record['error']}" if record.get("error") else "")]
    lines.append(f"- Device: **{device_label(env)}**; torch {env.get('torch')}, transformers {env.get('transformers')}")
    if env.get("device") != "cuda":
        lines.append("- These are **CPU smoke figures**: they show that the lab runs, not how fast a GPU is.")
    if info.get("weights") == "random":
        lines.append(f"- Model: {info.get('weights_source')} — **random weights**: losses and scores show learning from "
                     "scratch on this data, not the pretrained model's quality.")
    elif info:
        lines.append(f"- Model: {info.get('weights_source')} (pretrained)")
    if info.get("data_source"):
        lines.append(f"- Data: {info['data_source']} ({info.get('train_examples')} training / "
                     f"{info.get('val_examples')} validation examples)")
    if record.get("params"):
        lines.append(f"- Configuration run: {configuration(record)}")
    spread = step_spread(record) if status == "ok" else None
    if spread:
        lines.append(f"- Steady-state step: median {number(spread['median_ms'])} ms, interquartile range "
                     f"{number(spread['iqr_ms'])} ms, over {spread['steps']} steps")
        if spread["skewed"]:
            lines.append(f"- **Mean step {number(spread['mean_ms'])} ms is far above the median**: a few slow steps (another "
                         "job on the machine, a stall) pulled samples/s down; the median step is the typical one.")
    return "\n".join(lines)


def configuration(record: dict) -> str:
    """The settings a run's figures depend on, and every change to its params file (Markdown)."""
    t, overrides = record["params"]["train"], record["run"].get("overrides") or {}
    n = t["devices"] * t["num_nodes"]
    global_batch = record.get("summary", {}).get("global_batch") or t["batch_size"] * t["grad_accum"] * n
    text = (f"batch {t['batch_size']} per device x {n} device{'s' if n > 1 else ''}"
            + (f" x {t['grad_accum']} accumulated" if t["grad_accum"] > 1 else "")
            + f" (global {global_batch}) · lr {t['lr']:g} · {PRECISION_NAMES.get(t['precision'], t['precision'])}"
            + f" · strategy {t['strategy']} · optimizer {t['optimizer']}")
    changed = ", ".join(f"`{k}={v}`" for k, v in _dotted(overrides).items())
    return text + (f"; changed from the params file: {changed}" if changed else "; as in the params file")


def _dotted(overrides: dict, prefix: str = "") -> dict:
    """{"train": {"batch_size": 16}} and {"train.batch_size": 16} alike as {"train.batch_size": 16}."""
    flat = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def show_banner(record: dict) -> None:
    from IPython.display import Markdown, display

    display(Markdown(banner(record)))


SUMMARY_COLUMNS = {
    "train_time_s": "training time (s)", "samples_per_s": "samples/s", "tokens_per_s": "real tokens/s",
    "step_s": "step (s)", "step_iqr_s": "step IQR (s)", "mean_over_median": "mean step / median",
    "data_s": "loader wait (s)", "fwd_bwd_s": "forward+backward (s)", "optimizer_s": "optimizer (s)",
    "wait_s": "device waiting (s)", "gc_steady_pause_s": "GC pause in steps (s)",
    "mfu": "MFU", "peak_allocated_gb": "peak allocated (GB)", "peak_reserved_gb": "peak reserved (GB)",
    "gpu_util_mean_pct": "GPU util (%)", "gpu_temp_max_c": "max temp (°C)",
    "first_train_loss": "first train loss", "final_train_loss": "final train loss", "final_val_loss": "final val loss",
}


def summary_table(records: Sequence[dict] | pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per run: device first, then the measured figures that exist (from records: the step-time spread too)."""
    if isinstance(records, pd.DataFrame):
        df = records.copy()
    else:
        df = pd.DataFrame([{"config": r["run"]["config"], "status": r["status"], "device": device_label(r.get("env", {})),
                            **r.get("summary", {}), **_spread_columns(r)} for r in records])
    if df.empty:
        return df
    columns = ["config", "status", "device"] + [c for c in list(SUMMARY_COLUMNS) + list(extra) if c in df.columns]
    return df[columns].rename(columns=SUMMARY_COLUMNS).set_index("config")


def _spread_columns(record: dict) -> dict:
    """The step-time spread beside the median step: its interquartile range, and the mean over the median
    (well above 1: a few slow steps set the run's samples/s)."""
    spread = step_spread(record) if record.get("status") == "ok" else None
    return {"step_iqr_s": spread["iqr_ms"] / 1e3, "mean_over_median": spread["mean_ms"] / spread["median_ms"]} if spread else {}


def _curve_frame(records: Sequence[dict], key: str) -> pd.DataFrame:
    rows = []
    for r in records:
        for step, epoch, value in r.get("curves", {}).get(key, []):
            rows.append({"config": r["run"]["config"], "step": step, "epoch": epoch, "loss": value})
    return pd.DataFrame(rows)


def sample_frame(records: Sequence[dict], key: str) -> pd.DataFrame:
    """One row per sample (a dict) of curve ``key`` of every record, with the record's config; empty without any."""
    return pd.DataFrame([{"config": r["run"]["config"], **s} for r in records for s in r.get("curves", {}).get(key, [])])


def loss_curves(records: Sequence[dict], title: str = "Loss") -> plt.Figure | None:
    """Training loss against epoch, with validation loss as markers, one colour per configuration."""
    train, val = _curve_frame(records, "train_loss"), _curve_frame(records, "val_loss")
    if train.empty and val.empty:
        print("No loss curves: no run of these trained.")
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if not train.empty:
        sns.lineplot(data=train, x="epoch", y="loss", hue="config", ax=ax)
    if not val.empty:
        sns.scatterplot(data=val, x="epoch", y="loss", hue="config", marker="D", s=70, ax=ax, legend=False)
    ax.set(title=f"{title} — lines: training, diamonds: validation ({devices_in(records)})", xlabel="epoch", ylabel="loss")
    legend_outside(ax)
    fig.tight_layout()
    return fig


def gpu_timeline(records: Sequence[dict]) -> plt.Figure | None:
    """GPU utilisation, memory, temperature, power and SM clock over the run; None (and a note) without GPU samples."""
    df = sample_frame(records, "gpu")
    if df.empty:
        print("No GPU timeline: these runs had no GPU to sample (CPU smoke run).")
        return None
    panels = [("util_pct", "utilisation (%)"), ("mem_used_gb", "memory used (GB)"), ("temp_c", "temperature (°C)"),
              ("power_w", "power (W)"), ("sm_clock_mhz", "SM clock (MHz)")]
    panels = [(col, label) for col, label in panels if col in df]  # records from before the clock was sampled lack it
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for ax, (col, label) in zip(axes, panels):
        # a layer-split model's GPUs are sampled side by side: one line style per GPU
        style = "gpu" if "gpu" in df and df["gpu"].nunique() > 1 else None
        sns.lineplot(data=df, x="t", y=col, hue="config", style=style, ax=ax, legend=ax is axes[-1])
        ax.set(xlabel="seconds", ylabel=label)
    legend_outside(axes[-1])
    fig.suptitle(f"GPU timeline ({devices_in(records)})")
    fig.tight_layout()
    return fig


def step_split(records: Sequence[dict]) -> plt.Figure | None:
    """Median step split into forward+backward, optimizer and device waiting (the three add up to the step); a run of
    several ranks gets a bar per rank, each rank's own split (they meet at every all-reduce: one that lags, the others
    wait for)."""
    phases = {"fwd_bwd": "forward+backward", "optimizer": "optimizer", "wait": "waiting (input, copy, launch)"}
    rows = []
    for r in records:
        s = r.get("summary", {})
        if r.get("status") != "ok" or "wait_s" not in s:
            continue
        bars_of = [(f"{r['run']['config']}, rank {n}", split) for n, split in each_rank(s).items()] or [(r["run"]["config"], s)]
        rows += [{"config": label, "phase": name, "ms": 1e3 * split[f"{phase}_s"]}
                 for label, split in bars_of for phase, name in phases.items()]
    if not rows:
        print("No step times: no run of these finished.")
        return None
    df = pd.DataFrame(rows).pivot(index="config", columns="phase", values="ms")[list(phases.values())]
    ax = df.plot.barh(stacked=True, figsize=(8, 0.6 * len(df) + 1.5))
    ax.set(xlabel="median ms per step", ylabel="", title=f"Where a step's time goes ({devices_in(records)})")
    legend_outside(ax)
    ax.figure.tight_layout()
    return ax.figure


RUN_PARTS = {"start_processes_s": "processes' start", "imports_s": "imports", "lightning_import_s": "Lightning's import",
             "fabric_launch_s": "Fabric's launch", "build_task_s": "data and model", "setup_s": "set-up",
             "first_step_s": "first step", "training_s": "training and validation", "finish_s": "final evaluation",
             "stop_processes_s": "processes' end"}  # labkit.results.TIME_SPLIT's parts, in its order


def run_time_split(records: Sequence[dict]) -> plt.Figure | None:
    """Each finished run's wall time part by part (labkit.results.time_split), a bar per run. A run in the notebook's
    own process starts at Lightning's import: it imported torch and labkit in the notebook's earlier cells."""
    rows = [{"config": r["run"]["config"], "part": RUN_PARTS[part], "s": seconds}
            for r in records if r.get("status") == "ok" for part, seconds in time_split(r).items()]
    if not rows:
        print("No run of these has its time split: none finished, or their records come from before the kit kept a clock.")
        return None
    df = pd.DataFrame(rows).pivot(index="config", columns="part", values="s")
    df = df[[name for name in RUN_PARTS.values() if name in df]]
    ax = df.plot.barh(stacked=True, figsize=(9, 0.45 * len(df) + 1.8))
    ax.set(xlabel="seconds", ylabel="", title=f"Where each run's time went ({devices_in(records)})")
    legend_outside(ax)
    ax.figure.tight_layout()
    return ax.figure


def bars(df: pd.DataFrame, x: str, y: str, title: str, hue: str | None = None, ax: plt.Axes | None = None) -> plt.Axes:
    """A labelled bar chart of one measured column; the title carries the device."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt=number, fontsize=8)
    devices = ", ".join(sorted(df["device"].dropna().unique())) if "device" in df else ""
    ax.set(title=f"{title}" + (f" ({devices})" if devices else ""))
    if hue:
        legend_outside(ax, title=hue)
    ax.figure.tight_layout()
    return ax


def devices_in(records: Sequence[dict]) -> str:
    return ", ".join(sorted({device_label(r.get("env", {})) for r in records}))



def memory_unit(values) -> tuple[str, float]:
    """GB, or MB when every value is under a gigabyte (the tiny smoke models)."""
    top = max((v for v in values if v is not None and v == v), default=0.0)
    return ("GB", 1.0) if top >= 1 else ("MB", 1e3)


def ms_of(summary: dict, *keys: str) -> float | None:
    values = [summary.get(k) for k in keys]
    return None if any(v is None for v in values) else 1e3 * sum(values)


def wide_axes() -> plt.Axes:
    return plt.subplots(figsize=(10, 4.5))[1]


def model_of(record: dict) -> str:
    return {"cifar_resnext": "ResNeXt / CIFAR-10", "bert_squad": "BERT-QA / SQuAD"}.get(record["params"]["task"], record["params"]["task"])


def legend_outside(ax: plt.Axes, **kwargs) -> None:
    """Move an axes' legend to the right of the plot, where it covers no bar, point or curve."""
    if ax.get_legend() is not None or ax.get_legend_handles_labels()[0]:
        if ax.get_legend() is None:
            ax.legend(**kwargs)
        sns.move_legend(ax, "upper left", bbox_to_anchor=(1.01, 1), frameon=False, **kwargs)
