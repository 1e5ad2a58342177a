"""SLURM jobs for a profile (``make slurm``): one job per notebook x configuration, a job array where a
notebook's configurations need the same resources, then a job for the report notebook and the HTML pages.

    python -m labkit.launch.slurm --profile gpu [--only 05] [--config ddp fsdp] [--dry-run]
                           [--partition P] [--account A] [--time 01:00:00] [--runs-dir runs]

Each job executes its one configuration with papermill through ``labkit.launch.runall --config``, which skips a
configuration that already finished and locks one that is running: resubmitting, or a job requeued after
preemption, continues where the last one stopped and never runs a configuration twice at once.

Resources come from the params (profile <- params file, as the notebook runs them):
  * GPUs per node: train.devices x model.split_devices. DDP, FSDP and DeepSpeed run one process per GPU,
    which the notebook's own ``labkit.run`` starts with torchrun (labkit.launch.distributed, as in notebook 05);
    DataParallel and a layer-split model drive all their GPUs from one process.
  * nodes: train.num_nodes, one task per node (labkit.launch.distributed starts one torchrun per node with srun).
  * CPUs: each process's loader workers plus one, at least 4.
  * time: launch.timeout_s (the longest a run may take) plus 10 minutes for the kernel, data and validation.
--partition and --account default to $LABKIT_SLURM_PARTITION and $LABKIT_SLURM_ACCOUNT, else the cluster's.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from labkit import config as config_mod
from labkit import results
from labkit.launch import runall
from labkit.config import Config, ConfigError

MARGIN_S = 600  # kernel start, data preparation and validation, on top of launch.timeout_s
REPORT_TIME = "00:30:00"
SLURM_TIME = re.compile(r"^(\d+-\d{1,2}(:\d{2}){0,2}|\d+(:\d{2}){0,2})$")  # sbatch's --time formats


@dataclass(frozen=True)
class Resources:
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 4
    time: str = REPORT_TIME


@dataclass
class Batch:
    """One sbatch submission: a notebook's configurations that need the same resources (an array if several)."""
    notebook: str
    configs: list[str]  # empty: the report notebook, which has no params files
    resources: Resources
    name: str = ""  # of the job and its script
    script: str = ""


