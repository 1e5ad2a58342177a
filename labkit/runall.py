"""Execute every notebook for every params file of a profile with papermill (``make run-all``).

    python -m labkit.runall --profile smoke [--force] [--only 01 03] [--runs-dir runs]

Executed notebooks land in runs/<profile>/<notebook>/<config>.ipynb beside their results records.
A configuration whose record says it finished (ok, oom, skipped) is not run again unless --force,
so an interrupted run-all continues where it stopped; a failed configuration does not stop the
others, and the summary at the end lists each with its error's first line.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from labkit import results

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
PARAMS = ROOT / "params"
FINISHED = ("ok", "oom", "skipped")


@dataclass
class Job:
    notebook: Path
    params_file: Path | None  # None: a notebook that reads results rather than training (the report)

    @property
    def config(self) -> str:
        return self.params_file.stem if self.params_file else self.notebook.stem

    def output(self, runs_dir: Path, profile: str) -> Path:
        return runs_dir / profile / self.notebook.stem / f"{self.config}.ipynb"


def plan(only: list[str] | None = None) -> list[Job]:
    """Every notebook x params file, in notebook order; notebooks without params run once, last."""
    jobs, once = [], []
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        if only and not any(nb.stem.startswith(o) for o in only):
            continue
        configs = sorted((PARAMS / nb.stem).glob("*.yaml"))
        if configs:
            jobs += [Job(nb, p) for p in configs]
        else:
            once.append(Job(nb, None))
    return jobs + once


def run_job(job: Job, profile: str, runs_dir: Path) -> tuple[str, str]:
    import papermill

    parameters = {"profile": profile, "runs_dir": str(runs_dir)}
    if job.params_file:
        parameters["config"] = str(job.params_file.relative_to(ROOT))
    out = job.output(runs_dir, profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(job.notebook), str(out), parameters=parameters, cwd=str(NOTEBOOKS),
                                   kernel_name="python3", progress_bar=False, log_output=True)
    except papermill.PapermillExecutionError as err:
        return "failed", f"{err.ename}: {str(err.evalue).splitlines()[0] if err.evalue else ''}"
    record = results.read(out.parent / job.config) if job.params_file else None
    return (record["status"], record.get("error") or "") if record else ("ok", "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--force", action="store_true", help="run finished configurations again")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 03")
    parser.add_argument("--runs-dir", default=str(results.RUNS_DIR))
    args = parser.parse_args(argv)
    runs_dir = Path(args.runs_dir).resolve()
    os.environ["LABKIT_HEADLESS"] = "1"  # the kernels inherit it: plain progress lines in the logs
    jobs = plan(args.only)
    rows = []
    for i, job in enumerate(jobs, 1):
        name = f"{job.notebook.stem}/{job.config}"
        record = results.read(runs_dir / args.profile / job.notebook.stem / job.config) if job.params_file else None
        if record and record.get("status") in FINISHED and job.output(runs_dir, args.profile).exists() and not args.force:
            rows.append((name, "done earlier", record["status"], ""))
            continue
        print(f"[{i}/{len(jobs)}] {name} (profile {args.profile})", flush=True)
        start = time.perf_counter()
        try:
            status, message = run_job(job, args.profile, runs_dir)
        except KeyboardInterrupt:
            print("\ninterrupted: finished configurations are kept; run again to continue", file=sys.stderr)
            return 130
        except Exception as err:  # a broken notebook file, a kernel that died: record and go on
            status, message = "failed", f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        rows.append((name, f"{time.perf_counter() - start:.0f}s", status, message))
    width = max((len(r[0]) for r in rows), default=10)
    print(f"\n{'configuration':<{width}}  {'time':>12}  {'status':<8}  note")
    for name, took, status, message in rows:
        print(f"{name:<{width}}  {took:>12}  {status:<8}  {message[:100]}")
    counts = {s: sum(r[2] == s for r in rows) for s in ("ok", "oom", "skipped", "failed")}
    print("  ".join(f"{k}: {v}" for k, v in counts.items()))
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
