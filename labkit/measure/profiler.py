"""A few steps under torch.profiler: compute vs communication, the operators that took the time, a trace."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from labkit.measure.timers import synchronize


class CommProfiler:
    """Compute vs communication over a few steps, from torch.profiler (``measure.profile_steps``).

    GPU: time of NCCL kernels (comm_s) vs all other GPU work, kernels and copies (compute_s). DDP's
    all-reduce overlaps the backward pass, so the two can add up to more than a step. CPU (gloo): time
    inside gloo collectives, which run on gloo's own threads, vs operator time outside them. All are
    seconds per step of this rank, with the profiled steps' wall time (slower than unprofiled steps)
    to compare them with; the summary is empty when no step was profiled. ``top_ops`` keeps the
    operators and CUDA runtime calls that took the most device time or the most host time, per step:
    where a step's time goes, and whether the host keeps up with the GPU. With ``trace`` set, the
    profiled steps are also written there as a gzipped Chrome trace (open in Perfetto or chrome://tracing).
    """

    COMM = ("nccl", "gloo:")  # how the profiler names NCCL kernels and gloo collectives

    def __init__(self, device: torch.device, trace: Path | None = None):
        self.device, self.trace, self._prof, self._result = device, trace, None, {}
        self.top_ops: list[dict[str, float | str]] = []

    @property
    def running(self) -> bool:
        return self._prof is not None

    def start(self, step: int) -> None:
        if self._prof is not None or self._result:
            return
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof, self._from = torch.profiler.profile(activities=activities), step
        synchronize(self.device)
        self._prof.start()
        self._since = time.perf_counter()

    def stop(self, step: int) -> None:
        if self._prof is None:
            return
        synchronize(self.device)
        wall = time.perf_counter() - self._since
        self._prof.stop()
        prof, self._prof = self._prof, None
        if step <= self._from:
            return
        n = step - self._from
        if self.trace is not None:
            self.trace.parent.mkdir(parents=True, exist_ok=True)
            prof.export_chrome_trace(str(self.trace))  # a name ending in .gz is written gzipped
        comm = compute = 0.0  # microseconds
        for e in prof.events():
            is_comm = any(name in e.name.lower() for name in self.COMM)
            if self.device.type == "cuda":
                if e.device_type != torch.autograd.DeviceType.CUDA:
                    continue
                spent = e.time_range.elapsed_us()
            elif is_comm:
                spent = e.cpu_time_total
            elif e.name.startswith("aten::"):
                spent = e.self_cpu_time_total
            else:
                continue
            if is_comm:
                comm += spent
            else:
                compute += spent
        # a step the host cannot feed fast enough shows in the host-time list (launches, synchronisations)
        averages = prof.key_averages()
        by_device = sorted(averages, key=lambda a: a.self_device_time_total, reverse=True)[:15]
        by_host = sorted(averages, key=lambda a: a.self_cpu_time_total, reverse=True)[:15]
        top = {a.key: a for a in by_device + by_host}.values()
        self.top_ops = sorted(({"op": a.key, "calls_per_step": a.count / n, "device_ms_per_step": a.self_device_time_total / n / 1e3,
                                "cpu_ms_per_step": a.self_cpu_time_total / n / 1e3} for a in top),
                              key=lambda o: (o["device_ms_per_step"], o["cpu_ms_per_step"]), reverse=True)
        self._result = {"comm_s": comm / n / 1e6, "compute_s": compute / n / 1e6, "profiled_step_s": wall / n,
                        "profiled_steps": n}

    def summary(self) -> dict[str, float]:
        return dict(self._result)
