"""Where each configuration's time goes when ``make run-all`` executes a notebook for it, from what the run left:
papermill's timing of the executed notebook and its cells, and the results record.

    python benchmarks/notebook_times.py runs/gpu/07_t5_model_parallel --out notebook07-times.csv

One row per executed notebook in the folder (runs/<profile>/<notebook>), in seconds:

* ``notebook_s``: papermill's whole execution, the kernel's start included; ``cells_s``: its code cells together;
  ``run_cell_s``: the cell that calls ``labkit.run``.
* ``launch_wall_s``: the launcher's wall time (runs over several processes only), their start-up included;
  ``record_s``: the record's start to end (whole seconds), which starts once the training process has its imports.
* ``train_time_s``, ``val_time_s``, ``samples_per_s``: the record's own.
* ``start_processes_s`` to ``stop_processes_s``: the record's clock, part by part (labkit.results.TIME_SPLIT); the
  first two and the last only for runs over several processes.

Read down a row: notebook_s - cells_s is the kernel's start; run_cell_s - launch_wall_s the notebook process's
imports and checks; launch_wall_s - record_s the launched processes' start; record_s - train - val the set-up of
data and model.
"""
from __future__ import annotations

import argparse
import csv
import datetime as dt
import json
from pathlib import Path

from labkit.launch.runall import cell_times
from labkit.results import TIME_SPLIT, time_split

COLUMNS = ["config", "notebook_s", "cells_s", "run_cell_s", "launch_wall_s", "record_s", "train_time_s", "val_time_s",
           "samples_per_s", *(name for name, _, _ in TIME_SPLIT)]


def times(notebook: Path) -> dict:
    """The row of one executed notebook (its record beside it, in the folder of its configuration's name)."""
    executed, record = json.loads(notebook.read_text()), json.loads((notebook.with_suffix("") / "result.json").read_text())
    cells = cell_times(notebook)
    when = lambda s: dt.datetime.strptime(s, "%Y-%m-%d %H:%M:%S")  # noqa: E731
    summary = record.get("summary", {})
    return {"config": notebook.stem, "notebook_s": executed["metadata"]["papermill"]["duration"],
            "cells_s": sum(seconds for seconds, _ in cells),
            "run_cell_s": sum(seconds for seconds, source in cells if "labkit.run(" in source),
            "launch_wall_s": record.get("launch", {}).get("wall_s"),
            "record_s": (when(record["run"]["finished"]) - when(record["run"]["started"])).total_seconds(),
            **{k: summary.get(k) for k in ("train_time_s", "val_time_s", "samples_per_s")}, **time_split(record)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="runs/<profile>/<notebook>: the executed notebooks and their records")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    notebooks = sorted(n for n in args.folder.glob("*.ipynb") if (n.with_suffix("") / "result.json").is_file())
    if not notebooks:
        raise SystemExit(f"{args.folder}: no executed notebook with its results record (<config>.ipynb and "
                         "<config>/result.json); give the folder make run-all wrote, runs/<profile>/<notebook>")
    rows = [times(n) for n in notebooks]
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()} for row in rows)
    print(f"{len(rows)} configurations: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
