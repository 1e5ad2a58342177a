"""A background GPU sampler: utilisation, memory, temperature, power and SM clock over time (NVML)."""
from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

try:  # nvidia-ml-py
    import pynvml
except ImportError:  # pragma: no cover - declared dependency, but keep the kit importable
    pynvml = None


@dataclass
class GPUSampler:
    """Samples GPU utilisation, memory, temperature, power and SM clock on a background thread.

    A no-op without an NVIDIA GPU or NVML, so the same code runs in CPU smoke runs. Sample times ``t`` are
    seconds since ``t0`` (a ``time.perf_counter`` reading), so a summary can keep to a window of the run.
    NVML reads counters the driver keeps anyway: sampling costs the GPU nothing.
    """

    interval: float = 0.5
    device_index: int | Sequence[int] = 0  # several: every GPU of a layer-split model; samples carry "gpu"
    samples: list[dict[str, float]] = field(default_factory=list)

    def __enter__(self) -> "GPUSampler":
        self._stop = threading.Event()
        self._thread = None
        if pynvml is None or not torch.cuda.is_available():
            return self
        try:
            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            indices = [self.device_index] if isinstance(self.device_index, int) else list(self.device_index)
            # NVML counts all GPUs of the host; torch counts the visible ones.
            self._handles = [(i, pynvml.nvmlDeviceGetHandleByIndex(int(visible.split(",")[i]) if visible else i))
                             for i in indices]
        except (pynvml.NVMLError, ValueError, IndexError):
            return self
        self.t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for gpu, h in self._handles:
                    util = pynvml.nvmlDeviceGetUtilizationRates(h)
                    self.samples.append({
                        "t": time.perf_counter() - self.t0,
                        "gpu": gpu,
                        "util_pct": float(util.gpu),
                        "mem_used_gb": pynvml.nvmlDeviceGetMemoryInfo(h).used / 1e9,
                        "temp_c": float(pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
                        "power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1e3,
                        # a clock below the card's maximum (power or heat) slows every kernel alike
                        "sm_clock_mhz": float(pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                    })
            except pynvml.NVMLError:
                return
            self._stop.wait(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            pynvml.nvmlShutdown()

    def summary(self, windows: Sequence[tuple[float, float]] = ()) -> dict[str, float]:
        """Means over the samples inside ``windows`` (perf_counter intervals, e.g. the steady state: set-up,
        compilation and validation would pull utilisation down), or over all samples where no sample falls inside."""
        inside = [s for s in self.samples if any(a <= self.t0 + s["t"] <= b for a, b in windows)] or self.samples
        if not inside:
            return {}
        return {
            "gpu_util_mean_pct": statistics.fmean(s["util_pct"] for s in inside),
            "gpu_temp_max_c": max(s["temp_c"] for s in inside),
            "gpu_power_mean_w": statistics.fmean(s["power_w"] for s in inside),
            "gpu_sm_clock_mean_mhz": statistics.fmean(s["sm_clock_mhz"] for s in inside),
        }
