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
from lightning.fabric.plugins.environments import TorchElasticEnvironment
from lightning.fabric.strategies import DataParallelStrategy, DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy
from torch import nn
from torch.utils.data import DataLoader

from labkit import measure
from labkit.config import Config, TrainConfig
from labkit.launch import NO_MULTICAST
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
    # Inputs keep one shape per run, so cuDNN may time its convolution algorithms once and keep the fastest.
    torch.backends.cudnn.benchmark = True
    os.environ.update(NO_MULTICAST)  # before any process group or NCCL communicator exists
    backend = None if cfg.launch.backend == "auto" else cfg.launch.backend  # auto: nccl on GPUs, gloo on CPUs
    strategy: Any = t.strategy  # auto: one device; dp: DataParallel over this process's GPUs
    if t.strategy == "ddp":
        strategy = DDPStrategy(process_group_backend=backend, gradient_as_bucket_view=True)
    elif t.strategy == "fsdp":
        strategy = ModelParallelStrategy(lambda model, mesh: shard_blocks(model, mesh["data_parallel"], t.precision),
                                         data_parallel_size=t.devices * t.num_nodes, tensor_parallel_size=1,
                                         process_group_backend=backend)
    elif t.strategy == "deepspeed":
        strategy = DeepSpeedStrategy(stage=t.zero_stage, process_group_backend=backend)
    # Ranks started by torchrun (labkit.launch.distributed) take rank and world size from it, also inside a SLURM job,
    # whose own variables describe srun's tasks (one per node), not the ranks.
    plugins = [TorchElasticEnvironment()] if torch.distributed.is_torchelastic_launched() else None
    fabric = Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=strategy,
                    precision=FABRIC_PRECISION[t.precision], plugins=plugins)
    fabric.launch()  # joins this rank to the process group; starts no process (labkit.launch.distributed did)
    return fabric


def shard_blocks(model: nn.Module, mesh, precision: str) -> nn.Module:
    """FSDP2: each block of the model's outermost layer lists (the transformer layers) is one unit, whose
    parameters are gathered just before it runs and freed after; the rest (embeddings, head) is the root unit.
    In bf16-mixed the gathered parameters are bf16 (half the traffic) and gradients are reduced in fp32."""
    try:
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    except ImportError:  # torch 2.5
        from torch.distributed._composable.fsdp import MixedPrecisionPolicy, fully_shard

    kwargs: dict[str, Any] = {"mesh": mesh}
    if precision == "bf16-mixed":
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    for block in _outer_blocks(model):
        fully_shard(block, **kwargs)
    return fully_shard(model, **kwargs)


def _outer_blocks(module: nn.Module):
    for child in module.children():
        if isinstance(child, nn.ModuleList):
            yield from child
        else:
            yield from _outer_blocks(child)


def process_batch(cfg: Config) -> int:
    """Samples one process loads per micro-step: train.batch_size is per device, and a DataParallel
    process splits its batch over all its GPUs."""
    return cfg.train.batch_size * (cfg.train.devices if cfg.train.strategy == "dp" else 1)


def make_loader(cfg: Config, dataset, collate_fn, shuffle: bool, sampler=None) -> DataLoader:
    d = cfg.data
    workers = {"num_workers": d.num_workers}
    if d.num_workers > 0:
        workers.update(persistent_workers=d.persistent_workers, prefetch_factor=d.prefetch_factor)
    return DataLoader(dataset, batch_size=process_batch(cfg), shuffle=shuffle and sampler is None, sampler=sampler,
                      collate_fn=collate_fn, pin_memory=d.pin_memory, drop_last=shuffle, **workers)


def setup_model_and_optimizer(fabric: Fabric, model: nn.Module, t: TrainConfig) -> tuple[nn.Module, torch.optim.Optimizer]:
    """FSDP replaces the parameters with shards, so the optimizer is built after the model is set up;
    DeepSpeed takes both in one call. A model already placed over several devices (layer-split model
    parallel, labkit/models/t5.py) stays put."""
    move = len({p.device for p in model.parameters()}) == 1
    if isinstance(fabric.strategy, DeepSpeedStrategy):
        return fabric.setup(model, build_optimizer(model, t), move_to_device=move)
    model = fabric.setup_module(model, move_to_device=move)
    return model, fabric.setup_optimizers(build_optimizer(model, t))


