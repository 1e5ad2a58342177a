"""Step timing that never stalls the GPU: CUDA events on a GPU, host clocks on a CPU.

On CUDA each step's phases are bracketed with events, which the GPU stamps when it reaches them; they
are read only once the GPU has passed them (``Event.query``), so timing adds no synchronisation. On the
CPU work is synchronous and host clocks suffice.
"""
from __future__ import annotations

import statistics
import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Per-step times, in seconds: the whole step, the loader's share and the device's share.

    ``step`` runs from the end of the previous step to the end of this one. ``data`` is host time
    blocked on the loader. ``fwd_bwd`` and ``optimizer`` are device time of those phases (CUDA
    events on a GPU). Whatever of the step is neither is time the device waited: for input, the
    host-to-device copy, or the Python that launches kernels (``wait``).
    """

    PHASES = ("data", "fwd_bwd", "optimizer", "wait", "step")
    POINTS = ("start", "backward_done", "end")

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        # One entry a step; "steady" marks the steps inside the steady-state window (the record keeps it,
        # so the step-time spread on the report reads the same steps as the summary).
        self.steps: list[dict[str, float | bool]] = []
        self._marks: dict[str, object] = {}
        self._pending: list[tuple] = []
        self._last_end = None

    def mark(self, point: str) -> None:
        """Stamp 'start' (the step's first forward), 'backward_done' (its last backward) or 'end'."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks[point] = event
        else:
            self._marks[point] = time.perf_counter()

    def end_step(self, data_s: float, steady: bool) -> None:
        """Close a step whose loader time was ``data_s``; ``steady``: it counts in the summary."""
        self.mark("end")
        start, mid, end = (self._marks[p] for p in self.POINTS)
        self._pending.append((data_s, self._last_end, start, mid, end, steady))
        self._last_end = end
        self._resolve(wait=False)

    def flush(self) -> None:
        self._resolve(wait=True)

    def _resolve(self, wait: bool) -> None:
        while self._pending:
            data, previous, start, mid, end, steady = self._pending[0]
            if self.cuda:
                if not wait and not end.query():
                    return  # the GPU has not got there yet: read it at a later step
                end.synchronize()
                elapsed = lambda a, b: a.elapsed_time(b) / 1e3  # noqa: E731
            else:
                elapsed = lambda a, b: b - a  # noqa: E731
            self._pending.pop(0)
            fwd_bwd, opt = elapsed(start, mid), elapsed(mid, end)
            step = elapsed(previous, end) if previous is not None else data + elapsed(start, end)
            self.steps.append({"data": data, "fwd_bwd": fwd_bwd, "optimizer": opt,
                               "wait": max(0.0, step - fwd_bwd - opt), "step": step, "steady": steady})

    def summary(self) -> dict[str, float]:
        """Median seconds per phase over the steady-state steps (all steps where none was steady)."""
        self.flush()
        steady = [s for s in self.steps if s["steady"]] or self.steps
        if not steady:
            return {}
        return {f"{p}_s": statistics.median(s[p] for s in steady) for p in self.PHASES}
