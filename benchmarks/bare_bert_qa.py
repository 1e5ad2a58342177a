"""A bare PyTorch loop for BERT QA: no labkit, no Fabric, no instrumentation.

The yardstick for labkit's own figures: same architecture (random weights), sequence length,
batch, optimizer and precision; synthetic token ids. Prints one JSON line per setting.

    python benchmarks/bare_bert_qa.py --precision 32 --attn eager
    python benchmarks/bare_bert_qa.py --precision bf16 --attn sdpa
    python benchmarks/bare_bert_qa.py --batches-from params/01_baseline_bert_squad/baseline_bf16.yaml --profile gpu

Synthetic ids have no padding, so SDPA may take its flash kernel; ``--batches-from`` feeds the loop the
first batches labkit itself would train on (the params file's SQuAD features over the profile, padding and
all), so that the bare loop and labkit's loop differ in the loop only.
"""
from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoModelForQuestionAnswering, BertConfig

from timing import time_steps  # benchmarks/ is on sys.path when a script here runs


def labkit_batches(params_file: str, profile: str, batch: int) -> list[dict[str, torch.Tensor]]:
    """The first four training batches of a labkit bert_squad run (its features, its collate_fn)."""
    from torch.utils.data import DataLoader

    from labkit import config
    from labkit.tasks import build_task

    task = build_task(config.load(params_file, profile, {"train": {"batch_size": batch}}))
    loader = DataLoader(task.train_set, batch_size=batch, shuffle=False, collate_fn=task.collate_fn)
    return [b for b, _ in zip(loader, range(4))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--precision", choices=["32", "tf32", "bf16"], default="bf16")
    p.add_argument("--attn", choices=["eager", "sdpa"], default="sdpa")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seq", type=int, default=384)
    p.add_argument("--vocab", type=int, default=30522)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--batches-from", help="a bert_squad params file: train on labkit's own first batches")
    p.add_argument("--profile", default="gpu", help="the profile for --batches-from")
    args = p.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    device = torch.device("cuda")
    model = AutoModelForQuestionAnswering.from_config(BertConfig(vocab_size=args.vocab), attn_implementation=args.attn).to(device)
    if args.checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    if args.batches_from:
        batches = labkit_batches(args.batches_from, args.profile, args.batch)
    else:
        g = torch.Generator(device="cpu").manual_seed(0)
        batches = [{
            "input_ids": torch.randint(1000, args.vocab, (args.batch, args.seq), generator=g),
            "attention_mask": torch.ones(args.batch, args.seq, dtype=torch.long),
            "token_type_ids": torch.zeros(args.batch, args.seq, dtype=torch.long),
            "start_positions": torch.randint(0, args.seq, (args.batch,), generator=g),
            "end_positions": torch.randint(0, args.seq, (args.batch,), generator=g),
        } for _ in range(4)]
    batches = [{k: v.to(device) for k, v in b.items()} for b in batches]

    def step(i: int) -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            loss = model(**batches[i % len(batches)]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step_s, peak_gb = time_steps(step, args.warmup, args.steps)
    print(json.dumps({
        "bench": "bare_bert_qa", "device": torch.cuda.get_device_name(), "precision": args.precision, "attn": args.attn,
        "batch": args.batch, "seq": args.seq, "checkpointing": args.checkpointing,
        "input": args.batches_from or "synthetic, no padding",
        "samples_per_s": round(args.batch / step_s, 1), "step_ms": round(1e3 * step_s, 2),
        "peak_allocated_gb": round(peak_gb, 2),
    }))


if __name__ == "__main__":
    main()
