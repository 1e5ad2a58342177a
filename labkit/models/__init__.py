"""Model presets of each lab (one module per family) and the parts they share."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class Checkpointed(nn.Module):
    """Runs a block under activation checkpointing: its activations are recomputed in backward."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, *args, **kwargs):
        if not (self.training and any(p.requires_grad for p in self.block.parameters())):
            return self.block(*args, **kwargs)
        return checkpoint(self.block, *args, use_reentrant=False, **kwargs)


def apply_checkpointing(blocks: nn.ModuleList, mode: str, every: int = 2) -> int:
    """Wrap blocks in place: all of them ('full') or every k-th ('selective'); returns how many."""
    if mode == "off":
        return 0
    step = 1 if mode == "full" else every
    chosen = range(0, len(blocks), step)
    for i in chosen:
        blocks[i] = Checkpointed(blocks[i])
    return len(chosen)


def build_hf(auto_cls, cfg, hub_name: str, random_config, device: torch.device | None = None) -> tuple[nn.Module, dict]:
    """A Hugging Face model: pretrained from the hub or a local folder, or the architecture of
    ``random_config`` with random weights (the offline default: no download, nothing learned yet), those drawn
    on ``device`` where given."""
    attn = {"attn_implementation": cfg.attn_implementation}
    if cfg.weights == "random":
        with without_default_init(), torch.device(device) if device else contextlib.nullcontext():
            model = auto_cls.from_config(random_config, **attn)
        source = f"{hub_name} architecture, random weights"
    else:
        source = cfg.path if cfg.weights == "local" else (cfg.hub_name or hub_name)
        try:
            model = auto_cls.from_pretrained(source, **attn)
        except OSError as err:
            raise OSError(f"could not load weights from '{source}' ({err}). Without internet, download the model "
                          "once elsewhere and set model.weights: local with model.path, or use model.weights: random") from None
    info = {"model": cfg.hub_name or hub_name, "preset": cfg.preset, "weights": cfg.weights, "weights_source": source}
    return model, info


@contextlib.contextmanager
def without_default_init() -> Iterator[None]:
    """Linear, Embedding and LayerNorm layers built inside skip torch's own draw of their weights. A Hugging Face
    model draws every weight again at the end of its construction (post_init, with its own _init_weights), so the
    first draw is wasted: 16 of t5-large's 26 s of construction on two CPU cores (under cProfile)."""
    layers = (nn.Linear, nn.Embedding, nn.LayerNorm)
    drawn = {layer: layer.reset_parameters for layer in layers}
    for layer in layers:
        layer.reset_parameters = lambda self: None
    try:
        yield
    finally:
        for layer, reset in drawn.items():
            layer.reset_parameters = reset
