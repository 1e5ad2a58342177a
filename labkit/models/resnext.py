"""ResNeXt29 for CIFAR-10 (notebooks 02, 03, 04): the CIFAR variant of Xie et al. 2017, as in the
widely used pytorch-cifar code the original labs trained (1x1 stem, three stages of bottleneck blocks
with grouped 3x3 convolutions, bottleneck width doubling per stage, global average pooling).

The nine blocks are one flat ``nn.ModuleList`` so activation checkpointing can wrap any of them
(``model.checkpointing`` full / selective), or, as the original lab 04 did (``stage_and_conv``), each of
the three stages, every convolution inside the blocks and the final linear layer; channels-last is applied by the training loop, not here. A checkpointed block's recomputation in
backward runs its BatchNorms in training mode again, so their running statistics take two updates
per step: gradients are unchanged, evaluation sees slightly faster-moving statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from torch.utils.flop_counter import FlopCounterMode

from labkit.config import ModelConfig
from labkit.models import Checkpointed, apply_checkpointing, presets

PRESETS = presets.RESNEXT


class Block(nn.Module):
    """1x1 reduce -> grouped 3x3 -> 1x1 expand (x2), plus a projection shortcut where the shape changes."""

    expansion = 2

    def __init__(self, in_planes: int, cardinality: int, bottleneck_width: int, stride: int):
        super().__init__()
        width = cardinality * bottleneck_width
        out = self.expansion * width
        self.conv1 = nn.Conv2d(in_planes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        return F.relu(self.bn3(self.conv3(y)) + self.shortcut(x))


class ResNeXt(nn.Module):
    def __init__(self, num_blocks: tuple[int, ...], cardinality: int, bottleneck_width: int, stem: int,
                 num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        blocks, in_planes, width = [], stem, bottleneck_width
        for stage, n in enumerate(num_blocks):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(Block(in_planes, cardinality, width, stride))
                in_planes = Block.expansion * cardinality * width
            width *= 2
        self.blocks = nn.ModuleList(blocks)
        self.linear = nn.Linear(in_planes, num_classes)
        self.stages = [range(sum(num_blocks[:i]), sum(num_blocks[: i + 1])) for i in range(len(num_blocks))]
        self.checkpoint_stages = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        for stage in self.stages:
            if self.checkpoint_stages and self.training:
                x = checkpoint(self._run, stage, x, use_reentrant=False)
            else:
                x = self._run(stage, x)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))

    def _run(self, stage: range, x: torch.Tensor) -> torch.Tensor:
        for i in stage:
            x = self.blocks[i](x)
        return x

    def checkpoint_stages_and_convs(self) -> int:
        """The original lab 04's granularity: each stage checkpointed as a whole, and inside it every block's
        three convolutions (not the shortcut's), and the final linear layer; returns how many stages."""
        for block in self.blocks:
            block.conv1, block.conv2, block.conv3 = (Checkpointed(c) for c in (block.conv1, block.conv2, block.conv3))
        self.linear = Checkpointed(self.linear)
        self.checkpoint_stages = True
        return len(self.stages)


def build(cfg: ModelConfig, num_classes: int = 10) -> tuple[nn.Module, dict]:
    """The preset's ResNeXt with random initial weights (CIFAR models are trained from scratch)."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"model.preset '{cfg.preset}' is not a ResNeXt preset; choose one of {sorted(PRESETS)}")
    if cfg.weights != "random":
        raise ValueError(f"model.weights '{cfg.weights}': the CIFAR labs train ResNeXt from scratch and no pretrained "
                         "weights are offered; set model.weights: random")
    model = ResNeXt(**PRESETS[cfg.preset], num_classes=num_classes)
    if cfg.init == "kaiming_uniform":  # the original's init_weights: biases keep PyTorch's defaults
        for m in model.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.kaiming_uniform_(m.weight)
    info = {"model": f"ResNeXt ({cfg.preset})", "preset": cfg.preset, "weights": "random",
            "weights_source": f"ResNeXt {cfg.preset}, CIFAR variant, trained from scratch ({cfg.init} initialisation)", "blocks": len(model.blocks)}
    if cfg.checkpointing == "stage_and_conv":
        info["checkpointed_stages"] = model.checkpoint_stages_and_convs()
        info["checkpointed_blocks"] = 0
    else:
        info["checkpointed_blocks"] = apply_checkpointing(model.blocks, cfg.checkpointing, cfg.checkpoint_every)
    return model, info


def flops_per_sample(preset: str, num_classes: int = 10) -> float:
    """Forward+backward FLOPs of one 32x32 image, counted by PyTorch on a shape-only (meta) model."""
    with torch.device("meta"):
        model = ResNeXt(**PRESETS[preset], num_classes=num_classes)
        x = torch.empty(1, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    return float(counter.get_total_flops())
