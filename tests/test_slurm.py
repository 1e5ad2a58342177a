"""SLURM scripts are checked against the params they come from; submission runs against a stand-in sbatch."""
import os
import re
import stat
from pathlib import Path

import pytest

from labkit import config as config_mod
from labkit.launch import runall
from labkit.launch import slurm
from labkit.config import Config

ROOT = Path(__file__).resolve().parents[1]


def directives(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(\S+))?", script, re.M))


def configs_of(script: str) -> list[str]:
    if m := re.search(r"^configs=\((.*)\)$", script, re.M):
        return m.group(1).split()
    return [re.search(r"^config=(\S+)$", script, re.M).group(1)]


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
    split = Config.model_validate({"task": "t5_qa", "model": {"split_devices": 2}})  # one process, two GPUs
    assert (slurm.resources(split).gpus_per_node, slurm.resources(split).cpus_per_task) == (2, 4)
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
    bin_dir.mkdir()
    fake = bin_dir / "sbatch"  # a stand-in that logs its arguments and answers a job id, as sbatch --parsable does
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\necho $(( $(wc -l < {log}) + 1000 ))\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    runs = tmp_path / "runs"
    assert slurm.main(["--profile", "gpu", "--only", "01", "08", "--runs-dir", str(runs)]) == 0
    calls = log.read_text().splitlines()
    scripts = sorted((runs / "gpu" / "slurm").glob("*.sbatch"))
    assert [p.name for p in scripts] == ["01_baseline_bert_squad-1gpu.sbatch", "08_report.sbatch"]
    assert calls[0] == f"--parsable {scripts[0]}"
    assert calls[1] == f"--parsable --dependency=afterany:1001 {scripts[1]}"
    report = scripts[1].read_text()
    assert "gres" not in directives(report) and "labkit.launch.runall --profile gpu --only 08_report" in report
    assert "labkit.report --profile gpu" in report
    assert "submitted 1001" in capsys.readouterr().out
