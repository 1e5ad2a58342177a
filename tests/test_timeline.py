"""labkit.timeline on small synthetic traces (GPU: known kernels on two streams; CPU: nested operators),
and on a real torch.profiler trace of a tiny step."""
from __future__ import annotations

import gzip
import json

import matplotlib
import pytest
import torch

from labkit import timeline

matplotlib.use("Agg")


def x(name, cat, ts, dur, pid=1, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": args}


def gpu_trace(steps: int = 2) -> list[dict]:
    """Each 1,000 us step: data 100, forward 300, backward 400, optimizer 200 on the host; on the GPU a copy,
    a gemm in forward and two in backward on stream 7, an all-reduce on stream 13."""
    events = []
    for s in range(steps):
        t = 1_000 * s
        events += [x("data", "user_annotation", t, 100), x("forward", "user_annotation", t + 100, 300),
                   x("backward", "user_annotation", t + 400, 400), x("optimizer", "user_annotation", t + 800, 200),
                   x("aten::mm", "cpu_op", t + 120, 50), x("cudaLaunchKernel", "cuda_runtime", t + 130, 10),
                   x("Memcpy HtoD (Pinned -> Device)", "gpu_memcpy", t + 110, 20, pid=0, tid=7, device=0, stream=7),
                   x("sm90_gemm", "kernel", t + 150, 200, pid=0, tid=7, device=0, stream=7),
                   x("sm90_gemm", "kernel", t + 420, 150, pid=0, tid=7, device=0, stream=7),
                   x("sm90_gemm", "kernel", t + 600, 150, pid=0, tid=7, device=0, stream=7),
                   x("ncclDevKernel_AllReduce_Sum_f32", "kernel", t + 650, 100, pid=0, tid=13, device=0, stream=13)]
    events.append({"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "GPU 0"}})  # metadata: ignored
    return events


@pytest.fixture
def trace_file(tmp_path):
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": gpu_trace(3)}, f)
    return path


def test_read_trace_keeps_complete_events_of_a_gzipped_file(trace_file):
    events = timeline.read_trace(trace_file)
    assert len(events) == 3 * 11 and all(e["ph"] == "X" for e in events)


def test_rows_cover_the_asked_steps_with_phases_threads_and_streams(trace_file):
    bars = timeline.rows(trace_file, steps=2)
    assert set(bars["row"]) == {"host: step phases", "host thread 1: operators", "GPU 0 stream 7", "GPU 0 stream 13"}
    phases = bars[bars["row"] == "host: step phases"]
    assert list(phases["name"]) == ["data", "forward", "backward", "optimizer"] * 2  # the third step is left out
    assert bars.attrs["window_ms"] == pytest.approx(2.0)
    kinds = bars.groupby("row")["kind"].agg(set)
    assert kinds["GPU 0 stream 7"] == {"kernel", "memory copy"} and kinds["GPU 0 stream 13"] == {"communication"}
    first_gemm = bars[bars["name"] == "sm90_gemm"].iloc[0]
    assert (first_gemm["start_ms"], first_gemm["duration_ms"]) == (pytest.approx(0.15), pytest.approx(0.2))


def test_top_kernels_per_step_and_share(trace_file):
    table = timeline.top_kernels(trace_file)
    assert table.index.name == "kernel" and table.index[0] == "sm90_gemm"
    gemm = table.loc["sm90_gemm"]
    assert gemm["calls per step"] == 3 and gemm["ms per step"] == pytest.approx(0.5)
    assert gemm["share of the time %"] == pytest.approx(100 * 500 / 620)  # 500 of 620 us of device work a step
    assert table["share of the time %"].sum() == pytest.approx(100)


def test_cpu_trace_ranks_host_operators_by_self_time():
    events = [x("optimizer", "user_annotation", 0, 100), x("aten::add_", "cpu_op", 0, 60),
              x("aten::copy_", "cpu_op", 10, 40), x("aten::mul", "cpu_op", 70, 20, tid=2)]
    table = timeline.top_kernels(events)
    assert table.index.name == "host operator"
    assert table["ms per step"].to_dict() == {"aten::copy_": pytest.approx(0.04), "aten::add_": pytest.approx(0.02),
                                              "aten::mul": pytest.approx(0.02)}
    bars = timeline.rows(events)
    assert set(bars["row"]) == {"host: step phases", "host thread 1: operators", "host thread 2: operators"}
    assert list(bars[bars["row"] == "host thread 1: operators"]["name"]) == ["aten::add_"]  # copy_ is inside add_


def test_draw_a_real_profiler_trace(tmp_path):
    model = torch.nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(2):
            with torch.profiler.record_function("data"):
                batch = torch.randn(4, 8)
            with torch.profiler.record_function("forward"):
                loss = model(batch).square().mean()
            with torch.profiler.record_function("backward"):
                loss.backward()
            with torch.profiler.record_function("optimizer"):
                optimizer.step()
                optimizer.zero_grad()
    path = tmp_path / "trace.json.gz"
    prof.export_chrome_trace(str(path))
    figure = timeline.draw(path, steps=2)
    labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
    assert labels[0] == "host: step phases" and any("operators" in label for label in labels)
    assert "aten::addmm" in timeline.top_kernels(path).index


def test_a_record_without_trace_says_why(capsys):
    record = {"run": {"profile": "smoke", "notebook": "03_mixed_precision", "config": "resnext_fp16"},
              "status": "skipped", "error": "precision 16-mixed needs a GPU"}
    assert timeline.draw(record) is None
    assert "skipped" in capsys.readouterr().out and timeline.top_kernels(record).empty


def test_nsys_command_profiles_cuda_and_nvtx_with_memory():
    command = timeline.nsys_command("params/02_dataloader_workers/workers_2.yaml", "gpu", output="out/w2")
    assert command[:2] == ["nsys", "profile"]
    assert command[command.index("-t") + 1] == "cuda,nvtx"
    assert command[command.index("--cuda-memory-usage") + 1] == "true"
    assert command[-2:] == ["params/02_dataloader_workers/workers_2.yaml", "gpu"] and "out/w2" in command
    assert timeline.main(["--config", "params/02_dataloader_workers/workers_2.yaml", "--dry-run"]) == 0


def test_device_work_belongs_to_the_step_that_launched_it():
    """A GPU running behind the host: step 2's kernel starts after the host has finished step 2."""
    events = []
    for s, (launch, run) in enumerate([(100, 150), (1_100, 2_050)]):
        t = 1_000 * s
        events += [x("forward", "user_annotation", t, 500), x("optimizer", "user_annotation", t + 500, 500),
                   x("cudaLaunchKernel", "cuda_runtime", launch, 5, correlation=s),
                   x(f"gemm_{s}", "kernel", run, 800, pid=0, tid=7, device=0, stream=7, correlation=s)]
    events.append(x("cudaLaunchKernel", "cuda_runtime", 2_100, 5, correlation=9))  # a third step's launch
    events.append(x("gemm_9", "kernel", 2_900, 100, pid=0, tid=7, device=0, stream=7, correlation=9))
    bars = timeline.rows(events, steps=2)
    assert set(bars[bars["row"] == "GPU 0 stream 7"]["name"]) == {"gemm_0", "gemm_1"}
    assert bars.attrs["window_ms"] == pytest.approx(2.85)  # until the last launched kernel ends
