"""One configuration with the kit's code at another commit and with this checkout's, alternating, in one CSV.

    python benchmarks/loop_before_after.py --before 9b018e0 --pairs 4 --out before_after.csv \
        --set data.pin_memory=false --set train.max_steps=80 params/01_baseline_bert_squad/baseline_bf16.yaml

The other commit's ``labkit/`` and ``params/`` are unpacked into a temporary folder (``git archive``), and each
run is ``benchmarks/time_configs.py`` in a process of its own from the code's folder, so ``import labkit`` finds
that code. Runs alternate on one machine start, the order turned round every pair (after, before, before,
after, ...), so that neither a drift of the machine nor going first passes for a difference between the two:
absolute figures move between machine starts, pairs measured side by side do not. Columns: code, pair, then
time_configs.py's. With ``--runs-dir`` each run's record (and its profiled steps' trace) is kept there. The
first run on a freshly started machine can be slower than the rest, so one run of this checkout's code goes first,
unrecorded (``--no-warm-up`` skips it).
"""
from __future__ import annotations

import argparse
import csv
import io
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def unpack(commit: str, into: Path) -> Path:
    """``labkit/`` and ``params/`` as they were at ``commit``."""
    archive = subprocess.run(["git", "archive", commit, "labkit", "params"], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def timed(code: Path, params: str, profile: str, settings: list[str], out: Path, runs_dir: Path | None) -> dict:
    """time_configs.py over ``params`` with the labkit in ``code``; its one CSV row."""
    command = [sys.executable, str(HERE / "time_configs.py"), "--profile", profile, "--out", str(out), params]
    if runs_dir is not None:
        command += ["--runs-dir", str(runs_dir)]
    for setting in settings:
        command += ["--set", setting]
    subprocess.run(command, cwd=code, check=True)
    with out.open() as f:
        return next(csv.DictReader(f))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("params", help="one params file, relative to the kit's root")
    p.add_argument("--before", required=True, help="the commit to compare this checkout with")
    p.add_argument("--before-dir", type=Path, help="that commit's labkit/ and params/, unpacked already (a copy without git)")
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--profile", default="gpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="an override for every run")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--runs-dir", type=Path, help="keep each run's record here, in <code>_<pair>/")
    p.add_argument("--no-warm-up", dest="warm_up", action="store_false", help="do not run this checkout's code once, unrecorded, first")
    args = p.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="labkit-before-after-"))
    codes = {"after": ROOT, "before": args.before_dir.resolve() if args.before_dir else unpack(args.before, work / "before")}
    rows = []
    if args.warm_up:
        row = timed(ROOT, args.params, args.profile, args.set, work / "warm_up.csv", None)
        print(f"warm-up, not recorded: {row.get('samples_per_s')} samples/s", flush=True)
    for pair in range(1, args.pairs + 1):
        order = list(codes.items()) if pair % 2 else list(codes.items())[::-1]
        for name, code in order:
            runs = args.runs_dir.resolve() / f"{name}_{pair}" if args.runs_dir else None
            row = timed(code, args.params, args.profile, args.set, work / f"{name}_{pair}.csv", runs)
            rows.append({"code": name if name == "after" else f"before ({args.before})", "pair": pair, **row})
            print(f"pair {pair}, {name}: {row.get('samples_per_s')} samples/s", flush=True)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            with args.out.open("w", newline="") as f:  # after every run: a stopped command keeps what it measured
                writer = csv.DictWriter(f, list(rows[0]))
                writer.writeheader()
                writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
