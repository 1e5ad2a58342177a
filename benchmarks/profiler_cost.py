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
from pathlib import Path

import torch

from labkit import config as config_mod
from labkit.measure.profiler import CommProfiler
from labkit.measure.timers import synchronize
from labkit.precision import PRECISIONS
from labkit.tasks import build_task

COLUMNS = ["config", "device", "reading", "repeat", "profiled_steps", "events", "seconds", "trace_mb"]


def torch_view(prof: torch.profiler.profile, trace: Path) -> int:
    """The way labkit read profiled steps before: every event as a Python object, then the averages and the trace."""
    events = prof.events()
    prof.key_averages()
    prof.export_chrome_trace(str(trace))  # a .gz name: written, then compressed by torch
    return len(events)


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

        def steps(n: int) -> None:
            for _ in range(n):
                with autocast:
                    loss = task.loss(model, batch)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            synchronize(device)

        steps(3)  # warm: allocator, kernels chosen
        for repeat in range(args.repeats):
            with tempfile.TemporaryDirectory() as folder:
                for reading in ("torch events", "profiler's trace"):
                    trace = Path(folder) / f"{reading.split()[0]}.json.gz"
                    if reading == "torch events":
                        activities = [torch.profiler.ProfilerActivity.CPU] + (
                            [torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])
                        prof = torch.profiler.profile(activities=activities)
                        prof.start()
                        steps(args.steps)
                        start = time.perf_counter()
                        prof.stop()
                        events = torch_view(prof, trace)
                    else:
                        kit = CommProfiler(device, trace)
                        kit.start(0)
                        steps(args.steps)
                        start = time.perf_counter()
                        kit.stop(args.steps)
                        events = None
                    seconds = time.perf_counter() - start
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
