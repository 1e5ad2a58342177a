"""`python -m labkit.bench` runs and writes its table; the Trainer baseline script runs."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from labkit import bench, config
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
    assert "CPU (smoke, not a GPU figure)" in markdown and "## Goals" in markdown and "## The same training" in markdown
    assert "last training loss" in markdown and table.loc["01/baseline", "final_train_loss"] > 0
    assert "padding-free vs padded, same fast path: not measured (01/fast_path_packed: skipped" in markdown
    ratios = pd.read_csv(directory / "bench-ratios.csv")
    assert list(ratios.columns) == bench.RATIO_COLUMNS and list(ratios["configuration"]) == list(table.index)
    assert (tmp_path / "smoke" / "bench" / "smoke" / "01_baseline_bert_squad" / "baseline" / "result.json").is_file()
    assert "samples/s" in done.stdout and "padding-free vs padded, same fast path: not measured" in done.stdout


def made_up(rows: dict[str, dict]) -> pd.DataFrame:
    """A bench table as bench() builds it, from a few figures per row (the rest empty)."""
    return pd.DataFrame([{"configuration": name, "status": "ok", **row} for name, row in rows.items()]).reindex(
        columns=bench.ROW).set_index("configuration")


FIGURES = {"01/baseline": {"samples_per_s": 160.0},
           "01/baseline_bf16": {"samples_per_s": 600.0, "mfu": 13.0},
           "trainer": {"samples_per_s": 580.0, "trainer_samples_per_s": 500.0},
           "01/fast_path_padded": {"samples_per_s": 1160.0, "mfu": 29.0, "gpu_util": 99.0, "peak_allocated_gb": 1.3},
           "01/fast_path_packed": {"samples_per_s": 1624.0, "first_step_s": 25.0, "mean_real_tokens": 171.4},
           "03/fast_path": {"samples_per_s": 20000.0, "epoch_s": 2.6},
           "06/r10_adamw": {"samples_per_s": 80.0}, "06/fast_path": {"samples_per_s": 100.0},
           "07/gsm8k_bf16": {"samples_per_s": 200.0}, "07/fast_path": {"status": "skipped"}}


def test_ratios_compare_each_row_with_the_row_it_improves_on(tmp_path):
    r = bench.ratios(made_up(FIGURES))
    assert list(r.index) == list(FIGURES) and list(r.reset_index().columns) == bench.RATIO_COLUMNS
    assert r.loc["01/fast_path_padded", "baseline_samples_per_s"] == 580.0  # the Trainer's steady state, not its own figure
    assert r.loc["01/fast_path_padded", "ratio"] == pytest.approx(2.0)
    assert r.loc["01/fast_path_padded", ["mfu", "gpu_busy", "peak_allocated_gb"]].tolist() == [29.0, 99.0, 1.3]
    assert r.loc["01/fast_path_packed", "ratio"] == pytest.approx(1.4)  # against the padded fast path
    assert r.loc["trainer", "ratio"] == pytest.approx(580 / 600) and r.loc["06/fast_path", "ratio"] == pytest.approx(1.25)
    assert pd.isna(r.loc["01/baseline", "ratio"]) and pd.isna(r.loc["01/baseline", "baseline_samples_per_s"])  # a baseline
    assert pd.isna(r.loc["07/fast_path", "samples_per_s"]) and pd.isna(r.loc["07/fast_path", "ratio"])  # skipped: no figure
    r.to_csv(tmp_path / "ratios.csv")
    assert list(pd.read_csv(tmp_path / "ratios.csv").columns) == bench.RATIO_COLUMNS


def test_targets_say_met_missed_or_not_measured():
    padded, packed, resnext, gpt2, t5 = bench.targets(made_up(FIGURES))
    assert "2.00x trainer's samples/s (goal: at least 1.8x, met)" in padded
    assert "MFU 29.0% (goal: at least 30%, missed)" in padded and "2.32x the Trainer's own figure" in padded
    assert "1.40x 01/fast_path_padded's samples/s (goal: at least 1.5x, missed)" in packed
    assert "mean 171 real tokens" in packed and "first step 25.0 s, compilation included (goal: under 30 s, met)" in packed
    assert "2.60 s for its last epoch" in resnext and "(goal: under 2.5 s, missed)" in resnext
    assert "1.25x 06/r10_adamw's samples/s (goal: at least 1.3x, missed)" in gpt2
    assert t5 == "T5 fast path: not measured (07/fast_path: skipped)"
    faster = {**FIGURES, "01/fast_path_packed": {**FIGURES["01/fast_path_packed"], "samples_per_s": 1856.0, "first_step_s": 45.0},
              "07/fast_path": {"samples_per_s": 300.0}, "01/fast_path_padded": {**FIGURES["01/fast_path_padded"], "mfu": 30.5}}
    padded, packed, _, _, t5 = bench.targets(made_up(faster))
    assert "(goal: at least 30%, met)" in padded
    assert "1.60x 01/fast_path_padded's samples/s (goal: at least 1.5x, met)" in packed and "(goal: under 30 s, missed)" in packed
    assert "1.50x 07/gsm8k_bf16's samples/s (goal: at least 1.3x, met)" in t5
    recompiled = {**FIGURES, "01/fast_path_packed": {**FIGURES["01/fast_path_packed"], "steady_compilations": 3}}
    *_, note = bench.targets(made_up(recompiled))
    assert note == "01/fast_path_packed: 3 compilation(s) inside its steady state, whose time its samples/s includes"
    gone = {k: v for k, v in FIGURES.items() if k != "trainer"}
    assert bench.targets(made_up(gone))[0].startswith("BERT fast path on the padded input vs the HF Trainer's steady state "
                                                      "on the same input: not measured (trainer: not run)")


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


def test_no_gpu_no_warm_up():
    start = time.perf_counter()
    assert bench.warm_up_gpu(30.0) == 0.0 and time.perf_counter() - start < 5  # a CPU machine does not wait


def logged(*losses: float, every: int = 20, env: dict | None = None) -> dict:
    """A results record whose training loss was logged every ``every`` steps."""
    return {"status": "ok", "env": env or {"device": "cuda", "device_name": "NVIDIA H200"},
            "curves": {"train_loss": [[every * (i + 1), 0.1 * i, loss] for i, loss in enumerate(losses)]}}


def test_each_fast_path_is_held_against_its_baselines_loss(tmp_path):
    records = {"01/baseline_bf16": logged(4.0, 3.0, 2.5), "01/fast_path_packed": logged(4.1, 3.3, 2.52),
               "06/r10_adamw": logged(7.5, 7.3), "06/fast_path": logged(7.5, every=40),  # logged at step 40 only
               "07/fast_path": logged(3.0)}  # its baseline did not run: no line
    packed, gpt2 = bench.loss_comparison(records)
    assert packed == ("01/fast_path_packed: training loss 2.520 at step 60 against 01/baseline_bf16's 2.500; the two curves "
                      "differ by at most 0.300 (step 40) at the 3 steps both logged, 7.5% of 01/baseline_bf16's first "
                      "logged loss (4.000)")  # step 40: 3.3 against 3.0
    assert gpt2.startswith("06/fast_path: training loss 7.500 at step 40 against 06/r10_adamw's 7.300") and "the 1 steps" in gpt2
    figure = bench.loss_figure(records)
    assert [ax.get_title() for ax in figure.axes] == ["01/fast_path_packed\nNVIDIA H200", "06/fast_path\nNVIDIA H200"]
    assert [line.get_label() for line in figure.axes[0].get_lines()] == ["01/baseline_bf16", "01/fast_path_packed"]
    assert list(figure.axes[0].get_lines()[1].get_ydata()) == [4.1, 3.3, 2.52]
    figure.savefig(tmp_path / "loss.png")
    assert bench.loss_figure({"07/fast_path": logged(3.0)}) is None and bench.loss_comparison({}) == []


def test_two_curves_near_zero_are_compared_on_their_own_scale():
    """ResNeXt's losses approach zero on the generated images: 0.044 against 0.033 is a small gap on a curve that
    began at 2.3, not a 33% one."""
    line, = bench.loss_comparison({"03/resnext_bf16_channels_last": logged(2.3, 0.5, 0.033),
                                   "03/fast_path": logged(2.31, 0.52, 0.044)})
    assert line.endswith("differ by at most 0.020 (step 40) at the 3 steps both logged, 0.9% of "
                         "03/resnext_bf16_channels_last's first logged loss (2.300)")


def test_a_budget_leaves_out_the_rows_that_would_end_past_it(tmp_path, monkeypatch):
    """Each row takes 100 s of a made-up clock: with 250 s the third would end at 300 s, so it is listed as not run."""
    clock = [0.0]

    def run(item, profile, overrides, directory):
        clock[0] += 100.0

    monkeypatch.setattr(bench, "run", run)
    monkeypatch.setattr(bench.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(bench.results, "read", lambda path: {**logged(3.0), "run": {"params_file": f"params/{path.parent.name}/{path.name}.yaml"},
                                                             "params": {}, "summary": {"samples_per_s": 10.0}})
    items = bench.selected(["01/baseline", "01/baseline_bf16", "06/r10_adamw"])
    table, finished = bench.bench("smoke", items, None, tmp_path, budget_s=250)
    assert list(table["status"]) == ["ok", "ok", "not run"] and list(finished) == ["01/baseline", "01/baseline_bf16"]
    assert table.loc["06/r10_adamw", "note"] == "not started: it would have ended past --budget-s 250"


def test_a_fast_paths_curve_is_judged_against_its_baselines_noise():
    """The ResNeXt baseline again with another train.seed over the same data: its curve strays from the first by
    at most 0.4 (step 40), so a fast path 0.3 away is within that noise and one 0.6 away is not."""
    base, again = logged(2.3, 1.0, 0.1), logged(2.3, 1.4, 0.2)
    within, = bench.loss_comparison({"03/resnext_bf16_channels_last": base, "03/resnext_bf16_channels_last@seed=1": again,
                                     "03/fast_path": logged(2.3, 1.3, 0.1)})
    outside, = bench.loss_comparison({"03/resnext_bf16_channels_last": base, "03/resnext_bf16_channels_last@seed=1": again,
                                      "03/fast_path": logged(2.3, 1.6, 0.1)})
    assert within.endswith("differs from 03/resnext_bf16_channels_last by at most 0.400 at the same steps: the fast "
                           "path's curve is within that noise")
    assert outside.endswith("the fast path's curve is outside that noise")
    figure = bench.loss_figure({"03/resnext_bf16_channels_last": base, "03/resnext_bf16_channels_last@seed=1": again,
                                "03/fast_path": logged(2.3, 1.3, 0.1)})
    assert [(line.get_label(), line.get_linestyle()) for line in figure.axes[0].get_lines()] == [
        ("03/resnext_bf16_channels_last", "-"), ("03/resnext_bf16_channels_last@seed=1", "--"), ("03/fast_path", "-")]


def test_the_noise_is_the_widest_spread_of_all_the_baselines_seeds():
    """Seeds 1 and 2 stray from the first run by at most 0.2 and 0.5: a fast path 0.4 away is within the noise of
    both together, though outside seed 1's alone. A seed row with other settings changed is no seed of the baseline."""
    base = logged(4.0, 3.0, 2.5)
    records = {"01/baseline_bf16": base, "01/baseline_bf16@seed=2": logged(4.5, 3.1, 2.5),
               "01/baseline_bf16@seed=1": logged(4.2, 3.0, 2.5), "01/baseline_bf16@seed=1,train.lr=1": logged(9.0, 9.0, 9.0),
               "01/fast_path_packed": logged(3.6, 3.0, 2.5)}
    line, = bench.loss_comparison(records)
    assert "differ by at most 0.400 (step 20)" in line
    assert line.endswith("01/baseline_bf16@seed=1 and 01/baseline_bf16@seed=2 (other seeds, the same data) differ from "
                         "01/baseline_bf16 by at most 0.500 at the same steps: the fast path's curve is within that noise")
    del records["01/baseline_bf16@seed=2"]
    assert bench.loss_comparison(records)[0].endswith("by at most 0.200 at the same steps: the fast path's curve is "
                                                      "outside that noise")
    labels = [line.get_label() for line in bench.loss_figure(records).axes[0].get_lines()]
    assert labels == ["01/baseline_bf16", "01/baseline_bf16@seed=1", "01/fast_path_packed"]


