"""The trace reader that says where a GPU waited (benchmarks/trace_gaps.py), on a trace whose gaps are known."""
import gzip
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import trace_gaps  # noqa: E402


def _trace() -> list[dict]:
    """Three kernels: 0-100 us, 150-250 (after a 50 us gap while the host synchronised), 1250-1300 (after a
    1000 us gap: the host was late, launching it from aten::add)."""
    def x(cat, name, ts, dur, tid=1, corr=None):
        e = {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 1}
        if corr is not None:
            e["args"] = {"correlation": corr}
        return e
    return [x("kernel", "gemm", 0, 100, tid=7, corr=1), x("kernel", "softmax", 150, 100, tid=7, corr=2),
            x("kernel", "add_kernel", 1250, 50, tid=7, corr=3),
            x("cuda_runtime", "cudaLaunchKernel", 0, 5, corr=1), x("cuda_runtime", "cudaLaunchKernel", 10, 5, corr=2),
            x("cuda_runtime", "cudaStreamSynchronize", 90, 80),
            x("cpu_op", "aten::add", 1200, 60), x("cuda_runtime", "cudaLaunchKernel", 1240, 5, corr=3)]


def test_busy_share_gaps_and_their_causes(tmp_path):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": _trace()}, f)
    result = trace_gaps.analyse(trace_gaps.load(path), min_gap_us=20)
    assert result["gpu_events"] == 3 and result["span_ms"] == 1.3
    assert result["gpu_busy"] == round(250 / 1300, 4) and result["gaps_over_min"] == 2
    longest, second = result["longest_gaps"]
    assert (longest["gap_us"], longest["launched_by"], longest["host_blocked_in"]) == (1000.0, "aten::add", [])
    assert second["gap_us"] == 50.0 and second["host_blocked_in"] == ["cudaStreamSynchronize 80us"]
    assert result["blocking_host_calls_ms"] == {"cudaStreamSynchronize": 0.08}
    assert trace_gaps.analyse(trace_gaps.load(path), min_gap_us=60)["gaps_over_min"] == 1


def test_host_side_of_the_launching_thread(tmp_path):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": _trace()}, f)
    host = trace_gaps.analyse(trace_gaps.load(path))["host"]
    # Thread 1 made every runtime call; its one operator, aten::add (1200-1260 us), covers 60 of the 1300 us.
    assert host == {"operators": 1, "busy": round(60 / 1300, 4), "median_us": {"aten::add": 60.0}}
