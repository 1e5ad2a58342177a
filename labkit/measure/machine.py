"""Where a run ran (device, driver, versions, host, SLURM job) and the GPU's peak for MFU."""
from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import socket
import time

import torch

from labkit.config import Config
from labkit.precision import PRECISIONS
from labkit.preflight import uses_cuda

try:  # nvidia-ml-py: the driver version
    import pynvml
except ImportError:  # pragma: no cover - declared dependency, but keep the kit importable
    pynvml = None

# Dense (no sparsity) peak TFLOP/s by the matrix units' number format, from the vendors' datasheets, for MFU.
PEAK_TFLOPS = {
    "H100": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "H200": {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
    "V100": {"bf16": 0.0, "fp16": 125.0, "tf32": 0.0, "fp32": 15.7},
}


def peak_tflops(device_name: str, precision: str) -> float | None:
    """The GPU's dense peak for the format its matrix units run ``precision`` in, or None if unknown."""
    unit = PRECISIONS[precision].matmul
    for name, peaks in PEAK_TFLOPS.items():
        if name in device_name:
            return peaks.get(unit) or None
    return None


def environment(device: torch.device) -> dict[str, str | int | None]:
    """Where a run ran: device, driver, CUDA and library versions, host, SLURM job."""
    env: dict[str, str | int | None] = {
        "device": "cpu",
        "device_name": platform.processor() or platform.machine(),
        "device_count": 1,
        "host": socket.gethostname(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": importlib.metadata.version("transformers"),  # read, not imported: a second or more
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


def environment_of(cfg: Config) -> dict[str, str | int | None]:
    """``environment`` of the device a run of ``cfg`` uses, with ``device_count`` the devices it takes part on:
    every rank's GPU over all nodes (processes, on a CPU), times a layer-split model's GPUs."""
    cuda = uses_cuda(cfg)
    t = cfg.train
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    env = environment(device)
    env["device_count"] = t.devices * (t.num_nodes if cuda else 1) * cfg.model.split_devices
    return env
