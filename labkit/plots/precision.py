"""Notebook 03: precisions and channels-last, one row per run."""
from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from labkit.plots.common import PRECISION_NAMES, ms_of, model_of
from labkit.results import device_label


def precision_table(records: Sequence[dict]) -> pd.DataFrame:
    """Notebook 03: step time, speed-up over the same model's fp32 run, peak memory, final loss and score."""
    rows = []
    for r in records:
        p, s = r["params"], r.get("summary", {})
        rows.append({"model": model_of(r), "config": r["run"]["config"], "status": r["status"],
                     "device": device_label(r.get("env", {})),
                     "precision": PRECISION_NAMES[p["train"]["precision"]] + (", channels-last" if p["model"]["channels_last"] else ""),
                     "step (ms)": ms_of(s, "step_s"), "compute / step (ms)": ms_of(s, "fwd_bwd_s", "optimizer_s"),
                     "samples/s": s.get("samples_per_s"), "peak allocated (GB)": s.get("peak_allocated_gb"),
                     "final train loss": s.get("final_train_loss"), "final val loss": s.get("final_val_loss"),
                     "accuracy": s.get("accuracy"), "F1": s.get("f1"), "note": r.get("error") or "",
                     "_fp32": p["train"]["precision"] == "32" and not p["model"]["channels_last"]})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    base = df[df["_fp32"] & df["samples/s"].notna()].groupby("model")["samples/s"].first()
    df.insert(df.columns.get_loc("samples/s") + 1, "speed-up over fp32", df["samples/s"] / df["model"].map(base))
    return df.drop(columns="_fp32").dropna(axis=1, how="all").set_index(["model", "config"])
