"""Execute every notebook for every params file of a profile with papermill (``make run-all``).

    python -m labkit.launch.runall --profile smoke [--force] [--only 01 03] [--config ddp fsdp] [--runs-dir runs]

Executed notebooks land in runs/<profile>/<notebook>/<config>.ipynb beside their results records.
A configuration is finished when its record says so (ok, oom, skipped) and its notebook was executed to
the end; a finished configuration is not run again unless --force, so an interrupted run-all (Ctrl-C,
SIGTERM from a preempted SLURM job, a kill) continues where it stopped. A failed configuration, or one
whose record or notebook is damaged, does not stop the others; the summary at the end lists each with
its whole error. Each configuration is locked while it runs, so run-alls started side by side (SLURM
array tasks, two terminals) share the work instead of running one configuration twice.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from labkit import results
from labkit.config import ROOT, ConfigError, profile_path

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


def plan(only: list[str] | None = None, configs: list[str] | None = None) -> list[Job]:
    """Every notebook x params file, in notebook order; notebooks without params run once, last.
    ``configs`` keeps only those configurations (params file names without .yaml)."""
    jobs, once = [], []
    for nb in sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb")):
        if only and not any(nb.stem.startswith(o) for o in only):
            continue
        files = sorted((PARAMS / nb.stem).glob("*.yaml"))
        if files:
            jobs += [Job(nb, p) for p in files]
        else:
            once.append(Job(nb, None))
    if configs:
        unknown = set(configs) - {j.config for j in jobs}
        if unknown:
            known = ", ".join(sorted({j.config for j in jobs})) or "none"
            raise SystemExit(f"--config {' '.join(sorted(unknown))}: no such params file in the notebooks chosen "
                             f"(--only {' '.join(only or []) or 'all'}); their configurations: {known}")
        return [j for j in jobs if j.config in configs]
    return jobs + once


@contextlib.contextmanager
def claim(lock: Path) -> Iterator[str | None]:
    """Lock one configuration while it runs; yields None when this process holds the lock, else who does.

    flock is dropped by the operating system however the holder ends (even SIGKILL), so a killed run
    leaves no stale lock; on a cluster's NFS Linux maps it to POSIX locks, which hold across nodes."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield None
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def executed_to_the_end(notebook: Path) -> bool:
    """Whether papermill finished executing ``notebook`` with every cell run: a run-all killed mid-notebook leaves
    cells 'pending' and no end time, and a disk that filled mid-write leaves a file that is not JSON."""
    try:
        executed = json.loads(notebook.read_bytes())
        meta, cells = executed["metadata"]["papermill"], executed["cells"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    # A job stopped before its cells ran (scancel) gets an end time and 'completed' cells from papermill's clean-up
    # too; its code cells were never given an execution count.
    return bool(meta.get("end_time")) and not meta.get("exception") and \
        all(c.get("metadata", {}).get("papermill", {}).get("status") == "completed" for c in cells) and \
        all(c.get("execution_count") is not None for c in cells if c.get("cell_type") == "code" and "".join(c.get("source", "")).strip())


def finished(job: Job, runs_dir: Path, profile: str) -> tuple[str | None, str]:
    """(the finished record's status, '') or (None, why it is not finished: '' when it never ran)."""
    out = job.output(runs_dir, profile)
    if not out.exists():
        return None, ""
    if not executed_to_the_end(out):
        return None, f"{out} was not executed to the end; running it again"
    if not job.params_file:
        return None, ""  # a notebook without a record (the report) reads the others' records: run it each time
    try:
        record = results.read(out.with_suffix(""), strict=True)
    except results.DamagedRecord as err:
        return None, f"{err}"
    status = (record or {}).get("status")
    return (status, "") if status in FINISHED else (None, "")


def bytecode_note(environ: Mapping[str, str] = os.environ) -> str | None:
    """A note for the log where Python keeps no bytecode cache (container images often set PYTHONDONTWRITEBYTECODE,
    and ship none): every notebook's kernel and every rank then compiles torch's, Lightning's and transformers'
    sources again, seconds per process and per configuration."""
    if not environ.get("PYTHONDONTWRITEBYTECODE"):
        return None
    return ("note: PYTHONDONTWRITEBYTECODE is set, so Python keeps no bytecode cache here and every notebook's kernel "
            "and every rank compiles torch's, Lightning's and transformers' sources again (on an H200 host, "
            "`import torch, lightning.fabric` took 12-19 s instead of 8-8.5 s with a cache; docs/benchmarks.md). "
            "To keep one: unset PYTHONDONTWRITEBYTECODE, and export PYTHONPYCACHEPREFIX=<a writable folder> where "
            "site-packages is read-only.")


def _terminate(signum, frame):
    raise KeyboardInterrupt  # SIGTERM (scancel, a preempted SLURM job): stop as Ctrl-C does


def run_job(job: Job, profile: str, runs_dir: Path, overrides: dict | None = None) -> tuple[str, str]:
    import papermill

    parameters = {"profile": profile, "runs_dir": str(runs_dir)}
    if job.params_file:  # the report notebook takes neither a configuration nor overrides
        parameters.update(config=str(job.params_file.relative_to(ROOT)), overrides=overrides or {})
    out = job.output(runs_dir, profile)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        papermill.execute_notebook(str(job.notebook), str(out), parameters=parameters, cwd=str(NOTEBOOKS),
                                   kernel_name="python3", progress_bar=False, log_output=True)
    except papermill.PapermillExecutionError as err:
        return "failed", f"{err.ename}: {err.evalue}"  # whole: a ConfigError's key and allowed values are on its later lines
    try:
        record = results.read(out.parent / job.config, strict=True) if job.params_file else None
    except results.DamagedRecord as err:
        return "failed", str(err)
    return (record["status"], record.get("error") or "") if record else ("ok", "")


def main(argv: list[str] | None = None, overrides: dict | None = None) -> int:
    """``overrides``: dotted keys laid over every configuration run (e.g. a shorter run for a test)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--force", action="store_true", help="run finished configurations again")
    parser.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 03")
    parser.add_argument("--config", nargs="*", help="configurations (params file names), e.g. ddp fsdp")
    parser.add_argument("--runs-dir", default=str(results.RUNS_DIR))
    args = parser.parse_args(argv)
    try:  # before any work: a misspelt profile must not start nine notebooks, a path must not write outside runs/
        profile_path(args.profile)
    except ConfigError as err:
        parser.error(str(err))
    runs_dir = Path(args.runs_dir).resolve()
    os.environ["LABKIT_HEADLESS"] = "1"  # the kernels inherit it: plain progress lines in the logs
    if note := bytecode_note():
        print(note, file=sys.stderr, flush=True)
    jobs = plan(args.only, args.config)
    rows = []
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        for i, job in enumerate(jobs, 1):
            name = f"{job.notebook.stem}/{job.config}"
            out = job.output(runs_dir, args.profile)
            status, why = finished(job, runs_dir, args.profile)
            if status and not args.force:  # finished is final: no lock needed to see it (a read-only runs dir)
                rows.append((name, "done earlier", status, ""))
                continue
            if why:
                print(f"{name}: {why}", file=sys.stderr, flush=True)
            try:
                with claim(out.with_name(f".{job.config}.lock")) as holder:
                    if holder:
                        rows.append((name, "-", "busy", f"running elsewhere ({holder}); not started here"))
                        continue
                    # again under the lock: a run-all beside this one may have just finished it
                    status, _ = finished(job, runs_dir, args.profile)
                    if status and not args.force:
                        rows.append((name, "done earlier", status, ""))
                        continue
                    print(f"[{i}/{len(jobs)}] {name} (profile {args.profile})", flush=True)
                    start = time.perf_counter()
                    try:
                        status, message = run_job(job, args.profile, runs_dir, overrides)
                    except Exception as err:  # a broken notebook file, a kernel that died: record and go on
                        status, message = "failed", f"{type(err).__name__}: {err}"
                    took = time.perf_counter() - start
                    rows.append((name, f"{took:.0f}s", status, message))
                    print(f"[{i}/{len(jobs)}] {name}: {status} in {took:.0f} s{slowest_cells(out)}", flush=True)
            except OSError as err:  # a read-only or full runs dir: this configuration cannot run, the others may
                rows.append((name, "-", "failed", f"cannot write its results: {err}"))
    except KeyboardInterrupt:
        summary(rows)  # what finished before the interruption, as a whole run-all would list it
        print("\ninterrupted: finished configurations are kept; run again to continue", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 1 if summary(rows)["failed"] else 0


def cell_times(notebook: Path) -> list[tuple[float, str]]:
    """(seconds, source) of each code cell of an executed notebook, from papermill's timings (0 for a cell not run)."""
    cells = [c for c in json.loads(notebook.read_text())["cells"] if c.get("cell_type") == "code"]
    return [(c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0, "".join(c.get("source", ""))) for c in cells]


def slowest_cells(notebook: Path, count: int = 2) -> str:
    """' (cells 62 s; slowest: 35 s `record = labkit.run(...`, 4 s `plots...`)' from papermill's timings of an executed
    notebook: where a configuration's time went (the rest of its time is the kernel's start)."""
    try:
        timed = sorted(cell_times(notebook), key=lambda pair: pair[0], reverse=True)
    except (OSError, ValueError, KeyError):
        return ""
    shown = []
    for seconds, source in timed[:count]:
        code = [line.strip() for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]
        first = next((line for line in code if not line.startswith(("import ", "from "))), code[0] if code else "")
        shown.append(f"{seconds:.0f} s `{first[:48]}`")
    return f" (cells {sum(t for t, _ in timed):.0f} s; slowest: {', '.join(shown)})" if shown else ""


def summary(rows: list[tuple[str, str, str, str]]) -> dict[str, int]:
    """Print one line per configuration (its whole error under it) and the counts; returns the counts."""
    width = max((len(r[0]) for r in rows), default=10)
    print(f"\n{'configuration':<{width}}  {'time':>12}  {'status':<8}  note")
    for name, took, status, message in rows:
        first, *more = message.splitlines() or [""]
        print(f"{name:<{width}}  {took:>12}  {status:<8}  {first}")
        for line in more:  # the rest of an error (each problem of a params file) under its row
            print(f"{'':<{width + 26}}{line}")
    counts = {s: sum(r[2] == s for r in rows) for s in ("ok", "oom", "skipped", "failed", "busy")}
    print("  ".join(f"{k}: {v}" for k, v in counts.items()))
    return counts


if __name__ == "__main__":
    sys.exit(main())
