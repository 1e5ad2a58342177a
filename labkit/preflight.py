"""Can this configuration run here? Decided before any work starts and before any record is written.

A configuration that cannot run on this machine is recorded as 'skipped' with the reason returned
here (a GPU-only setting on a CPU, too few GPUs or nodes, an extra that is not installed).
"""
from __future__ import annotations

import importlib.util
import os

import torch

from labkit.config import Config


def unavailable_reason(cfg: Config, cuda: bool) -> str | None:
    """Why this machine cannot run ``cfg``'s processes (recorded as 'skipped'), or None if it can."""
    t = cfg.train
    if t.strategy == "deepspeed":
        if importlib.util.find_spec("deepspeed") is None:
            return "DeepSpeed is not installed: pip install '.[deepspeed]' (or pip install deepspeed), then run again"
    if t.num_nodes > 1:
        job = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 0)
        if job < t.num_nodes:
            where = f"this SLURM job has {job}" if os.environ.get("SLURM_JOB_ID") else "this is not a SLURM job"
            return (f"train.num_nodes is {t.num_nodes} and {where}: run the notebook inside a job of "
                    f"{t.num_nodes} nodes (sbatch or salloc --nodes {t.num_nodes})")
    if cuda and t.devices > torch.cuda.device_count():
        return f"train.devices is {t.devices}: it needs {t.devices} GPUs per node and {torch.cuda.device_count()} are visible"
    return None


def gpu_only_reason(cfg: Config, cuda: bool = False) -> str | None:
    """Why a configuration cannot honestly run on a CPU (or on the GPUs visible), or None if it can."""
    t = cfg.train
    if reason := unavailable_reason(cfg, cuda):
        return reason
    if cuda:
        visible = torch.cuda.device_count()
        if cfg.model.split_devices > visible:
            return f"model.split_devices is {cfg.model.split_devices}: the layer-split model needs that many GPUs and {visible} are visible"
        return None
    if t.accelerator == "cuda":
        return "accelerator is 'cuda' and no GPU is visible"
    if t.precision in ("tf32", "16-mixed", "bf16-mixed", "bf16-true"):
        return f"precision {t.precision} is a GPU setting; a CPU figure would say nothing about it"
    if cfg.data.on_gpu:
        return "data.on_gpu holds the data set in GPU memory"
    if t.strategy in ("dp", "deepspeed"):  # fsdp runs on CPUs too (FSDP2 over gloo)
        return f"strategy {t.strategy} needs GPUs"
    if cfg.launch.backend == "nccl":
        return "launch.backend nccl is NVIDIA's GPU library; CPUs use gloo"
    if t.fused:
        return "fused optimizer kernels are CUDA kernels"
    if cfg.model.split_devices > 1:
        return "model parallel over GPUs needs GPUs"
    return None
