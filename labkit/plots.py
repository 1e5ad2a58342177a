"""Tables and seaborn figures the notebooks show. Every figure and table names the device it ran on."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from labkit.results import device_label

sns.set_theme(style="whitegrid", context="notebook")


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
    return "\n".join(lines)


def show_banner(record: dict) -> None:
    from IPython.display import Markdown, display

    display(Markdown(banner(record)))


SUMMARY_COLUMNS = {
    "train_time_s": "training time (s)", "samples_per_s": "samples/s", "tokens_per_s": "real tokens/s",
    "step_s": "step (s)", "data_s": "data wait (s)", "fwd_bwd_s": "forward+backward (s)", "optimizer_s": "optimizer (s)",
    "mfu": "MFU", "peak_allocated_gb": "peak allocated (GB)", "peak_reserved_gb": "peak reserved (GB)",
    "gpu_util_mean_pct": "GPU util (%)", "gpu_temp_max_c": "max temp (°C)",
    "first_train_loss": "first train loss", "final_train_loss": "final train loss", "final_val_loss": "final val loss",
}


def summary_table(records: Sequence[dict] | pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per run: device first, then the measured figures that exist."""
    if isinstance(records, pd.DataFrame):
        df = records.copy()
    else:
        df = pd.DataFrame([{"config": r["run"]["config"], "status": r["status"], "device": device_label(r.get("env", {})),
                            **r.get("summary", {})} for r in records])
    if df.empty:
        return df
    columns = ["config", "status", "device"] + [c for c in list(SUMMARY_COLUMNS) + list(extra) if c in df.columns]
    return df[columns].rename(columns=SUMMARY_COLUMNS).set_index("config")


def _curve_frame(records: Sequence[dict], key: str) -> pd.DataFrame:
    rows = []
    for r in records:
        for step, epoch, value in r.get("curves", {}).get(key, []):
            rows.append({"config": r["run"]["config"], "step": step, "epoch": epoch, "loss": value})
    return pd.DataFrame(rows)


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
    ax.set(title=f"{title} — lines: training, diamonds: validation ({_devices(records)})", xlabel="epoch", ylabel="loss")
    fig.tight_layout()
    return fig


def gpu_timeline(records: Sequence[dict]) -> plt.Figure | None:
    """GPU utilisation, memory, temperature and power over the run; None (and a note) without GPU samples."""
    rows = [{"config": r["run"]["config"], **s} for r in records for s in r.get("curves", {}).get("gpu", [])]
    if not rows:
        print("No GPU timeline: these runs had no GPU to sample (CPU smoke run).")
        return None
    df = pd.DataFrame(rows)
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.5))
    for ax, (col, label) in zip(axes, [("util_pct", "utilisation (%)"), ("mem_used_gb", "memory used (GB)"),
                                        ("temp_c", "temperature (°C)"), ("power_w", "power (W)")]):
        sns.lineplot(data=df, x="t", y=col, hue="config", ax=ax, legend=ax is axes[0])
        ax.set(xlabel="seconds", ylabel=label)
    fig.suptitle(f"GPU timeline ({_devices(records)})")
    fig.tight_layout()
    return fig


def step_split(records: Sequence[dict]) -> plt.Figure | None:
    """Median step time split into data wait, forward+backward and optimizer, one bar per configuration."""
    rows = [{"config": r["run"]["config"], "phase": phase, "ms": 1e3 * r["summary"][f"{phase}_s"]}
            for r in records if r.get("status") == "ok" for phase in ("data", "fwd_bwd", "optimizer")]
    if not rows:
        print("No step times: no run of these finished.")
        return None
    df = pd.DataFrame(rows).pivot(index="config", columns="phase", values="ms")[["data", "fwd_bwd", "optimizer"]]
    ax = df.plot.barh(stacked=True, figsize=(8, 0.6 * len(df) + 1.5))
    ax.set(xlabel="median ms per step", ylabel="", title=f"Where a step's time goes ({_devices(records)})")
    ax.figure.tight_layout()
    return ax.figure


def bars(df: pd.DataFrame, x: str, y: str, title: str, hue: str | None = None, ax: plt.Axes | None = None) -> plt.Axes:
    """A labelled bar chart of one measured column; the title carries the device."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.3g", fontsize=8)
    devices = ", ".join(sorted(df["device"].dropna().unique())) if "device" in df else ""
    ax.set(title=f"{title}" + (f" ({devices})" if devices else ""))
    ax.figure.tight_layout()
    return ax


def _devices(records: Sequence[dict]) -> str:
    return ", ".join(sorted({device_label(r.get("env", {})) for r in records}))
