"""The outcome tables and figures of notebooks 04-07 (training at the largest batch, training + evaluation time,
dialogue quality, train and test curves, test loss and best step, scaling over every GPU count), computed from
records built here, and the run at the largest batch, with labkit.run replaced by a stand-in."""
import matplotlib
import numpy as np
import pandas as pd
import pytest

from labkit import memory, plots, results
from labkit.config import Config

matplotlib.use("Agg")

H100 = "NVIDIA H100 80GB HBM3"
RESNEXT = "ResNeXt / CIFAR-10"


def record(config: str, summary: dict | None = None, status: str = "ok", task: str = "cifar_resnext",
           notebook: str = "nb", curves: dict | None = None, **sections) -> dict:
    cfg = Config.model_validate({"task": task, **sections})
    return {"run": {"notebook": notebook, "config": config, "profile": "gpu", "params_file": f"params/{notebook}/{config}.yaml",
                    "overrides": {}, "started": "2025-01-01 10:00:00"},
            "params": cfg.model_dump(mode="json"), "status": status, "error": None if status == "ok" else f"{status}: why",
            "env": {"device": "cuda", "device_name": H100, "device_count": 1}, "summary": summary or {},
            "curves": curves or {}, "info": {}}


# ---- notebook 04: the run at the largest batch ---------------------------------------------------------------

def searched(config: str, batch: int, max_batch: int | None, larger: dict | None = None, **summary) -> dict:
    r = record(config, {"max_batch": max_batch, "train_time_s": 100.0, "final_val_loss": 1.0, "accuracy": 0.6,
                        "step_s": 0.104, **summary},
               curves={"epoch_time_s": [40.0, 44.0], "val_loss": [[4, 1.0, 1.2], [8, 2.0, 1.0]],
                       "val_metrics": [{"step": 4, "epoch": 1.0, "accuracy": 0.5}, {"step": 8, "epoch": 2.0, "accuracy": 0.6}]},
               train={"batch_size": batch})
    if larger is not None:
        r["at_max_batch"] = larger
    return r


LARGER = {"batch": 512, "status": "ok", "error": None,
          "summary": {"train_time_s": 80.0, "final_val_loss": 0.7, "accuracy": 0.8, "step_s": 0.38},
          "curves": {"epoch_time_s": [40.0, 40.0], "val_loss": [[1, 1.0, 0.9], [2, 2.0, 0.7]],
                     "val_metrics": [{"step": 1, "epoch": 1.0, "accuracy": 0.7}, {"step": 2, "epoch": 2.0, "accuracy": 0.8}]}}


def test_largest_batch_table_sets_each_run_beside_its_run_at_the_largest_batch():
    records = [searched("resnext_off", 128, 512, LARGER),
               searched("resnext_full", 128, 896),
               searched("resnext_small", 128, 128),
               record("resnext_tf32", status="skipped")]
    table = plots.largest_batch_table(records)
    own, large = table.loc[(RESNEXT, "resnext_off", "its own batch")], table.loc[(RESNEXT, "resnext_off", "largest batch in budget")]
    assert (own["batch"], large["batch"]) == (128, 512)
    assert own["epoch (s)"] == pytest.approx(42.0) and large["epoch (s)"] == pytest.approx(40.0)
    assert own["step (ms)"] == pytest.approx(104.0) and large["step (ms)"] == pytest.approx(380.0)
    assert (own["accuracy"], large["accuracy"]) == (0.6, 0.8) and large["final val loss"] == 0.7
    assert large["training time (s)"] == 80.0 and large["note"] == ""
    # without a run at the largest batch: no figures, and the reason
    waiting = table.loc[(RESNEXT, "resnext_full", "largest batch in budget")]
    assert np.isnan(waiting["accuracy"]) and "not trained at the largest batch yet" in waiting["note"]
    assert table.loc[(RESNEXT, "resnext_small", "largest batch in budget"), "note"] == "the largest batch is the run's own"
    assert table.loc[(RESNEXT, "resnext_tf32", "its own batch"), "note"] == "skipped: why"
    assert (RESNEXT, "resnext_tf32", "largest batch in budget") not in table.index  # nothing searched, nothing to say twice
    assert "F1" not in table  # no run measured it


