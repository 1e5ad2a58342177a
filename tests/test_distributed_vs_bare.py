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
                (rows["ddp"], {"status": "ok", "devices": 2, "summary": {"samples_per_s": 1140.0, "peak_allocated_gb": 7.1}}),
                (rows["dp"], {"status": "ok", "devices": 2, "summary": {"samples_per_s": 300.0}}),
                (rows["deepspeed"], {"status": "skipped", "devices": 2, "summary": {}})]
    bare = {("none", 1): {"samples_per_s": 800.0}, ("ddp", 2): {"samples_per_s": 1200.0}}
    side.write_csv(tmp_path / "out.csv", measured, bare)
    with (tmp_path / "out.csv").open() as f:
        table = {r["configuration"]: r for r in csv.DictReader(f)}
    assert list(next(iter(table.values())))[:7] == ["configuration", "devices", "samples_per_s", "bare_samples_per_s",
                                                    "vs_bare", "scaling_efficiency", "peak_allocated_gb"]
    ddp = table["ddp"]
    assert float(ddp["vs_bare"]) == 0.95 and float(ddp["scaling_efficiency"]) == 0.95
    assert float(ddp["bare_scaling_efficiency"]) == 0.75
    assert table["dp (DataParallel)"]["bare_samples_per_s"] == "" and float(table["dp (DataParallel)"]["scaling_efficiency"]) == 0.25
    assert table["deepspeed ZeRO-2"]["status"] == "skipped" and table["deepspeed ZeRO-2"]["samples_per_s"] == ""
