"""labkit's data-parallel configurations and the bare torchrun loops side by side, on one machine, one CSV.

    python benchmarks/distributed_vs_bare.py --out docs/measured/2xH200-distributed.csv

Every row is a notebook 05 configuration run by ``labkit.run`` in a process of its own, as the notebook
runs it (in-process for one device and DataParallel, through labkit's launcher for ddp, fsdp and
deepspeed; ``ddp1_here`` is ddp on one GPU in labkit.run's own process, given the variables torchrun would
set, and ``ddp1_torchrun`` the same process started by a plain torchrun instead, so that ``single``,
``ddp1_here``, ``ddp1_torchrun`` and ``ddp1`` part DDP's wrapper, torchrun and labkit's launcher), beside the
bare loop of the same strategy (``benchmarks/bare_distributed.py``, run with torchrun on labkit's own first
batches). Columns:

* ``samples_per_s``: labkit's steady-state figure from its results record; ``bare_samples_per_s``: the
  bare loop's; ``vs_bare``: their ratio.
* ``scaling_efficiency``: samples/s over (devices x labkit's own one-GPU in-process samples/s);
  ``bare_scaling_efficiency``: the same for the bare loops, against the bare one-GPU loop.
* ``peak_allocated_gb``: labkit's peak allocated memory on the fullest GPU (steady state).
* ``gc_pause_s``: the seconds labkit's first rank spent in Python's garbage collector during training, validation
  included; ``gc_steady_pause_s``: those inside the steady-state steps that ``samples_per_s`` is measured over.

Rows are named on the command line and run in that order (default: every row of ROWS); ``ROW:key=value,...``
is row ROW again with those overrides (e.g. one instrument switched off), so that what each instrument costs
is read off rows measured on the same machine start:

    python benchmarks/distributed_vs_bare.py single ddp ddp:measure.profile_steps=0 fsdp --out distributed.csv

A configuration this machine cannot run (too few GPUs, DeepSpeed missing) is a row with its status. Under each
multi-rank row the command prints each rank's own median step, loader time and GPU wait for the host (the record's
``step_s_rank<r>``, ``data_s_rank<r>``, ``wait_s_rank<r>``; the CSV's figures are rank 0's).

One run of a configuration moves by up to 10% on a shared machine, more than the differences these rows
are read for. ``--repeats N`` runs every row and its bare loop N times, the order of the rows turned round
each time (a, b, c, then c, b, a), so that neither a drift of the machine nor a position in the sequence
passes for a difference. Each ratio is then taken within one repeat (labkit against the bare loop measured
next to it), the CSV holds each configuration's median over the repeats (``runs``: how many; ``vs_bare_min`` and
``vs_bare_max``: the ratio's spread over them, against which a difference between rows is read), and
``<out>.runs.csv`` every run with its ``repeat``. ``--budget-s S`` ends the command before a row that the
longest row so far says would end after S seconds, rather than have a time limit cut a row off half-measured.

The first run on a freshly started machine can be slower than the rest (on one H200, 42 ms of GPU time for a
step's forward and backward against 34-35 ms in the three runs after it, docs/benchmarks.md): before the rows,
the bare one-GPU loop runs once unrecorded to warm the GPU (``--no-warm-up`` skips it).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from labkit import results
from labkit.config import parse_settings

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NOTEBOOK = "05_ddp_fsdp"
BARE_INPUT = "params/01_baseline_bert_squad/baseline_bf16.yaml"  # the same generated SQuAD features as notebook 05's
COLUMNS = ["configuration", "devices", "samples_per_s", "bare_samples_per_s", "vs_bare", "scaling_efficiency",
           "peak_allocated_gb", "bare_scaling_efficiency", "gc_pause_s", "gc_steady_pause_s", "status", "runs", "vs_bare_min", "vs_bare_max"]
FIGURES = ["samples_per_s", "bare_samples_per_s", "vs_bare", "scaling_efficiency", "peak_allocated_gb",
           "bare_scaling_efficiency", "gc_pause_s", "gc_steady_pause_s"]


@dataclass
class Row:
    key: str  # as rows are named on the command line
    name: str  # as the CSV shows it
    config: str  # params/05_ddp_fsdp/<config>.yaml
    bare: str | None  # bare_distributed.py --strategy for the same work, or None (no bare equivalent)
    overrides: dict = field(default_factory=dict)
    in_process: bool = False  # a one-rank ddp run in labkit.run's own process, as if torchrun had started it
    torchrun: bool = False  # that process started by torchrun itself (no labkit launcher, no labkit worker)


ROWS = [
    Row("single", "single (1 GPU, in-process)", "single", "none"),
    Row("ddp1", "ddp 1 GPU (through the launcher)", "ddp", "none", {"train.devices": 1}),
    # The same DDP-wrapped model on one GPU without the launcher: against ddp1 it shows what the launched process costs,
    # against single what DistributedDataParallel's wrapper costs on one rank.
    Row("ddp1_here", "ddp 1 GPU (in-process)", "ddp", "none", {"train.devices": 1}, in_process=True),
    Row("ddp1_torchrun", "ddp 1 GPU (plain torchrun)", "ddp", "none", {"train.devices": 1}, torchrun=True),
    Row("ddp", "ddp", "ddp", "ddp"),
    Row("fsdp", "fsdp", "fsdp", "fsdp"),
    Row("dp", "dp (DataParallel)", "dp", None),
    Row("deepspeed", "deepspeed ZeRO-2", "deepspeed", None),
]


def each_rank(summary: dict) -> str | None:
    """Each rank's own median step, loader time and GPU wait for the host, in ms, from a multi-rank record (None for
    one process): under DDP every rank waits for the slowest at each all-reduce, and the record's figures are rank 0's."""
    ranks = results.each_rank(summary)
    if not ranks:
        return None
    return "each rank, median ms: " + "; ".join(
        f"rank {r}: step {1e3 * s['step_s']:.1f}, data {1e3 * s['data_s']:.2f}, "
        f"GPU waiting for the host {1e3 * s['wait_s']:.2f}" for r, s in ranks.items())


def run_labkit(row: Row, common: dict, runs_dir: Path, timeout_s: float, profile: str = "gpu") -> dict:
    """One configuration through labkit.run in a fresh Python process; returns its status, error, summary and
    whether labkit's launcher started its processes."""
    overrides = {**common, **row.overrides}
    code = ("import json, labkit\n"
            f"r = labkit.run('params/{NOTEBOOK}/{row.config}.yaml', {profile!r}, {overrides!r}, runs_dir={str(runs_dir)!r})\n"
            "print('LABKIT_RESULT ' + json.dumps({'status': r['status'], 'error': r.get('error'), "
            "'summary': r['summary'], 'launched': 'launch' in r}), flush=True)\n")
    env = dict(os.environ)
    if row.in_process:  # the variables torchrun sets for a rank: labkit.run then trains here instead of launching
        from lightning.fabric.plugins.environments.lightning import find_free_network_port

        env.update(LOCAL_RANK="0", RANK="0", GROUP_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(find_free_network_port()), TORCHELASTIC_RUN_ID="labkit-side-by-side")
    argv = [sys.executable, "-c", code]
    if row.torchrun:  # torchrun sets a rank's variables, so labkit.run trains in the process torchrun starts
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", "--no-python", *argv]
    try:
        out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "error": f"still running after {timeout_s:.0f} s", "summary": {}}
    for line in out.stdout.splitlines():
        if line.startswith("LABKIT_RESULT "):
            return json.loads(line.removeprefix("LABKIT_RESULT "))
    last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"status": "failed", "error": last[0], "summary": {}}


