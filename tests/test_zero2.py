"""ZeRO stage 2, the original T5 lab's "model parallel" (Lightning's ddp_sharded): its configurations as that
lab ran them, and the learning-rate schedule through DeepSpeed's optimizer, which is no torch Optimizer."""
import pytest
import torch

from labkit.config import TrainConfig, load
from labkit.optim import build_schedule
from labkit.preflight import skip_reason


@pytest.mark.parametrize("dataset", ["gsm8k", "bioqa"])
def test_configurations_5_and_6_run_as_the_original_did(dataset):
    five = load(f"params/07_t5_model_parallel/{dataset}_zero2_2gpu.yaml", "gpu")
    six = load(f"params/07_t5_model_parallel/{dataset}_large_zero2_2gpu.yaml", "gpu")
    for cfg in (five, six):
        t = cfg.train
        assert (t.strategy, t.zero_stage, t.precision, t.devices, cfg.data.num_workers) == ("deepspeed", 2, "32", 2, 2)
        assert cfg.model.split_devices == 1 and "ZeRO stage 2" in cfg.description
    assert (five.model.preset, six.model.preset) == ("small", "large")
    # On a CPU the run is recorded as skipped with why: DeepSpeed missing, or ZeRO needing GPUs.
    assert any(words in (skip_reason(six, cuda=False) or "") for words in ("pip install '.[deepspeed]'", "needs GPUs"))


class ZeroLikeOptimizer:
    """Stands in for DeepSpeed's ZeRO optimizer: steps a torch optimizer it holds, and is not one itself."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer

    @property
    def param_groups(self):
        return self.optimizer.param_groups


def test_the_schedule_drives_the_torch_optimizer_inside_a_zero_optimizer():
    inner = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(3))], lr=1.0)
    schedule = build_schedule(ZeroLikeOptimizer(inner), TrainConfig(warmup_ratio=0.5, lr=1.0), total_steps=4)
    assert schedule.optimizer is inner and inner.param_groups[0]["lr"] == 0.5  # first of two warm-up steps
    inner.step()
    schedule.step()
    assert inner.param_groups[0]["lr"] == 1.0
