"""Notebooks are committed clean, and notebook 01 runs end to end on the smoke profile."""
import json
from pathlib import Path

import pytest

import labkit
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


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_reads_every_name_of_the_parameters_cell(path):
    """papermill parses each line of the cell to learn its names; a line it cannot parse (an '=' inside the comment
    once did) loses that name, and every run then warns 'Passed unknown parameter'."""
    import papermill

    nb = json.loads(path.read_text())
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    assigned = {line.split("=", 1)[0].strip() for line in "".join(cell["source"]).splitlines()
                if "=" in line.split("#", 1)[0]}
    assert set(papermill.inspect_notebook(str(path))) == assigned


def test_every_numbered_notebook_with_params_has_its_folder():
    for path in NOTEBOOKS:
        if path.stem != "08_report":
            assert (runall.PARAMS / path.stem).is_dir(), f"params/{path.stem}/ is missing"


# A shorter smoke run (24 steps of 64 tokens instead of 80 of 128) that still learns visibly; its trace is kept,
# so the timeline cells draw a real one.
SHORT = {"data.train_examples": 192, "data.val_examples": 32, "data.max_length": 64, "data.doc_stride": 16,
         "train.lr": 3.0e-3}


@pytest.mark.slow
def test_notebook_01_runs_on_smoke_and_learns(tmp_path):
    # The configurations a CPU skips run as the notebook's run cell runs them (labkit.run), without a kernel of their
    # own; the notebook then executes for the baseline, and its comparison reads all three records. Notebooks 02 and
    # 09 execute for a skipped configuration.
    for config in ("baseline_bf16", "fast_path"):
        labkit.run(f"params/01_baseline_bert_squad/{config}.yaml", "smoke", SHORT, tmp_path)
    assert runall.main(["--profile", "smoke", "--only", "01", "--config", "baseline", "--runs-dir", str(tmp_path)],
                       overrides=SHORT) == 0
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
    comparison = next(c for c in executed["cells"] if "".join(c["source"]).startswith("records = results.records("))
    table = "".join(comparison["outputs"][0]["data"]["text/html"])
    assert all(f">{config}</th>" in table for config in ("baseline", "baseline_bf16", "fast_path"))  # skipped ones too
    # bf16 autocast runs on a CPU with bf16 instructions; the fast paths' fused optimizers are skipped, with the reason
    bf16 = results.read(tmp_path / "smoke" / "01_baseline_bert_squad" / "baseline_bf16")
    assert bf16["status"] == "ok" if preflight.cpu_multiplies("bf16") else "no bf16 instructions" in bf16["error"]
    skipped = results.read(tmp_path / "smoke" / "01_baseline_bert_squad" / "fast_path")
    assert skipped["status"] == "skipped" and any(why in skipped["error"] for why in ("CUDA", "bf16 instructions"))
