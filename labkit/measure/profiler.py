"""A few steps under torch.profiler: compute vs communication, the operators that took the time, a trace."""
from __future__ import annotations

import collections
import gzip
import json
import re
import shutil
import tempfile
import time
import warnings
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
    kernels and copies that took the most device time and the operators and CUDA runtime calls that took
    the most host time, per step: where a step's time goes, and whether the host keeps up with the GPU. With ``trace`` set, the
    profiled steps are also written there as a gzipped Chrome trace (open in Perfetto or chrome://tracing).
    """

    COMM = re.compile("nccl|gloo:", re.IGNORECASE)  # how the profiler names NCCL kernels and gloo collectives

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
        with warnings.catch_warnings():
            # torch before 2.12 warns that "the profiler clears events at the end of each cycle" on any start, cycles or
            # not; this profile has no cycles, so the warning is noise in every student's notebook
            warnings.filterwarnings("ignore", message=".*Profiler clears events", category=UserWarning)
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
        # Read from the trace that the profiler's own library writes, not from torch's Python view of the events
        # (prof.events(), key_averages()): that one builds an object per event, seconds for a step of a small model
        # and tens of seconds for a large one, at every run's end.
        with tempfile.TemporaryDirectory() as folder:
            plain = Path(folder) / "trace.json"
            prof.export_chrome_trace(str(plain))
            if self.trace is not None:
                self.trace.parent.mkdir(parents=True, exist_ok=True)
                with plain.open("rb") as src, gzip.open(self.trace, "wb", compresslevel=1) as dst:
                    shutil.copyfileobj(src, dst)
            events = [e for e in json.loads(plain.read_bytes())["traceEvents"] if e.get("ph") == "X"]
        device, host = device_times(events), host_self_times(events)
        if self.device.type == "cuda":
            comm = sum(us for name, us in device.items() if self._is_comm(name))
            compute = sum(device.values()) - comm
        else:  # gloo's collectives from start to end (their own threads do the work); the operators' own time
            comm = sum(e["dur"] for e in events if e.get("cat") in HOST_WORK and self._is_comm(e["name"]))
            compute = sum(us for name, us in host.items() if name.startswith("aten::"))
        # where a step's time goes, and whether the host keeps up with the GPU: the kernels and copies that took the
        # most device time, the operators and CUDA calls that took the most host time (their own, not their callees')
        calls = collections.Counter(e["name"] for e in events if e.get("cat") in DEVICE_WORK + HOST_WORK)
        top = dict.fromkeys(sorted(device, key=device.get, reverse=True)[:15] + sorted(host, key=host.get, reverse=True)[:15])
        self.top_ops = sorted(({"op": name, "calls_per_step": calls[name] / n, "device_ms_per_step": device.get(name, 0.0) / n / 1e3,
                                "cpu_ms_per_step": host.get(name, 0.0) / n / 1e3} for name in top),
                              key=lambda o: (o["device_ms_per_step"], o["cpu_ms_per_step"]), reverse=True)
        self._result = {"comm_s": comm / n / 1e6, "compute_s": compute / n / 1e6, "profiled_step_s": wall / n,
                        "profiled_steps": n}

    def _is_comm(self, name: str) -> bool:
        return self.COMM.search(name) is not None

    def summary(self) -> dict[str, float]:
        return dict(self._result)


DEVICE_WORK = ("kernel", "gpu_memcpy", "gpu_memset")  # a trace's events of work on the GPU
HOST_WORK = ("cpu_op", "user_annotation", "cuda_runtime", "cuda_driver")  # and on the host, nested on each thread


def device_times(events: list[dict]) -> dict[str, float]:
    """Microseconds on the GPU by kernel or copy name."""
    spent: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") in DEVICE_WORK:
            spent[e["name"]] += e["dur"]
    return dict(spent)


def host_self_times(events: list[dict]) -> dict[str, float]:
    """Microseconds on the host by operator or CUDA call, each without the calls made inside it: the events of one
    thread nest (a call lies within its caller), so each one's time less its direct callees' is its own."""
    threads: dict[tuple, list[dict]] = collections.defaultdict(list)
    for e in events:
        if e.get("cat") in HOST_WORK:
            threads[e["pid"], e["tid"]].append(e)
    own: collections.Counter = collections.Counter()
    for calls in threads.values():
        calls.sort(key=lambda e: (e["ts"], -e["dur"]))  # a caller before the calls it makes
        open_calls: list[dict] = []
        for e in calls:
            while open_calls and open_calls[-1]["ts"] + open_calls[-1]["dur"] <= e["ts"]:
                open_calls.pop()
            if open_calls:
                own[open_calls[-1]["name"]] -= e["dur"]
            own[e["name"]] += e["dur"]
            open_calls.append(e)
    return dict(own)
