"""Student ergonomics: the configuration chooser, "compare with my previous runs", the progress bar."""
import torch
from torch import nn
from torch.utils.data import TensorDataset

from labkit import preflight, results, widgets
from labkit.config import PARAMS_DIR, Config
from labkit.tasks import Task
from labkit.train import fit, make_fabric

NB = "01_baseline_bert_squad"
BASELINE = f"params/{NB}/baseline.yaml"


def test_chooser_is_one_line_headless(monkeypatch, capsys):
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    namespace = {"config": BASELINE, "profile": "smoke"}
    assert widgets.chooser(NB, namespace) is None
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and BASELINE in out and "smoke" in out
    assert namespace == {"config": BASELINE, "profile": "smoke"}  # headless, the parameters cell rules


def test_chooser_lists_params_and_profiles_and_sets_the_notebook_variables(monkeypatch, tmp_path):
    monkeypatch.setattr(widgets, "_has_frontend", lambda: True)
    namespace = {"config": BASELINE, "profile": "smoke", "runs_dir": str(tmp_path)}
    box = widgets.chooser(NB, namespace)
    pick_config, pick_profile = box.children[0].children
    assert [v for _, v in pick_config.options] == [f"params/{NB}/{f.name}" for f in sorted((PARAMS_DIR / NB).glob("*.yaml"))]
    assert {"smoke", "gpu", "full"} <= set(pick_profile.options)
    assert pick_config.value == BASELINE and pick_profile.value == "smoke"
    assert "not run yet in profile smoke" in box.children[1].value
    assert namespace["config"] == BASELINE  # showing the control changes nothing
    pick_config.value = f"params/{NB}/baseline_bf16.yaml"
    pick_profile.value = "gpu"
    assert namespace["config"] == f"params/{NB}/baseline_bf16.yaml" and namespace["profile"] == "gpu"
    assert "bf16" in box.children[1].value and "baseline_bf16.yaml&quot;; profile = &quot;gpu" in box.children[2].value


def test_chooser_without_params_offers_the_profile_only(monkeypatch):
    monkeypatch.setattr(widgets, "_has_frontend", lambda: True)
    namespace = {"profile": "gpu"}
    box = widgets.chooser("08_report", namespace)
    pick_config, pick_profile = box.children[0].children
    assert pick_config.layout.display == "none" and pick_profile.value == "gpu"
    pick_profile.value = "smoke"
    assert namespace == {"profile": "smoke"}


def record(config, started, status="ok", device="cpu", samples_per_s=10.0, overrides=None):
    env = {"device": device, "device_name": "NVIDIA H100 80GB HBM3" if device == "cuda" else "x86_64", "device_count": 1}
    return {"run": {"notebook": NB, "config": config, "profile": "smoke", "started": started, "overrides": overrides or {}},
            "status": status, "env": env, "error": None if status == "ok" else f"{status}: why",
            "summary": {"samples_per_s": samples_per_s, "final_val_loss": 1.5} if status == "ok" else {"samples_per_s": 99.0}}


def test_previous_run_is_kept_and_compared(tmp_path):
    folder = results.record_dir("smoke", NB, "baseline", tmp_path)
    results.save(record("baseline", "2025-01-01 10:00:00", samples_per_s=10.0), folder)
    assert results.keep_previous(folder) == folder / "history" / "2025-01-01_10-00-00.json"
    assert not (folder / "result.json").exists()
    assert results.keep_previous(folder) is None  # nothing left to keep
    results.save(record("baseline", "2025-01-01 11:00:00", status="running"), folder)
    assert results.keep_previous(folder) is None and (folder / "result.json").exists()  # a killed run is not kept
    now = record("baseline", "2025-01-01 12:00:00", samples_per_s=20.0, overrides={"train.batch_size": 32})
    results.save(now, folder)
    results.save(record("baseline_bf16", "2025-01-01 09:00:00", status="skipped"), results.record_dir("smoke", NB, "baseline_bf16", tmp_path))
    results.save(record("other", "2025-01-01 08:00:00", device="cuda", samples_per_s=400.0), results.record_dir("smoke", NB, "other", tmp_path))

    table = results.compare(now, tmp_path).reset_index()
    assert list(table["run"]) == ["this run", "earlier", "earlier", "earlier"]
    assert list(table["started"]) == ["2025-01-01 12:00:00", "2025-01-01 10:00:00", "2025-01-01 09:00:00", "2025-01-01 08:00:00"]
    assert table.loc[0, "overrides"] == "train.batch_size=32"
    ratio = dict(zip(table["config"] + "@" + table["started"], table["samples/s vs this run"]))
    assert ratio["baseline@2025-01-01 10:00:00"] == "0.50x"  # same device: the earlier run was half as fast
    assert ratio["other@2025-01-01 08:00:00"] == "other device"  # never a ratio across devices
    skipped = table[table["config"] == "baseline_bf16"].iloc[0]
    assert skipped["samples/s"] == "skipped" and skipped["samples/s vs this run"] == "—"  # no number for it


def test_labkit_run_keeps_the_previous_record(tmp_path, monkeypatch):
    # a GPU-only configuration on a CPU is recorded 'skipped' in a moment: enough to see the record kept
    from labkit.launch import runner

    monkeypatch.setattr(runner.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(preflight, "cpu_multiplies", lambda dtype: False)  # a CPU without bf16 instructions, as most are
    first = runner.run(f"params/{NB}/baseline_bf16.yaml", "smoke", runs_dir=tmp_path)
    second = runner.run(f"params/{NB}/baseline_bf16.yaml", "smoke", runs_dir=tmp_path)
    assert first["status"] == second["status"] == "skipped"
    kept = list((results.record_dir("smoke", NB, "baseline_bf16", tmp_path) / "history").glob("*.json"))
    assert len(kept) == 1


def test_progress_bar_shows_epoch_loss_and_throughput(monkeypatch, capfd):
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(256, 8, generator=g), torch.randint(0, 2, (256,), generator=g))
    cfg = Config.model_validate({"task": "cifar_resnext", "train": {"epochs": 2, "batch_size": 32, "log_every": 2},
                                 "measure": {"warmup_steps": 1}})
    task = Task(model=nn.Linear(8, 2), train_set=data, val_set=data)
    fit(cfg, task, make_fabric(cfg))
    err = capfd.readouterr().err
    last = [line for line in err.replace("\r", "\n").splitlines() if "cifar_resnext" in line][-1]
    assert "16/16" in last and "epoch=2" in last and "loss=" in last  # step of total, epoch, loss
    assert float(last.split("samples/s=")[1].split("]")[0].split(",")[0]) > 0


def test_make_lab_starts_jupyter_as_root_too():
    import os
    import subprocess

    from labkit.config import ROOT

    dry = subprocess.run(["make", "-n", "lab"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    line = next(line for line in dry.splitlines() if "jupyter lab" in line)
    assert ("--allow-root" in line) == (os.geteuid() == 0)  # Jupyter refuses root without it