def slurm_time(seconds: float) -> str:
    """Seconds as sbatch's [D-]HH:MM:SS, rounded up to the minute."""
    minutes = -(-int(seconds) // 60)
    days, minutes = divmod(minutes, 24 * 60)
    return (f"{days}-" if days else "") + f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def resources(cfg: Config, time_limit: str | None = None) -> Resources:
    """What one configuration needs from SLURM (see the module's docstring)."""
    t = cfg.train
    gpus = 0 if t.accelerator == "cpu" else t.devices * cfg.model.split_devices
    processes = t.devices if t.strategy in ("ddp", "fsdp", "deepspeed") else 1
    return Resources(nodes=t.num_nodes, gpus_per_node=gpus, cpus_per_task=max(4, processes * (cfg.data.num_workers + 1)),
                     time=time_limit or slurm_time(cfg.launch.timeout_s + MARGIN_S))


def plan(profile: str, only: list[str] | None = None, configs: list[str] | None = None,
         time_limit: str | None = None) -> list[Batch]:
    """The submissions for a profile, in notebook order, the report (a notebook without params) last: a
    notebook's configurations with the same nodes, GPUs and time share one array (with the most CPUs any
    of them needs). Every params file is validated first: one bad file stops everything before anything
    is submitted."""
    batches: dict[tuple, Batch] = {}
    errors = []
    for job in runall.plan(only, configs):
        if job.params_file is None:
            batches[(job.notebook.stem,)] = Batch(job.notebook.stem, [], Resources(time=time_limit or REPORT_TIME))
            continue
        try:
            need = resources(config_mod.load(job.params_file, profile), time_limit)
        except ConfigError as err:
            errors.append(str(err))
            continue
        batch = batches.setdefault((job.notebook.stem, need.nodes, need.gpus_per_node, need.time),
                                   Batch(job.notebook.stem, [], need))
        batch.configs.append(job.config)
        batch.resources = Resources(need.nodes, need.gpus_per_node, max(need.cpus_per_task, batch.resources.cpus_per_task), need.time)
    if errors:
        raise ConfigError("no job was submitted; fix these params files first:\n" + "\n".join(errors))
    names: set[str] = set()
    for b in batches.values():  # notebook order, the report last (runall.plan's order)
        gpus = b.resources.gpus_per_node * b.resources.nodes
        b.name = f"{b.notebook}-{b.configs[0]}" if len(b.configs) == 1 else f"{b.notebook}-{gpus}gpu" if b.configs else b.notebook
        b.name += f"-{b.resources.time.replace(':', '')}" if b.name in names else ""  # same GPUs, another time limit
        names.add(b.name)
    return list(batches.values())


def script(batch: Batch, profile: str, runs_dir: Path, partition: str | None, account: str | None) -> str:
    """The sbatch script of one submission."""
    r = batch.resources
    logs = runs_dir / profile / "slurm"
    lines = ["#!/bin/bash", f"#SBATCH --job-name=labkit-{profile}-{batch.name}", f"#SBATCH --nodes={r.nodes}",
             "#SBATCH --ntasks-per-node=1", f"#SBATCH --cpus-per-task={r.cpus_per_task}", f"#SBATCH --time={r.time}"]
    if r.gpus_per_node:
        lines.append(f"#SBATCH --gres=gpu:{r.gpus_per_node}")
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if account:
        lines.append(f"#SBATCH --account={account}")
    array = len(batch.configs) > 1
    if array:
        lines.append(f"#SBATCH --array=0-{len(batch.configs) - 1}")
    lines += [f"#SBATCH --output={logs}/%x-{'%A_%a' if array else '%j'}.out",
              "#SBATCH --requeue", "# --requeue: a preempted job runs again, and run-all skips what finished"]
    python, root = shlex.quote(sys.executable), shlex.quote(str(runall.ROOT))
    runall_cmd = f"{python} -m labkit.launch.runall --profile {shlex.quote(profile)} --only {batch.notebook}"
    where = shlex.quote(str(runs_dir))
    if not batch.configs:
        body = [f"# {batch.notebook}: reads every record of profile {profile}, then the HTML pages and their index",
                f"{runall_cmd} --runs-dir {where}",
                f"exec {python} -m labkit.report --profile {shlex.quote(profile)} --runs-dir {where}"]
    else:
        gpus = f"{r.gpus_per_node} GPU(s) on each of {r.nodes} node(s)" if r.gpus_per_node else "no GPU"
        body = [f"# {batch.notebook}, profile {profile}: {' '.join(batch.configs)} ({gpus})"]
        if array:
            body += [f"configs=({' '.join(batch.configs)})", 'config="${configs[$SLURM_ARRAY_TASK_ID]}"']
        else:
            body.append(f"config={batch.configs[0]}")
        body.append(f'exec {runall_cmd} --config "$config" --runs-dir {where}')
    return "\n".join(lines + ["set -euo pipefail", f"cd {root}", "export PYTHONUNBUFFERED=1"] + body) + "\n"


def submit(path: Path, after: list[str]) -> str:
    """sbatch a script; returns its job id."""
    argv = ["sbatch", "--parsable"] + ([f"--dependency=afterany:{':'.join(after)}"] if after else []) + [str(path)]
    out = subprocess.run(argv, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"sbatch {path} failed (exit {out.returncode}): {out.stderr.strip()}")
    return out.stdout.strip().split(";")[0]  # "<id>[;<cluster>]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 05")
    parser.add_argument("--config", nargs="*", help="configurations (params file names), e.g. ddp fsdp")
    parser.add_argument("--partition", default=os.environ.get("LABKIT_SLURM_PARTITION"))
    parser.add_argument("--account", default=os.environ.get("LABKIT_SLURM_ACCOUNT"))
    parser.add_argument("--time", help="time limit of every job, e.g. 01:30:00 (default: launch.timeout_s + 10 min)")
    parser.add_argument("--runs-dir", default=str(results.RUNS_DIR))
    parser.add_argument("--dry-run", action="store_true", help="print the scripts, submit nothing")
    args = parser.parse_args(argv)
    if args.time and not SLURM_TIME.match(args.time):
        parser.error(f"--time {args.time!r}: use sbatch's format, e.g. 45 (minutes), 01:30:00 or 1-12:00:00")
    runs_dir = Path(args.runs_dir).resolve()
    try:
        config_mod.profile_for(args.profile, "")  # an unknown profile: one clear error now, not one in every job
        batches = plan(args.profile, args.only, args.config, args.time)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2
    for batch in batches:
        batch.script = script(batch, args.profile, runs_dir, args.partition, args.account)
    if args.dry_run:
        for batch in batches:
            print(f"# ---- {batch.name}.sbatch" + (" (after every job above)" if not batch.configs else ""))
            print(batch.script)
        return 0
    if shutil.which("sbatch") is None:
        print("sbatch not found: run this on a SLURM login node, or add --dry-run to see the scripts", file=sys.stderr)
        return 2
    folder = runs_dir / args.profile / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    submitted: list[str] = []
    for batch in batches:
        path = folder / f"{batch.name}.sbatch"
        path.write_text(batch.script)
        job = submit(path, submitted if not batch.configs else [])
        submitted.append(job)
        size = f"array of {len(batch.configs)}" if len(batch.configs) > 1 else "1 job"
        print(f"submitted {job}: {batch.name} ({size}) -> {path}")
    print(f"logs: {folder}/*.out; executed notebooks and records: {runs_dir / args.profile}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
