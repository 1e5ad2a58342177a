"""The one training loop, on Lightning Fabric.

Precision, strategy, devices and checkpointing are settings handed to Fabric or the model; the loop
itself never forks on them. What it measures (step split, throughput, memory, GPU samples, a profiled
trace) it measures through one labkit.measure.Meter, so the loop reads as the training step it teaches.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import math
import os
import time
import types
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
from lightning.fabric import Fabric
from lightning.fabric.plugins import MixedPrecision
from lightning.fabric.plugins.environments import TorchElasticEnvironment
from lightning.fabric.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy
from lightning_utilities.core.apply_func import apply_to_collection
from torch import nn
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.data import DataLoader

from labkit import preflight
from labkit.config import Config, TrainConfig
from labkit.launch import NO_MULTICAST
from labkit.measure import Meter, progress_bar
from labkit.optim import build_optimizer, build_schedule, count_parameters
from labkit.precision import PRECISIONS
from labkit.tasks import Task, batch_size_of


def make_fabric(cfg: Config) -> Fabric:
    t = cfg.train
    # TF32 is a matmul setting, not a Fabric precision: "32" means true fp32 matrix products.
    torch.backends.cuda.matmul.allow_tf32 = t.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = t.precision == "tf32"
    torch.set_float32_matmul_precision("high" if t.precision == "tf32" else "highest")
    # Inputs keep one shape per run, so cuDNN may time its convolution algorithms once and keep the fastest.
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.benchmark_limit = t.cudnn_benchmark_limit
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
    plugins: list[Any] = [TorchElasticEnvironment()] if torch.distributed.is_torchelastic_launched() else []
    precision: str | None = PRECISIONS[t.precision].fabric
    if precision == "16-mixed" and not preflight.uses_cuda(cfg):
        # Fabric would turn fp16 into bf16 on a CPU; fp16 autocast with a CPU GradScaler is what the setting means.
        plugins.append(MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu")))
        precision = None
    fabric = Fabric(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=strategy,
                    precision=precision, plugins=plugins or None)
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
        # Registered before fully_shard, so it runs before FSDP2 hooks the block's outputs for backward.
        block.register_forward_hook(_outputs_as_copies_of_views)
        fully_shard(block, **kwargs)
    return fully_shard(model, **kwargs)


def _outputs_as_copies_of_views(module: nn.Module, args: Any, output: Any) -> Any:
    """A block's outputs that are views of another tensor, as copies. FSDP2 hooks each output that needs a
    gradient to gather the block's parameters for backward, and a view's hook is lost if anything later
    changes it in place. T5's first block returns its relative position bias as such a view (a permute of an
    embedding lookup, heads x length x length: a few MB to copy); the later blocks only read it, but the copy
    makes the gradients right by construction, whatever the model does with its blocks' outputs."""
    return _copies(output, lambda t: t.requires_grad and t._base is not None)


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


