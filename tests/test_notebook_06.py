"""Notebook 06 executes on the smoke profile for the cells of the rank x optimizer grid that its comparisons
need: full fine-tuning against LoRA rank 1, and the optimizers whose state sizes differ (none, one, two tensors).
The other ranks and Nesterov differ from these only in a setting that tests/test_gpt2_lora.py checks."""
import json

import pytest

from labkit import results
from labkit.launch import runall

pytestmark = pytest.mark.slow

NOTEBOOK = "06_lora_optimizer_sweep"
GRID = {"full_adamw", "r1_adamw", "r1_sgd", "r1_sgd_momentum"}


def test_notebook_06_runs_the_sweep_on_smoke(tmp_path):
    assert runall.main(["--profile", "smoke", "--only", "06", "--config", *sorted(GRID), "--runs-dir", str(tmp_path)]) == 0
    runs = results.load(tmp_path, profile="smoke", notebook=NOTEBOOK).set_index("config")
    assert GRID <= set(runs.index)
    assert (runs.loc[sorted(GRID), "status"] == "ok").all(), runs[["status", "error"]]
    assert runs["status"].isin(["ok", "skipped"]).all(), runs[["status", "error"]]  # GPU-only cells say why
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
    # the executed notebooks show tables and figures, and no error
    for name in records:
        cells = json.loads((tmp_path / "smoke" / NOTEBOOK / f"{name}.ipynb").read_text())["cells"]
        outputs = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]
        assert not [o for o in outputs if o["output_type"] == "error"], name
        if name in GRID:
            assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3, name
