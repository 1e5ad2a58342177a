"""The timing both bare loops share: warm up, then time steps between two CUDA synchronisations."""
from __future__ import annotations

import time
from collections.abc import Callable

import torch


def time_steps(step: Callable[[int], None], warmup: int, steps: int) -> tuple[float, float]:
    """Seconds per step after ``warmup`` steps, and peak allocated GB over the timed steps."""
    for i in range(warmup):
        step(i)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for i in range(steps):
        step(i)
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, torch.cuda.max_memory_allocated() / 1e9
