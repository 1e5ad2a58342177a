"""``make slurm`` against a real scheduler: a two-node SLURM cluster started on this machine (tests/slurm_cluster.py).

One submission of notebooks 01, 05 and 08 on the smoke profile proves, with the fewest configurations that
do: array jobs (01: two GPU-only configurations, recorded 'skipped' on the CPU nodes; 05: dp and single), a
run of train.num_nodes 2 over both nodes (srun + torchrun rendezvous at the first node's NodeAddr, since
the node names n1/n2 resolve to nothing), scancel of a running array task, and the report job, which
waits for every other job. A second submission then resumes: finished configurations are kept, the
cancelled one runs again. Skips (with the reason) where the cluster cannot be started: not root, or
slurm-wlm / munge not installed.
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
import slurm_cluster  # noqa: E402  (a helper beside the tests, not a package)

ROOT = Path(__file__).resolve().parents[1]
ONLY = "01 05 08"


def gpu_only(notebook: str) -> list[str]:
    """Configurations of ``notebook`` on one node that a CPU node records as 'skipped' within seconds (smoke)."""
    loaded = {p.stem: config.load(p, "smoke") for p in sorted((ROOT / "params" / notebook).glob("*.yaml"))}
    return [name for name, cfg in loaded.items() if cfg.train.num_nodes == 1 and preflight.cpu_reason(cfg)]


def configurations() -> tuple[list[str], str, str]:
    """01: an array of two configurations a CPU skips at once; 05: an array of one more of those and single
    (which trains, and is cancelled), and ddp_2node_check over both nodes. Chosen from the params as they
    are, so a configuration that comes to run on CPUs does not make this test train for many minutes."""
    skipped_01, skipped_05 = gpu_only("01_baseline_bert_squad")[:2], gpu_only("05_ddp_fsdp")[0]
    assert len(skipped_01) == 2 and skipped_05 < "single", (skipped_01, skipped_05)  # single: the array's 2nd task
    return skipped_01, skipped_05, " ".join(skipped_01 + [skipped_05, "single", "ddp_2node_check"])

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


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


def record(runs: Path, notebook: str, config: str) -> dict | None:
    path = runs / "smoke" / notebook / config / "result.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not yet written, or being replaced
        return None


def job_times(cluster: slurm_cluster.Cluster, job: str) -> list[tuple[datetime, datetime]]:
    """(start, end) of a job, or of each task of an array."""
    out = cluster.run("scontrol", "-o", "show", "job", job).stdout
    return [(datetime.fromisoformat(re.search(r"StartTime=(\S+)", line).group(1)),
             datetime.fromisoformat(re.search(r"EndTime=(\S+)", line).group(1))) for line in out.splitlines() if line]


def logs_of(runs: Path, job: str) -> str:
    return "\n".join(p.read_text(errors="replace") for p in sorted((runs / "smoke" / "slurm").glob(f"*-{job}*.out")))


def test_make_slurm_arrays_two_nodes_report_and_resume_after_scancel(cluster, tmp_path):
    runs = tmp_path / "runs"
    skipped_01, skipped_05, configs = configurations()
    jobs = make_slurm(cluster, runs, ONLY, configs)
    assert set(jobs) == {"01_baseline_bert_squad-cpu", "05_ddp_fsdp-cpu", "05_ddp_fsdp-ddp_2node_check", "08_report"}
    scripts = runs / "smoke" / "slurm"
    assert "gres" not in (scripts / "05_ddp_fsdp-ddp_2node_check.sbatch").read_text()  # the smoke profile asks for no GPU

    # scancel the array task of 'single' once its run has started
    array = re.search(r"^configs=\((.*)\)$", (scripts / "05_ddp_fsdp-cpu.sbatch").read_text(), re.M).group(1).split()
    single = f"{jobs['05_ddp_fsdp-cpu']}_{array.index('single')}"
    deadline = time.monotonic() + 300
    while (record(runs, "05_ddp_fsdp", "single") or {}).get("status") != "running":
        assert time.monotonic() < deadline, f"'single' never started: {cluster.jobs()}\n{logs_of(runs, jobs['05_ddp_fsdp-cpu'])}"
        time.sleep(1)
    assert cluster.state(single) == "RUNNING"
    cluster.run("scancel", single)

    states = cluster.wait(list(jobs.values()), timeout_s=600)
    logs = {name: logs_of(runs, job) for name, job in jobs.items()}
    assert cluster.state(single) == "CANCELLED", logs["05_ddp_fsdp-cpu"]
    assert states[jobs["01_baseline_bert_squad-cpu"]] == "COMPLETED", logs["01_baseline_bert_squad-cpu"]
    for name in skipped_01:  # GPU-only: recorded as skipped, with the reason, by the array's tasks
        rec = record(runs, "01_baseline_bert_squad", name)
        assert rec["status"] == "skipped" and rec["error"], (name, rec.get("error"))
    assert record(runs, "05_ddp_fsdp", skipped_05)["status"] == "skipped"

    # two nodes: one torchrun per node through srun, meeting at n1's NodeAddr (the name n1 resolves to nothing)
    two = record(runs, "05_ddp_fsdp", "ddp_2node_check")
    assert states[jobs["05_ddp_fsdp-ddp_2node_check"]] == "COMPLETED", logs["05_ddp_fsdp-ddp_2node_check"]
    assert two["status"] == "ok", two.get("error")
    assert two["launch"]["nodes"] == 2 and two["launch"]["ranks"] == {"0": "ok", "1": "ok"}
    assert any(a.startswith("--rdzv-endpoint=127.0.0.1:") for a in two["launch"]["command"]), two["launch"]["command"]
    step = f"StepId={jobs['05_ddp_fsdp-ddp_2node_check']}.0"
    for node in slurm_cluster.NODES:  # srun started the step's task on each node
        assert step in (cluster.root / f"slurmd-{node}.log").read_text(), node

    # the report ran after every other job had ended (afterany: the cancelled task too), and wrote its pages
    assert states[jobs["08_report"]] == "COMPLETED", logs["08_report"]
    report_start = job_times(cluster, jobs["08_report"])[0][0]
    for name, job in jobs.items():
        if name != "08_report":
            assert all(end <= report_start for _, end in job_times(cluster, job)), name
    assert (runs / "smoke" / "08_report" / "08_report.ipynb").is_file()
    index = (tmp_path / "reports" / "smoke" / "index.html").read_text()
    assert "ddp_2node_check" in index and skipped_01[0] in index

    # resubmission: what finished is kept, the cancelled configuration runs again
    finished = [("01_baseline_bert_squad", name) for name in skipped_01] + [("05_ddp_fsdp", skipped_05),
                                                                           ("05_ddp_fsdp", "ddp_2node_check")]
    kept = {path: path.read_bytes() for path in (runs / "smoke" / nb / name / "result.json" for nb, name in finished)}
    again = make_slurm(cluster, runs, "01 05", configs)
    states = cluster.wait(list(again.values()), timeout_s=600)
    assert set(states.values()) == {"COMPLETED"}, {n: logs_of(runs, j) for n, j in again.items()}
    for path, before in kept.items():
        assert path.read_bytes() == before, path
    assert logs_of(runs, again["01_baseline_bert_squad-cpu"]).count("done earlier") == 2
    rerun = record(runs, "05_ddp_fsdp", "single")
    assert rerun["status"] == "ok", rerun.get("error")
    assert rerun["env"]["slurm_job_id"] != jobs["05_ddp_fsdp-cpu"]
