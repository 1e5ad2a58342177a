"""GPT-2 presets and LoRA, the optimizer factory, and the memory breakdown's arithmetic (tiny model, CPU)."""
import typing

import pytest
import torch

from labkit import measure
from labkit.config import ModelConfig, TrainConfig
from labkit.models import gpt2
from labkit.optim import build_optimizer

VOCAB = 300
D, LAYERS = 128, 2  # the tiny preset


def tiny(**model) -> torch.nn.Module:
    torch.manual_seed(0)
    return gpt2.build(ModelConfig(preset="tiny", **model), VOCAB)[0]


@pytest.mark.parametrize("rank", [1, 10])
def test_lora_wraps_only_the_targets_and_trains_the_closed_form_count(rank):
    model = tiny(finetune="lora", lora={"rank": rank})
    wrapped = sorted(n for n, m in model.named_modules() if hasattr(m, "lora_A"))
    assert wrapped == sorted(f"base_model.model.transformer.h.{i}.attn.c_attn" for i in range(LAYERS))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable)
    # c_attn maps d -> 3d: A is r x d, B is 3d x r, per layer
    assert sum(trainable.values()) == rank * (D + 3 * D) * LAYERS
    assert sum(p.numel() for p in model.parameters()) == sum(trainable.values()) + sum(p.numel() for p in tiny().parameters())


def test_lora_target_modules_are_a_parameter():
    model = tiny(finetune="lora", lora={"rank": 4, "target_modules": ["c_attn", "mlp.c_fc"]})
    wrapped = {n.split(".", 5)[-1] for n, m in model.named_modules() if hasattr(m, "lora_A")}
    assert wrapped == {"attn.c_attn", "mlp.c_fc"}  # not attn.c_proj, not mlp.c_proj
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == 4 * ((D + 3 * D) + (D + 4 * D)) * LAYERS


def test_full_fine_tuning_trains_everything_and_lora_starts_as_the_base_model():
    base = tiny()
    assert all(p.requires_grad for p in base.parameters())
    lora = tiny(finetune="lora", lora={"rank": 2, "dropout": 0.0})
    ids = torch.randint(0, VOCAB, (2, 12))
    base.eval(), lora.eval()
    with torch.no_grad():  # B starts at zero: the adapted model is the base model until it trains
        assert torch.allclose(base(ids).logits, lora(ids).logits, atol=1e-5)


def test_presets_and_errors():
    assert gpt2.PRESETS["medium"][0].endswith("gpt2-medium")
    with pytest.raises(ValueError, match="not a GPT-2 preset"):
        gpt2.build(ModelConfig(preset="base"), VOCAB)
    with pytest.raises(ValueError, match="no pretrained weights"):
        gpt2.build(ModelConfig(preset="tiny", weights="hub"), VOCAB)
    model, info = gpt2.build(ModelConfig(preset="tiny", checkpointing="full"), VOCAB)
    assert info["weights"] == "random" and info["checkpointed_blocks"] == LAYERS
    assert model.get_input_embeddings().num_embeddings == VOCAB


@pytest.mark.parametrize("name", typing.get_args(TrainConfig.model_fields["optimizer"].annotation))
def test_optimizer_factory_uses_the_given_hyper_parameters(name):
    cfg = TrainConfig(optimizer=name, lr=0.02, weight_decay=0.1, momentum=0.8, betas=(0.9, 0.95))
    opt = build_optimizer(tiny(), cfg)
    expected = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}.get(name, torch.optim.SGD)
    assert type(opt) is expected
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    for group in opt.param_groups:
        assert group["lr"] == 0.02
        if name in ("adamw", "adam"):
            assert group["betas"] == (0.9, 0.95)
        else:
            assert group["momentum"] == {"sgd": 0.0, "sgd_momentum": 0.8, "nesterov": 0.8}[name]
            assert group["nesterov"] == (name == "nesterov")


@pytest.mark.parametrize("finetune,optimizer,states", [("full", "adamw", 2), ("lora", "adamw", 2), ("lora", "sgd", 0),
                                                       ("lora", "sgd_momentum", 1), ("full", "nesterov", 1)])
def test_computed_memory_matches_the_tensors_a_real_step_creates(finetune, optimizer, states):
    model = tiny(finetune=finetune, lora={"rank": 3})
    opt = build_optimizer(model, TrainConfig(optimizer=optimizer, lr=1e-3))
    computed = measure.computed_memory_gb(model, opt)
    ids = torch.randint(0, VOCAB, (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    assert computed["weights_computed_gb"] == pytest.approx(4 * sum(p.numel() for p in params) / 1e9)  # fp32
    grad_bytes = sum(p.grad.numel() * p.grad.element_size() for p in params if p.grad is not None)
    assert computed["gradients_computed_gb"] == pytest.approx(grad_bytes / 1e9) == pytest.approx(4 * n_trainable / 1e9)
    # every per-parameter state tensor the optimizer made (AdamW's scalar step counters aside)
    state_bytes = sum(t.numel() * t.element_size() for s in opt.state.values() for k, t in s.items()
                      if torch.is_tensor(t) and k != "step")
    assert computed["optimizer_computed_gb"] == pytest.approx(state_bytes / 1e9) == pytest.approx(states * 4 * n_trainable / 1e9)
    if finetune == "lora":  # the point of LoRA: gradients and state only for the adapters
        assert computed["gradients_computed_gb"] < 0.05 * computed["weights_computed_gb"]


def test_memory_probe_is_absent_on_a_cpu_and_subtracts_readings_on_a_gpu():
    probe = measure.MemoryProbe(torch.device("cpu"))
    for point in ("setup", "start", "forward", "backward", "optimizer"):
        probe.read(point)
    assert probe.measured_gb() == {}  # no allocator to read: nothing is made up
    gb = 10**9
    probe.readings = {"before_setup": 0, "setup": 2 * gb, "start": 2 * gb + gb // 10, "forward": 5 * gb,
                      "backward": 4 * gb, "optimizer": 8 * gb}
    assert probe.measured_gb() == pytest.approx({"weights_measured_gb": 2.0, "activations_measured_gb": 2.9,
                                                 "gradients_measured_gb": 1.9, "optimizer_measured_gb": 4.0})
    probe.built_on_device()  # weights drawn on the device before the first reading: not measured, the rest is
    assert probe.measured_gb() == pytest.approx({"activations_measured_gb": 2.9, "gradients_measured_gb": 1.9,
                                                 "optimizer_measured_gb": 4.0})