def devices_of_process(fabric: Fabric, model: nn.Module) -> list[torch.device]:
    """The devices this process drives: DataParallel's GPUs (it copies the model to each every step),
    a layer-split model's GPUs, or its one device."""
    if isinstance(fabric.strategy, DataParallelStrategy):
        return list(fabric.strategy.parallel_devices)
    return measure.devices_of(model, fabric.device)


def memory_per_gpu(fabric: Fabric, devices: list[torch.device]) -> dict[str, float]:
    """Peak memory of the fullest GPU, and of each GPU (peak_allocated_gb_gpu<i>): read here for this
    process's GPUs, gathered from every rank when there are several (i is then the rank)."""
    memory = measure.memory_gb(*devices)
    if fabric.world_size > 1 and memory:
        peaks = fabric.all_gather(torch.tensor(memory["peak_allocated_gb"], device=fabric.device)).flatten().tolist()
        memory.update(peak_allocated_gb=max(peaks), **{f"peak_allocated_gb_gpu{r}": gb for r, gb in enumerate(peaks)})
    return memory


def fit(cfg: Config, task: Task, fabric: Fabric) -> dict:
    """Train ``task.model`` as ``cfg`` says; returns {"summary": {...}, "curves": {...}}."""
    t, m = cfg.train, cfg.measure
    device = fabric.device
    model = task.model
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    counts = count_parameters(model)
    if cfg.model.compile:
        # Under dynamic padding or packing every batch has its own length: compile for symbolic shapes at once
        # instead of first for the first batch's length and again when the second differs.
        dynamic = True if cfg.data.padding in ("dynamic", "packed") else None
        model = torch.compile(model, mode=cfg.model.compile_mode, dynamic=dynamic)
    memory = measure.MemoryProbe(device)  # allocated memory around the first step: the memory breakdown
    model, optimizer = setup_model_and_optimizer(fabric, model, t)
    memory.read("setup")
    # Under several ranks every sampler is sharded (a task's own sampler too), so each sample is seen once an epoch.
    # The loop moves each batch itself, after the data timer, so that 'data' is the loader's time alone.
    train_loader = fabric.setup_dataloaders(make_loader(cfg, task.train_set, task.collate_fn, True, task.train_sampler),
                                            move_to_device=False)
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
    devices = devices_of_process(fabric, model)  # several under DataParallel or when the model is layer-split
    profiler = measure.CommProfiler(device, m.profile_steps)
    steady_from = m.warmup_steps + m.profile_steps  # profiled steps are slower: left out of throughput
    measure.reset_peak_memory(*devices)
    with measure.GPUSampler(m.gpu_sample_interval, device_index=[d.index or 0 for d in devices]) as sampler:
        bar = progress_bar(total=int(total_steps), desc=cfg.task, unit="step", disable=fabric.global_rank != 0)
        for epoch in range(t.epochs):
            model.train()
            epoch_start = time.perf_counter()
            shown_at, shown_samples = epoch_start, samples  # the bar's throughput: since the last loss shown
            if step >= steady_from:
                clock.start(samples)
            running = torch.zeros((), device=device)
            batches = iter(train_loader)
            for micro in range(steps_per_epoch * t.grad_accum):
                with timer.data(), measure.nvtx_range("data", m.nvtx):
                    batch = next(batches)
                batch = fabric.to_device(batch)
                if micro % t.grad_accum == 0:
                    if step == m.warmup_steps:
                        profiler.start(step)
                    timer.mark("start")
                accumulating = (micro + 1) % t.grad_accum != 0
                with fabric.no_backward_sync(model, enabled=accumulating):
                    with measure.nvtx_range("forward", m.nvtx):
                        memory.read("start")
                        loss = task.loss(model, batch) / t.grad_accum
                        memory.read("forward")
                    with measure.nvtx_range("backward", m.nvtx):
                        fabric.backward(loss)
                        memory.read("backward")
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
                    memory.read("optimizer")
                    optimizer.zero_grad(set_to_none=True)
                    schedule.step()
                timer.mark("end")
                step += 1
                since_log += 1
                if step == steady_from:
                    profiler.stop(step)
                    clock.start(samples)  # steady state begins after compilation and allocator warm-up
                    # Peak memory is the steady state's too: cuDNN's algorithm search and compilation
                    # allocate scratch space in the first steps that training itself never needs again.
                    measure.reset_peak_memory(*devices)
                if step % t.log_every == 0 or step == total_steps:
                    # .item() syncs, so the loss is read only every log_every steps
                    value = fabric.all_reduce(running, reduce_op="mean").item() / since_log
                    running.zero_()
                    since_log = 0
                    curves["train_loss"].append([step, epoch + (micro + 1) / (steps_per_epoch * t.grad_accum), value])
                    now = time.perf_counter()  # after .item(): the device has finished these steps
                    rate = fabric.world_size * (samples - shown_samples) / (now - shown_at)
                    shown_at, shown_samples = now, samples
                    bar.set_postfix({"epoch": epoch + 1, "loss": f"{value:.3f}", "samples/s": f"{rate:.1f}"}, refresh=False)
                bar.update(1)
                if step >= total_steps:
                    break
            clock.stop(samples)
            profiler.stop(step)
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
        "global_batch": process_batch(cfg) * t.grad_accum * world,
        **timer.summary(skip=steady_from),
        **memory_per_gpu(fabric, devices),
        **memory.measured_gb(),
        **measure.computed_memory_gb(model, optimizer),
        **profiler.summary(),
        **sampler.summary(clock.windows),
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
            summary["mfu"] = summary["model_tflops_per_s"] / (peak * world * len(devices))
    curves["gpu"] = sampler.samples
    curves["steps"] = timer.steps
    if profiler.top_ops:
        curves["top_ops"] = profiler.top_ops
    return {"summary": summary, "curves": curves}


