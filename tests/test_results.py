import json

import pandas as pd
import pytest

from labkit import results


def test_atomic_write_keeps_old_file_when_serialisation_fails(tmp_path):
    path = tmp_path / "r" / "result.json"
    results.write_json_atomic(path, {"status": "ok"})
    with pytest.raises(TypeError):
        results.write_json_atomic(path, {"status": object()})
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert [p.name for p in path.parent.iterdir()] == ["result.json"]  # no temporary left behind


def test_non_finite_numbers_become_null(tmp_path):
    path = tmp_path / "result.json"
    results.write_json_atomic(path, {"loss": float("nan"), "x": (1, float("inf"))})
    assert json.loads(path.read_text()) == {"loss": None, "x": [1, None]}


def test_load_returns_one_row_per_record_with_device(tmp_path):
    for config, device in [("a", "cpu"), ("b", "cuda")]:
        rec = {"run": {"profile": "smoke", "notebook": "01_x", "config": config}, "status": "ok",
               "env": {"device": device, "device_name": "NVIDIA H100 80GB HBM3", "device_count": 1},
               "params": {"train": {"precision": "32"}}, "summary": {"samples_per_s": 3.0}}
        results.save(rec, results.record_dir("smoke", "01_x", config, tmp_path))
    df = results.load(tmp_path, profile="smoke")
    assert list(df["config"]) == ["a", "b"]
    assert df.loc[0, "device"].startswith("CPU (smoke")
    assert df.loc[1, "device"] == "NVIDIA H100 80GB HBM3"
    assert (df["samples_per_s"] == 3.0).all()
    assert results.load(tmp_path, notebook="02_y").empty


def test_device_label_counts_gpus():
    assert results.device_label({"device": "cuda", "device_name": "NVIDIA H200", "device_count": 2}) == "2x NVIDIA H200"


# ---- the one comparison: baselines, speed-ups, scaling efficiency, the Pareto front ----------------------------

def _runs():
    from test_report import A100, fake_record

    fp32 = {"summary": {"samples_per_s": 100.0, "train_time_s": 10.0, "final_val_loss": 2.0}}
    return [
        fake_record("05_ddp_fsdp", "single", **fp32),
        fake_record("05_ddp_fsdp", "single_slow", summary={"samples_per_s": 80.0, "train_time_s": 12.0, "final_val_loss": 2.2}),
        fake_record("05_ddp_fsdp", "ddp", train={"strategy": "ddp", "devices": 2},
                    summary={"samples_per_s": 180.0, "train_time_s": 6.0, "final_val_loss": 2.1}),
        fake_record("05_ddp_fsdp", "ddp_bigbatch", train={"strategy": "ddp", "devices": 2, "batch_size": 16},
                    summary={"samples_per_s": 300.0, "train_time_s": 4.0, "final_val_loss": 2.5}),
        fake_record("05_ddp_fsdp", "ddp_bf16", train={"strategy": "ddp", "devices": 2, "precision": "bf16-mixed"},
                    summary={"samples_per_s": 400.0, "train_time_s": 3.0, "final_val_loss": 2.05}),
        fake_record("05_ddp_fsdp", "single_a100", gpu=A100, summary={"samples_per_s": 1000.0, "train_time_s": 1.0, "final_val_loss": 1.0}),
        fake_record("05_ddp_fsdp", "single_cpu", gpu=None, summary={"samples_per_s": 5000.0, "train_time_s": 0.5, "final_val_loss": 0.5}),
        fake_record("05_ddp_fsdp", "fsdp", status="skipped", train={"strategy": "fsdp", "devices": 2}, error="skipped: no GPUs"),
    ]


def test_baseline_is_the_fastest_one_device_run_of_the_same_device_task_model_batch_and_precision():
    table = results.comparison(_runs()).set_index("config")
    # the faster of the two one-device H100 runs, never the A100's or the CPU's (faster still)
    assert table.loc["ddp", "baseline"] == "05/single" and table.loc["ddp", "speedup"] == pytest.approx(1.8)
    assert table.loc["ddp", "scaling_efficiency"] == pytest.approx(0.9)
    assert table.loc["single_slow", "speedup"] == pytest.approx(0.8)
    assert table.loc["single_a100", "baseline"] == "05/single_a100"
    # a different per-device batch or precision has no baseline here: no speed-up is made up for it
    assert pd.isna(table.loc["ddp_bigbatch", "baseline"]) and pd.isna(table.loc["ddp_bigbatch", "speedup"])
    assert pd.isna(table.loc["ddp_bf16", "baseline"])
    assert table.loc["fsdp", "status"] == "skipped" and pd.isna(table.loc["fsdp", "speedup"])
    # with a reference, the baseline may differ in that setting: bf16 DDP against the fp32 one-device run
    ref = results.comparison(_runs(), reference={"train.precision": "32"}).set_index("config")
    assert ref.loc["ddp_bf16", "baseline"] == "05/single" and ref.loc["ddp_bf16", "speedup"] == pytest.approx(4.0)


def test_comparison_does_not_depend_on_the_order_runs_finished_in():
    runs = _runs()
    first = results.comparison(runs, quality="final_val_loss").set_index("run").sort_index()
    again = results.comparison(list(reversed(runs)), quality="final_val_loss").set_index("run").sort_index()
    pd.testing.assert_frame_equal(first, again)


def test_pareto_front_is_per_device_and_task():
    front = results.pareto_front(_runs(), "final_val_loss")
    # H100: ddp_bf16 (3 s, loss 2.05) is the fastest and beats ddp_bigbatch (4 s, 2.5) on both; single (10 s, 2.0) has
    # the lowest loss; each other device is a front of its own, never beaten by the H100's runs
    assert front == {"05/ddp_bf16", "05/single", "05/single_a100", "05/single_cpu"}
    higher = results.pareto_front(_runs(), "final_val_loss", lower_is_better=False)
    assert higher == {"05/ddp_bf16", "05/ddp_bigbatch", "05/single_a100", "05/single_cpu"}


def test_step_spread_flags_a_mean_far_above_the_median():
    steady = {"params": {"measure": {"warmup_steps": 2, "profile_steps": 0}},
              "curves": {"steps": [{"step": s} for s in [9.0, 9.0] + [0.040] * 18 + [0.044, 0.046]]}}
    spread = results.step_spread(steady)
    assert spread["steps"] == 20 and spread["median_ms"] == pytest.approx(40) and not spread["skewed"]  # warm-up left out
    stalls = {"params": {"measure": {}}, "curves": {"steps": [{"step": s} for s in [0.040] * 16 + [0.5] * 4]}}
    spread = results.step_spread(stalls)
    assert spread["median_ms"] == pytest.approx(40) and spread["mean_ms"] == pytest.approx(132) and spread["skewed"]
    assert results.step_spread({"curves": {}}) is None


def test_step_spread_uses_the_steps_the_loop_marked_steady():
    marked = {"curves": {"steps": [{"step": 1.0, "steady": False}] + [{"step": 0.02, "steady": True}] * 5}}
    assert results.step_spread(marked)["median_ms"] == pytest.approx(20) and results.step_spread(marked)["steps"] == 5
