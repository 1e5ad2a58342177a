"""The one training loop, on Lightning Fabric.

Precision, strategy, devices and checkpointing are settings handed to Fabric or the model; the loop
itself never forks on them. It measures as it goes (step split, throughput, memory, GPU samples,
NVTX ranges) and returns curves and a summary for the results record.
"""
from __future__ import annotations

import math
import os
import time
from typing import Any

import torch
from lightning.fabric import Fabric
from torch.utils.data import DataLoader

from labkit import measure
from labkit.config import Config
from labkit.optim import build_optimizer, build_schedule, count_parameters
from labkit.tasks import Task, batch_size_of, real_tokens_of

FABRIC_PRECISION = {"32": "32-true", "tf32": "32-true", "16-mixed": "16-mixed", "bf16-mixed": "bf16-mixed", "bf16-true": "bf16-true"}


def progress_bar(**kwargs):
    """Widgets in JupyterLab; plain, infrequent lines when run headless (papermill sets LABKIT_HEADLESS)."""
    if os.environ.get("LABKIT_HEADLESS"):
        from tqdm.std import tqdm

        return tqdm(mininterval=10, ascii=True, **kwargs)
    from tqdm.auto import tqdm

    return tqdm(**kwargs)


def make_fabric(cfg: Config) -> Fabric:
    t = cfg.train
    # TF32 is a matmul setting, not a Fabric precision: "32" means true fp32 matrix products.
    torch.backends.cuda.matmul.allow_tf32 = t.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = t.precision == "tf32"
    torch.set_float32_matmul_precision("high" if t.precision == "tf32" else "highest")
    strategy: Any = t.strategy
    if t.strategy == "deepspeed":
        from lightning.fabric.strategies import DeepSpeedStrategy

        strategy = DeepSpeedStrategy(stage=t.zero_stage)
    return Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes,
                  strategy=strategy, precision=FABRIC_PRECISION[t.precision])


def make_loader(cfg: Config, dataset, collate_fn, shuffle: bool, sampler=None) -> DataLoader:
    d = cfg.data
    workers = {"num_workers": d.num_workers}
    if d.num_workers > 0:
        workers.update(persistent_workers=d.persistent_workers, prefetch_factor=d.prefetch_factor)
    return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
                      collate_fn=collate_fn, pin_memory=d.pin_memory, drop_last=shuffle, **workers)


