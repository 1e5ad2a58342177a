"""BERT for extractive question answering (notebooks 01, 03, 04, 05)."""
from __future__ import annotations

from torch import nn
from transformers import AutoModelForQuestionAnswering, BertConfig

from labkit.config import ModelConfig
from labkit.models import apply_checkpointing, build_hf, presets

PRESETS = presets.BERT


def build(cfg: ModelConfig, vocab_size: int, max_length: int) -> tuple[nn.Module, dict]:
    if cfg.preset not in PRESETS:
        raise ValueError(f"model.preset '{cfg.preset}' is not a BERT preset; choose one of {sorted(PRESETS)}")
    hub_name, sizes = PRESETS[cfg.preset]
    # Full-size presets keep the real vocabulary size (30522) even when an offline tokenizer uses fewer
    # ids, so their parameter count, optimizer cost and memory match the real model's.
    real_vocab = BertConfig().vocab_size if cfg.preset != "tiny" else 0
    config = BertConfig(vocab_size=max(vocab_size, real_vocab), max_position_embeddings=max(512, max_length), **sizes)
    model, info = build_hf(AutoModelForQuestionAnswering, cfg, hub_name, config)
    info["checkpointed_blocks"] = apply_checkpointing(model.bert.encoder.layer, cfg.checkpointing, cfg.checkpoint_every)
    c = model.config
    info.update(layers=c.num_hidden_layers, hidden=c.hidden_size)
    return model, info


def non_embedding_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)
