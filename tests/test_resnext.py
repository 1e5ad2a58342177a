"""ResNeXt29 (CIFAR variant): shapes, size, presets, and checkpointing that changes memory, not gradients."""
import pytest
import torch
import torch.nn.functional as F

from labkit.config import ModelConfig
from labkit.memory import SavedActivations
from labkit.models import Checkpointed, resnext


def test_shapes_and_the_size_of_resnext29_2x64d():
    model, info = resnext.build(ModelConfig(preset="resnext29_2x64d"))
    assert 9.0e6 < sum(p.numel() for p in model.parameters()) < 9.3e6  # the 2x64d CIFAR network has ~9.1M
    assert len(model.blocks) == 9 and info["weights"] == "random" and info["checkpointed_blocks"] == 0
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    tiny, _ = resnext.build(ModelConfig(preset="tiny"))
    assert tiny(torch.randn(3, 3, 32, 32)).shape == (3, 10)
    assert 0 < resnext.flops_per_sample("tiny") < resnext.flops_per_sample("resnext29_2x64d")


def test_bad_preset_and_weights_say_what_to_do():
    with pytest.raises(ValueError, match="choose one of"):
        resnext.build(ModelConfig(preset="resnet50"))
    with pytest.raises(ValueError, match="model.weights: random"):
        resnext.build(ModelConfig(preset="tiny", weights="hub"))


@pytest.mark.parametrize("mode,every,wrapped", [("full", 2, 9), ("selective", 2, 5), ("selective", 3, 3)])
def test_checkpointing_wraps_the_chosen_blocks(mode, every, wrapped):
    model, info = resnext.build(ModelConfig(preset="resnext29_2x64d", checkpointing=mode, checkpoint_every=every))
    assert info["checkpointed_blocks"] == wrapped == sum(isinstance(b, Checkpointed) for b in model.blocks)


def grads_and_activations(mode: str, channels_last: bool = False):
    torch.manual_seed(0)
    model, _ = resnext.build(ModelConfig(preset="tiny", checkpointing=mode))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    x, y = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 10
    saved = SavedActivations()
    loss = saved.wrap(lambda m, b: F.cross_entropy(m(b[0]), b[1]))(model, (x, y))
    loss.backward()
    return loss.item(), {n.replace("block.", ""): p.grad.clone() for n, p in model.named_parameters()}, saved.peak_bytes


def test_checkpointing_gives_the_same_gradients_with_less_saved():
    loss_off, grads_off, bytes_off = grads_and_activations("off")
    for mode in ("full", "selective"):
        loss, grads, saved = grads_and_activations(mode)
        assert loss == pytest.approx(loss_off, abs=1e-6) and grads.keys() == grads_off.keys()
        for name, g in grads.items():
            torch.testing.assert_close(g, grads_off[name], rtol=1e-4, atol=1e-6, msg=name)
        assert 0 < saved < bytes_off
    assert grads_and_activations("full")[2] < grads_and_activations("selective")[2]
