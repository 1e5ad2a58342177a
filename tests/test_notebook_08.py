"""Notebook 08 executes (papermill, through run-all) on a profile's records of every notebook and shows each run
as what it is: figures for finished runs, the status for skipped, out-of-memory and failed ones."""
import json

import pytest
from test_report import fake_record

from labkit import results
from labkit.launch import runall
from labkit.launch import runner

pytestmark = pytest.mark.slow

CPU = {"gpu": None, "profile": "smoke"}


def smoke_records() -> list[dict]:
    """Records shaped like the smoke profile's, one notebook after another (CPU runs)."""
    def ok(time, loss, rate):
        return {"train_time_s": time, "final_val_loss": loss, "first_train_loss": loss + 1, "samples_per_s": rate, "step_s": 0.5}

    return [
        fake_record("01_baseline_bert_squad", "baseline", **CPU, summary=ok(12.0, 4.3, 4.1)),
        fake_record("02_dataloader_workers", "workers_0", task="cifar_resnext", **CPU, summary=ok(9.0, 2.3, 30.0)),
        fake_record("02_dataloader_workers", "workers_2", task="cifar_resnext", data={"num_workers": 2}, **CPU, summary=ok(6.0, 2.3, 45.0)),
        fake_record("04_activation_checkpointing", "bert_off", **CPU, summary=ok(13.0, 4.2, 3.9)),
        fake_record("04_activation_checkpointing", "bert_full", **CPU, model={"checkpointing": "full"}, summary=ok(17.0, 4.2, 3.0)),
        fake_record("05_ddp_fsdp", "single", **CPU, summary=ok(20.0, 4.0, 5.0)),
        fake_record("05_ddp_fsdp", "ddp", **CPU, train={"strategy": "ddp", "devices": 2}, summary=ok(14.0, 4.1, 8.0)),
        fake_record("06_lora_optimizer_sweep", "r1_adamw", task="gpt2_sft", **CPU, summary=ok(3.0, 6.5, 30.0)),
        fake_record("07_t5_model_parallel", "gsm8k_1worker_fp32", task="t5_qa", data={"dataset": "gsm8k"}, **CPU,
                    summary=ok(24.0, 6.2, 4.5)),
        fake_record("07_t5_model_parallel", "gsm8k_fp16", status="oom", task="t5_qa", data={"dataset": "gsm8k"}, **CPU,
                    error="out of memory: a made-up case"),
        fake_record("06_lora_optimizer_sweep", "full_adamw", status="failed", task="gpt2_sft", **CPU, error="RuntimeError: boom"),
    ]


def test_notebook_08_reports_every_notebook(tmp_path, monkeypatch):
    for r in smoke_records():
        results.save(r, results.record_dir("smoke", r["run"]["notebook"], r["run"]["config"], tmp_path))
    monkeypatch.setattr(runner.torch.cuda, "is_available", lambda: False)
    runner.run("params/03_mixed_precision/bert_tf32.yaml", "smoke", runs_dir=tmp_path)  # a real record: skipped on a CPU

    assert runall.main(["--profile", "smoke", "--only", "08", "--runs-dir", str(tmp_path)]) == 0
    cells = json.loads((tmp_path / "smoke" / "08_report" / "08_report.ipynb").read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    text = "\n".join("".join(o.get("text", "")) + "".join(o.get("data", {}).get("text/markdown", "")) +
                     "".join(o.get("data", {}).get("text/html", "")) for o in outputs)
    assert "12 results records in profile 'smoke'" in text
    for notebook in ("01_baseline_bert_squad", "02_dataloader_workers", "03_mixed_precision", "05_ddp_fsdp", "07_t5_model_parallel"):
        assert notebook in text
    # sentences computed from the records, comparing within a notebook, task and device
    assert "02/workers_2 trained 1.5x faster than 02/workers_0 (6 s against 9 s; 02_dataloader_workers" in text
    assert "05/ddp on 2 devices (CPU (smoke, not a GPU figure)) kept 80% of perfect scaling" in text
    assert "Not measured: every record of this profile ran on a CPU" in text  # GPU utilisation and temperature
    # unfinished runs appear with their status and reason, never as numbers
    assert "precision tf32 is a mode of NVIDIA tensor cores" in text and "RuntimeError: boom" in text
    assert " >out of memory</td>" in text and " >skipped</td>" in text
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # loss, time, pareto, scaling
