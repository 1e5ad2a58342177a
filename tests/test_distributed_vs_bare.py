"""The side-by-side command's rows and CSV (benchmarks/distributed_vs_bare.py): columns, ratios, and a row
named with overrides. The runs themselves need GPUs; the arithmetic does not."""
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import distributed_vs_bare as side  # noqa: E402


def test_a_row_with_overrides_keeps_its_configuration_and_bare_loop():
    row = side.parse_row("ddp:measure.profile_steps=0,measure.nvtx=false")
    assert (row.config, row.bare) == ("ddp", "ddp")
    assert row.overrides == {"measure.profile_steps": 0, "measure.nvtx": False}
    assert row.name == "ddp [profile_steps=0, nvtx=False]"
    assert side.parse_row("ddp1").overrides == {"train.devices": 1}


def test_csv_ratios_against_the_bare_loop_and_the_one_gpu_run(tmp_path):
    rows = {r.key: r for r in side.ROWS}
    measured = [(rows["single"], {"status": "ok", "devices": 1, "summary": {"samples_per_s": 600.0, "peak_allocated_gb": 6.7}}),
                (rows["ddp"], {"status": "ok", "devices": 2, "summary": {"samples_per_s": 1140.0, "peak_allocated_gb": 7.1,
                                                                         "gc_pause_s": 0.0123}}),
                (rows["dp"], {"status": "ok", "devices": 2, "summary": {"samples_per_s": 300.0}}),
                (rows["deepspeed"], {"status": "skipped", "devices": 2, "summary": {}})]
    bare = {("none", 1, 0): {"samples_per_s": 800.0}, ("ddp", 2, 0): {"samples_per_s": 1200.0}}
    side.write_csv(tmp_path / "out.csv", measured, bare)
    assert not (tmp_path / "out.runs.csv").exists()  # one repeat: the runs are the table
    with (tmp_path / "out.csv").open() as f:
        table = {r["configuration"]: r for r in csv.DictReader(f)}
    assert list(next(iter(table.values())))[:7] == ["configuration", "devices", "samples_per_s", "bare_samples_per_s",
                                                    "vs_bare", "scaling_efficiency", "peak_allocated_gb"]
    ddp = table["ddp"]
    assert float(ddp["vs_bare"]) == 0.95 and float(ddp["scaling_efficiency"]) == 0.95
    assert float(ddp["bare_scaling_efficiency"]) == 0.75 and float(ddp["gc_pause_s"]) == 0.012
    assert table["dp (DataParallel)"]["bare_samples_per_s"] == "" and float(table["dp (DataParallel)"]["scaling_efficiency"]) == 0.25
    assert table["deepspeed ZeRO-2"]["status"] == "skipped" and table["deepspeed ZeRO-2"]["samples_per_s"] == ""


def test_repeats_take_each_ratio_within_its_repeat_and_report_medians(tmp_path):
    """Three repeats: labkit's DDP against the bare DDP loop of the same repeat (0.9, 1.0, 0.95 -> median 0.95),
    though labkit's fastest run and the bare loop's slowest are in different repeats."""
    rows = {r.key: r for r in side.ROWS}
    measured, bare = [], {}
    for repeat, (one, ddp, bare_one, bare_ddp) in enumerate([(700.0, 1260.0, 800.0, 1400.0), (760.0, 1500.0, 820.0, 1500.0),
                                                             (720.0, 1330.0, 790.0, 1400.0)]):
        measured += [(rows["single"], {"status": "ok", "devices": 1, "repeat": repeat, "summary": {"samples_per_s": one}}),
                     (rows["ddp"], {"status": "ok", "devices": 2, "repeat": repeat, "summary": {"samples_per_s": ddp}})]
        bare.update({("none", 1, repeat): {"samples_per_s": bare_one}, ("ddp", 2, repeat): {"samples_per_s": bare_ddp}})
    measured.append((rows["ddp"], {"status": "failed", "devices": 2, "repeat": 3, "summary": {}}))  # not counted
    side.write_csv(tmp_path / "out.csv", measured, bare)
    with (tmp_path / "out.csv").open() as f:
        table = {r["configuration"]: r for r in csv.DictReader(f)}
    ddp = table["ddp"]
    assert float(ddp["vs_bare"]) == 0.95 and ddp["runs"] == "3" and ddp["status"] == "ok"
    assert (float(ddp["vs_bare_min"]), float(ddp["vs_bare_max"])) == (0.9, 1.0)  # the spread the median hides
    assert float(ddp["samples_per_s"]) == 1330.0 and float(ddp["scaling_efficiency"]) == round(1330 / 1440, 3)
    with (tmp_path / "out.runs.csv").open() as f:
        runs = list(csv.DictReader(f))
    assert [(r["repeat"], r["configuration"]) for r in runs][:2] == [("0", "single (1 GPU, in-process)"), ("0", "ddp")]
    assert [float(r["vs_bare"]) for r in runs if r["configuration"] == "ddp" and r["status"] == "ok"] == [0.9, 1.0, 0.95]


