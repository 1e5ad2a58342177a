"""What the kit promises when things go wrong: a damaged file is named and treated as not done, a full disk or a
read-only runs dir leaves no torn file and no traceback, and bad or unsafe input stops before any work with the
file, the key and the fix. (Killed and hung processes: tests/test_resume.py and tests/test_distributed.py.)"""
import errno
import json
import os
import stat
import warnings
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook, new_output

from labkit import results
from labkit.config import ConfigError, load
from labkit.launch import runall
from labkit.preflight import skip_reason
from labkit.tasks import t5_qa
from test_resume import kit, main, record_of  # noqa: F401 - kit is a fixture

BASELINE = "params/01_baseline_bert_squad/baseline.yaml"
CONFIG_ERROR = ("params/01_fake/a.yaml (profile 'smoke'): 1 problem(s)\n"
                "  - train.precision: 'fp15' is not allowed; choose one of '32', 'tf32', '16-mixed', 'bf16-mixed' or 'bf16-true'")


def read_only(folder: Path, monkeypatch) -> None:
    """Make ``folder`` read-only: by its mode, or, for root (whom modes do not stop), by the error a read-only
    mount gives."""
    if os.geteuid() != 0:
        for path in [folder, *folder.rglob("*")]:
            path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
        return
    real_open = os.open

    def refuse(path, flags, *args, **kwargs):
        if Path(path).is_relative_to(folder) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(runall.os, "open", refuse)


@pytest.mark.slow
def test_run_all_goes_on_past_a_damaged_record_and_a_read_only_runs_dir(kit, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("FAKE_ERROR_a", CONFIG_ERROR)
    assert main(kit) == 1
    out = capsys.readouterr().out
    assert "01_fake/a" in out and "failed" in out
    # The whole error under its row, not its first 100 characters: the key and the allowed values show.
    assert "  - train.precision: 'fp15' is not allowed; choose one of '32', 'tf32', '16-mixed', 'bf16-mixed' or 'bf16-true'" in out

    torn = record_of(kit, "c")
    torn.write_bytes(torn.read_bytes()[:20])  # a record cut short
    assert main(kit, "--config", "c") == 0
    captured = capsys.readouterr()
    assert f"{torn}: damaged results record (JSONDecodeError" in captured.err
    assert [line.split()[2] for line in captured.out.splitlines() if line.startswith("01_fake/c")] == ["ok"]  # run again
    assert json.loads(torn.read_text())["status"] == "ok"

    read_only(kit / "runs", monkeypatch)
    assert main(kit, "--config", "c") == 0  # done: nothing to write, so nothing fails
    assert "done earlier" in capsys.readouterr().out
    assert main(kit) == 1  # a is not done and cannot be run here: a row that says why, not a traceback
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("01_fake/a")]
    assert "failed" in rows[0] and "cannot write its results" in rows[0]


@pytest.mark.parametrize("profile, words", [
    ("../profiles/smoke", "a profile is the name of a file in"),
    ("/tmp/elsewhere", "choose one of ['bench', 'full', 'gpu', 'smoke']"),
    ("smok", "Did you mean 'smoke'?"),
])
def test_a_profile_is_a_name_checked_before_any_work(tmp_path, capsys, profile, words):
    with pytest.raises(SystemExit) as stop:
        runall.main(["--profile", profile, "--runs-dir", str(tmp_path / "runs")])
    assert stop.value.code == 2 and words in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ConfigError, match="does not exist"):
        load(BASELINE, profile)


