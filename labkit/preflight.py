"""Can this configuration run, and can it run here? Decided before any work and before any record is written.

Two answers, in this order (``labkit.run`` asks both before it writes anything):

* ``check_settings``: settings that can never run together, on any machine (a packed batch under
  DataParallel, a layer-split model that is also data parallel, ...). These raise ``ConfigError`` naming
  the file, the keys and the fix, as a wrong key does; no record is written.
* ``skip_reason``: why *this* machine cannot run the configuration honestly (too few GPUs or nodes, an
  extra that is not installed, a GPU-only setting on a CPU). Such a run is recorded as 'skipped' with
  the reason, so a sweep goes on and its report says what was not measured and why.

The schema (labkit.config) already refuses what one section alone can tell; the rules here need several
sections, the task, or the machine.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

from labkit.config import Config, ConfigError
from labkit.models import presets
from labkit.precision import PRECISIONS

# Tasks whose batches cannot be packed into one row, and why.
UNPACKABLE = {"t5_qa": "an encoder-decoder pairs each source with its own target",
              "simcls": "the scorer embeds each document, reference and candidate as a sequence of its own"}


def uses_cuda(cfg: Config) -> bool:
    """Whether ``cfg`` runs on GPUs here: a GPU is visible and the accelerator does not ask for the CPU."""
    return torch.cuda.is_available() and cfg.train.accelerator != "cpu"


def setting_conflicts(cfg: Config) -> list[str]:
    """Combinations of settings that cannot run anywhere, each with its fix (empty: none)."""
    d, t, m = cfg.data, cfg.train, cfg.model
    problems = []
    if cfg.task in presets.BY_TASK and m.preset not in (sizes := presets.BY_TASK[cfg.task]):
        problems.append(f"model.preset {m.preset!r} is not a size of {cfg.task}'s model: choose one of {sorted(sizes)}")
    if d.padding == "packed" and cfg.task in UNPACKABLE:
        problems.append(f"data.padding 'packed' is not supported by {cfg.task} ({UNPACKABLE[cfg.task]}): "
                        "use data.padding max_length or dynamic")
    if d.padding == "packed" and cfg.task == "gpt2_sft" and d.sft_format != "pairs":
        problems.append("data.padding 'packed' packs prompt/response pairs; dialogue windows (data.sft_format "
                        "dialogue_windows) are max_length tokens each and leave nothing to pack: use data.padding max_length")
    if d.padding == "packed" and t.strategy == "dp":
        problems.append("data.padding 'packed' makes each batch one row, which DataParallel (train.strategy dp) cannot "
                        "split over its GPUs: use train.strategy ddp, or data.padding dynamic")
    if d.on_gpu and cfg.task != "cifar_resnext":
        problems.append(f"data.on_gpu holds cifar_resnext's images in GPU memory; {cfg.task} loads its batches on "
                        "the CPU: set data.on_gpu false")
    if cfg.task == "t5_qa" and d.dataset not in ("gsm8k", "bioqa"):
        problems.append(f"task t5_qa needs data.dataset gsm8k or bioqa (it is {d.dataset!r}): set it in the params file")
    if cfg.task == "simcls" and cfg.simcls.generator.preset not in presets.T5:
        problems.append(f"simcls.generator.preset {cfg.simcls.generator.preset!r} is not a size of the T5 generator: "
                        f"choose one of {sorted(presets.T5)}")
    if m.split_devices > 1 and t.devices * t.num_nodes > 1:
        problems.append("model.split_devices places one model over several GPUs in one process; it does not combine "
                        "with train.devices x num_nodes > 1 (data parallel): set one of them to 1")
    if m.compile_options:
        import difflib

        from torch._inductor import list_options

        for name in m.compile_options.keys() - set(known := list_options()):
            near = difflib.get_close_matches(name, known, n=1)
            problems.append(f"model.compile_options: {name!r} is not an option of torch.compile's inductor"
                            + (f": did you mean {near[0]!r}?" if near else " (torch._inductor.list_options() names them)"))
    if m.split_devices > 1 and cfg.task != "t5_qa":
        problems.append(f"model.split_devices is {m.split_devices}, but only t5_qa has a layer-split model: set it to 1")
    return problems


def check_settings(cfg: Config, source: str | Path = "configuration") -> None:
    """Raise ConfigError, naming ``source`` (the params file), when settings of ``cfg`` cannot run together."""
    if problems := setting_conflicts(cfg):
        raise ConfigError("\n".join([f"{source}: {len(problems)} problem(s)"] + [f"  - {p}" for p in problems]))


def unavailable_reason(cfg: Config, cuda: bool) -> str | None:
    """Why this machine cannot start ``cfg``'s processes (too few GPUs or nodes, DeepSpeed missing), or None."""
    t = cfg.train
    if t.strategy == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        return "DeepSpeed is not installed: pip install '.[deepspeed]' (or pip install deepspeed), then run again"
    if t.num_nodes > 1:
        job = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 0)
        if job < t.num_nodes:
            where = f"this SLURM job has {job}" if os.environ.get("SLURM_JOB_ID") else "this is not a SLURM job"
            return (f"train.num_nodes is {t.num_nodes} and {where}: run the notebook inside a job of "
                    f"{t.num_nodes} nodes (sbatch or salloc --nodes {t.num_nodes})")
    if cuda:
        visible = torch.cuda.device_count()
        if t.devices > visible:
            return f"train.devices is {t.devices}: it needs {t.devices} GPUs per node and {visible} are visible"
        if cfg.model.split_devices > visible:
            return (f"model.split_devices is {cfg.model.split_devices}: the layer-split model needs that many GPUs "
                    f"and {visible} are visible")
    return None


