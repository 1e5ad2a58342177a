"""GPT-2 for causal language modelling (notebook 06), fully fine-tuned or with LoRA adapters."""
from __future__ import annotations

import re

from torch import nn
from transformers import AutoModelForCausalLM, GPT2Config

from labkit.config import ModelConfig
from labkit.models import apply_checkpointing, build_hf, presets

PRESETS = presets.GPT2
LORA_TARGETS = ["c_attn"]  # the fused query/key/value projection, peft's default for GPT-2


def preset(cfg: ModelConfig) -> tuple[str | None, dict]:
    if cfg.preset not in PRESETS:
        raise ValueError(f"model.preset '{cfg.preset}' is not a GPT-2 preset; choose one of {sorted(PRESETS)}")
    return PRESETS[cfg.preset]


def pretrained_source(cfg: ModelConfig) -> str:
    """Where pretrained weights and their tokenizer come from: model.path, model.hub_name or the preset's hub id."""
    source = cfg.path if cfg.weights == "local" else (cfg.hub_name or preset(cfg)[0])
    if source is None:
        raise ValueError(f"model.preset '{cfg.preset}' has no pretrained weights: set model.weights: random, "
                         "or choose preset small, medium or large")
    return source


def build(cfg: ModelConfig, vocab_size: int) -> tuple[nn.Module, dict]:
    """GPT-2 of ``cfg.preset``; ``vocab_size`` (the tokenizer's) sets the tiny preset's vocabulary."""
    hub_name, sizes = preset(cfg)
    if cfg.weights != "random":
        pretrained_source(cfg)  # a clear error before any download is tried
    config = GPT2Config(**sizes)
    if hub_name is None:
        config.vocab_size = vocab_size
    if vocab_size > config.vocab_size:
        raise ValueError(f"the tokenizer has {vocab_size} tokens but GPT-2 '{cfg.preset}' only {config.vocab_size} embeddings")
    model, info = build_hf(AutoModelForCausalLM, cfg, hub_name or f"gpt2-{cfg.preset}", config)
    # GPT2LMHeadModel's class name maps to no loss in transformers, which then warns on every forward and falls back to
    # the causal LM loss: naming that loss removes the warning, which would also split a compiled forward in two.
    model.loss_type = "ForCausalLM"
    info["checkpointed_blocks"] = apply_checkpointing(model.transformer.h, cfg.checkpointing, cfg.checkpoint_every)
    c = model.config
    info.update(layers=c.n_layer, hidden=c.n_embd, finetune=cfg.finetune)
    if cfg.finetune == "lora":
        model = add_lora(model, cfg)
        info.update(lora_rank=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_targets=cfg.lora.target_modules or LORA_TARGETS)
    return model, info


def add_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Freeze the model and add rank-r adapters B·A (scaled by alpha/r) beside the target modules; the
    parameters whose names match ``lora.also_train`` train too."""
    from peft import LoraConfig, get_peft_model

    lora = cfg.lora
    # GPT-2's projections are Conv1D layers whose weight is stored (in, out): fan_in_fan_out says so.
    config = LoraConfig(task_type="CAUSAL_LM", r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=lora.target_modules or LORA_TARGETS, fan_in_fan_out=True)
    model = get_peft_model(model, config)
    for pattern in lora.also_train:
        matched = [p for n, p in model.named_parameters() if re.search(pattern, n)]
        if not matched:
            raise ValueError(f"model.lora.also_train: '{pattern}' matches no parameter name of GPT-2 "
                             f"'{cfg.preset}' (names look like {next(n for n, _ in model.named_parameters())!r})")
        for p in matched:
            p.requires_grad_(True)
    return model


def non_embedding_params(model: nn.Module) -> int:
    """Parameters outside the token and position embeddings (the N of 6·N·T)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.endswith(("wte.weight", "wpe.weight")))
