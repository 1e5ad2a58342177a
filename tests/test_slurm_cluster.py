"""``make slurm`` against a real scheduler: a two-node SLURM cluster started on this machine (tests/slurm_cluster.py).

One submission of notebooks 05 and 08 on the smoke profile proves, with the fewest configurations that do and
with only one of them training: a job array (two GPU-only configurations, which a CPU node records as
'skipped'), a run of train.num_nodes 2 over both nodes (srun + torchrun rendezvous at the first node's
NodeAddr, since the node names n1/n2 resolve to nothing), scancel of a running array task, and the report job,
which waits for every other job. The array is submitted again as soon as it has ended, beside the jobs still
running: the finished configuration is kept, the cancelled one runs again. Skips (with the reason) where the
cluster cannot be started: not root, or slurm-wlm / munge not installed.
"""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from labkit import config, preflight

sys.path.insert(0, str(Path(__file__).parent))
import slurm_cluster  # noqa: E402  (a module beside the tests, not a package)

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = "05_ddp_fsdp"
ARRAY, TWO_NODES, REPORT = f"{NOTEBOOK}-cpu", f"{NOTEBOOK}-ddp_2node_check", "08_report"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def gpu_only() -> tuple[str, str]:
    """Two one-node configurations of notebook 05 that a CPU node records as 'skipped' within seconds (smoke),
    chosen from the params as they are, so a configuration that comes to run on CPUs does not make this test train."""
    loaded = {p.stem: config.load(p, "smoke") for p in sorted((ROOT / "params" / NOTEBOOK).glob("*.yaml"))}
    names = [name for name, cfg in loaded.items() if cfg.train.num_nodes == 1 and preflight.cpu_reason(cfg)]
    assert len(names) >= 2, f"fewer than two configurations of {NOTEBOOK} are GPU-only on the smoke profile: {names}"
    return names[0], names[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if reason := slurm_cluster.unavailable_reason():
        pytest.skip(f"no SLURM test cluster: {reason}")
    if shutil.which("make") is None:
        pytest.skip("no SLURM test cluster: make is not installed")
    try:  # config, state and the daemons' logs in pytest's temporary folders, which it prunes
        started = slurm_cluster.start(tmp_path_factory.mktemp("slurm"))
    except (RuntimeError, OSError, subprocess.SubprocessError) as err:
        pytest.skip(f"the SLURM test cluster did not start: {err}")
    try:
        yield started
    finally:
        started.stop()


def make_slurm(cluster: slurm_cluster.Cluster, runs: Path, only: str, configs: str) -> dict[str, str]:
    """``make slurm PROFILE=smoke`` as an instructor runs it; job name -> job id."""
    # -o: the test runs in an environment that is already set up; never reinstall it from here
    argv = ["make", "-s", "-o", ".venv/.installed", "slurm", f"PY={sys.executable}", "PROFILE=smoke", f"ONLY={only}",
            f"CONFIG={configs}", f"RUNS_DIR={runs}", "TIME=00:30:00"]
    out = subprocess.run(argv, cwd=ROOT, env=cluster.env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return dict((name, job) for job, name in re.findall(r"^submitted (\d+): (\S+)", out.stdout, re.M))


def record(runs: Path, name: str) -> dict:
    return json.loads((runs / "smoke" / NOTEBOOK / name / "result.json").read_text())


def array_task(cluster: slurm_cluster.Cluster, runs: Path, array: str, name: str) -> tuple[str, str]:
    """Configuration ``name``'s task of array job ``array``: ``<array>_<index>``, and the task's own job id (its
    SLURM_JOB_ID)."""
    script = (runs / "smoke" / "slurm" / f"{ARRAY}.sbatch").read_text()
    task = f"{array}_{re.search(r'^configs=[(](.*)[)]$', script, re.M).group(1).split().index(name)}"
    return task, re.search(r"^JobId=(\d+) ", cluster.run("scontrol", "-o", "show", "job", task).stdout).group(1)


def job_times(cluster: slurm_cluster.Cluster, job: str) -> list[tuple[datetime, datetime]]:
    """(start, end) of a job, or of each task of an array."""
    out = cluster.run("scontrol", "-o", "show", "job", job).stdout
    return [(datetime.fromisoformat(re.search(r"StartTime=(\S+)", line).group(1)),
             datetime.fromisoformat(re.search(r"EndTime=(\S+)", line).group(1))) for line in out.splitlines() if line]


def logs_of(runs: Path, job: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((runs / "smoke" / "slurm").glob(f"*-{job}*.out")))


def test_make_slurm_array_two_nodes_report_and_resume_after_scancel(cluster, tmp_path):
    runs, (kept, cancelled) = tmp_path / "runs", gpu_only()
    jobs = make_slurm(cluster, runs, "05 08", f"{kept} {cancelled} ddp_2node_check")
    assert set(jobs) == {ARRAY, TWO_NODES, REPORT}
    assert "gres" not in (runs / "smoke" / "slurm" / f"{TWO_NODES}.sbatch").read_text()  # smoke asks for no GPU

    # scancel one array task as soon as papermill has begun its notebook: seconds before its kernel records
    # 'skipped', which the 0.1 s polling here does not miss
    task, _ = array_task(cluster, runs, jobs[ARRAY], cancelled)
    started, deadline = runs / "smoke" / NOTEBOOK / f"{cancelled}.ipynb", time.monotonic() + 300
    while not started.exists():
        assert time.monotonic() < deadline, f"{cancelled} never started: {cluster.jobs()}\n{logs_of(runs, jobs[ARRAY])}"
        time.sleep(0.1)
    assert cluster.state(task) == "RUNNING"
    cluster.run("scancel", task)
    cluster.wait([jobs[ARRAY]], timeout_s=600)
    assert cluster.state(task) == "CANCELLED", logs_of(runs, jobs[ARRAY])
    assert record(runs, kept)["status"] == "skipped" and record(runs, kept)["error"], logs_of(runs, jobs[ARRAY])

    # the array again, without waiting for the two-node run and the report: what finished is kept, the cancelled
    # configuration runs again
    finished = (runs / "smoke" / NOTEBOOK / kept / "result.json").read_bytes()
    again = make_slurm(cluster, runs, "05", f"{kept} {cancelled}")
    assert set(again) == {ARRAY}
    states = cluster.wait(list(jobs.values()) + [again[ARRAY]], timeout_s=600)
    log = logs_of(runs, again[ARRAY])
    assert states[again[ARRAY]] == "COMPLETED", log
    assert (runs / "smoke" / NOTEBOOK / kept / "result.json").read_bytes() == finished
    assert log.count("done earlier") == 1 and f"{NOTEBOOK}/{cancelled} (profile smoke)" in log, log
    rerun, (_, rerun_job) = record(runs, cancelled), array_task(cluster, runs, again[ARRAY], cancelled)
    assert rerun["status"] == "skipped" and rerun["env"]["slurm_job_id"] == rerun_job, rerun["env"]

    # two nodes: one torchrun per node through srun, meeting at n1's NodeAddr (the name n1 resolves to nothing)
    logs = {name: logs_of(runs, job) for name, job in jobs.items()}
    two = record(runs, "ddp_2node_check")
    assert states[jobs[TWO_NODES]] == "COMPLETED", logs[TWO_NODES]
    assert two["status"] == "ok", two.get("error")
    assert two["launch"]["nodes"] == 2 and two["launch"]["ranks"] == {"0": "ok", "1": "ok"}
    assert any(a.startswith("--rdzv-endpoint=127.0.0.1:") for a in two["launch"]["command"]), two["launch"]["command"]
    step = f"StepId={jobs[TWO_NODES]}.0"
    for node in slurm_cluster.NODES:  # srun started the step's task on each node
        assert step in (cluster.root / f"slurmd-{node}.log").read_text(), node

    # the report ran after every other job of its submission had ended (afterany: the cancelled task too), and
    # wrote its pages
    assert states[jobs[REPORT]] == "COMPLETED", logs[REPORT]
    report_start = job_times(cluster, jobs[REPORT])[0][0]
    for name, job in jobs.items():
        if name != REPORT:
            assert all(end <= report_start for _, end in job_times(cluster, job)), name
    assert (runs / "smoke" / REPORT / f"{REPORT}.ipynb").is_file()
    index = (tmp_path / "reports" / "smoke" / "index.html").read_text()
    assert "ddp_2node_check" in index and kept in index