CPU_INSTRUCTIONS = {"bf16": "AVX512-BF16 or AMX", "fp16": "AMX-FP16"}


def cpu_multiplies(dtype: str) -> bool:
    """Whether this CPU has instructions for ``dtype`` ('bf16' or 'fp16') arithmetic. Without them PyTorch converts
    to fp32 and back around every operation: bf16 autocast ran about 5x slower than fp32 on an AVX2-only CPU."""
    checks = {"bf16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"), "fp16": ("_is_amx_fp16_supported",)}[dtype]
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def cpu_reason(cfg: Config) -> str | None:
    """Why ``cfg`` cannot honestly run on a CPU, or None: every CPU rule of the kit, in one place."""
    t = cfg.train
    if t.accelerator == "cuda":
        return "accelerator is 'cuda' and no GPU is visible"
    # bf16 and fp16 autocast and bf16 weights run on a CPU that multiplies them natively: the dtypes, memory and
    # losses they change show there, though their speed says nothing about a GPU's. TF32 does not exist on a CPU.
    if t.precision == "tf32":
        return ("precision tf32 is a mode of NVIDIA tensor cores; a CPU computes fp32 as fp32, so this run would "
                "repeat the fp32 one")
    precision = PRECISIONS[t.precision]
    low = precision.matmul if precision.half else None  # the 16-bit format the matrix products run in
    if low and not cpu_multiplies(low):
        return (f"precision {t.precision}: this CPU has no {low} instructions ({CPU_INSTRUCTIONS[low]}), so PyTorch would "
                f"emulate {low}, several times slower than fp32; notebook 03 shows what autocast changes on any CPU")
    if cfg.data.on_gpu:
        return "data.on_gpu holds the data set in GPU memory"
    if t.strategy in ("dp", "deepspeed"):  # fsdp runs on CPUs too (FSDP2 over gloo)
        return f"strategy {t.strategy} needs GPUs"
    if cfg.launch.backend == "nccl":
        return "launch.backend nccl is NVIDIA's GPU library; CPUs use gloo"
    if t.fused:
        return "fused optimizer kernels are CUDA kernels"
    if cfg.model.compile:
        return ("model.compile on a CPU generates CPU code for minutes, which says nothing about the GPU kernels "
                "it would generate")
    if cfg.model.split_devices > 1:
        return (f"model.split_devices is {cfg.model.split_devices}: the layer split needs GPUs, and PyTorch sees a CPU "
                "as one device, so a split over it would move nothing (notebook 07 shows the split on a CPU)")
    if t.devices > 2 * (cores := len(os.sched_getaffinity(0))):
        # CPU ranks (gloo) oversubscribed beyond two per core measure nothing but each other's waiting.
        return (f"train.devices is {t.devices} and this process may use {cores} CPU core(s): set train.devices to at "
                f"most {2 * cores} for CPU ranks, or run on GPUs")
    return None


def skip_reason(cfg: Config, cuda: bool | None = None) -> str | None:
    """Why this machine cannot run ``cfg`` (recorded as 'skipped'), or None if it can. ``cuda``: whether the
    run would use GPUs (default: whether it does here)."""
    cuda = uses_cuda(cfg) if cuda is None else cuda
    return unavailable_reason(cfg, cuda) or (None if cuda else cpu_reason(cfg))