def fit(cfg: Config, task: Task, fabric: Fabric, trace: Path | None = None) -> dict:
    """Train ``task.model`` as ``cfg`` says; returns the record's {"summary": {...}, "curves": {...}, "clock": {...}}.
    ``trace``: where the profiled steps' Chrome trace goes (with measure.profile_steps > 0)."""
    t = cfg.train
    meter = Meter(cfg, fabric, trace)
    if any(p.device.type != "cpu" for p in task.model.parameters()):
        meter.memory.built_on_device()
    counts = count_parameters(task.model)  # before FSDP replaces the parameters with shards
    with meter.phase("setup"):
        model, optimizer = setup_model_and_optimizer(fabric, prepare_model(cfg, task.model), t)
    train_loader, val_loader = make_loaders(cfg, task, fabric)
    micro_steps = len(train_loader) // t.grad_accum * t.grad_accum  # per epoch: whole optimizer steps only
    total_steps = count_steps(cfg, len(train_loader), len(task.train_set))
    schedule = build_schedule(optimizer, t, total_steps)
    step, best, val_time = 0, None, 0.0

    def validation(epoch: float) -> None:
        """Validate, record, keep the weights if best (train.keep_best); its time adds to val_time_s, apart from training."""
        nonlocal best, val_time
        start = time.perf_counter()
        collect()  # with train.gc: deferred, the full collection kept out of the steps runs here
        meter.validated(epoch, validate(cfg, task, model, val_loader, fabric))
        val_time += time.perf_counter() - start  # validate() ends on .item(): the device has finished
        best = keep_if_best(t, model, meter, best)

    copying = cfg.data.copy_stream and fabric.device.type == "cuda"
    with settled_heap(t.gc == "deferred") as collect, meter.training(model, optimizer, total_steps):
        for epoch in range(t.epochs):
            model.train()
            batches = device_batches(train_loader, fabric) if copying else iter(train_loader)
            with meter.epoch():
                for micro in range(micro_steps):
                    with meter.phase("data"):  # the loader's time (with data.copy_stream, issuing the next copy too)
                        batch = next(batches)
                    # Outside the data phase: a copy from pageable memory first waits for the GPU's queue, which is
                    # the previous step's work, not the loader's. A batch already on the device stays where it is.
                    batch = fabric.to_device(batch)
                    accumulating = (micro + 1) % t.grad_accum != 0
                    # DDP all-reduces the gradients in the last micro-batch's backward only
                    with fabric.no_backward_sync(model, enabled=accumulating):
                        with meter.phase("forward"):
                            loss = task.loss(model, batch) / t.grad_accum
                        with meter.phase("backward"):
                            fabric.backward(loss)  # instead of loss.backward(): loss scaling, sharded gradients
                    meter.count(batch, loss)
                    if accumulating:
                        continue
                    with meter.phase("optimizer"):
                        if t.grad_clip:
                            fabric.clip_gradients(model, optimizer, max_norm=t.grad_clip)
                        optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    schedule.step()
                    step += 1
                    meter.step_end(step, epoch + (micro + 1) / micro_steps)
                    if step == total_steps:
                        break
                    epoch_ends = micro + t.grad_accum >= micro_steps and t.eval_every_epoch  # validated just below
                    if t.eval_every_steps and step % t.eval_every_steps == 0 and not epoch_ends:
                        with meter.validating():  # a test curve beside the training curve
                            validation(epoch + (micro + 1) / micro_steps)
            if t.eval_every_epoch or step == total_steps:
                validation(epoch + 1)
            else:
                collect()  # the epoch's end, with no validation to hold the deferred collection
            if step == total_steps:
                break
    return meter.result(task.flops_per_sample, **counts, **finish(cfg, task, model, fabric, best), val_time_s=val_time,
                        global_batch=process_batch(cfg) * t.grad_accum * fabric.world_size)


