"""Notebook 05: parallel strategies (one device, DP, DDP, FSDP, DeepSpeed)."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from labkit import results
from labkit.plots.common import bars, wide_axes

STRATEGY_ORDER = ("auto", "dp", "ddp", "fsdp", "deepspeed")
STRATEGY_COLUMNS = {
    "strategy": "strategy", "n_devices": "devices", "global_batch": "global batch", "train_time_s": "training time (s)",
    "train_eval_time_s": "training + evaluation time (s)",
    "samples_per_s": "samples/s", "speedup": "speed-up", "scaling_efficiency": "scaling efficiency",
    "peak_allocated_gb": "peak allocated per GPU, max (GB)", "step_s": "step (s)", "compute_s": "compute per step (s)",
    "comm_s": "communication per step (s)", "final_train_loss": "final train loss", "final_val_loss": "final val loss",
    "exact": "EM", "f1": "F1", "error": "note",
}


def strategy_rows(runs: Sequence[dict] | pd.DataFrame) -> pd.DataFrame:
    """One row per record of notebook 05 (``results.load``'s columns) with devices, speed-up and scaling
    efficiency from ``results.comparison``, ordered by device count, then strategy. ``runs``: records, or
    ``results.load``'s DataFrame."""
    if isinstance(runs, pd.DataFrame):
        runs = [results.read(p) for p in runs["path"]] if "path" in runs else []
    records = [r for r in runs if r]
    if not records:
        return pd.DataFrame()
    compared = results.comparison(records)
    df = pd.DataFrame([results.row(r) for r in records]).assign(
        n_devices=compared["devices"], speedup=compared["speedup"], scaling_efficiency=compared["scaling_efficiency"])
    # The original lab's times include the validation after every epoch: training time plus val_time_s is that figure.
    df["train_eval_time_s"] = df["train_time_s"] + df["val_time_s"] if {"train_time_s", "val_time_s"} <= set(df) else None
    rank = df["strategy"].map({s: i for i, s in enumerate(STRATEGY_ORDER)})
    return df.assign(_rank=rank).sort_values(["n_devices", "_rank", "config"]).drop(columns="_rank")


def strategy_table(df: Sequence[dict] | pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: time, throughput, scaling, memory, compute vs communication, quality."""
    df = strategy_rows(df)
    if df.empty:
        return df
    untimed = (df["status"] == "ok") & df["train_eval_time_s"].isna()
    if untimed.any() and df["train_eval_time_s"].notna().any():  # a finished run without it says why it shows '—'
        why = "training + evaluation time: this record has no val_time_s (run it again to measure it)"
        df["error"] = [(f"{e}; {why}" if isinstance(e, str) and e else why) if u else e for e, u in zip(df["error"], untimed)]
    columns = ["config", "status", "device"] + [c for c in STRATEGY_COLUMNS if c in df.columns]
    return df[columns].rename(columns=STRATEGY_COLUMNS).set_index("config").dropna(axis=1, how="all")


def strategy_times(df: Sequence[dict] | pd.DataFrame) -> plt.Axes | None:
    """Training time of each finished configuration (the same data for each, so times compare)."""
    done = strategy_rows(df)
    done = done[done["status"] == "ok"] if not done.empty else done
    if done.empty:
        print("No training times: no configuration of this notebook has finished.")
        return None
    ax = bars(done, "config", "train_time_s", "Training time per strategy (s)", ax=wide_axes())
    ax.set(xlabel="", ylabel="training time (s)")
    return ax


def scaling_plot(df: Sequence[dict] | pd.DataFrame) -> plt.Axes | None:
    """Scaling efficiency of each finished configuration; 1.0 (dashed) is perfect scaling."""
    rows = strategy_rows(df)
    rows = rows[rows["scaling_efficiency"].notna()] if not rows.empty else rows
    if rows.empty:
        print("No scaling efficiency: it needs a finished one-device run ('single') and others beside it.")
        return None
    rows = rows.assign(label=[f"{c}\n({n:g} dev.)" for c, n in zip(rows["config"], rows["n_devices"])])
    ax = bars(rows, "label", "scaling_efficiency", "Scaling efficiency = samples/s on N / (N x samples/s on 1)", ax=wide_axes())
    ax.axhline(1.0, ls="--", color="grey")
    ax.set(xlabel="", ylabel="scaling efficiency")
    return ax


def memory_per_gpu(df: Sequence[dict] | pd.DataFrame) -> plt.Axes | None:
    """Peak allocated memory of every GPU of each finished run (one bar per GPU)."""
    rows = []
    for _, r in strategy_rows(df).iterrows():
        if r["status"] != "ok" or pd.isna(r.get("peak_allocated_gb")):
            continue
        per_gpu = {k: v for k, v in r.items() if str(k).startswith("peak_allocated_gb_gpu") and pd.notna(v)}
        for key, gb in (per_gpu or {"peak_allocated_gb_gpu0": r["peak_allocated_gb"]}).items():
            rows.append({"config": r["config"], "GPU": key.removeprefix("peak_allocated_gb_gpu"), "GB": gb, "device": r["device"]})
    if not rows:
        print("No GPU memory: these runs ran on a CPU, where there is no GPU memory to measure.")
        return None
    return bars(pd.DataFrame(rows), "config", "GB", "Peak allocated memory per GPU (GB)", hue="GPU", ax=wide_axes())


def comm_split(df: Sequence[dict] | pd.DataFrame) -> plt.Axes | None:
    """Per profiled step: time in computation, time in communication and the whole step (wall clock)."""
    rows = strategy_rows(df)
    if rows.empty or "comm_s" not in rows:
        print("No compute/communication split: no finished run was profiled (measure.profile_steps).")
        return None
    rows = rows[(rows["status"] == "ok") & rows["comm_s"].notna()]
    parts = {"compute_s": "compute", "comm_s": "communication", "profiled_step_s": "whole step (wall clock)"}
    long = rows.melt(id_vars=["config", "device"], value_vars=list(parts), var_name="part", value_name="ms")
    long = long.assign(part=long["part"].map(parts), ms=1e3 * long["ms"])
    ax = bars(long, "config", "ms", "Per profiled step (ms)", hue="part", ax=wide_axes())
    ax.set(xlabel="", ylabel="ms per step")
    return ax
