"""Runs of several processes, started from a notebook (notebook 05).

A notebook kernel cannot host several ranks, so ``launch`` starts the run as processes of its own:
``torchrun`` with one process per device on this machine, or, in a SLURM job of several nodes, one
``torchrun`` per node through ``srun``. Every rank runs ``labkit.launch.worker`` -> ``labkit.launch.runner.execute``
(the same loop as a one-device run). The ranks' output is streamed into the notebook, prefixed with the
rank. A rank that fails ends the whole run (torchrun stops the others); a run still going after
``launch.timeout_s`` is stopped, with every rank's Python stack dumped first. Either way the record says
which rank failed and why (a rank killed by a signal is named with it), and nothing hangs or lingers:
the stop reaches every rank's own process group, and the ranks end themselves when torchrun or this
launcher dies (labkit.launch.worker).

Each run has a folder of its own, launch/<run>/, where the ranks leave their status and rank 0 its
record; only this launcher writes the configuration's result.json. A rank that somehow outlived an
earlier run can write only into that run's folder, never over the record of a later one.
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

from labkit import measure, results
from labkit.launch import NO_MULTICAST
from labkit.launch.worker import alive, process_start
from labkit.config import ROOT, Config

GRACE_S = 10  # between asking processes to stop and killing them
JOIN_TIMEOUT_S = 180  # every node's torchrun has joined the rendezvous by then (imports on a slow shared disk)
STORE_TIMEOUT_S = 20  # a node that cannot reach the head's rendezvous store gives up after this


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
    host, port = rendezvous_endpoint()
    return (["srun", f"--nodes={t.num_nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"] + torchrun
            + [f"--nnodes={t.num_nodes}", "--rdzv-backend=c10d", f"--rdzv-endpoint={_bracketed(host)}:{port}",
               f"--rdzv-conf=join_timeout={JOIN_TIMEOUT_S},read_timeout={STORE_TIMEOUT_S}",
               f"--rdzv-id=labkit-{os.environ['SLURM_JOB_ID']}-{spec.parent.name}"] + worker)


def node_address(node: str) -> str:
    """The address SLURM reaches ``node`` at (its NodeAddr), which every node of the cluster reaches; a SLURM
    node name need not resolve as a host name. The name itself where scontrol cannot say."""
    out = subprocess.run(["scontrol", "--oneliner", "show", "node", node], capture_output=True, text=True, timeout=60)
    found = re.search(r"(?:^|\s)NodeAddr=(\S+)", out.stdout) if out.returncode == 0 else None
    return found.group(1) if found else node


def rendezvous_endpoint() -> tuple[str, int]:
    """Host and port where a SLURM job's nodes meet: the first node's NodeAddr, and a port from the job id
    (20000-29999, below Linux's ephemeral ports), moved on while taken when this is the first node.
    Raises LaunchError, naming both, when the host does not resolve, rather than letting the nodes wait
    for a store that cannot be found."""
    head = slurm_nodes()[0]
    host, port = node_address(head), 20000 + int(os.environ["SLURM_JOB_ID"]) % 10000
    if os.environ.get("SLURMD_NODENAME") == head:  # the store will listen here: take a port free now
        port = next((p for p in range(port, port + 50) if _port_free(p)), port)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise LaunchError(f"the rendezvous endpoint {_bracketed(host)}:{port} (node {head}) does not resolve on "
                          f"{socket.gethostname()}: {err.strerror}; the nodes cannot meet there") from None
    return host, port


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host  # an IPv6 address in host:port


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("", port))
        except OSError:
            return False
        return True


def rendezvous_failure(argv: list[str], tail: collections.deque[str]) -> str | None:
    """The error of a multi-node run whose nodes never met (torchrun's rendezvous failed), naming the endpoint;
    None for any other run."""
    endpoint = next((a.split("=", 1)[1] for a in argv if a.startswith("--rdzv-endpoint=")), None)
    cause = next((line for line in tail if re.search(r"Rendezvous\w*(Error|Timeout)", line)), None)
    if endpoint and cause:
        return (f"the nodes did not meet at the rendezvous {endpoint} (c10d; {JOIN_TIMEOUT_S} s to join, "
                f"{STORE_TIMEOUT_S} s to reach the store): {cause.strip()}")
    return None


def launch(cfg: Config, identity: dict, directory: Path) -> dict:
    """Run ``cfg`` as one process per device; return rank 0's results record (raise if a rank failed)."""
    shutil.rmtree(directory / "launch", ignore_errors=True)  # earlier runs' folders
    work = directory / "launch" / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    # This run's record until rank 0's replaces it: a launcher killed mid-run leaves an honest 'running'.
    results.save(results.new_record(identity, cfg.model_dump(mode="json"), measure.environment_of(cfg)), directory)
    spec = work / "spec.json"
    launcher = {"pid": os.getpid(), "start": process_start(os.getpid()), "host": socket.gethostname()}
    results.write_json_atomic(spec, {"params": cfg.model_dump(mode="json"), "identity": identity, "launcher": launcher})
    try:
        argv = command(cfg, spec, work / "logs")
    except LaunchError as err:  # nothing was started: the record says why within seconds
        record = results.new_record(identity, cfg.model_dump(mode="json"), measure.environment_of(cfg), "failed")
        record["error"], record["run"]["finished"] = str(err), time.strftime("%Y-%m-%d %H:%M:%S")
        results.save(record, directory)
        raise
    processes = cfg.train.devices * cfg.train.num_nodes
    print(f"launching {processes} processes ({cfg.train.strategy}, {cfg.train.num_nodes} node(s)):\n  {' '.join(argv)}", flush=True)
    env = {**os.environ, **NO_MULTICAST, "LABKIT_HEADLESS": "1", "PYTHONUNBUFFERED": "1",
           "TORCHELASTIC_LOG_LINE_PREFIX_TEMPLATE": "[rank${rank}] "}
    start, launched = time.monotonic(), time.time()
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
        _stop(proc, work)
    ranks = _ranks(work)
    _adopt_trace(work, directory)
    record = results.read(work) or results.new_record(identity, cfg.model_dump(mode="json"), measure.environment_of(cfg), "failed")
    record["launch"] = {"command": argv, "processes": processes, "nodes": cfg.train.num_nodes, "exit_code": proc.returncode,
                        "wall_s": time.monotonic() - start, "logs": str(work / "logs"),
                        "ranks": {str(r): v["status"] for r, v in sorted(ranks.items())}}
    record.setdefault("clock", {}).update(launched=launched, launch_ended=time.time())
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
    elif not timed_out and (silent := _silent_deaths(ranks, _exit_codes(tail), processes)):
        # Killed (SIGKILL, the OOM killer, a segfault) before it could say a word: it is the cause, and a rank
        # that reported an error (a connection reset by the dead rank) failed because of it.
        rank, code = silent[0]
        error = f"rank {rank} was {_ended_by(code)} without reporting an error"
        if failed:
            error += f"; then rank {failed[0]['rank']} failed: {failed[0]['error']}"
        record.update(status="failed", error=error, traceback="\n".join(tail))
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
    elif rendezvous := rendezvous_failure(argv, tail):  # the nodes never met, so no rank started
        record.update(status="failed", traceback="\n".join(tail), error=rendezvous)
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


def _ranks(work: Path) -> dict[int, dict]:
    """The status each rank left in this run's folder (labkit.launch.worker), by global rank."""
    ranks = {}
    for path in work.glob("rank*.json"):
        rank = json.loads(path.read_text())  # written atomically by the rank
        ranks[rank["rank"]] = rank
    return ranks


FAILURE = re.compile(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*\n\s*exitcode\s*:\s*(-?\d+) \(pid")


def _exit_codes(tail: collections.deque) -> dict[int, int]:
    """Exit codes by global rank from torchrun's failure summary (``rank : 1 (local_rank: 1)`` then ``exitcode :
    -9 (pid: ...)``); a negative code is the signal that ended the rank."""
    return {int(rank): int(code) for rank, code in FAILURE.findall("\n".join(tail))}


def _silent_deaths(ranks: dict[int, dict], exits: dict[int, int], processes: int) -> list[tuple[int, int]]:
    """(rank, exit code) of the ranks that ended without reporting, other than by torchrun's own SIGTERM (which
    it sends the others once one has failed)."""
    return [(r, exits[r]) for r in range(processes)
            if ranks.get(r, {}).get("status", "running") == "running" and exits.get(r, 0) not in (0, -signal.SIGTERM)]


def _ended_by(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name} (exit code {code})"
        except ValueError:
            return f"killed by signal {-code} (exit code {code})"
    return f"ended with exit code {code}"


def _adopt_trace(work: Path, directory: Path) -> None:
    """Move rank 0's profiler trace from the run's folder to beside the configuration's record."""
    if (work / results.TRACE).is_file():
        os.replace(work / results.TRACE, directory / results.TRACE)


def _dump_stacks(work: Path) -> None:
    """Ask every rank still running on this machine to print its Python stack (labkit.launch.worker's SIGUSR1)."""
    for rank in _ranks(work).values():
        if rank["status"] == "running" and rank["host"] == socket.gethostname():  # a pid means nothing elsewhere
            try:
                os.kill(rank["pid"], signal.SIGUSR1)
            except ProcessLookupError:  # it ended meanwhile
                pass


def _stop(proc: subprocess.Popen, work: Path) -> None:
    """End torchrun and every rank: SIGTERM, then SIGKILL after a grace period, to torchrun's process group and to
    each rank's own (torchrun makes every rank the leader of a new group, which holds its data-loader workers).
    SIGCONT with the SIGTERM lets a stopped rank act on it; SIGKILL ends it either way."""
    here = [r for r in _ranks(work).values() if r["host"] == socket.gethostname()]  # pids mean nothing elsewhere

    def signal_all(signum: int) -> None:
        groups = ([proc.pid] if proc.poll() is None else []) + [r["pgid"] for r in here if alive(r["pid"], r["start"])]
        for group in groups:
            try:
                os.killpg(group, signum)
            except ProcessLookupError:  # ended meanwhile
                pass

    def ended() -> bool:
        return proc.poll() is not None and not any(alive(r["pid"], r["start"]) for r in here)

    if not ended():
        signal_all(signal.SIGTERM)
        signal_all(signal.SIGCONT)
        deadline = time.monotonic() + GRACE_S
        while not ended() and time.monotonic() < deadline:
            time.sleep(0.1)
        signal_all(signal.SIGKILL)
    proc.wait()
