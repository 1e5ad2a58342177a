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
from labkit import measure, preflight, results
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
        from labkit.launch.distributed import launch  # one process per device, even for one device; see notebook 05

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
    reason = preflight.gpu_only_reason(cfg, cuda)
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
