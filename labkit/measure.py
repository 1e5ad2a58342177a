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
from typing import Iterator, Sequence

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
    """Per-step times, in seconds: the whole step, the loader's share and the GPU's share.

    ``step`` runs from the end of the previous step to the end of this one. ``data`` is host time
    blocked on the loader. ``fwd_bwd`` and ``optimizer`` are device time of those phases (CUDA
    events on a GPU). Whatever of the step is neither is time the device waited: for input, the
    host-to-device copy, or the Python that launches kernels (``wait``).
    """

    PHASES = ("data", "fwd_bwd", "optimizer", "wait", "step")

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.steps: list[dict[str, float]] = []
        self._pending: list[tuple] = []
        self._last_end = None

    @contextlib.contextmanager
    def data(self) -> Iterator[None]:
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
            self._pending.append((self._data, self._last_end, self._start, self._backward_done, self._end))
            self._last_end = self._end
            # Events are read one step late, when they have long completed: timing never stalls the GPU.
            self._resolve(keep=1 if self.cuda else 0)

    def flush(self) -> None:
        self._resolve(keep=0)

    def _resolve(self, keep: int) -> None:
        while len(self._pending) > keep:
            data, previous, start, mid, end = self._pending.pop(0)
            if self.cuda:
                end.synchronize()
                elapsed = lambda a, b: a.elapsed_time(b) / 1e3  # noqa: E731
            else:
                elapsed = lambda a, b: b - a  # noqa: E731
            fwd_bwd, opt = elapsed(start, mid), elapsed(mid, end)
            step = elapsed(previous, end) if previous is not None else data + elapsed(start, end)
            self.steps.append({"data": data, "fwd_bwd": fwd_bwd, "optimizer": opt,
                               "wait": max(0.0, step - fwd_bwd - opt), "step": step})

    def summary(self, skip: int) -> dict[str, float]:
        """Median seconds per phase over the steps after ``skip`` warm-up steps."""
        self.flush()
        steady = self.steps[skip:] or self.steps
        if not steady:
            return {}
        return {f"{p}_s": statistics.median(s[p] for s in steady) for p in self.PHASES}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def devices_of(model: torch.nn.Module, device: torch.device) -> list[torch.device]:
    """The loop's device, then any other device the model's parameters live on (a layer-split model's GPUs)."""
    return [device] + sorted({p.device for p in model.parameters()} - {device}, key=str)


def reset_peak_memory(*devices: torch.device) -> None:
    for device in devices:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)


def memory_gb(*devices: torch.device) -> dict[str, float]:
    """Peak allocated and reserved memory since the last reset, in GB, of the fullest device (empty on the
    CPU); with several devices (a layer-split model) also each one's peak, as peak_allocated_gb_gpu<i>."""
    cuda = [d for d in devices if d.type == "cuda"]
    if not cuda:
        return {}
    allocated = [torch.cuda.max_memory_allocated(d) / 1e9 for d in cuda]
    out = {"peak_allocated_gb": max(allocated),
           "peak_reserved_gb": max(torch.cuda.max_memory_reserved(d) / 1e9 for d in cuda)}
    if len(cuda) > 1:
        out.update({f"peak_allocated_gb_gpu{d.index}": gb for d, gb in zip(cuda, allocated)})
    return out