def fit(cfg: Config, task: Task, fabric: Fabric) -> dict:
    """Train ``task.model`` as ``cfg`` says; returns {"summary": {...}, "curves": {...}}."""
    t, m = cfg.train, cfg.measure
    device = fabric.device
    model = task.model
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    counts = count_parameters(model)
    optimizer = build_optimizer(model, t)
    if cfg.model.compile:
        model = torch.compile(model)
    model, optimizer = fabric.setup(model, optimizer)
    train_loader = fabric.setup_dataloaders(make_loader(cfg, task.train_set, task.collate_fn, True, task.train_sampler),
                                            use_distributed_sampler=task.train_sampler is None)
    val_loader = fabric.setup_dataloaders(make_loader(cfg, task.val_set, task.collate_fn, False))

    steps_per_epoch = len(train_loader) // t.grad_accum
    total_steps = min(t.max_steps or math.inf, steps_per_epoch * t.epochs)
    if total_steps < 1:
        raise ValueError(f"no optimizer step fits: {len(task.train_set)} training samples with batch {t.batch_size} "
                         f"and grad_accum {t.grad_accum}; lower train.batch_size or raise data.train_examples")
    schedule = build_schedule(optimizer, t, total_steps)

    timer = measure.StepTimer(device)
    clock = SteadyClock(device)
    curves: dict[str, list] = {"train_loss": [], "val_loss": [], "epoch_time_s": []}
    step = samples = since_log = 0
    tokens = torch.zeros((), device=device, dtype=torch.long)
    train_time = 0.0
    measure.reset_peak_memory(device)
    with measure.GPUSampler(m.gpu_sample_interval, device_index=device.index or 0) as sampler:
        bar = progress_bar(total=int(total_steps), desc=cfg.task, unit="step", disable=fabric.global_rank != 0)
        for epoch in range(t.epochs):
            model.train()
            epoch_start = time.perf_counter()
            if step >= m.warmup_steps:
                clock.start(samples)
            running = torch.zeros((), device=device)
            batches = iter(train_loader)
            for micro in range(steps_per_epoch * t.grad_accum):
                with timer.data(), measure.nvtx_range("data", m.nvtx):
                    batch = next(batches)
                if micro % t.grad_accum == 0:
                    timer.mark("start")
                accumulating = (micro + 1) % t.grad_accum != 0
                with fabric.no_backward_sync(model, enabled=accumulating):
                    with measure.nvtx_range("forward", m.nvtx):
                        loss = task.loss(model, batch) / t.grad_accum
                    with measure.nvtx_range("backward", m.nvtx):
                        fabric.backward(loss)
                running += loss.detach()
                samples += batch_size_of(batch)
                batch_tokens = real_tokens_of(batch)
                if batch_tokens is not None:
                    tokens += batch_tokens
                if accumulating:
                    continue
                timer.mark("backward_done")
                with measure.nvtx_range("optimizer", m.nvtx):
                    if t.grad_clip:
                        fabric.clip_gradients(model, optimizer, max_norm=t.grad_clip)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    schedule.step()
                timer.mark("end")
                step += 1
                since_log += 1
                if step == m.warmup_steps:
                    clock.start(samples)  # steady state begins after compilation and allocator warm-up
                if step % t.log_every == 0 or step == total_steps:
                    # .item() syncs, so the loss is read only every log_every steps
                    value = fabric.all_reduce(running, reduce_op="mean").item() / since_log
                    running.zero_()
                    since_log = 0
                    curves["train_loss"].append([step, epoch + (micro + 1) / (steps_per_epoch * t.grad_accum), value])
                    bar.set_postfix(epoch=epoch + 1, loss=f"{value:.3f}")
                bar.update(1)
                if step >= total_steps:
                    break
            clock.stop(samples)
            curves["epoch_time_s"].append(time.perf_counter() - epoch_start)
            train_time += curves["epoch_time_s"][-1]
            if t.eval_every_epoch or step >= total_steps:
                metrics = validate(cfg, task, model, val_loader, fabric)
                curves["val_loss"].append([step, epoch + 1, metrics.pop("val_loss")])
                curves.setdefault("val_metrics", []).append({"step": step, "epoch": epoch + 1, **metrics})
            if step >= total_steps:
                break
        bar.close()
    world = fabric.world_size
    measured_samples, measured_time = (clock.samples, clock.seconds) if clock.seconds else (samples, train_time)
    summary: dict[str, Any] = {
        **counts,
        "steps": step,
        "train_time_s": train_time,
        "samples_per_s": world * measured_samples / measured_time,
        "steady_state": bool(clock.seconds),
        "first_train_loss": curves["train_loss"][0][2] if curves["train_loss"] else None,
        "final_train_loss": curves["train_loss"][-1][2] if curves["train_loss"] else None,
        "final_val_loss": curves["val_loss"][-1][2] if curves["val_loss"] else None,
        **timer.summary(skip=m.warmup_steps),
        **measure.memory_gb(device),
        **sampler.summary(),
    }
    total_tokens = fabric.all_reduce(tokens.float(), reduce_op="sum").item()
    if total_tokens:
        summary["tokens_per_s"] = summary["samples_per_s"] * total_tokens / (samples * world)
    if "val_metrics" in curves:
        summary.update({k: v for k, v in curves["val_metrics"][-1].items() if k not in ("step", "epoch")})
    if task.flops_per_sample:
        peak = measure.peak_tflops(torch.cuda.get_device_name(device) if device.type == "cuda" else "", t.precision)
        summary["model_tflops_per_s"] = task.flops_per_sample * summary["samples_per_s"] / 1e12
        if peak:
            summary["mfu"] = summary["model_tflops_per_s"] / (peak * world)
    curves["gpu"] = sampler.samples
    curves["steps"] = timer.steps
    return {"summary": summary, "curves": curves}


class SteadyClock:
    """Wall time and samples of the steady-state window, paused around validation."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.samples, self._since = device, 0.0, 0, None

    def start(self, samples: int) -> None:
        if self._since is None:
            measure.synchronize(self.device)
            self._since, self._from = time.perf_counter(), samples

    def stop(self, samples: int) -> None:
        measure.synchronize(self.device)
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self.samples += samples - self._from
            self._since = None


@torch.no_grad()
def validate(cfg: Config, task: Task, model, val_loader, fabric: Fabric) -> dict[str, float]:
    """Validation loss over the validation loader, then the task's own metric."""
    model.eval()
    total, batches = torch.zeros((), device=fabric.device), 0
    for i, batch in enumerate(progress_bar(iterable=val_loader, desc="validate", leave=False, disable=fabric.global_rank != 0)):
        if cfg.train.eval_batches and i >= cfg.train.eval_batches:
            break
        total += task.loss(model, batch).detach()
        batches += 1
    metrics = {"val_loss": fabric.all_reduce(total / max(batches, 1), reduce_op="mean").item()}
    if task.evaluate is not None:
        metrics.update(task.evaluate(model))
    model.train()
    return metrics
