"""One run, end to end: params file -> config -> preflight -> task -> training loop -> one results record.

Nothing is written before the preflight (labkit.preflight) has passed: settings that cannot run together
stop with a ConfigError, and a configuration this machine cannot run is recorded once, as 'skipped' with
the reason. Otherwise the record is written as 'running' when training starts and rewritten when the run
ends, however it ends: 'ok', 'oom' (a measurement, not a crash: the sweep goes on) or 'failed' (with the
error, then the error is raised). Multi-process strategies start one process per device
(labkit.launch.distributed), each of which runs ``execute``.
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
from labkit.launch.distributed import launch


def is_out_of_memory(err: BaseException) -> bool:
    """The allocator's out-of-memory error, or cuBLAS/cuDNN failing to allocate their workspace, which
    near the memory limit surfaces as a plain RuntimeError."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or any(
        text in str(err) for text in ("CUDA out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED"))


def run(config_file: str | Path, profile: str = "smoke", overrides: dict[str, Any] | None = None,
        runs_dir: str | Path | None = None) -> dict:
    """Run one configuration and return its results record (also saved under runs_dir)."""
    cfg = config_mod.load(config_file, profile, overrides)
    preflight.check_settings(cfg, config_file)
    path = Path(config_file)
    identity = {"notebook": path.parent.name, "config": path.stem, "profile": profile,
                "params_file": str(config_file), "overrides": overrides or {}}
    directory = results.record_dir(profile, identity["notebook"], identity["config"], runs_dir or results.RUNS_DIR)
    results.keep_previous(directory)  # the last run of this configuration stays comparable (results.compare)
    if reason := preflight.skip_reason(cfg):
        record = results.new_record(identity, cfg.model_dump(mode="json"), measure.environment_of(cfg), "skipped")
        record.update(error=f"skipped: {reason}")
        results.save(record, directory)
        return record
    if cfg.train.strategy in ("ddp", "fsdp", "deepspeed") and "LOCAL_RANK" not in os.environ:
        return launch(cfg, identity, directory)  # one process per device, even for one device; see notebook 05
    return execute(cfg, identity, directory)


def execute(cfg: Config, identity: dict, directory: Path, clock: dict[str, float] | None = None) -> dict:
    """Run ``cfg`` in this process (rank 0 writes the record when several processes take part). ``clock``: points the
    process passed before (results.TIME_SPLIT), kept in the record's."""
    rank = int(os.environ.get("RANK", 0))
    record = results.new_record(identity, cfg.model_dump(mode="json"), measure.environment_of(cfg))
    record["clock"].update(clock or {})
    save = (lambda: results.save(record, directory)) if rank == 0 else (lambda: None)
    trace = directory / results.TRACE if rank == 0 and cfg.measure.profile_steps else None
    if rank == 0:
        (directory / results.TRACE).unlink(missing_ok=True)  # an earlier run's trace must not pass for this one's
    save()
    try:
        from labkit.tasks import build_task
        from labkit.train import fit, make_fabric

        record["clock"]["loop_imported"] = time.time()
        fabric = make_fabric(cfg)
        fabric.seed_everything(cfg.train.seed)
        record["clock"]["fabric_made"] = time.time()
        task = build_task(cfg)
        record["clock"]["task_built"] = time.time()
        record["info"] = task.info
        outcome = fit(cfg, task, fabric, trace)
        record["clock"].update(outcome.pop("clock"))
        record.update(outcome)
        if trace is not None and trace.is_file():
            record["trace"] = results.TRACE
        record["status"] = "ok"
    except BaseException as err:  # KeyboardInterrupt too: the record says how the run ended
        if is_out_of_memory(err):  # recorded, and the sweep goes on
            record.update(status="oom", error=f"out of memory: {str(err).splitlines()[0]}")
            torch.cuda.empty_cache()
            return record
        record.update(status="failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    finally:
        record["run"]["finished"], record["clock"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S"), time.time()
        save()
    return record