class MemoryProbe:
    """Allocated memory of the loop's device at the boundaries of the first training step (CUDA only).

    The loop calls ``read(point)`` at 'setup' (model on the device), 'start' (before the first forward),
    'forward', 'backward' and 'optimizer' (after the step, before the gradients are dropped); only the
    first reading of each point counts, so the calls cost nothing after the first step. The differences
    are what each phase left allocated: the weights, the activations the forward keeps for the backward,
    the gradients (the backward frees the activations), the optimizer state (created by its first step).
    """

    def __init__(self, device: torch.device):
        self.device, self.readings = device, {}
        self.read("before_setup")

    def read(self, point: str) -> None:
        # memory_allocated is the caching allocator's host-side count: no synchronisation needed.
        if self.device.type == "cuda" and point not in self.readings:
            self.readings[point] = torch.cuda.memory_allocated(self.device)

    def measured_gb(self) -> dict[str, float]:
        r = self.readings
        if len(r) < 6:
            return {}
        return {"weights_measured_gb": (r["setup"] - r["before_setup"]) / 1e9,
                "gradients_measured_gb": (r["backward"] - r["start"]) / 1e9,
                "optimizer_measured_gb": (r["optimizer"] - r["backward"]) / 1e9,
                "activations_measured_gb": (r["forward"] - r["start"]) / 1e9}


def optimizer_states(optimizer: torch.optim.Optimizer) -> int | None:
    """State tensors the optimizer keeps per trainable parameter, each of the parameter's size and dtype."""
    group = optimizer.param_groups[0]
    if isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        return 3 if group.get("amsgrad") else 2  # first and second moments (and their running max)
    if isinstance(optimizer, torch.optim.SGD):
        return 1 if group["momentum"] else 0  # the momentum buffer
    return None


def computed_memory_gb(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """What parameter counts and dtypes predict: every weight, one gradient per trainable weight (in its
    dtype), and the optimizer's state per trainable weight. Activations depend on batch and sequence, not
    on the parameters: only a measurement gives them."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    out = {"weights_computed_gb": weights / 1e9, "gradients_computed_gb": trainable / 1e9}
    states = optimizer_states(optimizer)
    if states is not None:
        out["optimizer_computed_gb"] = states * trainable / 1e9
    return out


class CommProfiler:
    """Compute vs communication over a few steps, from torch.profiler (``measure.profile_steps``).

    GPU: time of NCCL kernels (comm_s) vs all other GPU work, kernels and copies (compute_s). DDP's
    all-reduce overlaps the backward pass, so the two can add up to more than a step. CPU (gloo): time
    inside gloo collectives, which run on gloo's own threads, vs operator time outside them. All are
    seconds per step of this rank, with the profiled steps' wall time (slower than unprofiled steps)
    to compare them with; the summary is empty when off or when no step was profiled. ``top_ops`` keeps
    the operators and CUDA runtime calls that took the most device time or the most host time, per step:
    where a step's time goes, and whether the host keeps up with the GPU.
    """

    COMM = ("nccl", "gloo:")  # how the profiler names NCCL kernels and gloo collectives

    def __init__(self, device: torch.device, steps: int):
        self.device, self.steps, self._prof, self._result = device, steps, None, {}
        self.top_ops: list[dict[str, float | str]] = []

    def start(self, step: int) -> None:
        if self.steps and self._prof is None and not self._result:
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
        n = step - self._from
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


@contextlib.contextmanager
def output_absmax(modules: dict[str, torch.nn.Module]) -> Iterator[dict[str, float]]:
    """Largest |output| of each named module while the block runs (the first tensor of a tuple output),
    inf or nan where it overflowed: what decides whether a precision's range suffices (fp16: 65,504)."""
    peaks: dict[str, float] = {}

    def watch(name: str):
        def hook(module, args, output) -> None:
            out = output[0] if isinstance(output, (tuple, list)) else output
            if isinstance(out, torch.Tensor) and out.numel():
                value = out.detach().abs().max().float().item()
                previous = peaks.get(name, value)
                peaks[name] = value if value != value or value > previous else previous  # a nan stays nan

        return hook

    handles = [module.register_forward_hook(watch(name)) for name, module in modules.items()]
    try:
        yield peaks
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class GPUSampler:
    """Samples GPU utilisation, memory, temperature, power and SM clock on a background thread.

    A no-op without an NVIDIA GPU or NVML, so the same code runs in CPU smoke runs. Sample times ``t`` are
    seconds since ``t0`` (a ``time.perf_counter`` reading), so a summary can keep to a window of the run.
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
