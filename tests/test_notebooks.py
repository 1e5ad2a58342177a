"""Notebooks are committed clean, and notebook 01 runs end to end on the smoke profile."""
import json
from pathlib import Path

import pytest

from labkit import preflight, results
from labkit.launch import runall

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs_and_with_one_parameters_cell(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip outputs"
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    assert "profile" in "".join(tagged[0]["source"])


def test_every_numbered_notebook_with_params_has_its_folder():
    for path in NOTEBOOKS:
        if path.stem != "08_report":
            assert (runall.PARAMS / path.stem).is_dir(), f"params/{path.stem}/ is missing"


@pytest.mark.slow
def test_notebook_01_runs_on_smoke_and_learns(tmp_path):
    assert runall.main(["--profile", "smoke", "--only", "01", "--runs-dir", str(tmp_path)]) == 0
    record = results.read(tmp_path / "smoke" / "01_baseline_bert_squad" / "baseline")
    assert record["status"] == "ok"
    s = record["summary"]
    assert s["final_train_loss"] < 0.7 * s["first_train_loss"]
    assert {"exact", "f1", "HasAns_total", "NoAns_total", "samples_per_s", "step_s"} <= s.keys()
    assert record["env"]["device"] == "cpu" and record["info"]["weights"] == "random"
    executed = json.loads((tmp_path / "smoke" / "01_baseline_bert_squad" / "baseline.ipynb").read_text())
    outputs = [o for c in executed["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the loss curves were drawn
    # bf16 autocast runs on a CPU with bf16 instructions; the fast paths' fused optimizers are skipped, with the reason
    bf16 = results.read(tmp_path / "smoke" / "01_baseline_bert_squad" / "baseline_bf16")
    assert bf16["status"] == "ok" if preflight.cpu_multiplies("bf16") else "no bf16 instructions" in bf16["error"]
    skipped = results.read(tmp_path / "smoke" / "01_baseline_bert_squad" / "fast_path")
    assert skipped["status"] == "skipped" and any(why in skipped["error"] for why in ("CUDA", "bf16 instructions"))
