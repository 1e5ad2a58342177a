"""Notebooks 02-04 executed with papermill on the smoke profile, a few configurations each (time on 2 cores)."""
import pytest

import labkit
from labkit import results
from labkit.launch import runall

pytestmark = pytest.mark.slow

CONFIGS = {  # one that trains, per notebook, and 02's that must be skipped on a CPU
    "02": {"workers_1", "gpu_resident"},
    "03": {"resnext_fp32"},
    "04": {"resnext_full"},  # every configuration of 04 runs on a CPU
}
# Half the smoke data, no trace, a batch search up to 64: the loss still falls and accuracy clears chance.
SHORT = {"data.train_examples": 256, "data.val_examples": 64, "measure.profile_steps": 0, "measure.max_batch": 64}


def records(tmp_path, notebook):
    frame = results.load(tmp_path, profile="smoke", notebook=notebook)
    return {row.config: results.read(row.path) for row in frame.itertuples()}


def check_trained(record):
    s = record["summary"]
    assert record["status"] == "ok" and record["info"]["weights"] == "random"
    assert s["final_train_loss"] < 0.8 * s["first_train_loss"]  # the loss visibly falls
    assert s["accuracy"] > 0.2  # ten classes: chance is 0.1
    assert len(record["curves"]["epoch_time_s"]) == 2 and s["data_s"] >= 0 and s["fwd_bwd_s"] > 0


def test_notebooks_02_to_04_on_smoke(tmp_path):
    # 03's skipped configuration runs as its run cell runs it (labkit.run), without a kernel of its own: 02's executes
    # the notebook for a skipped run
    labkit.run("params/03_mixed_precision/resnext_tf32.yaml", "smoke", SHORT, tmp_path)
    configs = sorted(set().union(*CONFIGS.values()))
    assert runall.main(["--profile", "smoke", "--only", *CONFIGS, "--config", *configs, "--runs-dir", str(tmp_path)],
                       overrides=SHORT) == 0

    nb02 = records(tmp_path, "02_dataloader_workers")
    check_trained(nb02["workers_1"])
    assert nb02["workers_1"]["params"]["data"]["num_workers"] == 1
    assert nb02["gpu_resident"]["status"] == "skipped" and "on_gpu" in nb02["gpu_resident"]["error"]

    nb03 = records(tmp_path, "03_mixed_precision")
    check_trained(nb03["resnext_fp32"])
    assert nb03["resnext_tf32"]["status"] == "skipped" and "tensor cores" in nb03["resnext_tf32"]["error"]

    nb04 = records(tmp_path, "04_activation_checkpointing")
    full = nb04["resnext_full"]
    check_trained(full)
    assert full["info"]["checkpointed_blocks"] == full["info"]["blocks"]
    s, attempts = full["summary"], full["curves"]["batch_search"]
    assert s["max_batch"] >= full["params"]["train"]["batch_size"] and s["epoch_time_at_max_batch_s"] > 0
    assert 0 < s["saved_activations_gb"] <= s["memory_budget_gb"] and {a["status"] for a in attempts} <= {"ok", "over_budget"}
    for name in ("02_dataloader_workers/workers_1", "03_mixed_precision/resnext_fp32", "04_activation_checkpointing/resnext_full"):
        text = (tmp_path / "smoke" / f"{name}.ipynb").read_text()
        assert "Traceback" not in text and "image/png" in text
    assert "Traceback" not in (tmp_path / "smoke" / "02_dataloader_workers" / "gpu_resident.ipynb").read_text()
