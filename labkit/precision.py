"""``train.precision``, decoded once: what Lightning Fabric, autocast, the matrix units and the tables make of it."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    fabric: str  # Lightning Fabric's precision setting
    autocast: torch.dtype | None  # the dtype mixed precision runs matrix products in; None: no autocast
    matmul: str  # the format the matrix units compute in (labkit.measure.PEAK_TFLOPS's key)
    half: bool  # activations held in 16 bits
    label: str  # how tables and plots name it

    def autocast_on(self, device: torch.device) -> torch.autocast:
        """The forward's autocast on ``device`` as training runs it (disabled without mixed precision): for work
        done on the model outside Fabric's wrapper, such as generation."""
        return torch.autocast(device.type, dtype=self.autocast or torch.float32, enabled=self.autocast is not None)


PRECISIONS = {
    # TF32 is a matmul setting, not a Fabric precision: Fabric runs fp32 and labkit.train.make_fabric lets the
    # matrix units round inputs to TF32.
    "32": Precision("32-true", None, "fp32", False, "fp32"),
    "tf32": Precision("32-true", None, "tf32", False, "tf32"),
    "16-mixed": Precision("16-mixed", torch.float16, "fp16", True, "fp16"),
    "bf16-mixed": Precision("bf16-mixed", torch.bfloat16, "bf16", True, "bf16"),
    "bf16-true": Precision("bf16-true", None, "bf16", True, "bf16 (weights too)"),
}
