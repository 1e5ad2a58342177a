"""Runs of several processes, started from a notebook (notebook 05).

A notebook kernel cannot host several ranks, so ``launch`` starts the run as processes of its own:
``torchrun`` with one process per device on this machine, or, in a SLURM job of several nodes, one
``torchrun`` per node through ``srun``. Every rank runs ``labkit.launch.worker`` -> ``labkit.launch.runner.execute``
(the same loop as a one-device run) and rank 0 writes the results record. The ranks' output is
streamed into the notebook, prefixed with the rank. A rank that fails ends the whole run (torchrun
stops the others); a run still going after ``launch.timeout_s`` is stopped, with every rank's Python
stack dumped first. Either way the record says which rank failed and why, and nothing hangs.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

from labkit import measure, preflight, results
from labkit.launch import NO_MULTICAST
from labkit.config import ROOT, Config

GRACE_S = 10  # between asking processes to stop and killing them


class LaunchError(RuntimeError):
    """A multi-process run that failed or timed out; its record holds the failing rank's error."""


def slurm_nodes() -> list[str]:
    """Host names of this SLURM job's nodes (empty outside SLURM)."""
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not (os.environ.get("SLURM_JOB_ID") and nodelist):
        return []
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def command(cfg: Config, spec: Path, logs: Path) -> list[str]:
    """torchrun with one process per device running labkit.launch.worker; through srun over a job's nodes."""
    t = cfg.train
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={t.devices}", "--max-restarts=0",
                "--monitor-interval=0.5", "--tee=3", f"--log-dir={logs}"]
    worker = ["-m", "labkit.launch.worker", str(spec)]
    if t.num_nodes == 1:
        return torchrun + ["--standalone"] + worker
    # One torchrun per node; they meet at the job's first node (c10d rendezvous).
    head, job = slurm_nodes()[0], os.environ["SLURM_JOB_ID"]
    return (["srun", f"--nodes={t.num_nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"] + torchrun
            + [f"--nnodes={t.num_nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={head}:29500",
               f"--rdzv-id=labkit-{job}-{spec.parent.parent.name}"] + worker)


