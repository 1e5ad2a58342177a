"""A two-node SLURM cluster on this machine, for tests against the real scheduler.

munged, slurmctld and two slurmd (``-N n1``, ``-N n2``) from Debian's ``slurm-wlm`` and ``munge`` packages,
everything (config, key, sockets, state, logs) in one temporary folder. Both nodes have NodeAddr 127.0.0.1
and a port of their own, 2 CPUs and no GPU; their names are not host names, as on many clusters where
node names differ from what resolves. Client commands find the cluster through SLURM_CONF.

    python tests/slurm_cluster.py    # start one by hand; Ctrl-C stops it

Needs root (slurmd starts job steps as their user) and the packages (``apt-get install slurm-wlm munge``).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NODES = ("n1", "n2")
CPUS = 2
MEMORY_MB = 4000
PARTITION = "cpu"
PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here (None: it can)."""
    if os.geteuid() != 0:
        return "not root: slurmd starts job steps as their user, which needs root"
    missing = [p for p in PROGRAMS if shutil.which(p, path=f"{os.environ.get('PATH', '')}:/usr/sbin") is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """A started cluster; ``stop`` ends every daemon it started and cancels every job left."""

    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        # slurmctld, slurmd and munged live in /usr/sbin, which a non-login PATH may lack
        # (and a test run inside a job of another cluster must not pass its SLURM_* on to this one's jobs)
        # OMP_NUM_THREADS=1: both nodes share this machine's cores and task/none binds a job to none of them, so
        # each PyTorch process of a one-CPU job would start a thread per core, and spin them against each other
        self.env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
                    "SLURM_CONF": str(self.conf), "PATH": f"{os.environ.get('PATH', '')}:/usr/sbin",
                    "OMP_NUM_THREADS": "1"}
        self._daemons: list[tuple[str, Path]] = []  # name, pid file

    # -- starting --------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60) -> "Cluster":
        try:
            self._munge()
            self._write_conf()
            self._spawn("slurmctld", ["slurmctld", "-f", str(self.conf)], self.root / "slurmctld.pid")
            for node in NODES:
                self._spawn(f"slurmd {node}", ["slurmd", "-f", str(self.conf), "-N", node], self.root / f"slurmd-{node}.pid")
            self._wait_idle(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _munge(self) -> None:
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.munge_socket = self.root / "munge.socket"
        pid = self.root / "munged.pid"
        # --force: munged otherwise refuses to run as root; every file it touches is in our own folder
        self._spawn("munged", ["munged", "--force", f"--key-file={key}", f"--socket={self.munge_socket}",
                               f"--pid-file={pid}", f"--log-file={self.root / 'munged.log'}",
                               f"--seed-file={self.root / 'munged.seed'}"], pid)

    def _write_conf(self) -> None:
        state, host = self.root / "state", socket.gethostname().split(".")[0]
        state.mkdir()
        nodes = "\n".join(f"NodeName={n} NodeAddr=127.0.0.1 NodeHostname={host} Port={_free_port()} "
                          f"CPUs={CPUS} RealMemory={MEMORY_MB} State=UNKNOWN" for n in NODES)
        self.conf.write_text(f"""\
ClusterName=labkit-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={state}
SlurmdSpoolDir={self.root}/spool-%n
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd-%n.pid
SlurmctldLogFile={self.root}/slurmctld.log
SlurmdLogFile={self.root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
SchedulerType=sched/backfill
# the scheduler's and backfill's passes every second (defaults 60 s and 30 s): jobs start as soon as they can
SchedulerParameters=sched_interval=1,bf_interval=1
MpiDefault=none
SwitchType=switch/none
ReturnToService=2
# a cancelled job's processes get SIGKILL 2 s after SIGTERM (default 30 s)
KillWait=2
MinJobAge=600
InactiveLimit=0
{nodes}
PartitionName={PARTITION} Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE DefMemPerCPU=1000 State=UP
""")

    def _spawn(self, name: str, argv: list[str], pid_file: Path) -> None:
        # the daemons fork into the background and write their pid files; wait for them to start
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=30)
        if out.returncode:
            raise RuntimeError(f"{name} did not start (exit {out.returncode}): {out.stderr.strip() or out.stdout.strip()}"
                               f"{self._log_tail(name)}")
        self._daemons.append((name, pid_file))
        deadline = time.monotonic() + 15
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if not pid_file.exists():
            raise RuntimeError(f"{name} started but wrote no pid file {pid_file}{self._log_tail(name)}")

    def _wait_idle(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        states = ""
        while time.monotonic() < deadline:
            out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
            states = out.stdout.strip()
            if out.returncode == 0 and sorted(states.split("\n")) == [f"{n} idle" for n in NODES]:
                return
            time.sleep(0.2)
        raise RuntimeError(f"the nodes did not come up within {timeout_s:.0f} s (sinfo: {states!r})"
                           f"{self._log_tail('slurmctld')}")

    def _log_tail(self, name: str) -> str:
        log = self.root / f"{name.replace(' ', '-')}.log"
        return f"\n{log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.is_file() else ""

    # -- using -----------------------------------------------------------------------------------
    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        out = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode:
            raise RuntimeError(f"{' '.join(argv)}: exit {out.returncode}: {out.stderr.strip()}")
        return out

    def jobs(self) -> dict[str, str]:
        """Job id (``<id>`` or ``<array id>_<task>``) -> state, for every job the controller still knows."""
        out = self.run("squeue", "-h", "-t", "all", "-o", "%i %T", check=False)
        return dict(line.split() for line in out.stdout.splitlines() if line.strip())

    def state(self, job: str) -> str:
        """A job's state from the controller (COMPLETED, FAILED, CANCELLED, ... ; several for an array)."""
        out = self.run("scontrol", "-o", "show", "job", job)
        return " ".join(sorted({f.split("=", 1)[1] for line in out.stdout.splitlines()
                                for f in line.split() if f.startswith("JobState=")}))

    def wait(self, jobs: list[str], timeout_s: float) -> dict[str, str]:
        """Wait until none of ``jobs`` is pending or running; their final states."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = {j: self.state(j) for j in jobs}
            if not any(s in states_ for states_ in states.values() for s in ("PENDING", "RUNNING", "CONFIGURING",
                                                                               "COMPLETING", "REQUEUED")):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still going after {timeout_s:.0f} s: {states}")
            time.sleep(0.5)

    # -- stopping --------------------------------------------------------------------------------
    def stop(self) -> None:
        """Cancel every job, then end the daemons this cluster started (slurmd, slurmctld, munged last), and
        any job process that outlived its cancelled job."""
        if any(name == "slurmctld" for name, _ in self._daemons):
            self.run("scancel", "--full", "-u", "root", check=False)
            deadline = time.monotonic() + 30
            while self.jobs_running() and time.monotonic() < deadline:
                time.sleep(0.5)
        left = [p for name, pid_file in self._daemons if name.startswith("slurmd") for p in _descendants(_pid(pid_file))]
        for name, pid_file in reversed(self._daemons):
            _end(_pid(pid_file))
        for pid in left:  # slurmstepd and the job's processes, started by our slurmd
            _end(pid)
        self._daemons.clear()

    def jobs_running(self) -> bool:
        return any(s in ("RUNNING", "COMPLETING", "PENDING", "CONFIGURING") for s in self.jobs().values())


def _pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _descendants(pid: int | None) -> list[int]:
    """Every process below ``pid`` (from /proc), children first."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid] if pid else []
    while todo:
        children = parents.get(todo.pop(), [])
        found += children
        todo += children
    return found


def _end(pid: int | None) -> None:
    """SIGTERM process ``pid``, SIGKILL after 10 s."""
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
        for _ in range(100):
            if _ended(pid):
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _ended(pid: int) -> bool:
    """Gone, or a zombie (a daemon's parent is init, which may reap it late)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def start(root: Path | None = None) -> Cluster:
    """Start a cluster in ``root`` (a new temporary folder by default)."""
    root = root or Path(tempfile.mkdtemp(prefix="labkit-slurm-"))
    return Cluster(root).start()


if __name__ == "__main__":
    if reason := unavailable_reason():
        sys.exit(reason)
    cluster = start()
    print(f"export SLURM_CONF={cluster.conf}\nCtrl-C stops the cluster", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
