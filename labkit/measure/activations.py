"""The range of a model's activations: whether a 16-bit format's range suffices."""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch


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
