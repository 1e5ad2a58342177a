"""GPU memory: peaks of the devices a process drives, the breakdown of the first step, and what counts predict.

Every reading here is the caching allocator's host-side count: none of them waits for the GPU.
"""
from __future__ import annotations

import torch


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


def max_memory(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Key by key, the larger of two ``memory_gb`` readings (peaks of several stretches of a run)."""
    return {k: max(a.get(k, 0.0), b.get(k, 0.0)) for k in a.keys() | b.keys()}


class MemoryProbe:
    """Allocated memory of the loop's device at the boundaries of the first training step (CUDA only).

    Readings are taken at 'before_setup' (when made), 'setup' (model on the device), 'start' (before the
    first forward), 'forward', 'backward' and 'optimizer' (after the step, before the gradients are dropped);
    only the first reading of each point counts. The differences are what each phase left allocated: the
    weights, the activations the forward keeps for the backward, the gradients (the backward frees the
    activations), the optimizer state (created by its first step).
    """

    def __init__(self, device: torch.device):
        self.device, self.readings = device, {}
        self.read("before_setup")

    def read(self, point: str) -> None:
        if self.device.type == "cuda" and point not in self.readings:
            self.readings[point] = torch.cuda.memory_allocated(self.device)

    def built_on_device(self) -> None:
        """The model was built on the device (its weights drawn there, or placed over several GPUs): no reading was
        taken before its weights arrived, so the weights are not measured."""
        self.readings.pop("before_setup", None)

    def measured_gb(self) -> dict[str, float]:
        r = self.readings
        if not {"start", "forward", "backward", "optimizer"} <= r.keys():
            return {}
        measured = {"gradients_measured_gb": (r["backward"] - r["start"]) / 1e9,
                    "optimizer_measured_gb": (r["optimizer"] - r["backward"]) / 1e9,
                    "activations_measured_gb": (r["forward"] - r["start"]) / 1e9}
        if {"before_setup", "setup"} <= r.keys():
            measured["weights_measured_gb"] = (r["setup"] - r["before_setup"]) / 1e9
        return measured


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