def test_largest_batch_curves_draw_both_runs_against_epoch():
    fig = plots.largest_batch_curves([searched("resnext_off", 128, 512, LARGER), searched("resnext_full", 128, 896)])
    loss, accuracy = fig.axes[:2]
    assert accuracy.get_title() == "accuracy"
    drawn = {tuple(np.round(line.get_ydata(), 3)) for line in loss.lines}
    assert (1.2, 1.0) in drawn and (0.9, 0.7) in drawn  # its own batch's, then the largest batch's validation loss
    assert {tuple(np.round(line.get_ydata(), 3)) for line in accuracy.lines} >= {(0.5, 0.6), (0.7, 0.8)}
    assert plots.largest_batch_curves([searched("resnext_full", 128, 896)]) is None  # nothing to compare yet


def test_train_at_largest_batch_runs_the_same_configuration_at_that_batch(tmp_path, monkeypatch):
    started = []

    def run(params_file, profile, overrides, runs_dir):
        started.append((params_file, profile, overrides, runs_dir))
        return {"status": "ok", "error": None, "summary": {"accuracy": 0.8},
                "curves": {"val_loss": [[2, 1.0, 0.7]], "steps": [{"step": 0.1}], "gpu": []}}

    monkeypatch.setattr(memory, "run", run)
    rec = searched("resnext_off", 128, 512)
    rec["run"]["overrides"] = {"model.checkpoint_every": 3}
    out = memory.train_at_largest_batch(rec, tmp_path)
    folder = results.record_dir("gpu", "nb", "resnext_off", tmp_path)
    ((params_file, profile, overrides, runs_dir),) = started
    assert (params_file, profile, runs_dir) == ("params/nb/resnext_off.yaml", "gpu", folder / "largest_batch")
    assert overrides == {"model.checkpoint_every": 3, "train.batch_size": 512, "train.global_batch_size": None,
                         "measure.profile_steps": 0}
    assert out["at_max_batch"]["batch"] == 512 and out["at_max_batch"]["summary"] == {"accuracy": 0.8}
    assert set(out["at_max_batch"]["curves"]) == {"val_loss"}  # the curves it draws, not every step
    assert results.read(folder)["at_max_batch"]["status"] == "ok"  # saved in place

    started.clear()
    same = searched("resnext_small", 128, 128)
    assert memory.train_at_largest_batch(same, tmp_path) is same and "at_max_batch" not in same and not started


# ---- notebook 05: training + evaluation time ------------------------------------------------------------------

def test_strategy_table_adds_evaluation_time_to_training_time():
    bert = {"task": "bert_squad", "notebook": "05_ddp_fsdp"}
    records = [record("single", {"samples_per_s": 10.0, "train_time_s": 100.0, "val_time_s": 20.0}, **bert),
               record("ddp", {"samples_per_s": 18.0, "train_time_s": 55.0, "val_time_s": 12.5}, **bert,
                      train={"strategy": "ddp", "devices": 2}),
               record("fsdp", {"samples_per_s": 17.0, "train_time_s": 60.0}, **bert, train={"strategy": "fsdp", "devices": 2})]
    table = plots.strategy_table(records)
    column = "training + evaluation time (s)"
    assert table.loc["single", column] == pytest.approx(120.0) and table.loc["ddp", column] == pytest.approx(67.5)
    assert table.loc["ddp", "training time (s)"] == 55.0
    assert np.isnan(table.loc["fsdp", column]) and "no val_time_s" in table.loc["fsdp", "note"]
    assert pd.isna(table.loc["single", "note"])  # nothing missing, nothing to explain


# ---- notebook 06: dialogue quality, training and test curves ---------------------------------------------------

def lora(rank: int, optimizer: str = "adamw") -> dict:
    return {"model": {"finetune": "lora", "lora": {"rank": rank}}, "train": {"optimizer": optimizer}}


def test_dialogue_quality_table_orders_full_then_ranks_and_says_why_one_is_missing():
    scored = {"task": "gpt2_sft", "measure": {"reward_model": "hub"}}
    records = [record("r1_adamw", {"dialogue_quality": 0.51, "reward_prompts": 166, "reward_tuned_mean": -1.0,
                                   "reward_untuned_mean": -1.5}, **lora(1), **scored),
               record("full_adamw", {"dialogue_quality": 0.85, "reward_prompts": 166, "reward_tuned_mean": 0.5,
                                     "reward_untuned_mean": -1.5}, **scored),
               record("r10_adamw", {}, task="gpt2_sft", **lora(10)),
               record("r100_adamw", status="oom", **lora(100), **scored)]
    table = plots.dialogue_quality_table(records)
    quality = "dialogue quality (fine-tuned >= untuned)"
    assert list(table.index) == ["full_adamw", "r100_adamw", "r10_adamw", "r1_adamw"]
    assert table.loc["full_adamw", quality] == 0.85 and table.loc["r1_adamw", quality] == 0.51
    assert table.loc["full_adamw", "mean reward, untuned"] == -1.5 and table.loc["r1_adamw", "fine-tuning"] == "LoRA r=1"
    assert pd.isna(table.loc["r10_adamw", quality]) and table.loc["r10_adamw", "note"] == "not measured: measure.reward_model is off"
    assert table.loc["r100_adamw", "note"] == "oom: why"