def test_a_seed_item_reruns_its_configuration_with_another_seed_over_the_same_data(tmp_path, monkeypatch):
    ran = []

    def run(file, profile, overrides, directory):
        ran.append((file, overrides, directory))

    monkeypatch.setattr(bench, "run", run)
    monkeypatch.setattr(bench.results, "read", lambda path: {**logged(3.0), "run": {"params_file": "params/03_mixed_precision/resnext_bf16_channels_last.yaml"},
                                                             "params": {}, "summary": {"samples_per_s": 10.0}})
    table, finished = bench.bench("smoke", bench.selected(["03/resnext_bf16_channels_last@seed=1"]), None, tmp_path)
    assert ran == [("params/03_mixed_precision/resnext_bf16_channels_last.yaml", {"train.seed": 1, "data.seed": 0}, tmp_path / "seed1")]
    assert list(table.index) == list(finished) == ["03/resnext_bf16_channels_last@seed=1"]


def test_a_row_with_settings_changed_runs_its_params_file_with_them_beside_the_row(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(bench, "run", lambda file, profile, overrides, directory: ran.append((file, overrides, directory)))
    monkeypatch.setattr(bench.results, "read", lambda path: {**logged(3.0), "params": {}, "summary": {"samples_per_s": 10.0},
                                                             "run": {"params_file": "params/01_baseline_bert_squad/fast_path_packed.yaml"}})
    items = bench.selected(["01/fast_path_packed", "01/fast_path_packed@model.compile_scope=blocks,train.max_steps=7"])
    assert items == ["params/01_baseline_bert_squad/fast_path_packed.yaml",
                     "params/01_baseline_bert_squad/fast_path_packed.yaml@model.compile_scope=blocks,train.max_steps=7"]
    table, _ = bench.bench("smoke", items, None, tmp_path)
    assert ran[1] == ("params/01_baseline_bert_squad/fast_path_packed.yaml",
                      {"model.compile_scope": "blocks", "train.max_steps": 7},
                      tmp_path / "model.compile_scope-blocks_train.max_steps-7")
    assert ran[0][1:] == ({}, tmp_path)
    assert list(table.index) == ["01/fast_path_packed", "01/fast_path_packed@model.compile_scope=blocks,train.max_steps=7"]
    with pytest.raises(SystemExit, match="not a bench row"):
        bench.selected(["01/nonesuch@model.compile_scope=blocks"])


def test_a_changed_setting_may_be_a_list_or_a_mapping():
    """Commas inside a YAML list or mapping belong to the value; only the ones between settings part them."""
    file, changes = bench.split_item("params/03_mixed_precision/fast_path.yaml@model.compile_options={a: 1, b: 2},"
                                     "seed=1,train.betas=[0.9, 0.95]")
    assert file == "params/03_mixed_precision/fast_path.yaml"
    assert changes == {"model.compile_options": {"a": 1, "b": 2}, "seed": 1, "train.betas": [0.9, 0.95]}


def test_each_row_compiles_from_empty_caches(monkeypatch):
    import os

    from torch._inductor import utils as inductor

    seen = []
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    with bench.fresh_compile_cache():
        seen.append(os.environ["TORCHINDUCTOR_CACHE_DIR"])
        assert os.path.isdir(seen[0])
    with bench.fresh_compile_cache():
        seen.append(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    assert seen[0] != seen[1] and not os.path.exists(seen[0]) and os.environ.get("TORCHINDUCTOR_CACHE_DIR") == before
    assert hasattr(inductor, "fresh_cache") or hasattr(inductor, "fresh_inductor_cache")


def test_a_failed_rows_error_is_one_line_of_the_table_and_the_record_keeps_it_whole():
    """torch's compile errors run to dozens of lines (a graph dump): the table's note is their first 400 characters
    on one line, so the Markdown table keeps one line a row."""
    import pandas as pd

    error = "UncapturedHigherOrderOpError: aliasing\n\n  Hint: return input.clone()\n" + "  %node : placeholder\n" * 200
    record = {"status": "failed", "error": error, "run": {"params_file": "params/07_t5_model_parallel/fast_path.yaml"},
              "params": {"description": "the fast path"}, "env": {"device": "cuda", "device_name": "NVIDIA H200"}}
    note = bench.record_row(record)["note"]
    assert note.startswith("UncapturedHigherOrderOpError: aliasing Hint: return input.clone() %node")
    assert "\n" not in note and note.endswith("(the whole error is in the row's results record)") and len(note) < 500
    table = pd.DataFrame([{"configuration": "07/fast_path", "note": "two\nlines | and a bar"}]).set_index("configuration")
    assert bench.markdown(table).splitlines()[-1] == "| 07/fast_path | two lines / and a bar |"


def test_the_table_file_name_stays_short_for_many_rows():
    """Rows with several settings changed make a long --only; its file name is cut (with a digest of the whole),
    since file systems refuse names past 255 bytes."""
    row = "03/fast_path@model.compile_options.conv_1x1_as_mm=true,model.compile_options.coordinate_descent_tuning=true"
    assert bench.file_stem(["resnext", "01/fast_path"]) == "bench-resnext-01_fast_path"
    long, other = bench.file_stem([row] * 3), bench.file_stem([row] * 4)
    assert len(long) + len("-ratios.csv") < 255 and long != other and long.startswith("bench-03_fast_path_model.")