def run_bare(strategy: str, devices: int, args: argparse.Namespace) -> dict:
    """bare_distributed.py under torchrun; returns its JSON line (samples_per_s None, and why, if it gave none)."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
            str(HERE / "bare_distributed.py"), "--strategy", strategy, "--batches-from", BARE_INPUT,
            "--warmup", str(args.bare_warmup), "--steps", str(args.bare_steps)]
    try:
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return {"samples_per_s": None, "error": f"still running after {args.timeout_s:.0f} s"}
    for line in out.stdout.splitlines():
        if line.startswith('{"bench": "bare_distributed"'):
            return json.loads(line)
    return {"samples_per_s": None, "error": out.stderr[-3000:]}


def parse_row(text: str) -> Row:
    """'ddp' -> row ddp; 'ddp:measure.nvtx=false,measure.profile_steps=0' -> row ddp with those overrides."""
    key, _, pairs = text.partition(":")
    base = next((r for r in ROWS if r.key == key), None)
    if base is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected ROW or ROW:key=value,... with ROW one of {[r.key for r in ROWS]}")
    if not pairs:
        return base
    try:
        overrides = parse_settings(pairs)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    label = ", ".join(f"{k.split('.')[-1]}={v}" for k, v in overrides.items())
    return Row(f"{base.key}+{label}", f"{base.name} [{label}]", base.config, base.bare, {**base.overrides, **overrides},
               base.in_process, base.torchrun)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "measured" / "distributed.csv")
    p.add_argument("rows", nargs="*", type=parse_row,
                   help=f"ROW or ROW:key=value,..., run in this order; ROW one of {[r.key for r in ROWS]} (default: all)")
    # Long enough for steady state on 2 GPUs (150 optimizer steps, 20 of them warm-up), short enough for
    # every row and its bare loop in a few minutes.
    p.add_argument("--train-examples", type=int, default=9600)
    p.add_argument("--max-steps", type=int, default=150)
    p.add_argument("--bare-warmup", type=int, default=20)
    p.add_argument("--bare-steps", type=int, default=100)
    p.add_argument("--timeout-s", type=float, default=600)
    p.add_argument("--repeats", type=int, default=1, help="run every row and its bare loop this many times, alternating the order")
    p.add_argument("--no-warm-up", dest="warm_up", action="store_false", help="do not run the bare loop once, unrecorded, first")
    p.add_argument("--log", type=Path, help="also write every result as JSON lines here")
    p.add_argument("--runs-dir", type=Path, help="keep labkit's records, and the traces of their profiled steps "
                   "(benchmarks/trace_gaps.py reads them), here, in a folder per row and repeat (<row>-<repeat>); "
                   "default: a temporary folder")
    p.add_argument("--budget-s", type=float, help="start no row (with its bare loop) that the longest one so far says "
                                                  "would end later than this many seconds after the start")
    args = p.parse_args(argv)

    import torch

    from labkit.bench import Budget
    from labkit.config import load

    gpus = torch.cuda.device_count()
    common = {"data.train_examples": args.train_examples, "train.max_steps": args.max_steps}
    rows = args.rows or ROWS
    log = args.log.open("a") if args.log else None
    bare: dict[tuple[str, int, int], dict] = {}  # (strategy, devices, repeat) -> the bare loop's result
    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="labkit-distributed-"))
    measured: list[tuple[Row, dict]] = []
    if args.warm_up and gpus:
        print(f"warm-up, not recorded: bare none x1: {run_bare('none', 1, args)['samples_per_s']} samples/s", flush=True)
    budget = Budget(args.budget_s)  # a row's time includes its bare loop's
    for repeat in range(args.repeats):
        for row in rows if repeat % 2 == 0 else rows[::-1]:
            if not budget.next_row_fits():
                print(f"stopped before {row.name} (repeat {repeat + 1}): it would end past --budget-s {args.budget_s:.0f}",
                      flush=True)
                break
            start = time.monotonic()
            # A folder per row and repeat: rows of one configuration (ddp1, ddp1_here) would replace each other's trace.
            folder = runs_dir / re.sub(r"[^\w.-]+", "_", f"{row.key}-{repeat + 1}")
            record = run_labkit(row, common, folder, args.timeout_s)
            s = record["summary"]
            devices = load(f"params/{NOTEBOOK}/{row.config}.yaml", "gpu", {**common, **row.overrides}).train.devices
            print(f"{row.name}: {record['status']} {s.get('samples_per_s', float('nan')):.1f} samples/s "
                  f"({time.monotonic() - start:.0f} s){'' if record['status'] == 'ok' else ' ' + str(record['error'])}",
                  flush=True)
            if line := each_rank(s):
                print(f"  {line}", flush=True)
            key = (row.bare, devices, repeat)
            if row.bare and key not in bare and devices <= max(gpus, 1):
                bare[key] = run_bare(row.bare, 1 if row.bare == "none" else devices, args)
                print(f"  bare {row.bare} x{devices}: {bare[key]['samples_per_s']} samples/s", flush=True)
            measured.append((row, {**record, "devices": devices, "repeat": repeat}))
            if log:
                log.write(json.dumps({"row": row.name, "repeat": repeat, "overrides": {**common, **row.overrides},
                                      **record, "bare": bare.get(key)}) + "\n")
                log.flush()
            write_csv(args.out, measured, bare)  # after every row: a run stopped part-way keeps what it measured
            budget.row_done()
        else:
            continue
        break  # the budget ran out: no later repeat either
    if args.out.is_file():
        print(args.out.read_text())
    return 0


def each_run(measured: list[tuple[Row, dict]], bare: dict[tuple[str, int, int], dict]) -> list[dict]:
    """One row per labkit run, its ratios taken against the runs of the same repeat."""
    out = []
    for row, r in measured:
        repeat, devices, rate = r.get("repeat", 0), r["devices"], r["summary"].get("samples_per_s")
        one = next((o["summary"].get("samples_per_s") for w, o in measured if w.key == "single" and o.get("repeat", 0) == repeat), None)
        bare_one = bare.get(("none", 1, repeat), {}).get("samples_per_s")
        ref = bare.get((row.bare, devices, repeat), {}).get("samples_per_s") if row.bare else None
        out.append({
            "configuration": row.name, "devices": devices, "status": r["status"], "repeat": repeat,
            "samples_per_s": rate, "bare_samples_per_s": ref,
            "vs_bare": rate / ref if rate and ref else None,
            "scaling_efficiency": rate / (devices * one) if rate and one else None,
            "peak_allocated_gb": r["summary"].get("peak_allocated_gb"),
            "bare_scaling_efficiency": ref / (devices * bare_one) if ref and bare_one else None,
            "gc_pause_s": r["summary"].get("gc_pause_s"),
            "gc_steady_pause_s": r["summary"].get("gc_steady_pause_s"),
        })
    return out


def write_csv(path: Path, measured: list[tuple[Row, dict]], bare: dict[tuple[str, int, int], dict]) -> None:
    """``path``: each configuration's median over its runs; with several repeats ``<path>.runs.csv``: every run."""
    runs = each_run(measured, bare)
    digits = {"samples_per_s": 1, "bare_samples_per_s": 1, "peak_allocated_gb": 2}
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for name in dict.fromkeys(r["configuration"] for r in runs):
            mine = [r for r in runs if r["configuration"] == name]
            ok = [r for r in mine if r["status"] == "ok"]
            ratios = [r["vs_bare"] for r in ok if r["vs_bare"] is not None]
            writer.writerow({"configuration": name, "devices": mine[0]["devices"], "runs": len(ok),
                             "status": "ok" if ok else mine[-1]["status"],
                             **{k: _median([r[k] for r in ok], digits.get(k, 3)) for k in FIGURES},
                             "vs_bare_min": _round(min(ratios), 3) if ratios else None,
                             "vs_bare_max": _round(max(ratios), 3) if ratios else None})
    if any(r["repeat"] for r in runs):
        with path.with_suffix(".runs.csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, ["repeat", *COLUMNS[:COLUMNS.index("runs")]])  # a run has no spread
            writer.writeheader()
            for r in runs:
                writer.writerow({k: _round(v, digits.get(k, 3)) if isinstance(v, float) else v for k, v in r.items()})


def _median(values: list, digits: int) -> float | None:
    values = [v for v in values if v is not None]
    return _round(statistics.median(values), digits) if values else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


if __name__ == "__main__":
    sys.exit(main())
