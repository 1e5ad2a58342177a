"""The one object the training loop measures through.

The loop marks the parts of a step (``with meter.phase("forward"):``), counts each micro-batch
(``meter.count(batch, loss)``), ends each optimizer step (``meter.step_end(step, epoch)``) and wraps each
epoch (``with meter.epoch():``) and the whole of training (``with meter.training(...):``). The Meter owns
the rest: step timers, memory probes, the profiler, NVTX ranges, the GPU sampler, the steady-state window,
the loss curve and progress bar, and the summary the results record keeps.

No instrument may change the figure it measures (each well under 2% of a step):
* step phases are CUDA events, read once the GPU has passed them; the only waits for the GPU are at the
  edges of the steady-state window and of an epoch;
* the logged loss is copied to the host without waiting, and shown once it has arrived;
* memory readings are the allocator's host-side counters;
* the profiled steps (``measure.profile_steps``) are the last steps of training, after the steady-state
  window: neither the profiler nor what it leaves behind (its buffers, its CUPTI callbacks) touches a
  measured step;
* NVTX ranges are emitted only with ``measure.nvtx`` on and a tool attached that records them (Nsight
  Systems sets NVTX_INJECTION64_PATH in the processes it profiles);
* Python's garbage collections are timed by the collector's own callback, two clock readings a collection.
"""
from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from lightning.fabric.strategies import DataParallelStrategy

from labkit.config import Config
from labkit.measure.machine import peak_tflops
from labkit.measure.memory import (MemoryProbe, computed_memory_gb, devices_of, max_memory, memory_gb,
                                   reset_peak_memory)
from labkit.measure.profiler import CommProfiler
from labkit.measure.progress import progress_bar
from labkit.measure.sampler import GPUSampler
from labkit.measure.timers import StepTimer, synchronize
from labkit.tasks import batch_size_of, real_tokens_of

try:
    import nvtx as _nvtx
except ImportError:  # pragma: no cover - declared dependency, but keep the kit importable
    _nvtx = None


def nvtx_range(name: str, enabled: bool = True):
    """An NVTX range in the 'labkit' domain (shown by Nsight Systems), or nothing when not enabled."""
    if not enabled or _nvtx is None:
        return contextlib.nullcontext()
    return _nvtx.annotate(name, domain="labkit")


def compilations() -> int:
    """Frames torch.compile has compiled in this process so far; each recompilation (a new shape, a failed guard) counts."""
    from torch._dynamo.utils import counters

    return counters["frames"]["ok"]


def nvtx_recorded() -> bool:
    """Whether a tool that records NVTX ranges is attached to this process."""
    return bool(os.environ.get("NVTX_INJECTION64_PATH"))


def devices_of_process(fabric: Fabric, model: torch.nn.Module) -> list[torch.device]:
    """The devices this process drives: DataParallel's GPUs (it copies the model to each every step),
    a layer-split model's GPUs, or its one device."""
    if isinstance(fabric.strategy, DataParallelStrategy):
        return list(fabric.strategy.parallel_devices)
    return devices_of(model, fabric.device)


class CollectorPauses:
    """Python's garbage collections while it is registered (gc.callbacks), each kept as (start, seconds, generation):
    host time in which no step is launched. ``full``: how many collected the oldest generation (2)."""

    def __init__(self) -> None:
        self.pauses: list[tuple[float, float, int]] = []
        self._start = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.append((self._start, time.perf_counter() - self._start, info["generation"]))

    @property
    def full(self) -> int:
        return sum(generation == 2 for _, _, generation in self.pauses)

    def seconds(self, windows: list[tuple[float, float]] | None = None) -> float:
        """Seconds collecting, all of them or only those of collections that began inside ``windows``."""
        return sum(took for start, took, _ in self.pauses
                   if windows is None or any(a <= start < b for a, b in windows))


