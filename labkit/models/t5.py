"""T5 for text-to-text question answering (notebook 07), and its layer-split model parallel placement."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSeq2SeqLM, T5Config

from labkit.config import ModelConfig
from labkit.models import apply_checkpointing, build_hf, presets

PRESETS = presets.T5
T5_VOCAB = 32128  # rows of the real models' embedding (32,100 tokens, padded)


def build(cfg: ModelConfig, vocab_size: int, device: torch.device | None = None) -> tuple[nn.Module, dict]:
    """T5ForConditionalGeneration as ``cfg`` says: hub / local weights, or the preset's architecture with
    random weights and ``vocab_size`` rows (the real 32,128 for the real sizes, so the LM head costs what it
    does in the real model); layer-split over ``cfg.split_devices`` GPUs when that is above 1. Random weights
    are drawn on ``device`` where given: t5-large's 738M draws take seconds on a CPU, where one thread draws them."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"model.preset '{cfg.preset}' is not a T5 preset; choose one of {sorted(PRESETS)}")
    hub_name, sizes = PRESETS[cfg.preset]
    rows = vocab_size if cfg.preset == "tiny" else max(vocab_size, T5_VOCAB)
    config = T5Config(vocab_size=rows, decoder_start_token_id=0, **sizes)  # T5 starts decoding from <pad>
    model, info = build_hf(AutoModelForSeq2SeqLM, cfg, hub_name, config, device)
    # Training never reads the decoder's key/value cache, and a checkpointed block recomputed with the cache
    # its first pass filled would compute something else; generate() turns it on for itself.
    model.config.use_cache = model.decoder.config.use_cache = False  # the decoder keeps a copy of the config
    info["checkpointed_blocks"] = sum(apply_checkpointing(stack.block, cfg.checkpointing, cfg.checkpoint_every)
                                      for stack in (model.encoder, model.decoder))
    c = model.config
    info.update(layers=c.num_layers + c.num_decoder_layers, hidden=c.d_model, vocab_size=c.vocab_size)
    if cfg.split_devices > 1:
        if torch.cuda.device_count() < cfg.split_devices:
            raise RuntimeError(f"model.split_devices is {cfg.split_devices} but {torch.cuda.device_count()} GPU(s) "
                               "are visible; set model.split_devices to at most the number of GPUs")
        info["placement"] = place_layers(model, [torch.device("cuda", i) for i in range(cfg.split_devices)])
    return model, info


def place_layers(model: nn.Module, devices: Sequence[torch.device | str]) -> dict[str, str]:
    """Layer-split ("naive") model parallel: T5's blocks, encoder then decoder, are cut into len(devices)
    runs of equal length, one run per device in order; for two devices the encoder goes on the first and the
    decoder on the second.

    The shared embedding and the LM head, which are one tied matrix, stay on the first device, where the
    batch arrives and the loss is computed: the matrix stays one parameter with one gradient (the
    contributions of the encoder's and decoder's lookups and of the output projection add up in it), and the
    loss comes back on the device the training loop backward()s from. Forward pre-hooks move each block's
    inputs to its device; autograd carries the gradients back across. Returns module -> device, for the record.
    """
    devices = [torch.device(d) for d in devices]
    first = devices[0]
    model.to(first)
    blocks = [(f"{name}.block.{i}", block) for name, stack in (("encoder", model.encoder), ("decoder", model.decoder))
              for i, block in enumerate(stack.block)]
    placement = {"shared": str(first), "lm_head": str(first)}
    for k, (name, block) in enumerate(blocks):
        device = devices[k * len(devices) // len(blocks)]
        block.to(device)
        block.register_forward_pre_hook(_inputs_to(device), with_kwargs=True)
        placement[name] = str(device)
    for name, stack in (("encoder", model.encoder), ("decoder", model.decoder)):
        last = torch.device(placement[f"{name}.block.{len(stack.block) - 1}"])
        stack.final_layer_norm.to(last)  # follows its stack's last block, so its input is already there
        placement[f"{name}.final_layer_norm"] = str(last)
    # The encoder's output feeds every decoder block: move it once, to the first decoder block's device.
    model.decoder.register_forward_pre_hook(_encoder_states_to(torch.device(placement["decoder.block.0"])),
                                            with_kwargs=True)
    model.lm_head.register_forward_pre_hook(_inputs_to(first), with_kwargs=True)
    return placement


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_to(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value  # e.g. the generation cache: each layer keeps its keys and values on its own device


def _inputs_to(device: torch.device):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        return _to(args, device), _to(kwargs, device)

    return hook


def _encoder_states_to(device: torch.device):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        if isinstance(kwargs.get("encoder_hidden_states"), torch.Tensor):
            kwargs["encoder_hidden_states"] = kwargs["encoder_hidden_states"].to(device)
        return args, kwargs

    return hook


def non_embedding_params(model: nn.Module) -> tuple[int, int]:
    """Parameters of the encoder's and of the decoder's blocks (the shared embedding is counted apart)."""
    return tuple(sum(p.numel() for p in stack.block.parameters()) for stack in (model.encoder, model.decoder))