def test_the_in_process_ddp_row_trains_without_the_launcher(tmp_path):
    """ddp1_here: DistributedDataParallel on one rank in labkit.run's own process (gloo on a CPU), so that a GPU run
    can set the wrapper's cost apart from the launched process's."""
    row = side.parse_row("ddp1_here")
    assert row.in_process and row.overrides == {"train.devices": 1} and side.parse_row("ddp1_here:train.lr=1e-4").in_process
    result = side.run_labkit(row, {"train.max_steps": 3}, tmp_path, timeout_s=600, profile="smoke")
    assert result["status"] == "ok" and result["launched"] is False and result["summary"]["steps"] == 3


def test_a_budget_stops_before_a_row_that_would_end_past_it(tmp_path, monkeypatch, capsys):
    """Each labkit run here takes 100 s of a made-up clock: with 250 s, a third row would end at 300 s, so the command
    stops before it (and before a second repeat) and its CSV holds the two rows it measured."""
    clock = [0.0]

    def run_labkit(row, common, runs_dir, timeout_s):
        clock[0] += 100.0
        return {"status": "ok", "error": None, "summary": {"samples_per_s": 500.0}, "launched": False}

    monkeypatch.setattr(side, "run_labkit", run_labkit)
    monkeypatch.setattr(side, "run_bare", lambda strategy, devices, args: {"samples_per_s": 600.0})
    monkeypatch.setattr(side.time, "perf_counter", lambda: clock[0])  # the clock of labkit.bench.Budget
    out = tmp_path / "out.csv"
    assert side.main(["single", "ddp1", "fsdp", "--repeats", "2", "--budget-s", "250", "--out", str(out)]) == 0
    with out.open() as f:
        assert [r["configuration"] for r in csv.DictReader(f)] == ["single (1 GPU, in-process)", "ddp 1 GPU (through the launcher)"]
    assert "stopped before fsdp (repeat 1): it would end past --budget-s 250" in capsys.readouterr().out


def test_each_row_and_repeat_keeps_its_records_in_a_folder_of_its_own(tmp_path, monkeypatch):
    """ddp1 and ddp1_here run the same configuration: in one folder the second would replace the first's trace."""
    folders = []

    def run_labkit(row, common, runs_dir, timeout_s):
        folders.append(runs_dir)
        return {"status": "ok", "error": None, "summary": {"samples_per_s": 500.0}, "launched": False}

    monkeypatch.setattr(side, "run_labkit", run_labkit)
    monkeypatch.setattr(side, "run_bare", lambda strategy, devices, args: {"samples_per_s": 600.0})
    side.main(["ddp1", "ddp1_here:measure.nvtx=false", "--repeats", "2", "--runs-dir", str(tmp_path),
               "--out", str(tmp_path / "out.csv")])
    assert [f.relative_to(tmp_path).as_posix() for f in folders] == [
        "ddp1-1", "ddp1_here_nvtx_False-1", "ddp1_here_nvtx_False-2", "ddp1-2"]


def test_the_plain_torchrun_row_trains_in_the_process_torchrun_starts(tmp_path):
    """ddp1_torchrun: labkit.run under torchrun itself (gloo on a CPU): it trains in that process, not through
    labkit's launcher, so that a GPU run can tell torchrun's cost from the launcher's."""
    row = side.parse_row("ddp1_torchrun")
    assert row.torchrun and not row.in_process and side.parse_row("ddp1_torchrun:train.lr=1e-4").torchrun
    result = side.run_labkit(row, {"train.max_steps": 3}, tmp_path, timeout_s=600, profile="smoke")
    assert result["status"] == "ok" and result["launched"] is False and result["summary"]["steps"] == 3


def test_each_ranks_own_step_is_printed_for_multi_rank_rows():
    two = {"step_s": 0.048, "step_s_rank0": 0.048, "data_s_rank0": 0.001, "wait_s_rank0": 0.0021,
           "step_s_rank1": 0.0515, "data_s_rank1": 0.0012, "wait_s_rank1": 0.004}
    assert side.each_rank(two) == ("each rank, median ms: rank 0: step 48.0, data 1.00, GPU waiting for the host 2.10; "
                                   "rank 1: step 51.5, data 1.20, GPU waiting for the host 4.00")
    assert side.each_rank({"step_s": 0.048}) is None  # one process
