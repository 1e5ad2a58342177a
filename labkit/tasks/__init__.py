"""What a lab plugs into the one training loop: a model, its data and how to score it.

Each task lives in its own data module, which exposes ``build_task(cfg) -> Task``; a new lab adds
one such module, a model preset, params files and a notebook, never a new loop.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from labkit.config import Config

TASK_MODULES = {
    "bert_squad": "labkit.tasks.bert_squad",
    "cifar_resnext": "labkit.tasks.cifar_resnext",
    "gpt2_sft": "labkit.tasks.gpt2_sft",
    "t5_qa": "labkit.tasks.t5_qa",
    "simcls": "labkit.tasks.simcls",
}


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Hugging Face models compute their own loss from the labels in the batch; others classify."""
    if isinstance(batch, dict):
        return model(**batch).loss.mean()  # DataParallel gathers one loss per GPU
    inputs, targets = batch
    return F.cross_entropy(model(inputs), targets)


def batch_size_of(batch: Any) -> int:
    """Samples in a batch; a packed batch (labkit.data.packing.Packing: one row of several sequences, then one
    segment of padding) counts its sequences, not the padding."""
    if isinstance(batch, dict):
        return len(batch["cu_seq_lens_q"]) - 2 if "cu_seq_lens_q" in batch else len(batch["input_ids"])
    return len(batch[0])


def real_tokens_of(batch: Any) -> torch.Tensor | None:
    """Non-padding tokens in a batch (a device tensor: reading it later avoids a sync per step)."""
    if isinstance(batch, dict) and "cu_seq_lens_q" in batch:
        return batch["cu_seq_lens_q"][-2]  # where the packed row's padding segment begins
    if isinstance(batch, dict) and "attention_mask" in batch:
        return batch["attention_mask"].sum()
    return None


@dataclass
class Task:
    model: nn.Module
    train_set: Dataset
    val_set: Dataset
    collate_fn: Callable | None = None
    # Task metric on the validation data after each epoch (EM/F1, accuracy, ...): (model, batch_size, limit) ->
    # metrics. The loop chooses the batch size and the limit, the validation examples to score (None: all).
    evaluate: Callable[[nn.Module, int, int | None], dict[str, float]] | None = None
    loss: Callable[[nn.Module, Any], torch.Tensor] = default_loss
    # Model FLOPs of one training sample (forward + backward), for throughput as MFU.
    flops_per_sample: float | None = None
    # Shown with every result: weights (random/pretrained), model id, data source and size.
    info: dict[str, Any] = field(default_factory=dict)
    # A sampler for the training set (e.g. length-grouped); None: shuffled.
    train_sampler: Any = None
    # A held-out test set, apart from validation: its loss is measured once, after training, with the final weights
    # (with train.keep_best: the best validation's).
    test_set: Dataset | None = None
    # Once, after training, with the weights the run ends with: figures for the record's summary (e.g. the reward
    # model's dialogue quality, labkit.reward).
    final_evaluate: Callable[[nn.Module], dict[str, float]] | None = None


def build_task(cfg: Config) -> Task:
    return importlib.import_module(TASK_MODULES[cfg.task]).build_task(cfg)


def transformer_flops_per_sample(params_non_embedding: int, n_layers: int, d_model: int, seq_len: int) -> float:
    """Training FLOPs of one sequence: 6 N T for the weights plus 12 L d T^2 for attention (PaLM, App. B)."""
    return 6 * params_non_embedding * seq_len + 12 * n_layers * d_model * seq_len**2
