"""Runs of several processes on CPUs (gloo): DDP's arithmetic, the launcher's failures and timeouts,
and the validation of strategies. The ranks train a small classifier built in this module: the
`toy` fixture points the cifar_resnext task at it, in this process and (through sitecustomize) in
every process the launcher starts."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import TensorDataset

import labkit
from labkit import results, tasks
from labkit.config import ConfigError, load
from labkit.launch.distributed import GRACE_S, LaunchError
from labkit.launch.worker import alive, parent_of
from labkit.preflight import skip_reason, unavailable_reason
from labkit.tasks import Task

TESTS = Path(__file__).resolve().parent


def blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 16, generator=g) * 0.5 + nn.functional.one_hot(y, 16).float() * 3
    return TensorDataset(x, y)


def build_task(cfg) -> Task:
    """What every rank builds; TOY_FAIL_RANK / TOY_HANG_RANK make one rank raise or hang."""
    rank = os.environ.get("RANK", "0")
    if os.environ.get("TOY_FAIL_RANK") == rank:
        raise ValueError(f"injected failure on rank {rank}")
    if os.environ.get("TOY_HANG_RANK") == rank:
        time.sleep(600)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    # A fixed order, so one process and N ranks see the same global batches (N ranks: interleaved shards of it).
    return Task(model=model, train_set=blobs(512, 0), val_set=blobs(128, 1), train_sampler=range(512))


@pytest.fixture
def toy(tmp_path, monkeypatch):
    """Writes a params file for the toy task and returns its path."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport labkit.tasks\n"
                                           f"labkit.tasks.TASK_MODULES['cifar_resnext'] = {__name__!r}\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    monkeypatch.setitem(tasks.TASK_MODULES, "cifar_resnext", __name__)

    def write(name: str, timeout_s: float = 120, profile_steps: int = 0, **train) -> Path:
        params = {"task": "cifar_resnext",
                  "train": {"epochs": 1, "max_steps": 6, "optimizer": "sgd", "lr": 0.1, "log_every": 1, **train},
                  "measure": {"warmup_steps": 1, "profile_steps": profile_steps}, "launch": {"timeout_s": timeout_s}}
        path = tmp_path / "params" / "toy" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(params))
        return path

    return write


def ranks_at_work(record_dir: Path, count: int, stop: threading.Event | None = None, limit_s: float = 240) -> dict:
    """Each rank's status file (pid, pgid, start) once all ``count`` ranks have reported 'running'; {} if ``stop`` is
    set first."""
    deadline = time.monotonic() + limit_s
    while not (stop and stop.is_set()) and time.monotonic() < deadline:
        found = {}
        for path in record_dir.glob("launch/*/rank*.json"):
            try:
                found[json.loads(path.read_text())["rank"]] = json.loads(path.read_text())
            except (OSError, ValueError):  # replaced while read
                pass
        if len(found) == count and all(r["status"] == "running" for r in found.values()):
            return found
        time.sleep(0.2)
    return {}


def gone(ranks: dict, within_s: float) -> bool:
    """Whether every process of ``ranks`` has ended within ``within_s`` seconds."""
    deadline = time.monotonic() + within_s
    while any(alive(r["pid"], r["start"]) for r in ranks.values()):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def losses(record: dict) -> list[float]:
    return [value for _, _, value in record["curves"]["train_loss"]]


def test_gloo_ranks_train_like_one_process_with_the_same_global_batch(toy, tmp_path, ranks=2):
    one = labkit.run(toy("one", global_batch_size=32), "smoke", runs_dir=tmp_path)
    many = labkit.run(toy(f"ddp{ranks}", strategy="ddp", devices=ranks, global_batch_size=32, profile_steps=2),
                      "smoke", runs_dir=tmp_path)
    assert many["status"] == "ok" and many["launch"]["ranks"] == {str(r): "ok" for r in range(ranks)}
    assert many["params"]["train"]["batch_size"] == 32 // ranks
    assert many["summary"]["global_batch"] == one["summary"]["global_batch"] == 32
    assert many["summary"]["steps"] == one["summary"]["steps"] == 6
    assert losses(many) == pytest.approx(losses(one), rel=1e-5)  # gradients averaged over ranks = one big batch
    assert losses(many)[-1] < losses(many)[0]
    assert many["summary"]["final_val_loss"] == pytest.approx(one["summary"]["final_val_loss"], rel=1e-5)
    s = many["summary"]
    assert s["profiled_steps"] == 2 and s["comm_s"] > 0 and s["compute_s"] > 0  # gloo all-reduces were seen
    # each rank's own step split beside rank 0's summary figures (one process has no such fields)
    assert s["step_s_rank0"] == pytest.approx(s["step_s"]) and s["step_s_rank1"] > 0 and s["data_s_rank1"] >= 0
    assert not any(k.endswith("_rank0") for k in one["summary"])
    assert results.read(tmp_path / "smoke" / "toy" / f"ddp{ranks}")["launch"]["exit_code"] == 0
    # the run's wall time part by part: every part of a launched run, a run in this process without its processes
    parts, own = results.time_split(many), results.time_split(one)
    assert list(parts) == [name for name, _, _ in results.TIME_SPLIT] and min(parts.values()) >= 0
    assert parts["imports_s"] > 0.1  # the rank's interpreter imported torch
    assert sum(parts.values()) == pytest.approx(many["launch"]["wall_s"], abs=0.5)
    assert list(own) == ["lightning_import_s", "fabric_launch_s", "build_task_s", "setup_s", "first_step_s", "training_s",
                         "finish_s"]


