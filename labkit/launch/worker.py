"""One rank of a multi-process run; labkit.launch.distributed.launch starts it through torchrun:

    python -m torch.distributed.run --nproc-per-node 2 --standalone -m labkit.launch.worker runs/.../launch/<run>/spec.json

It runs the configuration with labkit.launch.runner.execute (rank 0 writes the record into the run's own
folder, beside the spec; the launcher makes it the configuration's result.json) and leaves its own status
there too, rank<N>.json, so the launcher can tell which rank failed first and which processes to stop.

A rank never outlives its run: it dies with torchrun (Linux's parent-death signal) and, through a
watchdog thread, with the launcher (the notebook's kernel, which dies with a run-all killed by kill -9),
so no orphan trains beside the next run of the same configuration.
"""
from __future__ import annotations

import ctypes
import faulthandler
import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

PR_SET_PDEATHSIG = 1  # linux/prctl.h
WATCH_INTERVAL_S = 1.0


def _stat(pid: int) -> list[str] | None:
    """Fields 3 onwards of /proc/<pid>/stat (after the command name, which may hold spaces), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot; field 22), or None if there is no such process. A pid
    with another start time is a new process that reuses the number."""
    stat = _stat(pid)
    return int(stat[19]) if stat else None


def started_at(pid: int) -> float | None:
    """When process ``pid`` started, in Unix seconds, or None if Linux cannot say: now, less the time since boot
    (/proc/uptime, to the hundredth of a second), plus process_start's time after boot."""
    ticks = process_start(pid)
    try:
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return None if ticks is None else time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def parent_of(pid: int) -> int | None:
    stat = _stat(pid)
    return int(stat[1]) if stat else None


def alive(pid: int, start: int | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` (process_start) still runs (a zombie does not)."""
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z" and (start is None or int(stat[19]) == start)


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when torchrun ends, however it ends (even SIGKILL, which torchrun
    cannot relay). SIGKILL, not SIGTERM: it also ends a rank stopped with SIGSTOP."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def watch(launcher: dict) -> None:
    """End this rank's process group (the rank and its data-loader workers) once the launcher has gone."""
    if launcher["host"] != socket.gethostname():
        return  # a rank on another node: srun ends it with its step (--kill-on-bad-exit)
    # Under srun (a run over several nodes) torchrun's parent is slurmstepd, not the launcher; srun, the launcher's
    # child, ends the step. Otherwise a torchrun without the launcher as parent died before die_with_parent took effect.
    if "SLURM_STEP_ID" not in os.environ and parent_of(os.getppid()) != launcher["pid"]:
        os.killpg(os.getpgrp(), signal.SIGKILL)

    def poll() -> None:
        while alive(launcher["pid"], launcher["start"]):
            time.sleep(WATCH_INTERVAL_S)
        os.killpg(os.getpgrp(), signal.SIGKILL)

    threading.Thread(target=poll, name="labkit-launcher-watchdog", daemon=True).start()


def bind_to_gpu_cores(local_rank: int) -> set[int] | None:
    """Restrict this process (and the threads and data-loader workers it starts later) to the CPU cores NVML names
    as nearest the rank's GPU, within those it may use now; returns them, or None where NVML cannot say (no NVIDIA
    driver, a CPU run) or none of them is allowed here."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML library, or no driver
        return None
    try:
        visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
        gpu = int(visible[local_rank]) if visible else local_rank
        words = pynvml.nvmlDeviceGetCpuAffinity(pynvml.nvmlDeviceGetHandleByIndex(gpu), (os.cpu_count() + 63) // 64)
        near = {64 * i + bit for i, word in enumerate(words) for bit in range(64) if word >> bit & 1}
    except (pynvml.NVMLError, ValueError, IndexError):  # a GPU given by UUID, or NVML without this GPU
        return None
    finally:
        pynvml.nvmlShutdown()
    cores = near & os.sched_getaffinity(0)
    if not cores:
        return None
    os.sched_setaffinity(0, cores)
    return cores


def main(argv: list[str] | None = None) -> int:
    die_with_parent()  # first: torch takes seconds to import, and torchrun may be killed meanwhile
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the launcher's stack dump of a hung rank
    spec_path = Path((argv or sys.argv[1:])[0])
    spec = json.loads(spec_path.read_text())
    watch(spec["launcher"])
    rank = int(os.environ["RANK"])
    status = spec_path.parent / f"rank{rank}.json"
    if spec["params"]["launch"]["bind_cpus"]:  # before torch starts its threads, which inherit the binding
        cores = bind_to_gpu_cores(int(os.environ["LOCAL_RANK"]))
        print(f"bound to the {len(cores)} CPU cores nearest this rank's GPU" if cores else
              "launch.bind_cpus: not bound, NVML cannot say which CPU cores are nearest this rank's GPU", flush=True)

    import torch.distributed as dist

    from labkit import results
    from labkit.config import Config
    from labkit.launch.runner import execute

    def report(state: str, **extra) -> None:
        results.write_json_atomic(status, {"rank": rank, "status": state, "time": time.time(), "pid": os.getpid(),
                                           "pgid": os.getpgrp(), "start": process_start(os.getpid()),
                                           "host": socket.gethostname(), **extra})

    report("running")  # with the pid the launcher signals for a stack dump, and the group it stops
    try:
        clock = {"process_started": started} if (started := started_at(os.getpid())) else {}
        record = execute(Config.model_validate(spec["params"]), spec["identity"], spec_path.parent, clock)
    except BaseException as err:
        report("failed", error=f"{type(err).__name__}: {err}", traceback=traceback.format_exc())
        raise
    report(record["status"], error=record.get("error"))
    # This rank's run is over: its communicators end here, in order, as PyTorch asks of a normal exit, rather than
    # in the interpreter's exit (where NCCL warns that the process group was not destroyed).
    if record["status"] == "ok" and dist.is_initialized():
        dist.destroy_process_group()
    return 0 if record["status"] in ("ok", "skipped") else 1


if __name__ == "__main__":
    code = main()
    # The run is recorded and its process group ended: leave without the interpreter's teardown, which finalises every
    # module of torch and the model libraries, seconds a rank at every run's end that the launcher would wait for.
    for child in multiprocessing.active_children():  # none in the usual course: data-loader workers end with their loader
        child.kill()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
