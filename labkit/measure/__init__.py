"""Measurement: what the training loop measures (through one ``Meter``) and where a run ran.

    meter.py        Meter: the loop's one measuring object (phases, steady-state window, summary)
    timers.py       StepTimer: per-step phase times from CUDA events, read without stalling the GPU
    memory.py       peak memory, the first step's memory breakdown, what parameter counts predict
    profiler.py     CommProfiler: compute vs communication, top operators, a Chrome trace of a few steps
    sampler.py      GPUSampler: utilisation, power, temperature and clock over time (NVML)
    machine.py      device, driver, versions, host; the GPU's peak FLOP/s for MFU
    activations.py  output_absmax: the activations' range (does fp16 overflow?)
    progress.py     progress bars
"""
from typing import Any

from labkit.measure.activations import output_absmax
from labkit.measure.machine import PEAK_TFLOPS, environment, environment_of, peak_tflops
from labkit.measure.memory import MemoryProbe, computed_memory_gb, devices_of, memory_gb, optimizer_states, reset_peak_memory
from labkit.measure.profiler import CommProfiler
from labkit.measure.progress import progress_bar
from labkit.measure.sampler import GPUSampler
from labkit.measure.timers import StepTimer, synchronize

__all__ = ["Meter", "StepTimer", "MemoryProbe", "CommProfiler", "GPUSampler", "PEAK_TFLOPS", "computed_memory_gb",
           "devices_of", "environment", "environment_of", "memory_gb", "nvtx_range", "optimizer_states", "output_absmax", "peak_tflops",
           "progress_bar", "reset_peak_memory", "synchronize"]


def __getattr__(name: str) -> Any:
    # The Meter is imported where a process trains: it brings in Lightning, which a notebook that only launches
    # training processes (DDP, FSDP) and reads their record back would import for nothing, a few seconds a run.
    if name in ("Meter", "nvtx_range"):
        from labkit.measure import meter

        return getattr(meter, name)
    raise AttributeError(f"module 'labkit.measure' has no attribute {name!r}")
