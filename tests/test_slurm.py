"""SLURM scripts are checked against the params they come from, run through bash with hostile names, and
submitted to stand-in sbatch/sinfo/scontrol; tests/test_slurm_cluster.py submits to a real scheduler."""
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from labkit import config as config_mod
from labkit.launch import distributed, runall
from labkit.launch import slurm
from labkit.config import Config

ROOT = Path(__file__).resolve().parents[1]


def directives(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", script, re.M))


def configs_of(script: str) -> list[str]:
    if m := re.search(r"^configs=\((.*)\)$", script, re.M):
        return m.group(1).split()
    return [re.search(r"^config=(\S+)$", script, re.M).group(1)]


def stand_in(bin_dir: Path, name: str, body: str) -> Path:
    """An executable ``name`` in ``bin_dir`` running the shell ``body``."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


# sinfo --Node --format=%P|%N|%c|%m|%G|%l of a cluster with a CPU partition (default) and a GPU partition
SINFO = """cpu*|c1|2|4000|(null)|1:00:00
cpu*|c2|2|4000|(null)|1:00:00
gpu|g1|32|500000|gpu:h100:4(S:0-1)|2-00:00:00
gpu|g2|32|500000|gpu:h100:4(S:0-1)|2-00:00:00"""


@pytest.mark.parametrize("only", ["05", "07"])
def test_every_configuration_gets_the_gpus_nodes_and_time_its_params_ask_for(only):
    batches = slurm.plan("gpu", [only])
    names = [b.name for b in batches]
    assert len(set(names)) == len(names)
    seen = []
    for batch in batches:
        text = slurm.script(batch, "gpu", ROOT / "runs", "gpu-part", None)
        d = directives(text)
        assert d["ntasks-per-node"] == "1"  # the notebook's labkit.run starts the ranks (torchrun), not srun tasks
        assert ("array" in d) == (len(batch.configs) > 1)
        if "array" in d:
            assert d["array"] == f"0-{len(batch.configs) - 1}" and '"${configs[$SLURM_ARRAY_TASK_ID]}"' in text
        assert f"--only {batch.notebook} --config \"$config\" --runs-dir {ROOT / 'runs'}" in text
        for name in configs_of(text):
            cfg = config_mod.load(ROOT / "params" / batch.notebook / f"{name}.yaml", "gpu")
            t = cfg.train
            assert d["gres"] == f"gpu:{t.devices * cfg.model.split_devices}", name
            assert d["nodes"] == str(t.num_nodes)
            assert d["time"] == slurm.slurm_time(cfg.launch.timeout_s + slurm.MARGIN_S)
            processes = t.devices if t.strategy in ("ddp", "fsdp", "deepspeed") else 1
            assert int(d["cpus-per-task"]) >= processes * (cfg.data.num_workers + 1)
            seen.append(name)
    assert sorted(seen) == sorted(p.stem for p in (ROOT / "params").glob(f"{only}*/*.yaml"))


def test_multi_node_and_model_parallel_resources():
    ddp = Config.model_validate({"task": "bert_squad", "train": {"strategy": "ddp", "devices": 4, "num_nodes": 2},
                                 "data": {"num_workers": 3}, "launch": {"timeout_s": 90000}})
    r = slurm.resources(ddp)
    assert (r.nodes, r.gpus_per_node, r.cpus_per_task, r.time) == (2, 4, 16, "1-01:10:00")
    text = slurm.script(slurm.Batch("05_ddp_fsdp", ["ddp_2node"], r, name="x"), "gpu", ROOT / "runs", None, None)
    assert {"nodes": "2", "gres": "gpu:4", "ntasks-per-node": "1"}.items() <= directives(text).items()
    split = Config.model_validate({"task": "t5_qa", "data": {"dataset": "gsm8k"}, "model": {"split_devices": 2}})
    assert (slurm.resources(split).gpus_per_node, slurm.resources(split).cpus_per_task) == (2, 4)  # one process, 4 at least
    dp = Config.model_validate({"task": "bert_squad", "train": {"strategy": "dp", "devices": 2}})
    assert slurm.resources(dp).gpus_per_node == 2
    assert slurm.resources(dp, "00:20:00").time == "00:20:00"


def test_dry_run_prints_scripts_with_partition_and_account_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_SLURM_PARTITION", "a100")
    monkeypatch.setenv("LABKIT_SLURM_ACCOUNT", "course42")
    monkeypatch.setattr(slurm.shutil, "which", lambda name: pytest.fail("a dry run must not look for sbatch"))
    assert slurm.main(["--profile", "gpu", "--only", "01", "--dry-run", "--time", "02:00:00"]) == 0
    out = capsys.readouterr().out
    d = directives(out)
    assert d["partition"] == "a100" and d["account"] == "course42" and d["time"] == "02:00:00"
    # one GPU each: one array of every configuration
    assert configs_of(out) == sorted(p.stem for p in (ROOT / "params" / "01_baseline_bert_squad").glob("*.yaml"))
    assert slurm.main(["--profile", "gpu", "--only", "01", "--dry-run", "--partition", "h100"]) == 0
    assert directives(capsys.readouterr().out)["partition"] == "h100"  # the option wins over the environment


def test_bad_input_is_refused_before_anything_is_submitted(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit):
        slurm.main(["--profile", "gpu", "--time", "90 minutes", "--dry-run"])
    assert "--time" in capsys.readouterr().err
    assert slurm.main(["--profile", "gpus", "--dry-run"]) == 2
    assert "profile 'gpus' does not exist" in capsys.readouterr().err
    (tmp_path / "params" / "01_x").mkdir(parents=True)
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_x.ipynb").write_text("{}")
    (tmp_path / "params" / "01_x" / "typo.yaml").write_text("task: bert_squad\ntrain: {devises: 2}\n")
    monkeypatch.setattr(runall, "NOTEBOOKS", tmp_path / "notebooks")
    monkeypatch.setattr(runall, "PARAMS", tmp_path / "params")
    monkeypatch.setattr(slurm.shutil, "which", lambda name: pytest.fail("nothing may be submitted"))
    assert slurm.main(["--profile", "gpu"]) == 2
    err = capsys.readouterr().err
    assert "typo.yaml" in err and "train.devises" in err and "did you mean 'devices'" in err


def test_submission_chains_the_report_after_every_job(monkeypatch, tmp_path, capsys):
    bin_dir, log = tmp_path / "bin", tmp_path / "sbatch.log"
    # a stand-in that logs its arguments and answers a job id, as sbatch --parsable does
    stand_in(bin_dir, "sbatch", f'echo "$@" >> {log}\necho $(( $(wc -l < {log}) + 1000 ))')
    stand_in(bin_dir, "sinfo", f"cat <<'EOF'\n{SINFO}\nEOF")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runs = tmp_path / "runs"
    assert slurm.main(["--profile", "gpu", "--only", "01", "08", "--runs-dir", str(runs), "--partition", "gpu"]) == 0
    submissions = log.read_text().splitlines()
    scripts = sorted((runs / "gpu" / "slurm").glob("*.sbatch"))
    assert [p.name for p in scripts] == ["01_baseline_bert_squad-1gpu.sbatch", "08_report.sbatch"]
    assert submissions[0] == f"--parsable {scripts[0]}"
    assert submissions[1] == f"--parsable --dependency=afterany:1001 {scripts[1]}"
    report = scripts[1].read_text()
    assert "gres" not in directives(report) and "labkit.launch.runall --profile gpu --only 08_report" in report
    assert "labkit.report --profile gpu" in report
    assert "submitted 1001" in capsys.readouterr().out


def test_cpu_profiles_and_cpu_accelerators_ask_for_no_gpu_and_fit_a_two_cpu_node():
    for batch in slurm.plan("smoke", ["01", "05"]):  # smoke says slurm: {gpus: false}
        text = slurm.script(batch, "smoke", ROOT / "runs", None, None)
        assert "gres" not in directives(text) and 'export CUDA_VISIBLE_DEVICES=""' in text, batch.name
        assert batch.resources.cpus_per_task <= 2, batch.name  # ddp/fsdp: 2 processes without loader workers
    ddp_cpu = Config.model_validate({"task": "bert_squad", "train": {"accelerator": "cpu", "strategy": "ddp", "devices": 2}})
    assert (slurm.resources(ddp_cpu).gpus_per_node, slurm.resources(ddp_cpu).cpus_per_task) == (0, 2)
    # GPU-only: in a job without GPUs it records 'skipped' with the reason, so one CPU on one node is enough
    gpu_only = Config.model_validate({"task": "bert_squad", "train": {"accelerator": "cuda", "strategy": "ddp",
                                                                      "devices": 4, "num_nodes": 2}})
    r = slurm.resources(gpu_only, gpus=False)
    assert (r.nodes, r.gpus_per_node, r.cpus_per_task) == (1, 0, 1)
    assert (slurm.resources(gpu_only).nodes, slurm.resources(gpu_only).gpus_per_node) == (2, 4)


def test_memory_and_cpus_come_from_the_configuration_or_the_setting(monkeypatch, capsys):
    cfg = Config.model_validate({"task": "bert_squad", "data": {"num_workers": 3}, "launch": {"memory_gb": 1.5}})
    r = slurm.resources(cfg)
    assert (r.cpus_per_task, r.memory_mb) == (4, 1536)
    assert slurm.resources(cfg, cpus_per_task=2).cpus_per_task == 2
    assert directives(slurm.script(slurm.Batch("01_x", ["a"], r, name="x"), "gpu", ROOT / "runs", None, None))["mem"] == "1536M"
    assert slurm.resources(Config.model_validate({"task": "bert_squad"})).memory_mb is None  # the partition's default
    monkeypatch.setenv("LABKIT_SLURM_CPUS_PER_TASK", "3")
    assert slurm.main(["--profile", "smoke", "--only", "01", "05", "--dry-run"]) == 0
    assert set(re.findall(r"--cpus-per-task=(\d+)", capsys.readouterr().out)) == {"3"}
    with pytest.raises(SystemExit):
        slurm.main(["--profile", "smoke", "--cpus-per-task", "0", "--dry-run"])
    assert "at least 1" in capsys.readouterr().err


HOSTILE = ["s$(touch pwned)", "ddp copy", "it's`touch pwned2`", "semi;touch pwned3", "new\nline", "%j"]


def test_hostile_params_file_names_reach_run_all_as_one_literal_name_each(monkeypatch, tmp_path):
    kit, log = tmp_path / "kit", tmp_path / "argv.jsonl"
    kit.mkdir()
    monkeypatch.setattr(runall, "ROOT", kit)  # where the script cds to, and where `touch` would write
    # the jobs' python: a stand-in that logs the arguments it was given
    monkeypatch.setattr(slurm, "PYTHON", str(stand_in(tmp_path / "bin", "python", f"""python3 -c 'import json, sys
print(json.dumps(sys.argv[1:]))' "$@" >> {log}""")))
    runs = tmp_path / "my runs %x"
    array = slurm.Batch("01_x", HOSTILE, slurm.Resources(), name="01_x-cpu")
    one = slurm.Batch("01_x", [HOSTILE[0]], slurm.Resources(), name=f"01_x-{slurm._safe(HOSTILE[0])}")
    for batch in (array, one):
        text = slurm.script(batch, "smoke", runs, "cpu", "course_42")
        for line in text.splitlines():
            if line.startswith("#SBATCH"):  # sbatch splits these on blanks outside quotes: one option each
                assert len(shlex.split(line)) == 2, line
        assert f'--output="{tmp_path}/my runs %%x/smoke/slurm/%x-' in text  # only sbatch's own patterns expand
        path = tmp_path / f"{batch.name}.sbatch"
        path.write_text(text)
        for task in range(len(batch.configs)):
            out = subprocess.run(["bash", str(path)], env={**os.environ, "SLURM_ARRAY_TASK_ID": str(task)},
                                 cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
    argvs = [json.loads(line) for line in log.read_text().splitlines()]
    assert [c[c.index("--config") + 1] for c in argvs] == HOSTILE + [HOSTILE[0]]
    assert all(c[c.index("--runs-dir") + 1] == str(runs) for c in argvs)
    assert not [p for p in (kit, tmp_path) for p in p.glob("pwned*")]


def test_hostile_params_file_names_are_planned_whole_with_safe_job_names(monkeypatch, tmp_path):
    params, notebooks = tmp_path / "params" / "01_baseline_bert_squad", tmp_path / "notebooks"
    params.mkdir(parents=True)
    notebooks.mkdir()
    (notebooks / "01_baseline_bert_squad.ipynb").write_text("{}")
    for name in ("s$(touch X)", "ddp copy"):
        (params / f"{name}.yaml").write_text("task: bert_squad\n")
    monkeypatch.setattr(runall, "NOTEBOOKS", notebooks)
    monkeypatch.setattr(runall, "PARAMS", tmp_path / "params")
    [array] = slurm.plan("smoke")
    assert array.configs == ["ddp copy", "s$(touch X)"] and array.name == "01_baseline_bert_squad-cpu"
    [one] = slurm.plan("smoke", configs=["s$(touch X)"])
    assert one.name == "01_baseline_bert_squad-s__touch_X_"
    text = slurm.script(one, "smoke", tmp_path / "runs", None, None)
    assert shlex.split(re.search(r"^config=(.*)$", text, re.M).group(1)) == ["s$(touch X)"]
    assert "#SBATCH --job-name=labkit-smoke-01_baseline_bert_squad-s__touch_X_\n" in text


def test_partition_and_account_must_be_slurm_names(monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_SLURM_PARTITION", "gpu\ntouch pwned")
    with pytest.raises(SystemExit) as stopped:
        slurm.main(["--profile", "smoke", "--only", "01", "--dry-run"])
    assert stopped.value.code == 2 and "LABKIT_SLURM_PARTITION" in capsys.readouterr().err
    monkeypatch.delenv("LABKIT_SLURM_PARTITION")
    for bad in ("a b", "x;id", "$(id)", "c'42"):
        with pytest.raises(SystemExit):
            slurm.main(["--profile", "smoke", "--only", "01", "--dry-run", "--account", bad])
        assert "not a SLURM account name" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a SLURM name"):
        slurm.script(slurm.Batch("01_x", ["a"], slurm.Resources(), name="x"), "smoke", ROOT / "runs", "a\nb", None)
    assert slurm.main(["--profile", "smoke", "--only", "01", "--dry-run", "--partition", "gpu-h100.a_1"]) == 0


def test_a_job_the_partition_cannot_run_is_refused_before_submission(monkeypatch, tmp_path, capsys):
    bin_dir, submitted = tmp_path / "bin", tmp_path / "submitted"
    stand_in(bin_dir, "sinfo", f"cat <<'EOF'\n{SINFO}\nEOF")
    stand_in(bin_dir, "sbatch", f"touch {submitted}; echo 7")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runs = ["--runs-dir", str(tmp_path / "runs")]
    # GPUs on the CPU partition (the default): named with what the partition has, and nothing is submitted
    assert slurm.main(["--profile", "gpu", "--only", "05", *runs]) == 2
    err = capsys.readouterr().err
    assert "05_ddp_fsdp-2gpu: asks for 1 node(s) with 4 CPUs, 2 GPU(s) each; partition 'cpu' has 0 such node(s) of 2" in err
    assert "to fit, change " in err and "--partition (one with GPUs)" in err
    # more GPUs than a node of the GPU partition has; the 2 x 4 GPU configurations fit
    assert slurm.main(["--profile", "gpu", "--only", "05", "--partition", "gpu", *runs]) == 2
    err = capsys.readouterr().err
    assert "05_ddp_fsdp-8gpu: asks for 1 node(s) with 8 CPUs, 8 GPU(s) each" in err and "4gpu" not in err
    # longer than the partition allows; CPUs beyond a node's
    assert slurm.main(["--profile", "smoke", "--only", "01", "--time", "02:00:00", *runs]) == 2
    assert "asks for 02:00:00, longer than partition 'cpu''s limit (01:00:00)" in capsys.readouterr().err
    assert slurm.main(["--profile", "smoke", "--only", "01", "--time", "30", "--cpus-per-task", "3", *runs]) == 2
    assert "with 3 CPUs each" in capsys.readouterr().err
    assert slurm.main(["--profile", "smoke", "--only", "01", "--partition", "nope", *runs]) == 2
    assert "partition 'nope' does not exist on this cluster; partitions: cpu, gpu" in capsys.readouterr().err
    assert not submitted.exists()
    # the smoke profile fits the CPU partition as it is
    assert slurm.main(["--profile", "smoke", "--only", "01", "05", "--time", "00:30:00", *runs]) == 0
    assert submitted.exists()


@pytest.mark.parametrize("gres, gpus", [("(null)", 0), ("gpu:4", 4), ("gpu:a100:4(S:0-1)", 4),
                                        ("gpu:a100:2,gpu:v100:2", 4), ("shard:8,gpu:2", 2), ("mps:100", 0)])
def test_gpus_are_counted_from_sinfo_gres(gres, gpus):
    assert slurm.gpu_count(gres) == gpus


@pytest.mark.parametrize("text, seconds", [("infinite", float("inf")), ("30", 1800), ("30:15", 1815),
                                           ("2:00:00", 7200), ("1-00:00:00", 86400), ("1-12", 129600),
                                           ("2-01:30", 178200)])
def test_slurm_times_are_read(text, seconds):
    assert slurm.time_seconds(text) == seconds


def fake_scontrol(bin_dir: Path, address: str) -> None:
    """scontrol that expands n[1-2] and reports n1 at ``address``, as a cluster whose node names are not host names."""
    stand_in(bin_dir, "scontrol", f"""case "$*" in
  *hostnames*) printf 'n1\\nn2\\n' ;;
  *"show node"*) echo "NodeName=n1 Arch=x86_64 CoresPerSocket=1 NodeAddr={address} NodeHostName=vm Port=6818" ;;
  *) exit 1 ;;
esac""")


@pytest.fixture
def two_node_job(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"SLURM_JOB_ID": "4321", "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_JOB_NUM_NODES": "2",
                       "SLURMD_NODENAME": "n1"}.items():
        monkeypatch.setenv(key, value)
    return Config.model_validate({"task": "bert_squad", "train": {"strategy": "ddp", "devices": 1, "num_nodes": 2}})


def test_the_nodes_meet_at_the_first_nodes_address_not_its_name(two_node_job, tmp_path):
    fake_scontrol(tmp_path / "bin", "127.0.0.1")
    argv = distributed.command(two_node_job, tmp_path / "run" / "spec.json", tmp_path / "logs")
    assert argv[:2] == ["srun", "--nodes=2"]
    endpoint = next(a for a in argv if a.startswith("--rdzv-endpoint="))
    host, port = endpoint.split("=", 1)[1].rsplit(":", 1)
    assert host == "127.0.0.1" and 24321 <= int(port) < 24371  # from the job id, moved on while taken
    assert f"--rdzv-conf=join_timeout={distributed.JOIN_TIMEOUT_S},read_timeout={distributed.STORE_TIMEOUT_S}" in argv
    with socket.socket() as taken:  # the port is in use on the first node: the next free one
        taken.bind(("", int(port)))
        again = distributed.command(two_node_job, tmp_path / "run" / "spec.json", tmp_path / "logs")
        assert f"--rdzv-endpoint=127.0.0.1:{port}" not in again


def test_a_rendezvous_host_that_does_not_resolve_is_recorded_within_seconds(two_node_job, tmp_path):
    from labkit import results

    fake_scontrol(tmp_path / "bin", "n1.invalid")
    directory = tmp_path / "runs" / "smoke" / "05_ddp_fsdp" / "ddp_2node_check"
    identity = {"notebook": "05_ddp_fsdp", "config": "ddp_2node_check", "profile": "smoke",
                "params_file": "params/05_ddp_fsdp/ddp_2node_check.yaml", "overrides": {}}
    start = time.monotonic()
    with pytest.raises(distributed.LaunchError, match=r"n1\.invalid:2\d{4} \(node n1\) does not resolve"):
        distributed.launch(two_node_job, identity, directory)
    assert time.monotonic() - start < 15
    record = results.read(directory)
    assert record["status"] == "failed" and "rendezvous endpoint n1.invalid:2" in record["error"]


def test_a_rendezvous_that_fails_inside_torchrun_names_the_endpoint():
    argv = ["srun", "--rdzv-endpoint=10.0.0.7:24321", "-m", "labkit.launch.worker"]
    tail = ["[rank0] loading", "torch.distributed.elastic.rendezvous.api.RendezvousConnectionError: The connection to "
            "the C10d store has failed. See inner exception for details."]
    error = distributed.rendezvous_failure(argv, tail)
    assert error.startswith("the nodes did not meet at the rendezvous 10.0.0.7:24321") and "RendezvousConnectionError" in error
    assert distributed.rendezvous_failure(argv, ["[rank0] ValueError: x"]) is None
    assert distributed.rendezvous_failure(["torchrun", "--standalone"], tail) is None
