"""The cost of reading profiled steps (benchmarks/profiler_cost.py): labkit's reading of the profiler's own trace against
torch's Python view of the events, on a small T5 on the CPU."""
import csv
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import profiler_cost  # noqa: E402


@pytest.mark.serial  # two timings compared: alone, not beside other tests' processes
def test_reading_the_profilers_trace_costs_a_fraction_of_torchs_event_objects(tmp_path):
    out = tmp_path / "cost.csv"
    assert profiler_cost.main(["--profile", "smoke", "--repeats", "1", "--steps", "3", "--out", str(out),
                               "params/07_t5_model_parallel/gsm8k_1worker_fp32.yaml"]) == 0
    rows = {r["reading"]: r for r in csv.DictReader(out.open())}
    assert set(rows) == {"torch events", "profiler's trace"} and rows["torch events"]["device"] == "cpu"
    assert int(rows["torch events"]["events"]) > 1000 and float(rows["profiler's trace"]["trace_mb"]) > 0
    assert float(rows["profiler's trace"]["seconds"]) < float(rows["torch events"]["seconds"]) / 2
