"""Notebook 06 on the smoke profile for the cells of the rank x optimizer grid that its comparisons need: full
fine-tuning against LoRA rank 1, and the optimizers whose state sizes differ (none, one, two tensors). The other
ranks and Nesterov differ from these only in a setting that tests/test_gpt2_lora.py checks. The notebook executes
for rank 1 with AdamW, last, so that its sweep section reads all four records; the other three run as its run cell
runs them (labkit.run), each notebook costing a kernel and its own imports."""
import json

import pytest

import labkit
from labkit import results
from labkit.launch import runall

pytestmark = pytest.mark.slow

NOTEBOOK = "06_lora_optimizer_sweep"
GRID = ("full_adamw", "r1_sgd", "r1_sgd_momentum", "r1_adamw")  # the last one through the notebook
# Half the smoke data (64 steps): every configuration, plain SGD included, still learns by twice the bound below.
OVERRIDES = {"data.train_examples": 512}


def test_notebook_06_runs_the_sweep_on_smoke(tmp_path, one_thread):
    for name in GRID[:-1]:  # no timeline is read from these: no profiled steps
        labkit.run(f"params/{NOTEBOOK}/{name}.yaml", "smoke", {**OVERRIDES, "measure.profile_steps": 0}, tmp_path)
    assert runall.main(["--profile", "smoke", "--only", "06", "--config", GRID[-1], "--runs-dir", str(tmp_path)],
                       overrides=OVERRIDES) == 0
    runs = results.load(tmp_path, profile="smoke", notebook=NOTEBOOK).set_index("config")
    assert set(runs.index) == set(GRID)
    assert (runs["status"] == "ok").all(), runs[["status", "error"]]
    records = {r["run"]["config"]: r for r in (results.read(p) for p in runs["path"])}
    for name in GRID:
        r = records[name]
        s = r["summary"]
        assert s["final_train_loss"] < s["first_train_loss"] - 0.2, name  # every configuration learns something
        assert "weights_computed_gb" in s and "weights_measured_gb" not in s  # CPU: computed only, never faked
        assert len(r["info"]["generations"]) == 4 and r["info"]["weights"] == "random"
    full, rank1 = records["full_adamw"]["summary"], records["r1_adamw"]["summary"]
    assert full["params_trainable"] == full["params_total"] and rank1["params_trainable"] < 0.01 * rank1["params_total"]
    assert full["final_train_loss"] < rank1["final_train_loss"]  # with random weights LoRA has little to adapt
    optimizer = {name: records[name]["summary"]["optimizer_computed_gb"] for name in ("r1_sgd", "r1_sgd_momentum", "r1_adamw")}
    assert optimizer["r1_sgd"] == 0 and optimizer["r1_adamw"] == pytest.approx(2 * optimizer["r1_sgd_momentum"])
    # the executed notebook shows tables and figures, no error, and a sweep table with a row for each configuration
    cells = json.loads((tmp_path / "smoke" / NOTEBOOK / f"{GRID[-1]}.ipynb").read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3
    sweep = next(c for c in cells if "".join(c["source"]).startswith("records = results.records("))
    assert all(f">{name}</th>" in "".join(sweep["outputs"][0]["data"]["text/html"]) for name in GRID)
