"""`python -m labkit.bench` runs and writes its table; the Trainer baseline script runs."""
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from labkit import config
from labkit.tasks import bert_squad

ROOT = Path(__file__).resolve().parents[1]


def test_bench_smoke_writes_its_table(tmp_path):
    done = subprocess.run([sys.executable, "-m", "labkit.bench", "--profile", "smoke", "--steps", "3",
                           "--runs-dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    directory = tmp_path / "smoke" / "bench"
    table = pd.read_csv(directory / "bench.csv", index_col="configuration")
    assert {"01/baseline", "01/fast_path_packed", "trainer", "03/fast_path", "06/fast_path", "07/fast_path"} <= set(table.index)
    # fp32 configurations run on a CPU, for the fixed number of steps; GPU settings are skipped with the reason.
    for name in ("01/baseline", "06/r10_adamw"):
        assert table.loc[name, "status"] == "ok" and table.loc[name, "steps"] == 3 and table.loc[name, "samples_per_s"] > 0
    assert table.loc["01/baseline", "tokens_per_s"] > table.loc["01/baseline", "samples_per_s"]
    assert pd.isna(table.loc["01/baseline", "gpu_util"])  # no GPU sampled: empty, not 0
    for name in ("01/fast_path", "01/fast_path_packed", "trainer", "03/fast_path"):
        note = table.loc[name, "note"]  # a GPU-only setting, or bf16 on a CPU without bf16 instructions
        assert table.loc[name, "status"] == "skipped" and any(why in note for why in ("GPU", "CUDA", "bf16 instructions"))
    markdown = (directory / "bench.md").read_text()
    assert "| configuration | device | status | samples/s | real tokens/s | MFU (%) | GPU busy (%) |" in markdown
    assert "CPU (smoke, not a GPU figure)" in markdown and "## Targets" in markdown
    assert "padding-free vs padded: not measured (01/fast_path_packed: skipped" in markdown
    assert (tmp_path / "smoke" / "bench" / "smoke" / "01_baseline_bert_squad" / "baseline" / "result.json").is_file()
    assert "samples/s" in done.stdout and "padding-free vs padded: not measured" in done.stdout


def test_trainer_baseline_runs(tmp_path):
    out = tmp_path / "trainer.json"
    done = subprocess.run([sys.executable, "benchmarks/trainer_bert_qa.py", "--config",
                           "params/01_baseline_bert_squad/baseline.yaml", "--profile", "smoke", "--steps", "3",
                           "--warmup", "1", "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["steps"] == 3 and result["samples_per_s"] > 0 and result["trainer_samples_per_s"] > 0
    # real tokens, counted apart from the script: the attention masks of the same task's training features
    cfg = config.load("params/01_baseline_bert_squad/baseline.yaml", "smoke")
    torch.manual_seed(cfg.train.seed)
    real = bert_squad.build_task(cfg).train_set.tensors["attention_mask"].sum(1).double().mean().item()
    assert result["mean_real_tokens"] == pytest.approx(real) and real < cfg.data.max_length  # not the padded width
    assert result["tokens_per_s"] == pytest.approx(result["samples_per_s"] * real)
    assert result["flops_counted"] == "every feature padded to 128 tokens" and result["train_loss"] > 0
