"""A data set held in GPU memory (``data.on_gpu``), as airbench holds CIFAR-10: a batch is an index into
tensors already on the device, so no step copies its inputs from the host. The only copy is a batch's
indices, from pinned memory and asynchronous: a copy from pageable memory would make the host wait until
the GPU has finished everything queued before it."""
from __future__ import annotations

import os
from typing import Any

import torch


def training_device() -> torch.device:
    """The GPU of this process: each rank's own under torchrun (LOCAL_RANK), else the first."""
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def indices_on(indices: list[int], device: torch.device) -> torch.Tensor:
    """A batch's indices as a tensor on ``device``; to a GPU from pinned memory, without waiting for it."""
    idx = torch.as_tensor(indices)
    if device.type == "cuda":
        idx = idx.pin_memory().to(device, non_blocking=True)
    return idx


def whole_batch(batch: Any) -> Any:
    """collate_fn of a resident data set: its ``__getitems__`` already returns the batch."""
    return batch
