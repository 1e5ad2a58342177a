"""Notebook 04: activation checkpointing and the largest batch under a memory budget."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from labkit.plots.common import PRECISION_NAMES, devices_in, ms_of, model_of
from labkit.results import device_label


def checkpointing_table(records: Sequence[dict]) -> pd.DataFrame:
    """Notebook 04: memory and step time per checkpointing mode, overhead over the same model without it,
    and the largest batch under the memory budget with the epoch time there."""
    rows = []
    for r in records:
        m, s = r["params"]["model"], r.get("summary", {})
        mode = {"off": "off", "full": "every block"}.get(m["checkpointing"], f"one block in {m['checkpoint_every']}")
        rows.append({"model": model_of(r), "config": r["run"]["config"], "status": r["status"],
                     "device": device_label(r.get("env", {})), "checkpointing": mode,
                     "precision": PRECISION_NAMES[r["params"]["train"]["precision"]],
                     "batch": r["params"]["train"]["batch_size"],
                     "peak allocated (GB)": s.get("peak_allocated_gb"),
                     "activations after forward (GB)": s.get("activations_measured_gb"),
                     "activations saved for backward (GB, CPU)": s.get("saved_activations_gb"),
                     "step (ms)": ms_of(s, "step_s"), "compute / step (ms)": ms_of(s, "fwd_bwd_s", "optimizer_s"),
                     "memory budget (GB)": s.get("memory_budget_gb"), "largest batch in budget": s.get("max_batch"),
                     "epoch at that batch (s)": s.get("epoch_time_at_max_batch_s"), "note": r.get("error") or "",
                     "_off": m["checkpointing"] == "off"})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    base = df[df["_off"] & df["compute / step (ms)"].notna()].groupby("model")["compute / step (ms)"].first()
    df.insert(df.columns.get_loc("compute / step (ms)") + 1, "overhead (%)",
              100 * (df["compute / step (ms)"] / df["model"].map(base) - 1))
    return df.drop(columns="_off").dropna(axis=1, how="all").set_index(["model", "config"])


def batch_search_figure(records: Sequence[dict]) -> plt.Figure | None:
    """Every attempt of the batch-size search: memory against batch, failed attempts marked, budget dashed."""
    rows = [{"config": r["run"]["config"], **a} for r in records for a in r.get("curves", {}).get("batch_search", [])]
    if not rows:
        print("No batch-size search in these records yet.")
        return None
    df = pd.DataFrame(rows)
    if "memory_gb" not in df:
        df["memory_gb"] = float("nan")
    top = df["memory_gb"].max() if df["memory_gb"].notna().any() else 1.0
    oom = df["memory_gb"].isna()  # an out-of-memory attempt has no peak: drawn at the top
    df.loc[oom, "memory_gb"] = 1.05 * top
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.scatterplot(data=df, x="batch", y="memory_gb", hue="config", style="status", s=80, ax=ax,
                    markers={"ok": "o", "over_budget": "X", "oom": "X"})
    for _, a in df[oom].iterrows():
        ax.annotate("out of memory", (a["batch"], a["memory_gb"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for r in records:
        budget = r.get("summary", {}).get("memory_budget_gb")
        if budget:
            ax.axhline(budget, color="grey", ls="--")
            ax.annotate(f"budget {budget:.3g} GB", (ax.get_xlim()[0], budget), textcoords="offset points", xytext=(4, 4), fontsize=8)
            break
    kinds = {r.get("summary", {}).get("search_memory") for r in records} - {None}
    ax.set(xlabel="batch size", ylabel="memory (GB)",
           title=f"Batch-size search, every attempt ({devices_in(records)})\nmemory: {', '.join(sorted(kinds))}")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig
