"""SLURM jobs for a profile (``make slurm``): one job per notebook x configuration, a job array where a
notebook's configurations need the same resources, then a job for the report notebook and the HTML pages.

    python -m labkit.launch.slurm --profile gpu [--only 05] [--config ddp fsdp] [--dry-run]
                           [--partition P] [--account A] [--time 01:00:00] [--cpus-per-task N] [--runs-dir runs]

Each job executes its one configuration with papermill through ``labkit.launch.runall --config``, which skips a
configuration that already finished and locks one that is running: resubmitting, or a job requeued after
preemption, continues where the last one stopped and never runs a configuration twice at once. The report
job waits for every other job (afterany) and is submitted whenever the report notebook is among those chosen.

Resources come from the params (profile <- params file, as the notebook runs them):
  * GPUs per node: train.devices x model.split_devices, unless train.accelerator is 'cpu' or the profile
    runs on CPUs (its ``slurm: {gpus: false}``, as in smoke). DDP, FSDP and DeepSpeed run one process per
    GPU, which the notebook's own ``labkit.run`` starts with torchrun (labkit.launch.distributed);
    DataParallel and a layer-split model drive all their GPUs from one process. A job without GPUs hides
    any GPU of its node, so 'auto' runs on the CPUs it got; a GPU-only configuration there gets one CPU and
    records 'skipped' with the reason, as run-all does on a CPU.
  * nodes: train.num_nodes, one task per node (labkit.launch.distributed starts one torchrun per node with srun).
  * CPUs per task: one per process plus one per loader worker (train.devices x (data.num_workers + 1)), at
    least 4 in a job with GPUs; or --cpus-per-task / $LABKIT_SLURM_CPUS_PER_TASK for all jobs.
  * memory per node: launch.memory_gb (none set: the partition's default).
  * time: launch.timeout_s (the longest a run may take) plus 10 minutes for the kernel, data and validation.
--partition and --account default to $LABKIT_SLURM_PARTITION and $LABKIT_SLURM_ACCOUNT, else the cluster's.
Before anything is submitted, each job is checked against the partition's nodes (sinfo): a job that could
never start there is named, with what it asks for and what the partition has.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from labkit import config as config_mod
from labkit import preflight, results
from labkit.config import Config, ConfigError
from labkit.launch import runall

MARGIN_S = 600  # kernel start, data preparation and validation, on top of launch.timeout_s
REPORT_TIME = "00:30:00"
SLURM_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")  # sbatch's --time formats
# Partition and account names as SLURM makes them. They are written into #SBATCH lines, which sbatch
# parses itself, so anything else (a space, a quote, a newline) is refused rather than escaped.
SLURM_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
MULTI_PROCESS = ("ddp", "fsdp", "deepspeed")
GPU_JOB_MIN_CPUS = 4
PYTHON = sys.executable  # the jobs run the kit with the interpreter that submitted them (the kit's environment)


@dataclass(frozen=True)
class Resources:
    """What one job asks for: nodes, and on each node one task with its GPUs, CPUs and memory."""
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    memory_mb: int | None = None  # per node; None: the partition's default
    time: str = REPORT_TIME


@dataclass
class Batch:
    """One sbatch submission: a notebook's configurations that need the same resources (an array if several)."""
    notebook: str
    configs: list[str]  # empty: the report notebook, which has no params files
    resources: Resources
    name: str = ""  # of the job and its script
    script: str = ""


@dataclass(frozen=True)
class Node:
    """One node of a partition, as sinfo reports it."""
    name: str
    cpus: int
    memory_mb: int
    gpus: int