def launch(cfg: Config, identity: dict, directory: Path) -> dict:
    """Run ``cfg`` as one process per device; return rank 0's results record (raise if a rank failed)."""
    from labkit.launch.runner import execute  # runner starts this launcher for multi-process strategies

    cuda = torch.cuda.is_available() and cfg.train.accelerator != "cpu"
    if preflight.gpu_only_reason(cfg, cuda):
        return execute(cfg, identity, directory)  # records 'skipped' with the reason; starts nothing
    work = directory / "launch"
    shutil.rmtree(work, ignore_errors=True)
    (directory / "result.json").unlink(missing_ok=True)  # a record from an earlier run must not pass for this one
    spec = work / "spec.json"
    results.write_json_atomic(spec, {"params": cfg.model_dump(mode="json"), "identity": identity, "directory": str(directory)})
    argv = command(cfg, spec, work / "logs")
    processes = cfg.train.devices * cfg.train.num_nodes
    print(f"launching {processes} processes ({cfg.train.strategy}, {cfg.train.num_nodes} node(s)):\n  {' '.join(argv)}", flush=True)
    env = {**os.environ, **NO_MULTICAST, "LABKIT_HEADLESS": "1", "PYTHONUNBUFFERED": "1",
           "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[rank${rank}] "}
    start = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=300)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_pump, args=(proc, lines), daemon=True).start()
    timed_out, interrupted = False, None
    try:
        timed_out = _stream(proc, lines, tail, start + cfg.launch.timeout_s)
        if timed_out:
            _dump_stacks(work)
            _stream(proc, lines, tail, time.monotonic() + 3)  # torchrun relays the stacks about once a second
    except BaseException as err:  # the notebook's cell was interrupted: the ranks must not outlive it
        interrupted = err
    finally:
        _stop(proc)
    ranks = {r["rank"]: r for r in (json.loads(p.read_text()) for p in work.glob("rank*.json"))}
    record = results.read(directory) or _empty_record(cfg, identity, cuda)
    record["launch"] = {"command": argv, "processes": processes, "nodes": cfg.train.num_nodes, "exit_code": proc.returncode,
                        "wall_s": time.monotonic() - start, "logs": str(work / "logs"),
                        "ranks": {str(r): v["status"] for r, v in sorted(ranks.items())}}
    done = [r for r in ranks.values() if r["status"] != "running"]
    oom = [r for r in done if r["status"] == "oom"]
    failed = sorted((r for r in done if r["status"] == "failed"), key=lambda r: r["time"])
    if interrupted is None and not timed_out and proc.returncode == 0 and record["status"] in ("ok", "skipped"):
        results.save(record, directory)
        return record
    if oom and interrupted is None:  # a measurement, not a crash: the sweep goes on
        record.update(status="oom", error=f"rank {oom[0]['rank']}: {oom[0]['error']}")
        results.save(record, directory)
        return record
    if interrupted is not None:
        record.update(status="failed", error=f"interrupted ({type(interrupted).__name__}): every rank was stopped")
    elif failed:  # the first rank to fail is the cause; the others fail because it left
        record.update(status="failed", error=f"rank {failed[0]['rank']} failed: {failed[0]['error']}",
                      traceback=failed[0].get("traceback"))
    elif timed_out:
        pending = sorted(set(range(processes)) - {r["rank"] for r in done})
        starting = sorted(set(pending) - set(ranks))  # no status yet: still importing
        error = (f"timed out after {cfg.launch.timeout_s:.0f} s (launch.timeout_s): rank(s) {pending} had not finished "
                 "— a hung rank, or ranks waiting in a collective for it")
        if starting:
            error += f"; rank(s) {starting} were still starting up"
        if set(pending) - set(starting):
            error += "; the stacks of the ranks at work are in the record's traceback"
        record.update(status="failed", traceback="\n".join(tail), error=error)
    else:  # a rank died without a word (killed, segfault) or torchrun itself failed
        record.update(status="failed", traceback="\n".join(tail),
                      error=f"the processes ended with exit code {proc.returncode} and no rank reported an error; "
                            f"last output: {tail[-1] if tail else '(none)'}")
    record["run"]["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
    results.save(record, directory)
    if interrupted is not None:
        raise interrupted
    raise LaunchError(record["error"])


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # progress bars' cursor moves


def _pump(proc: subprocess.Popen, lines: queue.Queue) -> None:
    for raw in iter(proc.stdout.readline, b""):
        line = ANSI.sub("", raw.decode(errors="replace")).rstrip()
        if re.sub(r"\[rank\d+\]", "", line).strip():  # not an empty line of a rank
            lines.put(line)
    lines.put(None)


def _stream(proc: subprocess.Popen, lines: queue.Queue, tail: collections.deque, deadline: float) -> bool:
    """Print the processes' output as it comes until they end; True if the deadline passed first."""
    while True:
        try:
            line = lines.get(timeout=max(0.0, min(1.0, deadline - time.monotonic())))
        except queue.Empty:
            if time.monotonic() >= deadline:
                return True
            continue
        if line is None:
            proc.wait()
            return False
        print(line, flush=True)
        tail.append(line)


def _dump_stacks(work: Path) -> None:
    """Ask every rank still running on this machine to print its Python stack (labkit.launch.worker's SIGUSR1)."""
    for path in work.glob("rank*.json"):
        rank = json.loads(path.read_text())
        if rank["status"] == "running" and rank["host"] == socket.gethostname():  # a pid means nothing elsewhere
            try:
                os.kill(rank["pid"], signal.SIGUSR1)
            except ProcessLookupError:  # it ended meanwhile
                pass


def _stop(proc: subprocess.Popen) -> None:
    """End torchrun and every process it started: SIGTERM to the group, SIGKILL after a grace period."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(GRACE_S)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _empty_record(cfg: Config, identity: dict, cuda: bool) -> dict:
    """The record of a run whose rank 0 never started (the same fields labkit.launch.runner.execute writes)."""
    env = {**measure.environment(torch.device("cuda", 0) if cuda else torch.device("cpu")),
           "device_count": cfg.train.devices * (cfg.train.num_nodes if cuda else 1)}
    return {"run": {**identity, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, "params": cfg.model_dump(mode="json"),
            "env": env, "status": "failed", "error": None, "summary": {}, "curves": {}, "info": {}}