def test_a_full_disk_leaves_the_previous_record_whole(tmp_path, monkeypatch):
    results.save({"status": "ok", "run": {}}, tmp_path)
    before = (tmp_path / "result.json").read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(results.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        results.save({"status": "failed", "run": {}}, tmp_path)
    assert (tmp_path / "result.json").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temporary file left behind


def test_a_damaged_record_is_named_and_left_out_of_tables(tmp_path):
    good = results.record_dir("smoke", "01_x", "good", tmp_path)
    results.save({"status": "ok", "run": {"profile": "smoke", "notebook": "01_x", "config": "good"}}, good)
    bad = results.record_dir("smoke", "01_x", "bad", tmp_path) / "result.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"status": "ok", "run": {')
    with pytest.warns(UserWarning, match=rf"{bad}: damaged results record"):
        table = results.load(tmp_path, "smoke")
    assert list(table["config"]) == ["good"]
    with pytest.raises(results.DamagedRecord, match=str(bad)):
        results.read(bad.parent, strict=True)
    with pytest.warns(UserWarning):
        assert results.keep_previous(bad.parent) is None  # nothing to keep: the next run replaces it


def test_a_torn_notebook_is_reported_and_the_other_pages_are_written(tmp_path, capsys):
    from labkit.report import pages

    folder = tmp_path / "smoke" / "01_x"
    folder.mkdir(parents=True)
    good = new_notebook(cells=[new_code_cell("1 + 1", outputs=[new_output("execute_result", {"text/plain": "2"}, execution_count=1)])])
    nbformat.write(good, folder / "a.ipynb")
    whole = (folder / "a.ipynb").read_bytes()
    (folder / "b.ipynb").write_bytes(whole[: len(whole) // 2])  # the disk filled mid-write
    index = pages.build("smoke", tmp_path, tmp_path / "html", rerun=False)
    assert "2" in (tmp_path / "html" / "01_x" / "a.html").read_text()
    assert "damaged notebook" in (tmp_path / "html" / "01_x" / "b.html").read_text()
    assert "damaged" in index.read_text()
    assert f"{folder / 'b.ipynb'}: damaged notebook" in capsys.readouterr().err


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, words", [
    ("train: {batch_size: true}", "train.batch_size: Value error, expected a whole number, not bool True"),
    ("train: {epochs: '2'}", "train.epochs: Value error, expected a whole number, not str '2'"),
    ("train: {lr: yes}", "train.lr: Value error, expected a number, not bool True"),
    ("model: {compile: 1}", "model.compile: Value error, expected true or false, not int 1"),
    ("data: {path: /data/train.json}", "data.path/val_path is set but data.source is 'embedded'"),
])
def test_values_of_the_wrong_type_or_ignored_are_refused(tmp_path, text, words):
    with pytest.raises(ConfigError) as err:
        load(write(tmp_path, f"task: bert_squad\n{text}\n"))
    assert words in str(err.value)


def test_numbers_yaml_reads_as_text_still_count():
    path = Path(BASELINE)
    assert load(path, "smoke", {"train.lr": "1e-4"}).train.lr == 1e-4  # PyYAML reads `lr: 1e-4` as a string


def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path):
    path = write(tmp_path, "task: bert_squad\ntrain:\n  lr: 0.1\n  batch_size: 4\n  lr: 0.2\n")
    with pytest.raises(ConfigError, match=rf"^{path}, line 5: 'lr' is given twice \(also on line 3\)"):
        load(path)


def test_a_params_file_in_another_notebooks_folder_is_refused(tmp_path):
    path = write(tmp_path, "task: bert_squad\n", "params/02_dataloader_workers/mine.yaml")
    with pytest.raises(ConfigError, match=r"task 'bert_squad' does not belong in 02_dataloader_workers/.*"
                                          r"move the file to params/01_baseline_bert_squad/"):
        load(path)


def test_an_override_below_a_setting_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"override 'train.batch_size.x': train.batch_size is a setting, not a section"):
        load(BASELINE, "smoke", {"train.batch_size.x": 1})


def test_more_cpu_ranks_than_the_machine_can_hold_are_skipped_with_the_reason():
    cfg = load("params/05_ddp_fsdp/ddp.yaml", "smoke", {"train.devices": 64})
    cores = len(os.sched_getaffinity(0))
    assert f"train.devices is 64 and this process may use {cores} CPU core(s)" in skip_reason(cfg, cuda=False)
    assert skip_reason(load("params/05_ddp_fsdp/ddp.yaml", "smoke", {"train.devices": 2}), cuda=False) is None


def test_an_empty_gsm8k_file_names_the_file(tmp_path):
    path = write(tmp_path, "\n\n", "train.jsonl")
    with pytest.raises(ValueError, match=rf"{path}: no GSM8K lines in the file"):
        t5_qa.read_gsm8k(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
        assert t5_qa.read_gsm8k(path) == [{"question": "1+1?", "answer": "#### 2"}]


def test_run_all_says_when_python_keeps_no_bytecode_cache(tmp_path, monkeypatch, capsys):
    """Every kernel and rank would compile the libraries' sources again: the log says so and how to keep a cache."""
    assert runall.bytecode_note({}) is None and runall.bytecode_note({"PYTHONDONTWRITEBYTECODE": ""}) is None
    monkeypatch.setattr(runall, "plan", lambda only, configs: [])  # nothing to run: only what is said first
    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    assert runall.main(["--profile", "smoke", "--runs-dir", str(tmp_path)]) == 0
    assert "unset PYTHONDONTWRITEBYTECODE, and export PYTHONPYCACHEPREFIX" in capsys.readouterr().err
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE")
    assert runall.main(["--profile", "smoke", "--runs-dir", str(tmp_path)]) == 0
    assert "PYTHONDONTWRITEBYTECODE" not in capsys.readouterr().err
