"""The one optimizer factory and learning-rate schedule every lab uses."""
from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from labkit.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW, Adam, SGD, SGD with momentum or Nesterov over the trainable parameters.

    Weight decay applies to matrices only (not biases and norm weights), as in BERT and GPT-2 training,
    or to every parameter (``weight_decay_on: all``, torch's default, as the original labs ran); the same
    decay is used for every optimizer so a sweep compares like with like. Adam adds the decay to the
    gradient (L2, coupled with the adaptive step); AdamW subtracts it from the weight (decoupled).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.weight_decay_on == "all":
        groups = [{"params": params, "weight_decay": cfg.weight_decay}]
    else:
        groups = [
            {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
    groups = [g for g in groups if g["params"]]
    fused = {"fused": True} if cfg.fused else {}
    if cfg.optimizer in ("adamw", "adam"):
        adam = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        return adam(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, **fused)
    momentum = {"sgd": 0.0, "sgd_momentum": cfg.momentum, "nesterov": cfg.momentum}[cfg.optimizer]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=momentum, nesterov=cfg.optimizer == "nesterov", **fused)


def build_schedule(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over warmup_ratio of the steps, then linear decay to zero (or constant)."""
    warmup = math.ceil(cfg.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "constant":
            return 1.0
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    # DeepSpeed's ZeRO optimizer is not a torch Optimizer: schedule the torch optimizer it steps, whose
    # parameter groups (learning rate included) are the ones ZeRO updates.
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def count_parameters(model: nn.Module) -> dict[str, int]:
    params: Iterable[nn.Parameter] = model.parameters()
    total = trainable = 0
    for p in params:
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"params_total": total, "params_trainable": trainable}
