"""What reading a run's profiled steps costs at its end: torch's Python view of the events (``prof.events()``,
``key_averages()``, a gzipped trace) against the trace that the profiler library writes itself, which
labkit.measure.profiler.CommProfiler reads. Same model, batch and number of steps, one after the other.

    python benchmarks/profiler_cost.py --profile gpu --out profiler_cost.csv \
        params/07_t5_model_parallel/gsm8k_bf16.yaml params/07_t5_model_parallel/gsm8k_large_bf16.yaml

One CSV row per configuration, way of reading and repeat: the seconds from the end of the profiled steps to the
figures (and the trace file) being ready. Neither way changes the steps themselves: both read after them.
"""
from __future__ import annotations

import argparse
import csv
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from labkit import config as config_mod
from labkit.measure.profiler import CommProfiler
from labkit.measure.timers import synchronize
from labkit.precision import PRECISIONS
from labkit.tasks import build_task

COLUMNS = ["config", "device", "reading", "repeat", "profiled_steps", "events", "seconds", "trace_mb"]


def torch_view(device: torch.device, run_steps: Callable[[], int], trace: Path) -> tuple[float, int | None]:
    """The way labkit read profiled steps before: every event as a Python object, then the averages and the trace.
    Seconds from the steps' end to all of it, and the number of events."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof = torch.profiler.profile(activities=activities)
    prof.start()
    run_steps()
    start = time.perf_counter()
    prof.stop()
    events = prof.events()
    prof.key_averages()
    prof.export_chrome_trace(str(trace))  # a .gz name: written, then compressed by torch
    return time.perf_counter() - start, len(events)


def kit_view(device: torch.device, run_steps: Callable[[], int], trace: Path) -> tuple[float, int | None]:
    """The way labkit reads them now: CommProfiler, from the trace the profiler library writes."""
    kit = CommProfiler(device, trace)
    kit.start(0)
    n = run_steps()
    start = time.perf_counter()
    kit.stop(n)
    return time.perf_counter() - start, None


READINGS = {"torch events": torch_view, "profiler's trace": kit_view}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("params", nargs="+", help="params files; each one's model, batch and precision")
    p.add_argument("--profile", default="gpu")
    p.add_argument("--steps", type=int, default=3, help="profiled steps (the profiles' measure.profile_steps)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w", newline="") as f:  # a row is written as soon as it is measured
        csv.DictWriter(f, COLUMNS, lineterminator="\n").writeheader()
    rows = []
    for params in args.params:
        cfg = config_mod.load(params, args.profile)
        torch.manual_seed(0)
        task = build_task(cfg)
        model = task.model.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        collate = task.collate_fn or torch.utils.data.default_collate
        batch = {k: v.to(device) for k, v in collate([task.train_set[i] for i in range(cfg.train.batch_size)]).items()}
        autocast = PRECISIONS[cfg.train.precision].autocast_on(device)

        def steps(n: int = args.steps) -> int:
            for _ in range(n):
                with autocast:
                    loss = task.loss(model, batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            synchronize(device)
            return n

        steps(3)  # warm: allocator, kernels chosen
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as folder:
                for reading, read in READINGS.items():
                    trace = Path(folder) / f"{len(rows)}.json.gz"
                    seconds, events = read(device, steps, trace)
                    rows.append({"config": Path(params).stem, "device": name, "reading": reading, "repeat": repeat + 1,
                                 "profiled_steps": args.steps, "events": events, "seconds": round(seconds, 3),
                                 "trace_mb": round(trace.stat().st_size / 1e6, 2)})
                    print(rows[-1], flush=True)
                    with args.out.open("a", newline="") as f:
                        csv.DictWriter(f, COLUMNS, lineterminator="\n").writerow(rows[-1])
        del model, optimizer, task
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"{len(rows)} rows: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
