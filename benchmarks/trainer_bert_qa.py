"""The Hugging Face Trainer on BERT-QA: the yardstick for labkit's fast path.

The same model and the same input as a labkit run of the params file and profile: labkit builds the task
(BERT architecture with random weights, SQuAD features padded to max_length, so the same real tokens
and the same padding), and transformers' Trainer trains it for the same steps and batch, with Trainer
defaults otherwise: bf16 autocast if the params file says bf16, the model's SDPA attention, the optimizer
Trainer picks (fused AdamW on torch >= 2.8), a linear schedule, the model's own loss, no torch.compile.
Model building and tokenisation are outside both figures:

* ``trainer_samples_per_s``: Trainer's own ``train_samples_per_second``, samples over the whole
  ``train()`` call: data loader and optimizer creation, the first (slow) steps, logging, everything.
* ``samples_per_s``: steady state, samples over the wall time from the end of step ``--warmup`` to the
  last step, both ends after ``torch.cuda.synchronize`` (what labkit's samples/s measures).

    python benchmarks/trainer_bert_qa.py --profile bench [--steps 120] [--out trainer.json]

Prints one JSON line; ``python -m labkit.bench`` runs it beside labkit's configurations.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
import transformers
from transformers import Trainer, TrainerCallback, TrainingArguments, default_data_collator

from labkit import config, measure
from labkit.tasks import bert_squad


class SteadyClock(TrainerCallback):
    """Wall time and steps after the warm-up steps, closed with CUDA synchronisation."""

    def __init__(self, warmup: int):
        self.warmup, self.start, self.seconds = warmup, None, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in (self.warmup, state.max_steps) and torch.cuda.is_available():
            torch.cuda.synchronize()
        if state.global_step == self.warmup:
            self.start = time.perf_counter()
        elif state.global_step == state.max_steps and self.start is not None:
            self.seconds = time.perf_counter() - self.start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="params/01_baseline_bert_squad/baseline_bf16.yaml")
    p.add_argument("--profile", default="bench")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the profile's train.max_steps)")
    p.add_argument("--warmup", type=int, help="steps left out of the steady state (default: measure.warmup_steps)")
    p.add_argument("--out", help="also write the JSON result to this file")
    args = p.parse_args()

    cfg = config.load(args.config, args.profile)
    t = cfg.train
    if cfg.data.padding != "max_length" or t.precision not in ("32", "bf16-mixed"):
        raise SystemExit(f"{args.config}: the Trainer baseline takes padded input (data.padding max_length) in fp32 or "
                         f"bf16-mixed; got padding {cfg.data.padding}, precision {t.precision}")
    torch.manual_seed(t.seed)
    task = bert_squad.build_task(cfg)
    steps = args.steps or t.max_steps or len(task.train_set) // t.batch_size
    warmup = min(args.warmup if args.warmup is not None else cfg.measure.warmup_steps, steps - 1)
    clock = SteadyClock(warmup)
    with tempfile.TemporaryDirectory() as out_dir:
        targs = TrainingArguments(
            output_dir=out_dir, per_device_train_batch_size=t.batch_size, max_steps=steps, learning_rate=t.lr,
            weight_decay=t.weight_decay, warmup_steps=int(t.warmup_ratio * steps), lr_scheduler_type="linear",
            bf16=t.precision == "bf16-mixed", seed=t.seed, logging_steps=t.log_every, save_strategy="no",
            report_to="none", disable_tqdm=True, dataloader_drop_last=True, remove_unused_columns=False)
        trainer = Trainer(model=task.model, args=targs, train_dataset=task.train_set,
                          data_collator=default_data_collator, callbacks=[clock])
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        metrics = trainer.train().metrics
    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "cpu"
    samples_per_s = (steps - warmup) * t.batch_size / clock.seconds
    peak = measure.peak_tflops(device if cuda else "", t.precision)
    result = {
        "bench": "trainer_bert_qa", "config": args.config, "profile": args.profile, "device": device,
        "transformers": transformers.__version__, "torch": torch.__version__, "precision": t.precision,
        "optimizer": str(targs.optim.value if hasattr(targs.optim, "value") else targs.optim),
        "attention": task.model.config._attn_implementation, "batch": t.batch_size, "steps": steps, "warmup_steps": warmup,
        "samples_per_s": samples_per_s, "step_s": clock.seconds / (steps - warmup),
        "trainer_samples_per_s": metrics["train_samples_per_second"], "train_runtime_s": metrics["train_runtime"],
        "mean_real_tokens": task.info["mean_real_tokens"],
        "tokens_per_s": samples_per_s * task.info["mean_real_tokens"],
        "flops_counted": task.info["flops_counted"],
        "mfu": task.flops_per_sample * samples_per_s / 1e12 / peak if peak else None,
        "peak_allocated_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
        "train_loss": metrics["train_loss"],  # Trainer's mean over all steps (the model's own loss)
    }
    print(json.dumps(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
