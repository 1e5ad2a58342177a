"""A bare data-parallel loop for BERT QA under torchrun: no labkit loop, no Fabric, no instrumentation.

The yardstick for notebook 05's strategies: the gpu profile's model (BERT-base QA, random weights),
sequence length 384, batch 32 per GPU, bf16 autocast, SDPA attention and AdamW, one process per GPU.

    torchrun --standalone --nproc-per-node 1 benchmarks/bare_distributed.py --strategy none
    torchrun --standalone --nproc-per-node 2 benchmarks/bare_distributed.py --strategy ddp
    torchrun --standalone --nproc-per-node 2 benchmarks/bare_distributed.py --strategy fsdp

``ddp``: DistributedDataParallel, gradients all-reduced in 25 MB buckets during backward, bucket views as
gradients (what labkit sets). ``fsdp``: FSDP2, each encoder layer one ``fully_shard`` unit and the rest the
root; bf16 parameters gathered, gradients reduce-scattered in fp32 (labkit's bf16-mixed policy). ``none``:
the plain model on one GPU. Rank 0 prints one JSON line: samples/s over all ranks, and the largest peak
allocated memory of any rank. ``--batches-from`` trains on the first batches labkit itself would load
(padding and all), so that labkit and this loop differ in the loop only.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist
from torch import nn
from transformers import AutoModelForQuestionAnswering, BertConfig

from bare_bert_qa import labkit_batches  # benchmarks/ is on sys.path when a script here runs
from timing import time_steps

# NVLink multicast off before the first NCCL communicator (it can take a shared host's GPUs out of service).
os.environ.update(NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1", NVSHMEM_DISABLE_NVLS="1")


def wrap(model: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """The model as ``strategy`` distributes it over the process group."""
    if strategy == "ddp":
        return nn.parallel.DistributedDataParallel(model, device_ids=[device.index], gradient_as_bucket_view=True)
    if strategy == "fsdp":
        try:
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        except ImportError:  # torch 2.5
            from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard
        policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for layer in model.bert.encoder.layer:
            fully_shard(layer, mp_policy=policy)
        return fully_shard(model, mp_policy=policy)
    return model


def synthetic_batches(batch: int, seq: int, vocab: int) -> list[dict[str, torch.Tensor]]:
    """Four batches of random token ids without padding."""
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.randint(1000, vocab, (batch, seq), generator=g),
             "attention_mask": torch.ones(batch, seq, dtype=torch.long),
             "token_type_ids": torch.zeros(batch, seq, dtype=torch.long),
             "start_positions": torch.randint(0, seq, (batch,), generator=g),
             "end_positions": torch.randint(0, seq, (batch,), generator=g)} for _ in range(4)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--strategy", choices=["none", "ddp", "fsdp"], default="ddp")
    p.add_argument("--batch", type=int, default=32, help="per GPU")
    p.add_argument("--seq", type=int, default=384)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batches-from", help="a bert_squad params file: train on labkit's own first batches")
    p.add_argument("--profile", default="gpu", help="the profile for --batches-from")
    p.add_argument("--trace", help="after timing, profile 3 more steps and write rank 0's Chrome trace here (.json.gz)")
    args = p.parse_args()

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    if args.strategy == "none" and world > 1:
        p.error("--strategy none is one process: start it with --nproc-per-node 1")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    torch.cuda.set_device(device)
    if args.strategy != "none":
        dist.init_process_group("nccl", device_id=device)
    torch.manual_seed(0)  # every rank starts from the same weights, as DDP and FSDP require
    config = BertConfig(vocab_size=args.vocab)
    model = wrap(AutoModelForQuestionAnswering.from_config(config, attn_implementation="sdpa").to(device),
                 args.strategy, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    if args.batches_from:
        batches = labkit_batches(args.batches_from, args.profile, args.batch)
    else:
        batches = synthetic_batches(args.batch, args.seq, args.vocab)
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def step(i: int) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(**batches[i % len(batches)]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    if world > 1:
        dist.barrier()  # every rank starts timing together
    step_s, peak_gb = time_steps(step, args.warmup, args.steps)
    figures = torch.tensor([step_s, peak_gb], device=device)
    if world > 1:
        dist.all_reduce(figures, op=dist.ReduceOp.MAX)  # the slowest rank sets the pace; the fullest GPU the memory
    step_s, peak_gb = figures.tolist()
    if args.trace:  # after the timed steps, so that the profiler changes none of them
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            for i in range(3):
                step(i)
            torch.cuda.synchronize()
        if rank == 0:
            prof.export_chrome_trace(args.trace)
    if rank == 0:
        print(json.dumps({
            "bench": "bare_distributed", "strategy": args.strategy, "devices": world,
            "device": torch.cuda.get_device_name(device), "torch": torch.__version__, "batch_per_gpu": args.batch,
            "seq": args.seq, "precision": "bf16 autocast", "input": args.batches_from or "synthetic, no padding",
            "samples_per_s": round(world * args.batch / step_s, 1), "step_ms": round(1e3 * step_s, 2),
            "peak_allocated_gb": round(peak_gb, 2),
        }), flush=True)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
