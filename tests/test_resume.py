"""make run-all after a kill: finished configurations stay as they were, the next run-all continues where the
last one stopped, and a run-all beside another never runs a configuration the other is running.

The run-alls execute a real notebook with papermill; the notebook writes its record the way labkit.launch.runner
does (running, then ok, each write atomic) and waits when told to, so that a kill lands mid-run. It does
not import labkit (torch), which keeps each kernel start short."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from labkit import results
from labkit.launch import runall

pytestmark = pytest.mark.slow

NOTEBOOK = "01_fake"
CELL = """import json, os, time
from pathlib import Path

name = Path(config).stem
path = Path(runs_dir, profile, "01_fake", name, "result.json")
path.parent.mkdir(parents=True, exist_ok=True)

def save(status):
    tmp = path.with_name(f".result.json.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"run": {"notebook": "01_fake", "config": name, "profile": profile}, "status": status}))
    os.replace(tmp, path)

save("running")
time.sleep(float(os.environ.get("FAKE_SLEEP_" + name, "0")))
if os.environ.get("FAKE_ERROR_" + name):
    raise ValueError(os.environ["FAKE_ERROR_" + name])
save("ok")"""
LINGER = """time.sleep(float(os.environ.get("FAKE_LINGER_" + name, "0")))  # cells after the record's 'ok'"""


@pytest.fixture
def kit(tmp_path: Path, monkeypatch) -> Path:
    """A kit of one notebook with two configurations, a (quick) and c (waits FAKE_SLEEP_c seconds before its record
    says ok, FAKE_LINGER_c seconds after); FAKE_ERROR_<config> makes one fail with that message."""
    (tmp_path / "notebooks").mkdir()
    nb = new_notebook(cells=[new_code_cell('config = ""\nprofile = "smoke"\nruns_dir = None', metadata={"tags": ["parameters"]}),
                             new_code_cell(CELL), new_code_cell(LINGER)],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    nbformat.write(nb, tmp_path / "notebooks" / f"{NOTEBOOK}.ipynb")
    (tmp_path / "params" / NOTEBOOK).mkdir(parents=True)
    for name in "ac":
        (tmp_path / "params" / NOTEBOOK / f"{name}.yaml").write_text("task: bert_squad\n")
    for attr, value in (("ROOT", tmp_path), ("NOTEBOOKS", tmp_path / "notebooks"), ("PARAMS", tmp_path / "params")):
        monkeypatch.setattr(runall, attr, value)  # for the run-alls in this process
    monkeypatch.setenv("FAKE_SLEEP_c", "0")
    return tmp_path


def main(kit: Path, *args: str) -> int:
    return runall.main(["--profile", "smoke", "--runs-dir", str(kit / "runs"), *args])


def record_of(kit: Path, name: str) -> Path:
    return kit / "runs" / "smoke" / NOTEBOOK / name / "result.json"


def start_run_all(kit: Path, *args: str, **env: str) -> subprocess.Popen:
    """A run-all of the kit in a process of its own, as `make run-all` starts it."""
    code = ("import sys; from pathlib import Path; from labkit.launch import runall; kit = Path(sys.argv[1]); "
            "runall.ROOT, runall.NOTEBOOKS, runall.PARAMS = kit, kit / 'notebooks', kit / 'params'; "
            "sys.exit(runall.main(sys.argv[2:]))")
    return subprocess.Popen([sys.executable, "-c", code, str(kit), "--profile", "smoke", "--runs-dir", str(kit / "runs"), *args],
                            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def wait_until_c_runs(kit: Path, alive, after: int = 0, status: str = "running") -> None:
    """Until c's record says ``status``, written after ``after`` (mtime_ns): by the kernel of the run-all just started."""
    deadline = time.monotonic() + 240
    while True:
        path = record_of(kit, "c")
        if path.is_file() and json.loads(path.read_text())["status"] == status and path.stat().st_mtime_ns > after:
            return
        assert alive(), "the run-all ended before c started"
        assert time.monotonic() < deadline, "configuration c never started"
        time.sleep(0.2)


def test_resume_after_sigkill_and_a_run_all_beside_another(kit, capsys):
    first = start_run_all(kit, FAKE_SLEEP_c="600")
    try:
        wait_until_c_runs(kit, lambda: first.poll() is None)  # a finished; c is mid-run
        done = record_of(kit, "a").read_bytes()
        c_running = record_of(kit, "c").read_bytes()
        # A run-all beside it, for c: c is busy there, so it is neither run twice nor touched.
        assert main(kit, "--config", "c") == 0
        assert "01_fake/c" in (out := capsys.readouterr().out) and "busy" in out and "running elsewhere (pid" in out
        assert record_of(kit, "c").read_bytes() == c_running
        os.killpg(first.pid, signal.SIGKILL)  # no goodbye: a node lost, the OOM killer
        first.wait(30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    folder = kit / "runs" / "smoke" / NOTEBOOK
    assert json.loads(done)["status"] == "ok" and (folder / "a.ipynb").is_file()
    assert json.loads(record_of(kit, "c").read_text())["status"] == "running"  # honest: it started, never ended
    assert not list(folder.rglob("*.tmp"))  # atomic writes: no torn file anywhere

    assert main(kit) == 0  # the next run-all continues where the killed one stopped
    rows = {line.split()[0]: line.split()[1:] for line in capsys.readouterr().out.splitlines() if line.startswith("01_fake/")}
    assert rows["01_fake/a"][:3] == ["done", "earlier", "ok"] and rows["01_fake/c"][1] == "ok"
    assert record_of(kit, "a").read_bytes() == done  # what finished before the kill is untouched
    assert json.loads(record_of(kit, "c").read_text())["status"] == "ok"


def test_sigterm_stops_a_run_all_as_ctrl_c_does(kit, monkeypatch, capsys):
    assert main(kit, "--config", "a") == 0
    monkeypatch.setenv("FAKE_SLEEP_c", "600")
    handler = signal.getsignal(signal.SIGTERM)
    ended = threading.Event()

    def preempt() -> None:  # what SLURM sends a preempted or cancelled job
        wait_until_c_runs(kit, lambda: not ended.is_set())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=preempt, daemon=True).start()
    try:
        assert main(kit) == 130
    finally:
        ended.set()
    out = capsys.readouterr()
    assert "interrupted: finished configurations are kept" in out.err
    assert "[1/2]" not in out.out and "[2/2] 01_fake/c" in out.out  # a was done: not run again
    # the summary still lists what finished before the signal, as a whole run-all's would
    assert any(line.startswith("01_fake/a") and "done earlier" in line for line in out.out.splitlines())
    assert signal.getsignal(signal.SIGTERM) == handler  # main() gives the handler back
    assert results.read(record_of(kit, "a").parent)["status"] == "ok"


def test_a_notebook_killed_after_its_record_said_ok_is_run_again(kit, capsys):
    """SIGKILL after c's record says ok but before papermill has run the cells after it: the record alone does not
    make c finished; its notebook must have been executed to the end."""
    first = start_run_all(kit, "--config", "c", FAKE_LINGER_c="600")
    try:
        wait_until_c_runs(kit, lambda: first.poll() is None, status="ok")
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    assert not runall.executed_to_the_end(kit / "runs" / "smoke" / NOTEBOOK / "c.ipynb")
    assert main(kit, "--config", "c") == 0
    out = capsys.readouterr()
    rows = {line.split()[0]: line.split()[1:] for line in out.out.splitlines() if line.startswith("01_fake/")}
    assert rows["01_fake/c"][0] != "done" and rows["01_fake/c"][1] == "ok"  # run again, to the end this time
    assert "c.ipynb was not executed to the end" in out.err
    assert runall.executed_to_the_end(kit / "runs" / "smoke" / NOTEBOOK / "c.ipynb")


def test_a_notebook_stopped_before_its_cells_ran_is_not_finished(tmp_path):
    """papermill's clean-up after a stop (scancel before the first cell) writes an end time and marks every cell
    'completed'; code cells that never ran have no execution count, so the notebook is not finished."""
    def notebook(count):
        return {"metadata": {"papermill": {"end_time": "2026-11-30T00:00:00", "exception": None}},
                "cells": [{"cell_type": "markdown", "source": "# lab", "metadata": {"papermill": {"status": "completed"}}},
                          {"cell_type": "code", "source": "", "execution_count": None, "metadata": {"papermill": {"status": "completed"}}},
                          {"cell_type": "code", "source": "x = 1", "execution_count": count,
                           "metadata": {"papermill": {"status": "completed"}}}]}

    path = tmp_path / "c.ipynb"
    path.write_text(json.dumps(notebook(None)))
    assert not runall.executed_to_the_end(path)
    path.write_text(json.dumps(notebook(3)))
    assert runall.executed_to_the_end(path)  # an empty cell needs no count


def test_each_configuration_says_when_it_ends_and_where_its_time_went(kit, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_LINGER_c", "2")
    assert main(kit) == 0
    ends = [line for line in capsys.readouterr().out.splitlines() if ": ok in " in line]
    assert [line.split(":")[0] for line in ends] == ["[1/2] 01_fake/a", "[2/2] 01_fake/c"]
    # c's slowest cell is the one that lingered 2 s; the cells' total is under the configuration's whole time
    took, cells, slowest = (float(x) for x in re.search(r"ok in (\d+) s \(cells (\d+) s; slowest: (\d+) s `time.sleep", ends[1]).groups())
    assert slowest == 2 and 2 <= cells <= took
    assert runall.slowest_cells(kit / "missing.ipynb") == ""
