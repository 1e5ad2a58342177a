"""Notebook 04: activation checkpointing and the largest batch under a memory budget."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from labkit.plots.common import PRECISION_NAMES, devices_in, legend_outside, ms_of, model_of, sample_frame
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
    df = sample_frame(records, "batch_search")
    if df.empty:
        print("No batch-size search in these records yet.")
        return None
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


QUALITY = {"accuracy": "accuracy", "f1": "F1", "exact": "EM"}  # the task's own metric, whichever the runs measured
OWN, LARGEST = "its own batch", "largest batch in budget"


def _largest_batch_reason(record: dict) -> str | None:
    """Why a record has no run at its largest batch; None when it has one that finished."""
    s, larger = record.get("summary", {}), record.get("at_max_batch")
    if record.get("status") != "ok":
        return record.get("error") or f"status {record.get('status')}"
    if s.get("max_batch") is None:
        return "no batch-size search in this record" if "max_batch" not in s else "no batch fitted the budget"
    if s["max_batch"] == record["params"]["train"]["batch_size"]:
        return "the largest batch is the run's own"
    if larger is None:
        return "not trained at the largest batch yet (memory.train_at_largest_batch)"
    return None if larger["status"] == "ok" else larger.get("error") or f"status {larger['status']}"


def _outcome(summary: dict, curves: dict) -> dict:
    epochs = curves.get("epoch_time_s") or []
    return {"step (ms)": ms_of(summary, "step_s"), "epoch (s)": sum(epochs) / len(epochs) if epochs else None,
            "training time (s)": summary.get("train_time_s"), "final val loss": summary.get("final_val_loss"),
            **{label: summary.get(key) for key, label in QUALITY.items()}}


def largest_batch_table(records: Sequence[dict]) -> pd.DataFrame:
    """Notebook 04, as the original's table (baseline, checkpoint, each at batch 512 and 896): for each searched
    configuration two rows, the run at its own batch and the run at the largest batch in the budget, with step,
    epoch and training time and what training reached. A row without figures says why in its note."""
    rows = []
    for r in records:
        if "max_batch" not in r.get("summary", {}) and r.get("status") == "ok":
            continue  # no search in this record: the checkpointing table says so
        base = {"model": model_of(r), "config": r["run"]["config"], "device": device_label(r.get("env", {}))}
        rows.append({**base, "run": OWN, "batch": r["params"]["train"]["batch_size"],
                     **_outcome(r.get("summary", {}), r.get("curves", {})),
                     "note": (r.get("error") or f"status {r.get('status')}") if r.get("status") != "ok" else ""})
        if r.get("status") != "ok":
            continue  # nothing was searched: the row above says why
        larger, reason = r.get("at_max_batch") or {}, _largest_batch_reason(r)
        rows.append({**base, "run": LARGEST, "batch": r.get("summary", {}).get("max_batch"),
                     **(_outcome(larger["summary"], larger["curves"]) if reason is None else {}),
                     "note": reason or ""})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows).set_index(["model", "config", "run"])
    # a figure no run measured (a metric of the other model, GPU step times on a CPU) is left out, not a column of '—'
    return df.drop(columns=[c for c in df.columns if c not in ("device", "batch", "note") and df[c].isna().all()])


def largest_batch_curves(records: Sequence[dict]) -> plt.Figure | None:
    """Validation loss and the task's metric against epoch: each configuration at its own batch (solid) and at
    the largest batch in the budget (dashed), as the original lab plotted batch 128 against 512 and 896."""
    rows = []
    for r in records:
        if _largest_batch_reason(r) is not None:
            continue
        for run, batch, curves in ((OWN, r["params"]["train"]["batch_size"], r.get("curves", {})),
                                   (LARGEST, r["at_max_batch"]["batch"], r["at_max_batch"]["curves"])):
            metrics = {(m.get("step"), m.get("epoch")): m for m in curves.get("val_metrics") or []}
            for step, epoch, loss in curves.get("val_loss") or []:
                rows.append({"config": f"{r['run']['config']} (batch {batch})", "run": run, "epoch": epoch,
                             "val loss": loss, **{label: metrics.get((step, epoch), {}).get(key) for key, label in QUALITY.items()}})
    if not rows:
        print("No run at the largest batch in these records: it follows the batch-size search "
              "(memory.train_at_largest_batch), and needs a largest batch above the run's own.")
        return None
    df = pd.DataFrame(rows)
    panels = ["val loss"] + [label for label in QUALITY.values() if label in df and df[label].notna().any()][:1]
    fig, axes = plt.subplots(1, len(panels), figsize=(7 * len(panels), 4.5), squeeze=False)
    for ax, column in zip(axes[0], panels):
        sns.lineplot(data=df.dropna(subset=[column]), x="epoch", y=column, hue="config", style="run",
                     style_order=[OWN, LARGEST], markers=True, ax=ax, legend=ax is axes[0][-1])
        ax.set(title=column, xlabel="epoch", ylabel=column, xticks=sorted(df["epoch"].unique()))
    legend_outside(axes[0][-1], fontsize=8)
    fig.suptitle(f"Its own batch (solid) against the largest batch in the budget (dashed) ({devices_in(records)})")
    fig.tight_layout()
    return fig
