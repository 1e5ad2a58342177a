"""The values of the tables the notebooks show, computed from records built here (no run behind them)."""
import pytest

from labkit import plots
from labkit.config import Config

H100 = "NVIDIA H100 80GB HBM3"


def record(config: str, summary: dict | None = None, status: str = "ok", task: str = "cifar_resnext", **sections) -> dict:
    cfg = Config.model_validate({"task": task, **sections})
    return {"run": {"notebook": "nb", "config": config, "profile": "gpu", "params_file": f"params/nb/{config}.yaml",
                    "overrides": {}, "started": "2025-01-01 10:00:00"},
            "params": cfg.model_dump(mode="json"), "status": status, "error": None if status == "ok" else f"{status}: why",
            "env": {"device": "cuda", "device_name": H100, "device_count": 1}, "summary": summary or {},
            "curves": {}, "info": {}}


def test_precision_table_speed_up_is_over_the_same_models_fp32_run():
    records = [
        record("resnext_fp32", {"samples_per_s": 100.0, "step_s": 0.5, "fwd_bwd_s": 0.3, "optimizer_s": 0.1}),
        record("resnext_bf16", {"samples_per_s": 250.0, "step_s": 0.2}, train={"precision": "bf16-mixed"}),
        record("resnext_fp16", status="oom", train={"precision": "16-mixed"}),
        record("bert_fp32", {"samples_per_s": 40.0}, task="bert_squad"),
        record("bert_tf32", {"samples_per_s": 60.0}, task="bert_squad", train={"precision": "tf32"}),
    ]
    table = plots.precision_table(records).reset_index().set_index("config")
    assert table.loc["resnext_bf16", "speed-up over fp32"] == pytest.approx(2.5)
    assert table.loc["resnext_fp32", "speed-up over fp32"] == pytest.approx(1.0)
    assert table.loc["bert_tf32", "speed-up over fp32"] == pytest.approx(1.5)  # against BERT's fp32, not ResNeXt's
    assert table.loc["resnext_fp32", "step (ms)"] == pytest.approx(500.0)
    assert table.loc["resnext_fp32", "compute / step (ms)"] == pytest.approx(400.0)
    assert table.loc["resnext_bf16", "precision"] == "bf16" and table.loc["resnext_fp16", "status"] == "oom"
    assert table.loc["resnext_fp16", "note"] == "oom: why"


def test_sweep_table_orders_the_sweep_and_computes_the_trainable_share():
    def lora(rank, optimizer="adamw"):
        return {"model": {"finetune": "lora", "lora": {"rank": rank}}, "train": {"optimizer": optimizer}}

    records = [record("r1_sgd", {"params_trainable": 10, "params_total": 1000}, task="gpt2_sft", **lora(1, "sgd")),
               record("r1_adamw", {"params_trainable": 10, "params_total": 1000}, task="gpt2_sft", **lora(1)),
               record("full", {"params_trainable": 1000, "params_total": 1000}, task="gpt2_sft"),
               record("r100", {"params_trainable": 400, "params_total": 1400}, task="gpt2_sft", **lora(100))]
    table = plots.sweep_table(records)
    assert list(table.index) == ["full", "r100", "r1_adamw", "r1_sgd"]  # full, then rank falling, then AdamW to SGD
    assert table.loc["r100", "trainable %"] == pytest.approx(100 * 400 / 1400)
    assert table.loc["full", "fine-tuning"] == "full" and table.loc["r100", "fine-tuning"] == "LoRA r=100"


def test_loader_table_reads_phases_and_epochs():
    runs = [record("workers_4", {"data_s": 0.002, "fwd_bwd_s": 0.010, "optimizer_s": 0.002, "samples_per_s": 900.0},
                   data={"num_workers": 4, "pin_memory": True}),
            record("gpu_resident", {"data_s": 0.0001}, data={"on_gpu": True, "pin_memory": False})]
    runs[0]["curves"]["epoch_time_s"] = [30.0, 20.0]
    table = plots.loader_table(runs)
    assert table.loc["workers_4", "loader"] == "4 worker(s)" and table.loc["gpu_resident", "loader"] == "data set on the GPU"
    assert table.loc["workers_4", "data wait / step (ms)"] == pytest.approx(2.0)
    assert table.loc["workers_4", "compute / step (ms)"] == pytest.approx(12.0)
    assert (table.loc["workers_4", "first epoch (s)"], table.loc["workers_4", "last epoch (s)"]) == (30.0, 20.0)


def test_step_split_draws_each_rank_of_a_multi_rank_run():
    one = record("single", {"fwd_bwd_s": 0.040, "optimizer_s": 0.005, "wait_s": 0.003}, task="bert_squad")
    split = {"fwd_bwd_s": 0.043, "optimizer_s": 0.004, "wait_s": 0.002}
    ranks = {f"{k[:-2]}_s_rank{r}": v + r * 0.001 for r in (0, 1) for k, v in split.items()}
    ddp = record("ddp", {**split, **ranks, "step_s_rank0": 0.049, "step_s_rank1": 0.052}, task="bert_squad")
    figure = plots.step_split([one, ddp])
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ddp, rank 0", "ddp, rank 1", "single"]
    # rank 1's forward+backward bar is its own figure, not rank 0's
    widths = {(round(p.get_y() + p.get_height() / 2), round(p.get_width(), 3)) for p in ax.patches[:3]}
    assert widths == {(0, 43.0), (1, 44.0), (2, 40.0)}
    assert "NVIDIA H100" in ax.get_title()


def test_run_time_split_draws_each_part_of_each_run_from_its_clock():
    launched = record("ddp", {}, task="t5_qa")
    launched["clock"] = {"launched": 0.0, "process_started": 3.0, "started": 8.0, "loop_imported": 11.0, "fabric_made": 12.0,
                         "task_built": 15.0, "training_started": 15.5, "first_step": 16.5, "training_ended": 30.0, "finished": 30.5, "launch_ended": 31.0}
    own = record("single", {}, task="t5_qa")
    own["clock"] = {"started": 0.0, "loop_imported": 1.5, "fabric_made": 2.0, "task_built": 3.0, "training_started": 3.5,
                    "first_step": 6.0, "training_ended": 20.0, "finished": 20.0}
    old = record("before_the_clock", {}, task="t5_qa")  # an older record: no bar, no error
    ax = plots.run_time_split([launched, own, old]).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["ddp", "single"]
    assert max(p.get_x() + p.get_width() for p in ax.patches) == pytest.approx(31.0)  # the launched run end to end
    assert [t.get_text() for t in ax.get_legend().get_texts()][:5] == ["processes' start", "imports",
                                                                 "Lightning's import", "Fabric's launch", "data and model"]
    assert plots.run_time_split([old]) is None