@contextlib.contextmanager
def settled_heap(deferred: bool) -> Iterator[Callable[[], None]]:
    """Around training: what the process holds by now (data set, tokenizer, model, libraries) is collected once and
    frozen (gc.freeze), so that a full collection during training walks only what training creates. Without it a
    full collection walks every object: half a million in a small run, a quarter of a second on a CPU, a stall of
    the step it falls in (the bare loops, with small heaps, do not pay it), and under DDP every rank waits at the
    next all-reduce for the one that collects.

    ``deferred`` (train.gc): Python starts no full collection inside a step (the young generations, which hold a
    step's garbage, are still collected as usual); the loop runs one at each validation and epoch end through the
    function yielded, a no-op otherwise."""
    gc.collect()
    gc.freeze()
    thresholds = gc.get_threshold()
    if deferred:  # a full collection waits for this many collections of generation 1: never, within a run
        gc.set_threshold(thresholds[0], thresholds[1], 2**30)
    try:
        yield gc.collect if deferred else (lambda: None)
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def keep_if_best(t: TrainConfig, model: nn.Module, meter: Meter, best: dict | None) -> dict | None:
    """With train.keep_best: a host copy of the weights whenever the validation just recorded is the lowest so far."""
    step, _, val_loss = meter.curves["val_loss"][-1]
    if not t.keep_best or (best is not None and val_loss >= best["val_loss"]):
        return best
    return {"step": step, "val_loss": val_loss, "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}


def finish(cfg: Config, task: Task, model: nn.Module, fabric: Fabric, best: dict | None) -> dict[str, Any]:
    """The run ends with the best validation's weights (train.keep_best), then the test set's loss (task.test_set)
    and the task's final evaluation (task.final_evaluate)."""
    ending: dict[str, Any] = {}
    if best is not None:
        model.load_state_dict(best["state"])
        ending.update(best_step=best["step"], best_val_loss=best["val_loss"])
    if task.test_set is not None:
        test_loader = fabric.setup_dataloaders(make_loader(cfg, task.test_set, task.collate_fn, False))
        whole = cfg.model_copy(update={"train": cfg.train.model_copy(update={"eval_batches": None})})  # all of it
        ending["test_loss"] = validate(whole, dataclasses.replace(task, evaluate=None), model, test_loader, fabric)["val_loss"]
    if task.final_evaluate is not None:
        model.eval()
        ending.update(task.final_evaluate(getattr(model, "module", model)))  # the model inside Fabric's wrapper
    return ending


def prepare_model(cfg: Config, model: nn.Module) -> nn.Module:
    """The model in the memory format and compiled form the settings ask for."""
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.model.compile:
        d, dynamic = cfg.data, cfg.model.compile_dynamic
        if dynamic is None and d.padding in ("dynamic", "packed"):
            # Every batch has its own length: compile for symbolic shapes at once instead of first for the
            # first batch's length and again when the second differs.
            dynamic = True
        if dynamic is False and d.padding != "max_length":
            # One compiled graph per batch length. Allow as many as the lengths a batch can take (each a multiple of
            # data.pad_multiple), and a few for validation, rather than torch's 8, past which it runs uncompiled.
            tokens = d.max_length * (cfg.train.batch_size if d.padding == "packed" else 1)
            limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"  # torch < 2.7
            setattr(torch._dynamo.config, limit, max(getattr(torch._dynamo.config, limit), tokens // d.pad_multiple + 8))
        m = cfg.model
        compile_ = functools.partial(torch.compile, dynamic=dynamic, **compile_settings(m.compile_mode, m.compile_options, dynamic))
        if m.compile_scope == "regions" and hasattr(torch.compiler, "nested_compile_region"):
            mark_repeated_blocks(model)  # before torch 2.8 there are no nested regions: the whole model, as 'model'
        if m.compile_scope in ("model", "regions"):
            return compile_(model)
        for block in _outer_blocks(model):
            # Each block's forward compiled in place: the model keeps its type, structure and parameter names, and
            # the blocks' parameters are the graph's inputs, so one compilation serves every block of a kind.
            block.forward = compile_(block.forward)
            if m.cuda_graphs:
                block.register_forward_hook(_outputs_out_of_graph_memory)
    return model


def compile_settings(mode: str, options: dict[str, Any], dynamic: bool | None = None) -> dict[str, Any]:
    """torch.compile's keywords for ``mode`` with inductor ``options`` over it. torch.compile takes a mode or options,
    not both: with options, the mode becomes the options it stands for (reduce-overhead: triton.cudagraphs)."""
    if not options:
        return {"mode": mode}
    from torch._inductor import list_mode_options

    return {"options": {**list_mode_options(mode, dynamic), **options}}


def mark_repeated_blocks(model: nn.Module) -> None:
    """Each block's forward a nested compile region, one region per block class: torch.compile then traces and
    compiles a block once and stamps the compiled code out for every block of its kind, inside the one graph of the
    whole model. Outside torch.compile a region is a plain call."""
    regions: dict[type, Any] = {}
    for block in _outer_blocks(model):
        if type(block) not in regions:
            regions[type(block)] = _nested_region(type(block).forward)
        block.forward = types.MethodType(regions[type(block)], block)


def _nested_region(forward: Any) -> Any:
    # A new function, not the class's own: marking the class's forward would mark it for every model in the process.
    # A region may not return one of its inputs as it is (T5's blocks hand on the position bias they were given):
    # such an output leaves as a copy.
    def region(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        return _copies(forward(self, *args, **kwargs), lambda t: any(t is x for x in inputs))

    return torch.compiler.nested_compile_region(region)


def _outputs_out_of_graph_memory(module: nn.Module, args: Any, output: Any) -> Any:
    """A compiled block's outputs, copied where no backward is pending (validation, generation). CUDA graph trees
    then take each call of a compiled function for a new iteration and reuse the previous call's output memory:
    the next block, the same compiled function, would overwrite this one's output while it is its input. With a
    backward pending (training) the outputs are kept for it and nothing is copied. The hook runs outside the
    compiled forward, so the copy is eager memory."""
    return output if torch.is_grad_enabled() else _copies(output, lambda t: True)


def _copies(output: Any, which: Callable[[torch.Tensor], bool]) -> Any:
    """A block's output (a tensor, or tensors nested in tuples, lists and dicts) with the tensors ``which`` picks
    cloned, the rest as they were."""
    return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) and which(t) else t, output)


def make_loaders(cfg: Config, task: Task, fabric: Fabric) -> tuple[DataLoader, DataLoader]:
    """Training and validation loaders. Under several ranks every sampler is sharded (a task's own sampler
    too), so each sample is seen once an epoch. The loop moves each training batch to the device itself
    (with data.copy_stream, on a stream of its own: device_batches)."""
    train = make_loader(cfg, task.train_set, task.collate_fn, True, task.train_sampler)
    val = make_loader(cfg, task.val_set, task.collate_fn, False)
    return fabric.setup_dataloaders(train, move_to_device=False), fabric.setup_dataloaders(val)


def device_batches(loader: Iterable, fabric: Fabric) -> Iterator[Any]:
    """The loader's batches on the GPU, each one's copy issued while the step before it runs, on a stream of its
    own (data.copy_stream). A copy from pageable host memory first waits for the work already queued on its
    stream (CUDA's rule for staging it through pinned memory); on the training stream that is the whole previous
    step, so a step replayed as CUDA graphs would wait for its predecessor before it is even launched. The
    training stream waits for the copy alone."""
    copies = torch.cuda.Stream(fabric.device)

    def issue(batch: Any) -> tuple[Any, torch.cuda.Event]:
        with torch.cuda.stream(copies):
            return fabric.to_device(batch), copies.record_event()

    def ready(batch: Any, copied: torch.cuda.Event) -> Any:
        training = torch.cuda.current_stream(fabric.device)
        training.wait_event(copied)
        # Memory allocated on the copy stream is reused only once the training stream is done with it too.
        apply_to_collection(batch, torch.Tensor, lambda t: t.record_stream(training))
        return batch

    pending = None
    for batch in loader:
        issued = issue(batch)
        if pending is not None:
            yield ready(*pending)
        pending = issued
    if pending is not None:
        yield ready(*pending)


def count_steps(cfg: Config, batches: int, samples: int) -> int:
    """Optimizer steps of the run: all epochs of ``batches`` loader batches, or train.max_steps if fewer."""
    t = cfg.train
    total = min(t.max_steps or math.inf, batches // t.grad_accum * t.epochs)
    if total < 1:
        raise ValueError(f"no optimizer step fits: {samples} training samples with batch {t.batch_size} "
                         f"and grad_accum {t.grad_accum}; lower train.batch_size or raise data.train_examples")
    return int(total)


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
        # No gradients and no optimizer state: twice the training batch fits where training did. A cap on
        # validation batches caps the task metric at the same examples.
        t = cfg.train
        metrics.update(task.evaluate(model, 2 * t.batch_size, t.eval_batches * t.batch_size if t.eval_batches else None))
    model.train()
    return metrics
