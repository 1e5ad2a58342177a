"""One run, end to end: params file -> config -> task -> training loop -> one results record.

The record is written before training starts (status 'running') and rewritten when the run ends,
however it ends: 'ok', 'oom' (a measurement, not a crash: the sweep goes on), 'skipped' (with the
reason, e.g. a GPU-only setting on a CPU) or 'failed' (with the error, then the error is raised).
"""
from __future__ import annotations

import os
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from labkit import config as config_mod
from labkit import measure, results
from labkit.config import Config


def run(config_file: str | Path, profile: str = "smoke", overrides: dict[str, Any] | None = None,
        runs_dir: str | Path | None = None) -> dict:
    """Run one configuration and return its results record (also saved under runs_dir)."""
    cfg = config_mod.load(config_file, profile, overrides)
    path = Path(config_file)
    identity = {"notebook": path.parent.name, "config": path.stem, "profile": profile,
                "params_file": str(config_file), "overrides": overrides or {}}
    directory = results.record_dir(profile, identity["notebook"], identity["config"], runs_dir or results.RUNS_DIR)
    results.keep_previous(directory)  # the last run of this configuration stays comparable (results.compare)
    if cfg.train.strategy in ("ddp", "fsdp", "deepspeed") and "LOCAL_RANK" not in os.environ:
        from labkit.distributed import launch  # one process per device, even for one device; see notebook 05

        return launch(cfg, identity, directory)
    return execute(cfg, identity, directory)


def execute(cfg: Config, identity: dict, directory: Path) -> dict:
    """Run ``cfg`` in this process (rank 0 writes the record when several processes take part)."""
    cuda = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    rank = int(os.environ.get("RANK", 0))
    env = measure.environment(device)
    env["device_count"] = cfg.train.devices * cfg.train.num_nodes if cuda else cfg.train.devices
    env["device_count"] *= cfg.model.split_devices  # a layer-split model uses several GPUs in one process
    record: dict[str, Any] = {"run": {**identity, "started": time.strftime("%Y-%m-%d %H:%M:%S")},
                              "params": cfg.model_dump(mode="json"), "env": env, "status": "running",
                              "error": None, "summary": {}, "curves": {}, "info": {}}
    save = (lambda: results.save(record, directory)) if rank == 0 else (lambda: None)
    save()
    reason = gpu_only_reason(cfg, cuda)
    if reason:
        record.update(status="skipped", error=f"skipped: {reason}")
        save()
        return record
    try:
        from labkit.tasks import build_task
        from labkit.train import fit, make_fabric

        fabric = make_fabric(cfg)
        fabric.seed_everything(cfg.train.seed)
        task = build_task(cfg)
        record["info"] = task.info
        record.update(fit(cfg, task, fabric))
        record["status"] = "ok"
    except torch.cuda.OutOfMemoryError as err:
        record.update(status="oom", error=f"out of memory: {str(err).splitlines()[0]}")
        torch.cuda.empty_cache()
    except BaseException as err:  # KeyboardInterrupt too: the record says how the run ended
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        record["run"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
        save()
    return record


def gpu_only_reason(cfg: Config, cuda: bool = False) -> str | None:
    """Why a configuration cannot honestly run on a CPU (or on the GPUs visible), or None if it can."""
    from labkit.distributed import unavailable_reason  # DeepSpeed installed? enough GPUs and nodes?

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
