"""Model presets of each lab (one module per family) and the parts they share."""
from __future__ import annotations

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


def build_hf(auto_cls, cfg, hub_name: str, random_config) -> tuple[nn.Module, dict]:
    """A Hugging Face model: pretrained from the hub or a local folder, or the architecture of
    ``random_config`` with random weights (the offline default: no download, nothing learned yet)."""
    attn = {"attn_implementation": cfg.attn_implementation}
    if cfg.weights == "random":
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