def test_a_rank_that_raises_ends_the_run_with_its_error(toy, tmp_path, monkeypatch):
    monkeypatch.setenv("TOY_FAIL_RANK", "1")
    start = time.monotonic()
    with pytest.raises(LaunchError, match="rank 1 failed: ValueError: injected failure on rank 1"):
        labkit.run(toy("fails", strategy="ddp", devices=2, timeout_s=300), "smoke", runs_dir=tmp_path)
    assert time.monotonic() - start < 90  # rank 0 was stopped at once, not left waiting for the timeout
    record = results.read(tmp_path / "smoke" / "toy" / "fails")
    assert record["status"] == "failed" and "injected failure" in record["traceback"]
    assert record["launch"]["ranks"]["1"] == "failed"


def test_a_hung_rank_ends_the_run_at_the_timeout_with_its_stack(toy, tmp_path, monkeypatch):
    """Rank 1 hangs; rank 0 is stopped with SIGSTOP (kill -STOP), as a rank stuck in a driver call would be. Both are
    gone after the timeout: each rank sits in its own process group, which the stop must reach. The timeout is about
    twice what the ranks take to start on an idle 2-core machine (torchrun's imports, then each rank's ~9 CPU-seconds
    of them), and no more: the test waits it out."""
    timeout_s = 25
    monkeypatch.setenv("TOY_HANG_RANK", "1")
    seen, ended = {}, threading.Event()

    def stop_rank_0() -> None:
        seen.update(ranks_at_work(tmp_path / "smoke" / "toy" / "hangs", 2, ended))
        if seen:
            os.kill(seen[0]["pid"], signal.SIGSTOP)

    threading.Thread(target=stop_rank_0, daemon=True).start()
    start = time.monotonic()
    try:
        with pytest.raises(LaunchError, match=rf"timed out after {timeout_s} s \(launch.timeout_s\): rank\(s\) \[0, 1\]"):
            labkit.run(toy("hangs", strategy="ddp", devices=2, timeout_s=timeout_s), "smoke", runs_dir=tmp_path)
    finally:
        ended.set()
    assert time.monotonic() - start < timeout_s + 3 + GRACE_S + 5
    assert gone(seen, within_s=1), "a rank outlived the timeout"
    record = results.read(tmp_path / "smoke" / "toy" / "hangs")
    assert record["status"] == "failed"
    # A rank at work (it has reported 'running') dumps its Python stack into the record: where it hung, or, on a
    # machine so loaded that it was still importing, where it was.
    if record["launch"]["ranks"].get("1") == "running":
        assert re.search(r"\[rank1\] .*\(most recent call first\)", record["traceback"])
    if not seen:
        pytest.skip("this machine is so loaded that the ranks were still importing at the timeout: none was stopped")


def test_a_rank_killed_by_a_signal_is_named_with_it(toy, tmp_path, monkeypatch):
    """kill -9 of rank 1 while rank 0 waits for it: the record blames rank 1 and its signal, not rank 0, whose
    error (if it had time to report one) only follows from rank 1's death."""
    monkeypatch.setenv("TOY_HANG_RANK", "1")
    ended = threading.Event()

    def kill_rank_1() -> None:
        if ranks := ranks_at_work(tmp_path / "smoke" / "toy" / "killed", 2, ended):
            os.kill(ranks[1]["pid"], signal.SIGKILL)

    threading.Thread(target=kill_rank_1, daemon=True).start()
    try:
        with pytest.raises(LaunchError, match=r"^rank 1 was killed by SIGKILL \(exit code -9\) without reporting"):
            labkit.run(toy("killed", strategy="ddp", devices=2, timeout_s=300), "smoke", runs_dir=tmp_path)
    finally:
        ended.set()
    assert results.read(tmp_path / "smoke" / "toy" / "killed")["launch"]["ranks"]["1"] == "running"


