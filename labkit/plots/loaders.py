"""Notebook 02: data-loader workers against the GPU-resident loader."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd

from labkit.plots.common import devices_in, ms_of
from labkit.results import device_label

def loader_table(records: Sequence[dict]) -> pd.DataFrame:
    """Notebook 02: per loader configuration, data wait and compute per step, epoch times, GPU utilisation."""
    rows = []
    for r in records:
        d, s, epochs = r["params"]["data"], r.get("summary", {}), r.get("curves", {}).get("epoch_time_s", [])
        rows.append({"config": r["run"]["config"], "status": r["status"], "device": device_label(r.get("env", {})),
                     "loader": "data set on the GPU" if d["on_gpu"] else f"{d['num_workers']} worker(s)",
                     "pin_memory": d["pin_memory"], "persistent": d["persistent_workers"],
                     "data wait / step (ms)": ms_of(s, "data_s"), "compute / step (ms)": ms_of(s, "fwd_bwd_s", "optimizer_s"),
                     "first epoch (s)": epochs[0] if epochs else None, "last epoch (s)": epochs[-1] if epochs else None,
                     "GPU util (%)": s.get("gpu_util_mean_pct"), "samples/s": s.get("samples_per_s"),
                     "note": r.get("error") or ""})
    return pd.DataFrame(rows).set_index("config") if rows else pd.DataFrame()


def workers_figure(records: Sequence[dict]) -> plt.Figure | None:
    """Epoch time (last epoch: workers already started) and mean GPU utilisation against the number of
    loader workers; the GPU-resident loader, which has no workers, is a dashed line."""
    ok = [r for r in records if r["status"] == "ok" and r.get("curves", {}).get("epoch_time_s")]
    workers = sorted((r for r in ok if not r["params"]["data"]["on_gpu"]), key=lambda r: r["params"]["data"]["num_workers"])
    if not workers:
        print("No worker runs finished yet: nothing to plot.")
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = [r["params"]["data"]["num_workers"] for r in workers]
    ax.plot(x, [r["curves"]["epoch_time_s"][-1] for r in workers], "o-", color="C0", label="epoch time")
    for r in ok:
        if r["params"]["data"]["on_gpu"]:
            ax.axhline(r["curves"]["epoch_time_s"][-1], color="C2", ls="--", label="data set on the GPU (no workers)")
    ax.set(xlabel="data-loader workers", ylabel="epoch time (s)", xticks=x)
    util = [r["summary"].get("gpu_util_mean_pct") for r in workers]
    if all(u is not None for u in util):
        ax2 = ax.twinx()
        ax2.plot(x, util, "s:", color="C3", label="GPU utilisation")
        ax2.set(ylabel="mean GPU utilisation (%)", ylim=(0, 105))
        ax2.grid(False)
        ax2.legend(loc="upper left", bbox_to_anchor=(1.12, 0.75), frameon=False)
    else:
        ax.text(0.02, 0.97, "no GPU utilisation: these runs had no GPU to sample", transform=ax.transAxes, va="top")
    ax.legend(loc="upper left", bbox_to_anchor=(1.12, 1), frameon=False)  # right of the second axis' labels
    ax.set_title(f"Epoch time against loader workers ({devices_in(ok)})")
    fig.tight_layout()
    return fig


def loader_comparison(records: Sequence[dict]) -> pd.DataFrame:
    """Notebook 02: the fastest worker configuration (by last epoch) beside the GPU-resident loader."""
    table = loader_table(records)
    if table.empty:
        return table
    workers = table[(table["status"] == "ok") & (table["loader"] != "data set on the GPU")]
    rows = table[table["loader"] == "data set on the GPU"]
    if not workers.empty:
        rows = pd.concat([workers.loc[[workers["last epoch (s)"].idxmin()]], rows])
    best = rows["last epoch (s)"].min()
    columns = ["status", "device", "loader", "data wait / step (ms)", "compute / step (ms)", "last epoch (s)", "GPU util (%)", "note"]
    return rows[columns].assign(**{"last epoch vs fastest": rows["last epoch (s)"] / best})
