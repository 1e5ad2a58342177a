"""The preflight: settings that cannot run together stop before anything is written; what this machine
cannot run is recorded once, as skipped, without building a task or starting a process."""
import pytest
import torch

import labkit
from labkit import preflight
from labkit.config import ConfigError, load
from labkit.launch import runner

BERT = "params/01_baseline_bert_squad/baseline.yaml"


@pytest.mark.parametrize("config_file, overrides, words", [
    (BERT, {"data.padding": "packed", "train.strategy": "dp", "train.devices": 2}, "DataParallel"),
    ("params/07_t5_model_parallel/gsm8k_bf16.yaml", {"data.padding": "packed"}, "not supported by t5_qa"),
    ("params/06_lora_optimizer_sweep/r10_adamw.yaml", {"data.padding": "packed", "data.sft_format": "dialogue_windows"},
     "leave nothing to pack"),
    ("params/07_t5_model_parallel/gsm8k_bf16.yaml", {"data.dataset": None}, "data.dataset gsm8k or bioqa"),
    ("params/07_t5_model_parallel/gsm8k_bf16.yaml", {"model.split_devices": 2, "train.devices": 2, "train.strategy": "ddp"},
     "does not combine with train.devices"),
    (BERT, {"model.split_devices": 2}, "only t5_qa has a layer-split model"),
    ("params/06_lora_optimizer_sweep/r10_adamw.yaml", {"data.on_gpu": True}, "gpt2_sft loads its batches on the CPU"),
    (BERT, {"data.on_gpu": True}, "bert_squad loads its batches on the CPU"),
    ("params/03_mixed_precision/fast_path.yaml", {"model.compile_options.conv_1x1_as_mn": True},
     "'conv_1x1_as_mn' is not an option of torch.compile's inductor: did you mean 'conv_1x1_as_mm'"),
])
def test_impossible_settings_stop_before_any_record_exists(tmp_path, monkeypatch, config_file, overrides, words):
    monkeypatch.setattr(runner, "execute", lambda *a: pytest.fail("no run may start"))
    with pytest.raises(ConfigError, match=words) as err:
        labkit.run(config_file, "smoke", overrides, runs_dir=tmp_path)
    assert config_file in str(err.value)  # the message names the file
    assert not any(tmp_path.rglob("*"))  # nothing written: no record, no folder


def test_what_this_machine_cannot_run_is_recorded_once_as_skipped(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(runner, "execute", lambda *a: pytest.fail("a skipped run builds no task"))
    monkeypatch.setattr(runner, "launch", lambda *a: pytest.fail("a skipped run starts no process"))
    record = labkit.run("params/03_mixed_precision/bert_tf32.yaml", "smoke", runs_dir=tmp_path)
    assert record["status"] == "skipped" and "precision tf32 is a mode of NVIDIA tensor cores" in record["error"]
    assert record["env"]["device"] == "cpu" and record["summary"] == {} and "finished" not in record["run"]
    saved = labkit.results.read(tmp_path / "smoke" / "03_mixed_precision" / "bert_tf32")
    assert saved["status"] == "skipped"
    record = labkit.run("params/05_ddp_fsdp/dp.yaml", "smoke", runs_dir=tmp_path)  # a multi-GPU strategy too
    assert record["status"] == "skipped" and "needs GPUs" in record["error"]


def test_cpu_rules_each_name_the_setting():
    def reason(**overrides):
        return preflight.cpu_reason(load(BERT, "smoke", overrides))

    assert reason() is None
    assert "accelerator is 'cuda'" in reason(**{"train.accelerator": "cuda"})
    assert "precision tf32" in reason(**{"train.precision": "tf32"})
    for precision, dtype in (("16-mixed", "fp16"), ("bf16-mixed", "bf16"), ("bf16-true", "bf16")):
        # autocast and bf16 weights run on a CPU with instructions for them, and only there
        why = reason(**{"train.precision": precision})
        assert why is None if preflight.cpu_multiplies(dtype) else f"no {dtype} instructions" in why
    assert "model.compile" in reason(**{"model.compile": True})
    assert "fused optimizer kernels" in reason(**{"train.fused": True})
    assert "nccl" in reason(**{"launch.backend": "nccl"})
    assert "deepspeed needs GPUs" in reason(**{"train.strategy": "deepspeed", "train.devices": 2})


def test_on_cuda_is_the_visible_gpu_and_the_accelerator(monkeypatch):
    cfg = load(BERT, "smoke")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert preflight.uses_cuda(cfg)
    assert not preflight.uses_cuda(load(BERT, "smoke", {"train.accelerator": "cpu"}))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not preflight.uses_cuda(cfg)


def test_a_preset_the_model_family_lacks_is_refused():
    with pytest.raises(ConfigError, match=r"model.preset 'huge' is not a size of bert_squad's model: choose one of \['base'"):
        preflight.check_settings(load(BERT, "smoke", {"model.preset": "huge"}), BERT)