def slurm_time(seconds: float) -> str:
    """Seconds as sbatch's [D-]HH:MM:SS, rounded up to the minute."""
    minutes = -(-int(seconds) // 60)
    days, minutes = divmod(minutes, 24 * 60)
    return (f"{days}-" if days else "") + f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def time_seconds(text: str) -> float:
    """A SLURM time ([D-]HH:MM:SS, D-HH[:MM], MM[:SS], 'infinite') in seconds."""
    if text in ("infinite", "UNLIMITED"):
        return float("inf")
    days, _, clock = text.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if days:  # D-HH, D-HH:MM, D-HH:MM:SS
        h, m, s = (parts + [0, 0])[:3]
    elif len(parts) == 3:
        h, m, s = parts
    else:  # MM, MM:SS
        h, (m, s) = 0, (parts + [0])[:2]
    return ((int(days or 0) * 24 + h) * 60 + m) * 60 + s


def profile_uses_gpus(profile: str) -> bool:
    """Whether 'auto' configurations of ``profile`` should get GPUs (its ``slurm: {gpus: ...}``, default yes)."""
    return bool(config_mod.profile_for(profile, "slurm").get("gpus", True))


def resources(cfg: Config, time_limit: str | None = None, gpus: bool = True, cpus_per_task: int | None = None) -> Resources:
    """What one configuration needs from SLURM (see the module's docstring). ``gpus``: whether the profile runs
    on GPUs; ``cpus_per_task`` replaces the CPUs computed from the params."""
    t = cfg.train
    time = time_limit or slurm_time(cfg.launch.timeout_s + MARGIN_S)
    memory_mb = round(cfg.launch.memory_gb * 1024) if cfg.launch.memory_gb else None
    if not (gpus and t.accelerator != "cpu"):
        if preflight.cpu_reason(cfg):  # GPU-only: the run records 'skipped' with the reason, as run-all does on a CPU
            return Resources(cpus_per_task=cpus_per_task or 1, memory_mb=memory_mb, time=time)
        gpus_per_node = 0
    else:
        gpus_per_node = t.devices * cfg.model.split_devices
    processes = t.devices if t.strategy in MULTI_PROCESS else 1
    cpus = processes * (cfg.data.num_workers + 1)
    if gpus_per_node:  # GPU nodes have CPUs to spare; the kernel, the GPU sampler and host-side batching use them
        cpus = max(cpus, GPU_JOB_MIN_CPUS)
    return Resources(nodes=t.num_nodes, gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task or cpus,
                     memory_mb=memory_mb, time=time)


def plan(profile: str, only: list[str] | None = None, configs: list[str] | None = None,
         time_limit: str | None = None, cpus_per_task: int | None = None) -> list[Batch]:
    """The submissions for a profile, in notebook order, the report (a notebook without params) last: a
    notebook's configurations with the same nodes, GPUs, memory and time share one array (with the most
    CPUs any of them needs). Every params file is validated first: one bad file stops everything before
    anything is submitted."""
    if configs:
        runall.plan(only, configs)  # an unknown configuration: runall's error, which lists the known ones
    gpus = profile_uses_gpus(profile)
    batches: dict[tuple, Batch] = {}
    errors = []
    for job in runall.plan(only):
        if job.params_file is None:
            batches[(job.notebook.stem,)] = Batch(job.notebook.stem, [], Resources(time=time_limit or REPORT_TIME))
            continue
        if configs and job.config not in configs:
            continue
        try:
            need = resources(config_mod.load(job.params_file, profile), time_limit, gpus, cpus_per_task)
        except ConfigError as err:
            errors.append(str(err))
            continue
        key = (job.notebook.stem, need.nodes, need.gpus_per_node, need.memory_mb, need.time)
        batch = batches.setdefault(key, Batch(job.notebook.stem, [], need))
        batch.configs.append(job.config)
        batch.resources = replace(need, cpus_per_task=max(need.cpus_per_task, batch.resources.cpus_per_task))
    if errors:
        raise ConfigError("no job was submitted; fix these params files first:\n" + "\n".join(errors))
    names: set[str] = set()
    for b in batches.values():  # notebook order, the report last (runall.plan's order)
        gpus_total = b.resources.gpus_per_node * b.resources.nodes
        b.name = (f"{b.notebook}-{_safe(b.configs[0])}" if len(b.configs) == 1
                  else f"{b.notebook}-{f'{gpus_total}gpu' if gpus_total else 'cpu'}" if b.configs else b.notebook)
        for suffix in ("", f"-{b.resources.nodes}node", f"-{b.resources.time.replace(':', '')}",
                       f"-{b.resources.memory_mb}M"):  # the same GPUs with other nodes, time or memory
            if b.name + suffix not in names:
                b.name += suffix
                break
        else:
            b.name += f"-{len(names)}"
        names.add(b.name)
    return list(batches.values())


def _safe(text: str) -> str:
    """``text`` for a job or file name: characters other than letters, digits, '.', '_', '+', '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _sbatch_output(folder: Path, pattern: str) -> str:
    """--output's value for an #SBATCH line: double-quoted (sbatch splits its lines on blanks), a '%' of the
    folder doubled (in sbatch's file names '%' starts a pattern such as %j). A folder sbatch cannot read
    back whole is refused."""
    text = str(folder)
    if '"' in text or any(not c.isprintable() for c in text):
        raise ValueError(f"{text!r}: a path with a double quote or a control character cannot be given to sbatch; "
                         "use another --runs-dir")
    return f'"{text.replace("%", "%%")}/{pattern}"'


def script(batch: Batch, profile: str, runs_dir: Path, partition: str | None, account: str | None) -> str:
    """The sbatch script of one submission. Every name that comes from a file name or an option is quoted
    for the shell; partition and account must be SLURM names (``SLURM_NAME``)."""
    for what, value in (("partition", partition), ("account", account)):
        if value is not None and not SLURM_NAME.match(value):
            raise ValueError(f"{what} {value!r} is not a SLURM name (letters, digits, '_', '.', '-')")
    r = batch.resources
    logs = runs_dir / profile / "slurm"
    array = len(batch.configs) > 1
    lines = ["#!/bin/bash", f"#SBATCH --job-name=labkit-{_safe(profile)}-{_safe(batch.name)}", f"#SBATCH --nodes={r.nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={r.cpus_per_task}", f"#SBATCH --time={r.time}"]
    if r.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{r.gpus_per_node}")
    if r.memory_mb:
        lines.append(f"#SBATCH --mem={r.memory_mb}M")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    if array:
        lines.append(f"#SBATCH --array=0-{len(batch.configs) - 1}")
    lines += [f"#SBATCH --output={_sbatch_output(logs, '%x-%A_%a.out' if array else '%x-%j.out')}",
              "#SBATCH --requeue", "# --requeue: a preempted job runs again, and run-all skips what finished",
              "set -euo pipefail", f"cd {shlex.quote(str(runall.ROOT))}", "export PYTHONUNBUFFERED=1"]
    if not r.gpus_per_node:  # a job without GPUs must not use one the scheduler gave to another job
        lines.append('export CUDA_VISIBLE_DEVICES=""')
    python, where = shlex.quote(PYTHON), shlex.quote(str(runs_dir))
    runall_cmd = (f"{python} -m labkit.launch.runall --profile {shlex.quote(profile)} "
                  f"--only {shlex.quote(batch.notebook)}")
    if not batch.configs:
        lines += [f"# {_printable(batch.notebook)}: reads every record of the profile, then the HTML pages and their index "
                  "(reports/<profile> beside the runs folder)",
                  f"{runall_cmd} --runs-dir {where}",
                  f"exec {python} -m labkit.report --profile {shlex.quote(profile)} --runs-dir {where} "
                  f"--out-dir {shlex.quote(str(runs_dir.parent / 'reports' / profile))}"]
    else:
        gpus = f"{r.gpus_per_node} GPU(s) on each of {r.nodes} node(s)" if r.gpus_per_node else f"no GPU, {r.nodes} node(s)"
        lines.append(f"# {_printable(batch.notebook)}: {_printable(' '.join(batch.configs))} ({gpus})")
        if array:
            lines += [f"configs=({' '.join(shlex.quote(c) for c in batch.configs)})",
                      'config="${configs[$SLURM_ARRAY_TASK_ID]}"']
        else:
            lines.append(f"config={shlex.quote(batch.configs[0])}")
        lines.append(f'exec {runall_cmd} --config "$config" --runs-dir {where}')
    return "\n".join(lines) + "\n"


def _printable(text: str) -> str:
    """``text`` for a comment line: a newline in a file name must not end the comment."""
    return "".join(c if c.isprintable() else "?" for c in text)


def partition_nodes(partition: str | None) -> tuple[str, list[Node], float]:
    """The partition's name, nodes and time limit in seconds (the default partition when ``partition`` is None)."""
    out = subprocess.run(["sinfo", "--noheader", "--Node", "--format=%P|%N|%c|%m|%G|%l"], capture_output=True,
                         text=True, timeout=60)
    if out.returncode:
        raise RuntimeError(f"sinfo failed (exit {out.returncode}), so nothing was submitted: {out.stderr.strip()}")
    rows = [line.split("|") for line in out.stdout.splitlines() if line.count("|") == 5]
    names = sorted({p.rstrip("*") for p, *_ in rows})
    if partition is None:
        defaults = {p.rstrip("*") for p, *_ in rows if p.endswith("*")}
        if not defaults:
            raise RuntimeError(f"this cluster has no default partition: choose one with --partition or "
                               f"LABKIT_SLURM_PARTITION (partitions: {', '.join(names) or 'none'})")
        partition = defaults.pop()
    mine = [r for r in rows if r[0].rstrip("*") == partition]
    if not mine:
        raise RuntimeError(f"partition {partition!r} does not exist on this cluster; partitions: {', '.join(names) or 'none'}")
    nodes = {r[1]: Node(r[1], int(r[2].rstrip("+")), int(r[3].rstrip("+") or 0), gpu_count(r[4])) for r in mine}
    return partition, list(nodes.values()), time_seconds(mine[0][5])


def gpu_count(gres: str) -> int:
    """GPUs in sinfo's %G, e.g. 'gpu:4', 'gpu:a100:4(S:0-1)', 'gpu:a100:2,gpu:v100:2', '(null)'."""
    return sum(int(n) for n in re.findall(r"(?:^|,)gpu(?::[^:,(]+)?:(\d+)", gres))


def unfit(batches: list[Batch], partition: str, nodes: list[Node], limit_s: float) -> list[str]:
    """What each job asks for that ``partition`` cannot give: one line per job that could never start there."""
    problems = []
    for b in batches:
        r = b.resources
        fits = [n for n in nodes if n.cpus >= r.cpus_per_task and n.gpus >= r.gpus_per_node
                and (r.memory_mb is None or n.memory_mb >= r.memory_mb)]
        wants = [f"{r.cpus_per_task} CPUs"] + ([f"{r.gpus_per_node} GPU(s)"] if r.gpus_per_node else []) + \
                ([f"{r.memory_mb} MB"] if r.memory_mb else [])
        if len(fits) < r.nodes:
            best = (f"{max(n.cpus for n in nodes)} CPUs, {max(n.gpus for n in nodes)} GPU(s), "
                    f"{max(n.memory_mb for n in nodes)} MB")
            fixes = [f for f, short in (("--cpus-per-task (or LABKIT_SLURM_CPUS_PER_TASK)",
                                         max(n.cpus for n in nodes) < r.cpus_per_task),
                                        ("--partition (one with GPUs), or a profile without GPUs such as smoke",
                                         max(n.gpus for n in nodes) < r.gpus_per_node),
                                        ("launch.memory_gb", r.memory_mb and max(n.memory_mb for n in nodes) < r.memory_mb),
                                        ("train.num_nodes", len(nodes) < r.nodes)) if short]
            problems.append(f"{b.name}: asks for {r.nodes} node(s) with {', '.join(wants)} each; partition "
                            f"{partition!r} has {len(fits)} such node(s) of {len(nodes)} (the most on one node: {best})"
                            + (f"; to fit, change {'; '.join(fixes)}" if fixes else ""))
        if time_seconds(r.time) > limit_s:
            problems.append(f"{b.name}: asks for {r.time}, longer than partition {partition!r}'s limit "
                            f"({slurm_time(limit_s)}); set --time, or a shorter launch.timeout_s")
    return problems


def submit(path: Path, after: list[str]) -> str:
    """sbatch a script; returns its job id."""
    argv = ["sbatch", "--parsable"] + ([f"--dependency=afterany:{':'.join(after)}"] if after else []) + [str(path)]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if out.returncode:
        raise RuntimeError(f"sbatch {path} failed (exit {out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]  # "<id>[;<cluster>]"


def _positive(text: str) -> int:
    """--cpus-per-task's value (also from LABKIT_SLURM_CPUS_PER_TASK, which argparse converts the same way)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of CPUs, at least 1")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 05")
    parser.add_argument("--config", nargs="*", help="configurations (params file names), e.g. ddp fsdp")
    parser.add_argument("--partition", default=os.environ.get("LABKIT_SLURM_PARTITION") or None)
    parser.add_argument("--account", default=os.environ.get("LABKIT_SLURM_ACCOUNT") or None)
    parser.add_argument("--time", help="time limit of every job, e.g. 01:30:00 (default: launch.timeout_s + 10 min)")
    parser.add_argument("--cpus-per-task", type=_positive, default=os.environ.get("LABKIT_SLURM_CPUS_PER_TASK") or None,
                        help="CPUs of every job's task (default: one per process and loader worker)")
    parser.add_argument("--runs-dir", default=str(results.RUNS_DIR))
    parser.add_argument("--dry-run", action="store_true", help="print the scripts, submit nothing")
    args = parser.parse_args(argv)
    if args.time and not SLURM_TIME.match(args.time):
        parser.error(f"--time {args.time!r}: use sbatch's format, e.g. 45 (minutes), 01:30:00 or 1-12:00:00")
    for what in ("partition", "account"):  # from the environment too, where a newline would become a command
        value = getattr(args, what)
        if value is not None and not SLURM_NAME.match(value):
            parser.error(f"--{what} {value!r} (or LABKIT_SLURM_{what.upper()}) is not a SLURM {what} name: "
                         "letters, digits, '_', '.' and '-' only")
    runs_dir = Path(args.runs_dir).resolve()
    try:
        config_mod.profile_for(args.profile, "")  # an unknown profile: one clear error now, not one in every job
        batches = plan(args.profile, args.only, args.config, args.time, args.cpus_per_task)
        for batch in batches:
            batch.script = script(batch, args.profile, runs_dir, args.partition, args.account)
    except (ConfigError, ValueError) as err:
        print(err, file=sys.stderr)
        return 2
    if args.dry_run:
        for batch in batches:
            print(f"# ---- {batch.name}.sbatch" + (" (after every job above)" if not batch.configs else ""))
            print(batch.script)
        return 0
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        print("sbatch or sinfo not found: run this on a SLURM login node, or add --dry-run to see the scripts", file=sys.stderr)
        return 2
    try:
        partition, nodes, limit_s = partition_nodes(args.partition)
    except RuntimeError as err:
        print(err, file=sys.stderr)
        return 2
    if problems := unfit(batches, partition, nodes, limit_s):
        print(f"no job was submitted: {len(problems)} job(s) could never start in partition {partition!r}:\n  "
              + "\n  ".join(problems), file=sys.stderr)
        return 2
    folder = runs_dir / args.profile / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    submitted: list[str] = []
    for batch in batches:
        path = folder / f"{batch.name}.sbatch"
        path.write_text(batch.script)
        try:
            job = submit(path, submitted if not batch.configs else [])
        except RuntimeError as err:
            queued = f"; already queued: {' '.join(submitted)} (scancel them, or leave them)" if submitted else ""
            print(f"{err}{queued}", file=sys.stderr)
            return 1
        submitted.append(job)
        size = f"array of {len(batch.configs)}" if len(batch.configs) > 1 else "1 job"
        print(f"submitted {job}: {batch.name} ({size}) -> {path}")
    print(f"logs: {folder}/*.out; executed notebooks and records: {runs_dir / args.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
