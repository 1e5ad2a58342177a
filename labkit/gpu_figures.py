"""What a GPU shows: the kit's own GPU measurements of each configuration, for students who run on a CPU.

The figures come from ``docs/measured/gpu_figures.csv``, one row per measured configuration, derived from
``docs/benchmarks.md`` (which gives each measurement's command, machine and conditions; the ``source`` column
names the section). A configuration without a row is shown as unmeasured, never estimated.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from labkit.config import PARAMS_DIR, ROOT

FIGURES = ROOT / "docs" / "measured" / "gpu_figures.csv"
COLUMNS = {"device": "device", "date": "date", "profile": "profile", "samples_per_s": "samples/s",
           "step_ms": "median step (ms)", "peak_allocated_gb": "peak allocated (GB)", "note": "note", "source": "source"}


def measured(path: Path = FIGURES) -> pd.DataFrame:
    """Every measured row, indexed by (notebook, config)."""
    return pd.read_csv(path, dtype={"date": str, "torch": str}).set_index(["notebook", "config"])


def table(notebook: str, path: Path = FIGURES) -> pd.DataFrame:
    """One row per params file of ``notebook``: its GPU figures where the kit measured them, else 'unmeasured'."""
    configs = sorted(p.stem for p in (PARAMS_DIR / notebook).glob("*.yaml"))
    rows = measured(path)
    out = []
    for config in configs:
        if (notebook, config) in rows.index:
            row = rows.loc[(notebook, config)]
            out.append({"config": config, **{label: row[key] if pd.notna(row[key]) else "" for key, label in COLUMNS.items()}})
        else:
            out.append({"config": config, **dict.fromkeys(COLUMNS.values(), ""), "device": "unmeasured"})
    return pd.DataFrame(out, columns=["config", *COLUMNS.values()]).set_index("config")