def test_ranks_die_with_a_launcher_killed_by_sigkill(toy, tmp_path, monkeypatch):
    """kill -9 of the process that launched the run (a notebook kernel, which dies with its run-all): torchrun and
    the ranks end too, instead of training on beside the next run, and the record says the run never ended."""
    monkeypatch.setenv("TOY_HANG_RANK", "1")
    params = toy("orphans", strategy="ddp", devices=2, timeout_s=300)
    launcher = subprocess.Popen([sys.executable, "-c", "import sys, labkit; labkit.run(sys.argv[1], 'smoke', runs_dir=sys.argv[2])",
                                 str(params), str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    try:
        ranks = ranks_at_work(tmp_path / "smoke" / "toy" / "orphans", 2, limit_s=240)
        assert ranks, "the ranks never started"
        torchrun = parent_of(ranks[0]["pid"])
        launcher.kill()
        launcher.wait()
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert gone(ranks, within_s=15), "ranks outlived their launcher"
    assert torchrun is None or gone({0: {"pid": torchrun, "start": None}}, within_s=15)
    assert results.read(tmp_path / "smoke" / "toy" / "orphans")["status"] == "running"


@pytest.mark.parametrize("train, words", [
    ("{strategy: horovod}", "'horovod' is not allowed; choose one of 'auto', 'dp', 'ddp', 'fsdp' or 'deepspeed'"),
    ("{strategy: dp, accelerator: cpu, devices: 2}", "on a CPU or over several nodes use strategy 'ddp'"),
    ("{strategy: auto, devices: 2}", "choose ddp, fsdp, deepspeed or dp"),
    ("{strategy: fsdp, devices: 2, precision: 16-mixed}", "use precision bf16-mixed"),
    ("{strategy: ddp, devices: 3, global_batch_size: 64}", "make it a multiple of 3"),
])
def test_impossible_strategies_are_config_errors(tmp_path, train, words):
    path = tmp_path / "cfg.yaml"
    path.write_text(f"task: bert_squad\ntrain: {train}\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    assert str(path) in str(err.value) and words in str(err.value)


def test_what_this_machine_lacks_is_a_skip_reason(monkeypatch):
    def cfg(**train):
        return load("params/05_ddp_fsdp/ddp.yaml", "smoke", {f"train.{k}": v for k, v in train.items()})

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert "needs 4 GPUs per node and 1 are visible" in unavailable_reason(cfg(devices=4), cuda=True)
    assert unavailable_reason(cfg(devices=1), cuda=True) is None
    eight = load("params/05_ddp_fsdp/fsdp_8gpu.yaml", "gpu")  # a point of the scaling curve
    assert "needs 8 GPUs per node and 1 are visible" in skip_reason(eight, cuda=True)
    assert "accelerator is 'cuda' and no GPU is visible" in skip_reason(eight, cuda=False)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("SLURM_JOB_NUM_NODES", raising=False)
    monkeypatch.delenv("SLURM_NNODES", raising=False)
    assert "salloc --nodes 2" in unavailable_reason(cfg(num_nodes=2), cuda=False)
    assert "strategy dp needs GPUs" in skip_reason(cfg(strategy="dp"), cuda=False)
    assert "launch.backend nccl" in skip_reason(load("params/05_ddp_fsdp/ddp.yaml", "smoke", {"launch.backend": "nccl"}))
    assert skip_reason(cfg(strategy="fsdp"), cuda=False) is None  # FSDP2 runs over gloo


def test_deepspeed_missing_is_skipped_with_the_install_command(tmp_path):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("DeepSpeed is installed here")
    record = labkit.run("params/05_ddp_fsdp/deepspeed.yaml", "smoke", runs_dir=tmp_path)
    assert record["status"] == "skipped" and "pip install '.[deepspeed]'" in record["error"]
    assert "launch" not in record  # no process was started


def test_a_rank_binds_to_the_cpu_cores_nvml_names_for_its_gpu(monkeypatch):
    """launch.bind_cpus: the rank's GPU is found through CUDA_VISIBLE_DEVICES, its nearest cores come from NVML's
    bit mask, and only those this process may use are kept; without NVML nothing is bound."""
    import sys
    import types

    from labkit.launch.worker import bind_to_gpu_cores

    asked, bound = [], []
    allowed = {1, 2, 3, 64, 65}
    fake = types.SimpleNamespace(
        NVMLError=RuntimeError, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: asked.append(i) or i,
        nvmlDeviceGetCpuAffinity=lambda handle, words: [0b1100, 0b1, 0][:words])  # cores 2, 3 and 64
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr("os.cpu_count", lambda: 130)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: allowed)
    monkeypatch.setattr("os.sched_setaffinity", lambda pid, cores: bound.append(set(cores)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,3")
    assert bind_to_gpu_cores(1) == {2, 3, 64} and bound == [{2, 3, 64}] and asked == [3]

    allowed = {7}  # none of the GPU's cores is ours: leave the process as it is
    assert bind_to_gpu_cores(0) is None and len(bound) == 1

    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml fails: no NVML here
    assert bind_to_gpu_cores(0) is None and len(bound) == 1
