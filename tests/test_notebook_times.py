"""Where a configuration's time went under make run-all (benchmarks/notebook_times.py), on a run whose times are known."""
import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import notebook_times  # noqa: E402


def _executed(folder: Path, config: str, cells: list[tuple[str, float]], total: float, record: dict) -> None:
    nb = {"metadata": {"papermill": {"duration": total}},
          "cells": [{"cell_type": "markdown", "source": "# text", "metadata": {}}] +
                   [{"cell_type": "code", "source": s, "metadata": {"papermill": {"duration": d}}} for s, d in cells]}
    (folder / f"{config}.ipynb").write_text(json.dumps(nb))
    (folder / config).mkdir()
    (folder / config / "result.json").write_text(json.dumps(record))


def test_each_configuration_splits_into_kernel_cells_launch_and_record(tmp_path):
    run = {"started": "2026-11-30 17:01:59", "finished": "2026-11-30 17:02:20"}
    summary = {"train_time_s": 7.55, "val_time_s": 4.92, "samples_per_s": 337.1}
    _executed(tmp_path, "ddp", [("config = 'x'", 0.01), ("record = labkit.run(config, profile)", 51.06), ("plots.x()", 2.0)],
              65.0, {"run": run, "launch": {"wall_s": 42.21}, "summary": summary,
                     "clock": {"launched": 100.0, "process_started": 103.0, "started": 111.52, "loop_imported": 112.5,
                               "fabric_made": 113.0, "task_built": 115.0, "training_started": 118.0, "first_step": 119.0, "training_ended": 131.0,
                               "finished": 132.0, "launch_ended": 142.21}})
    _executed(tmp_path, "single", [("record = labkit.run(config, profile)", 41.3)], 44.0,
              {"run": {**run, "finished": "2026-11-30 17:02:30"}, "summary": summary})
    (tmp_path / "unfinished.ipynb").write_text("{}")  # no record beside it: not a row
    out = tmp_path / "times.csv"
    assert notebook_times.main([str(tmp_path), "--out", str(out)]) == 0
    ddp, single = list(csv.DictReader(out.open()))
    assert ddp == {"config": "ddp", "notebook_s": "65.0", "cells_s": "53.1", "run_cell_s": "51.1", "launch_wall_s": "42.2",
                   "record_s": "21.0", "train_time_s": "7.5", "val_time_s": "4.9", "samples_per_s": "337.1",
                   "start_processes_s": "3.0", "imports_s": "8.5", "lightning_import_s": "1.0", "fabric_launch_s": "0.5",
                   "build_task_s": "2.0", "setup_s": "3.0",
                   "first_step_s": "1.0", "training_s": "12.0", "finish_s": "1.0", "stop_processes_s": "10.2"}
    assert single["launch_wall_s"] == "" and single["record_s"] == "31.0" and single["imports_s"] == ""  # no clock


def test_a_folder_without_executed_notebooks_says_which_folder_to_give(tmp_path):
    with pytest.raises(SystemExit, match="runs/<profile>/<notebook>"):
        notebook_times.main([str(tmp_path), "--out", str(tmp_path / "t.csv")])