def test_train_test_curves_draw_the_test_points_of_every_run():
    curves = {"train_loss": [[50, 0.1, 3.0], [100, 0.2, 2.5], [150, 0.3, 2.2]], "val_loss": [[100, 0.2, 2.6], [200, 0.4, 2.3]]}
    runs = [record("full_adamw", task="gpt2_sft", curves=curves),
            record("r1_adamw", task="gpt2_sft", curves={"train_loss": [[50, 0.1, 3.1]], "val_loss": [[100, 0.2, 2.9]]}, **lora(1))]
    train, test = plots.train_test_curves(runs).axes[:2]
    assert test.get_title() == "test loss" and train.get_title() == "training loss"
    points = {tuple(line.get_xdata()): tuple(line.get_ydata()) for line in test.lines if len(line.get_xdata())}
    assert points[(100, 200)] == (2.6, 2.3) and points[(100,)] == (2.9,)
    assert plots.train_test_curves([record("r1", status="oom", task="gpt2_sft")]) is None


# ---- notebook 07: test loss, best step, and scaling over every GPU count -------------------------------------------

def test_t5_table_shows_test_loss_and_best_step_or_why_not():
    t5 = {"task": "t5_qa", "data": {"dataset": "gsm8k"}}
    records = [record("gsm8k_1worker_fp32", {"best_step": 1200, "test_loss": 0.9, "final_val_loss": 1.0}, **t5,
                      train={"keep_best": True}),
               record("gsm8k_fsdp_2gpu", {"test_loss": 1.1}, **t5, train={"strategy": "fsdp", "devices": 2})]
    table = plots.t5_table(records)
    assert table.loc["gsm8k_1worker_fp32", "best step"] == 1200 and table.loc["gsm8k_1worker_fp32", "test loss"] == 0.9
    assert table.loc["gsm8k_1worker_fp32", "note"] == ""
    assert np.isnan(table.loc["gsm8k_fsdp_2gpu", "best step"])
    assert table.loc["gsm8k_fsdp_2gpu", "note"] == "best step: FSDP keeps no best checkpoint (sharded weights)"


def test_scaling_curve_takes_every_gpu_count_that_has_a_run():
    t5 = {"task": "t5_qa", "data": {"dataset": "gsm8k"}}
    records = [record("one", {"samples_per_s": 100.0}, **t5),
               record("ddp_2", {"samples_per_s": 180.0}, **t5, train={"strategy": "ddp", "devices": 2}),
               record("ddp_8", {"samples_per_s": 640.0}, **t5, train={"strategy": "ddp", "devices": 8}),
               record("split_2", {"samples_per_s": 50.0}, **t5, model={"split_devices": 2}),
               record("ddp_4", status="oom", **t5, train={"strategy": "ddp", "devices": 4})]
    ax = plots.scaling_curve(records).axes[0]
    lines = [(tuple(line.get_xdata()), tuple(np.round(line.get_ydata(), 3))) for line in ax.lines]
    assert ((1, 2, 8), (1.0, 1.8, 6.4)) in lines  # DDP's line over every count it ran on
    assert ((1, 2, 8), (1, 2, 8)) in lines  # perfect scaling
    assert ((1, 2), (1.0, 0.5)) in lines  # the layer split: two GPUs taking turns
    assert list(ax.get_xticks()) == [1, 2, 8]
    assert plots.scaling_curve(records[:1]) is None


def test_generations_table_says_why_dialogue_window_runs_have_no_answers(capsys):
    windows = record("full_adamw", {"dialogue_quality": 0.85}, task="gpt2_sft", data={"sft_format": "dialogue_windows"})
    assert plots.generations_table([windows]).empty
    assert "dialogue-window runs" in capsys.readouterr().out
    pairs = record("r1_adamw", task="gpt2_sft", **lora(1))
    pairs["info"]["generations"] = [{"prompt": "2+2?", "reference": "4", "generated": "4"}]
    assert plots.generations_table([windows, pairs]).loc[("2+2?", "4"), "r1_adamw"] == "4"
