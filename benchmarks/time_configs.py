"""Run configurations one after another, as a notebook runs each (``labkit.run``), and time each end to end.

    python benchmarks/time_configs.py --profile gpu --out runs.csv params/07_t5_model_parallel/*_2gpu.yaml
    python benchmarks/time_configs.py --set train.max_steps=300 --out runs.csv params/01_baseline_bert_squad/baseline_bf16.yaml

Run it from the kit's root (the one whose labkit is imported). Each configuration runs in a Python process
of its own, so the wall time includes everything a notebook's run cell costs: imports, data and tokenizer,
model set-up, the launcher's processes, training, validation and generation. One CSV row per configuration,
written as soon as it finishes.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

COLUMNS = ["config", "status", "wall_s", "train_time_s", "samples_per_s", "peak_allocated_gb", "per_gpu_gb",
           "final_val_loss", "accuracy", "step_s", "fwd_bwd_s", "optimizer_s", "wait_s", "data_s", "gpu_util_mean_pct",
           "error"]


def run(params_file: str, profile: str, overrides: dict, runs_dir: Path, timeout_s: float) -> dict:
    """labkit.run in a fresh process; the summary fields of COLUMNS, the status and the wall time."""
    code = ("import json, labkit\n"
            f"r = labkit.run({params_file!r}, {profile!r}, {overrides!r}, runs_dir={str(runs_dir)!r})\n"
            "s = r['summary']\n"
            "print('LABKIT_RESULT ' + json.dumps({'status': r['status'], 'error': r.get('error'), **s}), flush=True)\n")
    start = time.monotonic()
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"status": "timed out", "wall_s": timeout_s, "error": f"still running after {timeout_s:.0f} s"}
    wall = time.monotonic() - start
    for line in out.stdout.splitlines():
        if line.startswith("LABKIT_RESULT "):
            return {**json.loads(line.removeprefix("LABKIT_RESULT ")), "wall_s": wall}
    last = (out.stderr or out.stdout).strip().splitlines()[-1:] or ["no output"]
    return {"status": "failed", "wall_s": wall, "error": last[0]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("params", nargs="+", help="params files, run in this order")
    p.add_argument("--profile", default="gpu")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--timeout-s", type=float, default=600, help="for each configuration")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every configuration")
    p.add_argument("--runs-dir", type=Path, help="keep the runs' records (and profiled traces) here; default: a temporary folder")
    args = p.parse_args(argv)
    overrides = {k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in args.set)}

    runs_dir = args.runs_dir or Path(tempfile.mkdtemp(prefix="labkit-timed-"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    total = time.monotonic()
    with args.out.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for params_file in args.params:
            r = run(params_file, args.profile, overrides, runs_dir, args.timeout_s)
            per_gpu = [r[k] for k in sorted(r) if k.startswith("peak_allocated_gb_gpu")]
            row = {"config": Path(params_file).stem, **r, "per_gpu_gb": " / ".join(f"{v:.2f}" for v in per_gpu)}
            row = {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}
            writer.writerow(row)
            f.flush()
            print(", ".join(f"{k}={row.get(k)}" for k in COLUMNS if row.get(k) not in (None, "")), flush=True)
    print(f"all {len(args.params)} configurations: {time.monotonic() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
