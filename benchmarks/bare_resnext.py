"""A bare PyTorch loop for ResNeXt29 on CIFAR-sized input: no labkit loop, no data loader, no instrumentation.

The yardstick for notebooks 02-04 on a GPU: the same architecture (labkit's model definition), batch
and optimizer, synthetic images already on the GPU. Prints one JSON line.

    python benchmarks/bare_resnext.py --precision 32
    python benchmarks/bare_resnext.py --precision bf16 --channels-last
    python benchmarks/bare_resnext.py --precision 32 --checkpointing
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from labkit.models import apply_checkpointing
from labkit.models.resnext import PRESETS, ResNeXt
from timing import time_steps  # benchmarks/ is on sys.path when a script here runs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--precision", choices=["32", "tf32", "bf16"], default="32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--preset", default="resnext29_2x64d")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.benchmark = True
    device = torch.device("cuda")
    model = ResNeXt(**PRESETS[args.preset]).to(device)
    if args.checkpointing:
        apply_checkpointing(model.blocks, "full")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.randn(args.batch, 3, 32, 32, generator=g).to(device, memory_format=memory_format),
                torch.randint(0, 10, (args.batch,), generator=g).to(device)) for _ in range(4)]

    def step(i: int) -> None:
        x, y = batches[i % len(batches)]
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step_s, peak_gb = time_steps(step, args.warmup, args.steps)
    print(json.dumps({
        "bench": "bare_resnext", "device": torch.cuda.get_device_name(), "preset": args.preset,
        "precision": args.precision, "channels_last": args.channels_last, "checkpointing": args.checkpointing,
        "batch": args.batch, "step_ms": round(1e3 * step_s, 2),
        "images_per_s": round(args.batch / step_s, 1),
        "peak_allocated_gb": round(peak_gb, 2),
    }))


if __name__ == "__main__":
    main()