class Meter:
    """Everything the training loop measures; ``result()`` builds the record's summary and curves.

    Steps ``warmup_steps + 1`` to ``total - profile_steps`` form the steady state (paused around validation):
    throughput, the step split, peak memory and the GPU's means come from it alone. The last ``profile_steps``
    steps run under torch.profiler (a Chrome trace of them goes to ``trace`` where given).
    """

    PHASES = ("setup", "data", "forward", "backward", "optimizer")

    def __init__(self, cfg: Config, fabric: Fabric, trace: Path | None = None):
        self.cfg, self.fabric, self.device = cfg, fabric, fabric.device
        self.memory = MemoryProbe(self.device)  # its first reading: before the model is on the device
        self.timer = StepTimer(self.device)
        self.profiler = CommProfiler(self.device, trace)
        self.nvtx = cfg.measure.nvtx and nvtx_recorded()
        self.curves: dict[str, list] = {"train_loss": [], "val_loss": [], "epoch_time_s": []}
        self.step = self.samples = self.steady_samples = 0
        self._paused_s = 0.0  # time inside the current epoch that is not training (validation, the trace written out)
        # With model.compile: compilations during training and inside the steady state, where each one's seconds
        # land in the measured throughput (a shape first met late, a guard that fails).
        self.compiling = cfg.model.compile
        self._compiled = self._window_compiled = self.steady_compiled = 0
        self.train_time = self.steady_seconds = 0.0
        self.windows: list[tuple[float, float]] = []  # perf_counter (start, stop) of each steady stretch
        self._window: tuple[float, int] | None = None  # (start, samples) of the open stretch
        self._peaks: dict[str, float] = {}
        self._data = 0.0  # loader time of the current step
        self._in_step = False
        self._running = torch.zeros((), device=self.device)  # loss summed since the last log, on the device
        self._tokens = torch.zeros((), device=self.device, dtype=torch.long)
        self._since_log = 0
        self._losses: list[tuple] = []  # logged losses on their way to the host
        self.clock: dict[str, float] = {}  # when training started, ended its first step, ended (results.TIME_SPLIT)

    # ---- what the loop calls

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Around one part of the work: 'setup', 'data', 'forward', 'backward' or 'optimizer'."""
        if name not in self.PHASES:
            raise ValueError(f"unknown phase {name!r}: expected one of {self.PHASES}")
        start = time.perf_counter()
        if name == "forward" and not self._in_step:  # a step starts with its first micro-batch's forward
            self._in_step = True
            self.timer.mark("start")
            self.memory.read("start")
        elif name == "optimizer":
            self.timer.mark("backward_done")
        # the profiled steps' trace marks the phases too (labkit.timeline draws them); unprofiled steps pay nothing
        traced = torch.profiler.record_function(name) if self.profiler.running else contextlib.nullcontext()
        with nvtx_range(name, self.nvtx), traced:
            yield
        if name == "data":
            self._data += time.perf_counter() - start
        else:
            self.memory.read(name)

    def count(self, batch: Any, loss: torch.Tensor) -> None:
        """After each micro-batch's backward: its samples, real tokens and loss (kept on the device)."""
        self._running += loss.detach()
        self.samples += batch_size_of(batch)
        tokens = real_tokens_of(batch)
        if tokens is not None:
            self._tokens += tokens

    def step_end(self, step: int, epoch: float) -> None:
        """After optimizer step ``step``; ``epoch``: epochs done so far (fractional)."""
        self.timer.end_step(self._data, steady=self.steady_from < step <= self.steady_until)
        self._data, self._in_step, self.step = 0.0, False, step
        self._since_log += 1
        if step == 1:
            self.clock["first_step"] = time.time()  # on the host: the step's work was issued, the device may lag
        if step == self.steady_from:
            self._open_window()  # the steady state begins after compilation and allocator warm-up
        if step == self.steady_until and step < self.total_steps:
            self._close_window()
            self.profiler.start(step)
        if step == self.total_steps:
            self._stop_profiler()
        if step % self.cfg.train.log_every == 0 or step == self.total_steps:
            self._log_loss(step, epoch)
        self.bar.update(1)

    @contextlib.contextmanager
    def training(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, total_steps: int) -> Iterator["Meter"]:
        """Around all of training: the GPU sampler and the progress bar run; the window's bounds are set."""
        m = self.cfg.measure
        self.clock["training_started"] = time.time()
        self.model, self.optimizer, self.total_steps = model, optimizer, total_steps
        self.devices = devices_of_process(self.fabric, model)  # several under DataParallel or a layer-split model
        # The profiled steps come last, and only where the steady state keeps at least one step.
        profiled = m.profile_steps if total_steps - m.profile_steps > m.warmup_steps else 0
        self.steady_from, self.steady_until = m.warmup_steps, total_steps - profiled
        reset_peak_memory(*self.devices)
        if self.compiling:
            self._compiled = compilations()
        self.bar = progress_bar(total=total_steps, desc=self.cfg.task, unit="step", disable=self.fabric.global_rank != 0)
        self._shown = (time.perf_counter(), 0)
        self.collector = CollectorPauses()
        gc.callbacks.append(self.collector)
        with GPUSampler(m.gpu_sample_interval, device_index=[d.index or 0 for d in self.devices]) as self.sampler:
            try:
                yield self
            finally:
                gc.callbacks.remove(self.collector)
                self.profiler.stop(self.step)
                self._drain_losses(wait=True)
                self.bar.close()
                self.clock["training_ended"] = time.time()

    @contextlib.contextmanager
    def epoch(self) -> Iterator[None]:
        """Around one epoch's training steps (validation follows, outside the steady state)."""
        start, self._paused_s = time.perf_counter(), 0.0
        if self.steady_from <= self.step < self.steady_until:
            self._open_window()
        yield
        synchronize(self.device)  # the epoch's time is the device's
        self._close_window()
        self._stop_profiler()  # a validation pass is not a training step
        self.curves["epoch_time_s"].append(time.perf_counter() - start - self._paused_s)
        self.train_time += self.curves["epoch_time_s"][-1]

    @contextlib.contextmanager
    def validating(self) -> Iterator[None]:
        """Around a validation inside an epoch (train.eval_every_steps): outside the steady state and the epoch's time."""
        synchronize(self.device)
        self._close_window()
        start = time.perf_counter()
        yield
        synchronize(self.device)
        self._paused_s += time.perf_counter() - start
        if self.steady_from <= self.step < self.steady_until:
            self._open_window()

    def validated(self, epoch: float, metrics: dict[str, float]) -> None:
        """Keep a validation's loss and task metrics (after ``epoch`` epochs)."""
        self.curves["val_loss"].append([self.step, epoch, metrics.pop("val_loss")])
        self.curves.setdefault("val_metrics", []).append({"step": self.step, "epoch": epoch, **metrics})

    def result(self, flops_per_sample: float | None = None, **known: Any) -> dict[str, dict]:
        """The record's {"summary", "curves", "clock"}; ``known``: figures the loop has (parameter counts, global batch)."""
        world, c = self.fabric.world_size, self.curves
        samples, seconds = (self.steady_samples, self.steady_seconds) if self.steady_seconds else (self.samples, self.train_time)
        losses = c["train_loss"]
        summary: dict[str, Any] = {
            **known,
            "steps": self.step,
            "train_time_s": self.train_time,
            "samples_per_s": world * samples / seconds,
            "steady_state": bool(self.steady_seconds),
            "first_train_loss": losses[0][2] if losses else None,
            "final_train_loss": losses[-1][2] if losses else None,
            "final_val_loss": c["val_loss"][-1][2] if c["val_loss"] else None,
            **(phases := self.timer.summary()),
            **self._each_rank(phases),
            **self._peak_memory(),
            **self.memory.measured_gb(),
            **computed_memory_gb(self.model, self.optimizer),
            **self.profiler.summary(),
            **self.sampler.summary(self.windows),
            "gc_full_collections": self.collector.full,  # during training, validation included
            "gc_pause_s": self.collector.seconds(),
            "gc_steady_pause_s": self.collector.seconds(self.windows),  # inside the steady state's steps
        }
        if self.compiling:
            summary.update(compilations=compilations() - self._compiled, compilations_in_steady_state=self.steady_compiled)
        total_tokens = self.fabric.all_reduce(self._tokens.float(), reduce_op="sum").item()
        if total_tokens:
            summary["tokens_per_s"] = summary["samples_per_s"] * total_tokens / (self.samples * world)
        if "val_metrics" in c:
            summary.update({k: v for k, v in c["val_metrics"][-1].items() if k not in ("step", "epoch")})
        if flops_per_sample:
            name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else ""
            peak = peak_tflops(name, self.cfg.train.precision)
            summary["model_tflops_per_s"] = flops_per_sample * summary["samples_per_s"] / 1e12
            if peak:
                summary["mfu"] = summary["model_tflops_per_s"] / (peak * world * len(self.devices))
        curves = {**c, "gpu": self.sampler.samples, "steps": self.timer.steps}
        if self.profiler.top_ops:
            curves["top_ops"] = self.profiler.top_ops
        return {"summary": summary, "curves": curves, "clock": self.clock}

    # ---- inside

    def _stop_profiler(self) -> None:
        """End the profiled steps. Reading and writing out the trace is not training: the epoch's time leaves it out."""
        if self.profiler.running:
            synchronize(self.device)  # the profiled steps themselves are the epoch's
            start = time.perf_counter()
            self.profiler.stop(self.step)
            self._paused_s += time.perf_counter() - start

    def _open_window(self) -> None:
        if self._window is None:
            synchronize(self.device)
            # The steady state's own peak: cuDNN's algorithm search, compilation and validation allocate
            # scratch space that training never needs again. Not under CUDA graphs: they take their memory
            # while being recorded, before the steady state, and replays allocate nothing new, so the steady
            # state's peak would leave out the memory the graphs hold.
            if not self.cfg.model.cuda_graphs:
                reset_peak_memory(*self.devices)
            self._window_compiled = compilations() if self.compiling else 0
            self._window = (time.perf_counter(), self.samples)

    def _close_window(self) -> None:
        if self._window is not None:
            synchronize(self.device)
            (start, samples), now = self._window, time.perf_counter()
            self.windows.append((start, now))
            self.steady_seconds += now - start
            self.steady_samples += self.samples - samples
            self._peaks = max_memory(self._peaks, memory_gb(*self.devices))
            if self.compiling:
                self.steady_compiled += compilations() - self._window_compiled
            self._window = None

    def _each_rank(self, mine: dict[str, float]) -> dict[str, float]:
        """With several ranks, each rank's own median step split ``mine`` gathered (data_s_rank<r>, wait_s_rank<r>, ...):
        the summary's figures are rank 0's, and under DDP every rank waits for the slowest at each all-reduce, so a
        rank that lags shows only here."""
        if self.fabric.world_size == 1:
            return {}
        medians = torch.tensor([mine.get(f"{p}_s", float("nan")) for p in StepTimer.PHASES], device=self.device)
        gathered = self.fabric.all_gather(medians).reshape(self.fabric.world_size, -1).tolist()
        return {f"{p}_s_rank{r}": v for r, row in enumerate(gathered) for p, v in zip(StepTimer.PHASES, row)}

    def _peak_memory(self) -> dict[str, float]:
        """Peak memory of the fullest GPU over the steady state (the whole run where it had none), and with
        several ranks each rank's peak (peak_allocated_gb_gpu<rank>)."""
        memory = dict(self._peaks) or memory_gb(*self.devices)
        if self.fabric.world_size > 1 and memory:
            peak = torch.tensor(memory["peak_allocated_gb"], device=self.device)
            peaks = self.fabric.all_gather(peak).flatten().tolist()
            memory.update(peak_allocated_gb=max(peaks), **{f"peak_allocated_gb_gpu{r}": gb for r, gb in enumerate(peaks)})
        return memory

    def _log_loss(self, step: int, epoch: float) -> None:
        mean = self.fabric.all_reduce(self._running, reduce_op="mean") / self._since_log
        self._running, self._since_log = torch.zeros_like(self._running), 0
        # To the host without waiting for the GPU (pinned memory, asynchronous); kept when it has arrived.
        host = mean.to("cpu", non_blocking=True)
        arrived = None
        if mean.is_cuda:
            arrived = torch.cuda.Event()
            arrived.record()
        self._losses.append((step, epoch, host, arrived))
        self._drain_losses(wait=False)

    def _drain_losses(self, wait: bool) -> None:
        while self._losses:
            step, epoch, host, arrived = self._losses[0]
            if arrived is not None:
                if not wait and not arrived.query():
                    return
                arrived.synchronize()
            self._losses.pop(0)
            value = host.item()
            self.curves["train_loss"].append([step, epoch, value])
            (shown_at, shown_samples), now = self._shown, time.perf_counter()
            rate = self.fabric.world_size * (self.samples - shown_samples) / max(now - shown_at, 1e-9)
            self._shown = (now, self.samples)
            self.bar.set_postfix({"epoch": f"{epoch:.2f}", "loss": f"{value:.3f}", "samples/s": f"{rate:.1f}"},
                                 refresh=False)