class SteadyClock:
    """Wall time and samples of the steady-state window, paused around validation; ``windows`` holds the
    (start, stop) perf_counter readings of each stretch."""

    def __init__(self, device: torch.device):
        self.device, self.seconds, self.samples, self._since = device, 0.0, 0, None
        self.windows: list[tuple[float, float]] = []

    def start(self, samples: int) -> None:
        if self._since is None:
            measure.synchronize(self.device)
            self._since, self._from = time.perf_counter(), samples

    def stop(self, samples: int) -> None:
        measure.synchronize(self.device)
        if self._since is not None:
            now = time.perf_counter()
            self.windows.append((self._since, now))
            self.seconds += now - self._since
            self.samples += samples - self._from
            self._since = None


@torch.no_grad()
def validate(cfg: Config, task: Task, model, val_loader, fabric: Fabric) -> dict[str, float]:
    """Validation loss over the validation loader, then the task's own metric."""
    model.eval()
    total, count = torch.zeros((), device=fabric.device), torch.zeros((), device=fabric.device)
    for i, batch in enumerate(progress_bar(iterable=val_loader, desc="validate", leave=False, disable=fabric.global_rank != 0)):
        if cfg.train.eval_batches and i >= cfg.train.eval_batches:
            break
        total += task.loss(model, batch).detach() * batch_size_of(batch)
        count += batch_size_of(batch)
    # Summed over samples and ranks: the mean over the validation samples however they are split into batches and shards.
    total, count = fabric.all_reduce(total, reduce_op="sum"), fabric.all_reduce(count, reduce_op="sum")
    metrics = {"val_loss": (total / count.clamp(min=1)).item()}
    if task.evaluate is not None:
        metrics.update(task.evaluate(model))
    model.train()
    return metrics
