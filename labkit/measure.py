"""Measurement: step timers, memory, a GPU sampler, NVTX ranges and the environment of a run.

Timing is honest on both devices: on CUDA each step's phases are bracketed with CUDA events
(read one step later, so timing never stalls the GPU) and wall-clock windows are closed with
``torch.cuda.synchronize``; on the CPU work is synchronous and host clocks suffice.
"""
from __future__ import annotations

import contextlib
import os
import platform
import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

try:  # nvidia-ml-py: GPU utilisation, temperature, power
    import pynvml
except ImportError:  # pragma: no cover - declared dependency, but keep the kit importable
    pynvml = None

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover
    _nvtx = None

# Dense (no sparsity) peak TFLOP/s by precision, from the vendors' datasheets, for MFU.
PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "V100": {"bf16": 0.0, "fp16": 125.0, "tf32": 0.0, "fp32": 15.7},
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The GPU's dense peak for the precision its matrix units run at, or None if unknown."""
    unit = {"32": "fp32", "tf32": "tf32", "16-mixed": "fp16", "bf16-mixed": "bf16", "bf16-true": "bf16"}[precision]
    for name, peaks in PEAK_TFLOPS.items():
        if name in device_name:
            return peaks.get(unit) or None
    return None


def nvtx_range(name: str, enabled: bool = True):
    """An NVTX range (shown in Nsight Systems under the 'labkit' domain); free when no profiler runs."""
    if not enabled or _nvtx is None:
        return contextlib.nullcontext()
    return _nvtx.annotate(name, domain="labkit")


class StepTimer:
    """Per-step split into data wait, forward+backward and optimizer time, in seconds."""

    PHASES = ("data", "fwd_bwd", "optimizer")

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[dict[str, float]] = []
        self._pending: list[tuple] = []

    @contextlib.contextmanager
    def data(self) -> Iterator[None]:
        # Data wait is host time: the loop is blocked on the loader (and the host-to-device copy).
        start = time.perf_counter()
        yield
        self._data = time.perf_counter() - start

    def mark(self, point: str) -> None:
        """Record 'start', 'backward_done' or 'end' of a step."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            setattr(self, f"_{point}", event)
        else:
            setattr(self, f"_{point}", time.perf_counter())
        if point == "end":
            self._pending.append((self._data, self._start, self._backward_done, self._end))
            if not self.cuda or len(self._pending) > 1:
                self._resolve(keep=1 if self.cuda else 0)

    def flush(self) -> None:
        self._resolve(keep=0)

    def _resolve(self, keep: int) -> None:
        while len(self._pending) > keep:
            data, start, mid, end = self._pending.pop(0)
            if self.cuda:
                end.synchronize()
                fwd_bwd, opt = start.elapsed_time(mid) / 1e3, mid.elapsed_time(end) / 1e3
            else:
                fwd_bwd, opt = mid - start, end - mid
            self.steps.append({"data": data, "fwd_bwd": fwd_bwd, "optimizer": opt})

    def summary(self, skip: int) -> dict[str, float]:
        """Median seconds per phase over the steps after ``skip`` warm-up steps."""
        self.flush()
        steady = self.steps[skip:] or self.steps
        if not steady:
            return {}
        out = {f"{p}_s": statistics.median(s[p] for s in steady) for p in self.PHASES}
        out["step_s"] = statistics.median(sum(s.values()) for s in steady)
        return out


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def memory_gb(device: torch.device) -> dict[str, float]:
    """Peak allocated and reserved memory since the last reset, in GB (empty on the CPU)."""
    if device.type != "cuda":
        return {}
    return {
        "peak_allocated_gb": torch.cuda.max_memory_allocated(device) / 1e9,
        "peak_reserved_gb": torch.cuda.max_memory_reserved(device) / 1e9,
    }


@dataclass
class GPUSampler:
    """Samples GPU utilisation, memory, temperature and power on a background thread.

    A no-op without an NVIDIA GPU or NVML, so the same code runs in CPU smoke runs.
    """

    interval: float = 0.5
    device_index: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)

    def __enter__(self) -> "GPUSampler":
        self._stop = threading.Event()
        self._thread = None
        if pynvml is None or not torch.cuda.is_available():
            return self
        try:
            pynvml.nvmlInit()
            index = int(os.environ.get("CUDA_VISIBLE_DEVICES", str(self.device_index)).split(",")[self.device_index])
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except (pynvml.NVMLError, ValueError):
            return self
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        h = self._handle
        while not self._stop.is_set():
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(h)
                self.samples.append({
                    "t": time.perf_counter() - self._t0,
                    "util_pct": float(util.gpu),
                    "mem_used_gb": pynvml.nvmlDeviceGetMemoryInfo(h).used / 1e9,
                    "temp_c": float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
                    "power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
                })
            except pynvml.NVMLError:
                return
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            pynvml.nvmlShutdown()

    def summary(self) -> dict[str, float]:
        if not self.samples:
            return {}
        return {
            "gpu_util_mean_pct": statistics.fmean(s["util_pct"] for s in self.samples),
            "gpu_temp_max_c": max(s["temp_c"] for s in self.samples),
            "gpu_power_mean_w": statistics.fmean(s["power_w"] for s in self.samples),
        }


def environment(device: torch.device) -> dict[str, str | int | None]:
    """Where a run ran: device, driver, CUDA and library versions, host, SLURM job."""
    import transformers

    env: dict[str, str | int | None] = {
        "device": "cpu",
        "device_name": platform.processor() or platform.machine(),
        "device_count": 1,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cuda": torch.version.cuda,
        "driver": None,
        "cpu_count": os.cpu_count(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    if device.type == "cuda":
        env.update(device="cuda", device_name=torch.cuda.get_device_name(device), device_count=torch.cuda.device_count())
        if pynvml is not None:
            with contextlib.suppress(pynvml.NVMLError):
                pynvml.nvmlInit()
                env["driver"] = pynvml.nvmlSystemGetDriverVersion()
                pynvml.nvmlShutdown()
    return env
