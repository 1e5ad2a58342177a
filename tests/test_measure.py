"""Measurement: the step timer, the Meter's steady-state window and summary, the GPU sampler, NVTX, MFU peaks.

Timing checks use lower bounds (a sleep lasts at least as long as asked) and orderings, never tight upper
bounds, so a loaded machine cannot fail them.
"""
import time

import pytest
import torch
from torch import nn

from labkit import measure
from labkit.config import Config
from labkit.train import make_fabric


def test_step_timer_splits_phases_on_cpu():
    timer = measure.StepTimer(torch.device("cpu"))
    for _ in range(4):
        data = time.perf_counter()
        time.sleep(0.01)
        data = time.perf_counter() - data
        timer.mark("start")
        time.sleep(0.04)
        timer.mark("backward_done")
        time.sleep(0.005)
        timer.end_step(data, steady=True)
    s = timer.summary()
    assert len(timer.steps) == 4 and [s["steady"] for s in timer.steps] == [True] * 4
    assert s["data_s"] >= 0.01 and s["fwd_bwd_s"] >= 0.04 and s["optimizer_s"] >= 0.005
    assert s["fwd_bwd_s"] > s["optimizer_s"]
    for step in timer.steps:  # per step (medians of different phases may come from different steps)
        assert step["step"] >= step["data"] + step["fwd_bwd"] + step["optimizer"] - 1e-6  # the step holds all its phases
        assert step["wait"] >= step["data"] - 1e-6  # on a CPU the loader's time is time outside the device's phases


def test_step_timer_summary_keeps_to_the_steady_steps():
    timer = measure.StepTimer(torch.device("cpu"))
    for slow in (True, False, False, True):
        timer.mark("start")
        time.sleep(0.2 if slow else 0.001)
        timer.mark("backward_done")
        timer.end_step(0.0, steady=not slow)
    assert timer.summary()["fwd_bwd_s"] < 0.2  # the slow steps are not in the median
    assert max(s["fwd_bwd"] for s in timer.steps) >= 0.2  # but they are in the per-step curve


def run_meter(cfg: Config, total: int, slow: set[int], batch: int = 8) -> measure.Meter:
    """Drive a Meter as the loop does, over ``total`` steps of a tiny model; steps in ``slow`` sleep 1 s."""
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meter = measure.Meter(cfg, make_fabric(cfg))
    with meter.training(model, optimizer, total), meter.epoch():
        for step in range(1, total + 1):
            with meter.phase("data"):
                x, y = torch.randn(batch, 4), torch.randint(0, 2, (batch,))
            with meter.phase("forward"):
                time.sleep(1.0 if step in slow else 0.002)
                loss = nn.functional.cross_entropy(model(x), y)
            with meter.phase("backward"):
                loss.backward()
            meter.count((x, y), loss)
            with meter.phase("optimizer"):
                optimizer.step()
            optimizer.zero_grad()
            meter.step_end(step, step / total)
    return meter


def config(**measure_settings) -> Config:
    return Config.model_validate({"task": "cifar_resnext", "train": {"log_every": 1},
                                  "measure": {"warmup_steps": 2, "profile_steps": 3, **measure_settings}})


def test_the_steady_window_leaves_out_warm_up_and_profiled_steps():
    # steps 1-2 warm up, 3-7 are the steady state, 8-10 are profiled; warm-up and profiled steps are slow
    meter = run_meter(config(), total=10, slow={1, 2, 8, 9, 10})
    out = meter.result()
    s, c = out["summary"], out["curves"]
    assert [s["steady"] for s in meter.timer.steps] == [False] * 2 + [True] * 5 + [False] * 3
    assert s["steady_state"] and s["profiled_steps"] == 3 and s["steps"] == 10
    # five fast steps of 8 samples: any slow step inside the window would hold it past 1 s
    assert s["samples_per_s"] > 5 * 8 / 1.0
    assert s["step_s"] < 1.0 and len(meter.windows) == 1
    assert s["profiled_step_s"] >= 1.0  # the profiled steps are the slow last three
    assert len(c["steps"]) == 10 and [e[0] for e in c["train_loss"]] == list(range(1, 11))
    assert c["top_ops"] and c["epoch_time_s"] and c["gpu"] == []


def test_writing_out_the_trace_is_not_training_time(monkeypatch):
    stop = measure.CommProfiler.stop

    def slow_stop(self, step):  # as if reading the profile and writing its trace took 2 s
        if self.running:
            time.sleep(2.0)
        stop(self, step)

    monkeypatch.setattr(measure.CommProfiler, "stop", slow_stop)
    meter = run_meter(config(), total=8, slow=set())
    assert meter.result()["summary"]["profiled_steps"] == 3
    assert meter.curves["epoch_time_s"][0] < 2.0  # eight steps of a few ms, without the 2 s of the trace


def test_compilations_inside_the_steady_state_are_counted():
    """A compiled model that meets a new batch shape in its steady state (step 5) recompiles there; the summary says so,
    apart from the first compilation in warm-up."""
    cfg = Config.model_validate({"task": "cifar_resnext", "model": {"compile": True}, "train": {"log_every": 1},
                                 "measure": {"warmup_steps": 2, "profile_steps": 0}})
    torch._dynamo.reset()
    model = torch.compile(nn.Linear(4, 2), backend="eager", dynamic=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    meter = measure.Meter(cfg, make_fabric(cfg))
    try:
        with meter.training(model, optimizer, 6), meter.epoch():
            for step in range(1, 7):
                x = torch.randn(6 if step == 5 else 8, 4)
                with meter.phase("forward"):
                    loss = model(x).square().mean()
                with meter.phase("backward"):
                    loss.backward()
                meter.count((x,), loss)
                with meter.phase("optimizer"):
                    optimizer.step()
                optimizer.zero_grad()
                meter.step_end(step, step / 6)
        s = meter.result()["summary"]
    finally:
        torch._dynamo.reset()
    assert (s["compilations"], s["compilations_in_steady_state"]) == (2, 1)
    uncompiled = run_meter(config(profile_steps=0), total=4, slow=set()).result()["summary"]
    assert "compilations" not in uncompiled


def test_no_profiling_where_it_would_leave_no_steady_step():
    meter = run_meter(config(warmup_steps=2, profile_steps=3), total=5, slow=set())
    s = meter.result()["summary"]
    assert "profiled_steps" not in s and s["steady_state"] and [s["steady"] for s in meter.timer.steps] == [False] * 2 + [True] * 3


def test_summary_keys_the_records_and_plots_read():
    s = run_meter(config(profile_steps=0), total=6, slow=set()).result(flops_per_sample=1e6, global_batch=8)["summary"]
    assert {"steps", "train_time_s", "samples_per_s", "steady_state", "first_train_loss", "final_train_loss",
            "final_val_loss", "global_batch", "data_s", "fwd_bwd_s", "optimizer_s", "wait_s", "step_s",
            "weights_computed_gb", "gradients_computed_gb", "optimizer_computed_gb", "model_tflops_per_s"} <= s.keys()
    assert s["model_tflops_per_s"] == pytest.approx(1e6 * s["samples_per_s"] / 1e12)
    assert "mfu" not in s  # no known peak on a CPU: no made-up MFU


def test_a_phase_name_must_be_known():
    meter = measure.Meter(config(), make_fabric(config()))
    with pytest.raises(ValueError, match="unknown phase 'fwd'"):
        with meter.phase("fwd"):
            pass


def test_nvtx_ranges_only_when_asked_for_and_recorded(monkeypatch):
    monkeypatch.delenv("NVTX_INJECTION64_PATH", raising=False)
    assert not measure.Meter(config(nvtx=True), make_fabric(config())).nvtx  # no tool attached: no ranges at all
    monkeypatch.setenv("NVTX_INJECTION64_PATH", "/opt/nsight/libToolsInjection64.so")
    assert measure.Meter(config(nvtx=True), make_fabric(config())).nvtx
    assert not measure.Meter(config(nvtx=False), make_fabric(config())).nvtx
    with measure.nvtx_range("forward"):  # usable without a profiler
        pass


def test_gpu_sampler_is_a_clean_no_op_without_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with measure.GPUSampler(interval=0.01) as sampler:
        time.sleep(0.05)
    assert sampler.samples == [] and sampler.summary() == {}


def test_gpu_sampler_summary_keeps_to_the_steady_windows():
    sampler = measure.GPUSampler()
    sampler.t0 = 100.0
    sample = lambda t, util, clock: {"t": t, "gpu": 0, "util_pct": util, "mem_used_gb": 1.0, "temp_c": 40.0 + t,  # noqa: E731
                                     "power_w": 100.0, "sm_clock_mhz": clock}
    sampler.samples = [sample(0.5, 0.0, 1980.0), sample(2.0, 90.0, 1500.0), sample(3.0, 100.0, 1700.0), sample(9.0, 0.0, 1980.0)]
    steady = sampler.summary([(101.5, 103.5)])  # set-up at 0.5 s and validation at 9 s are left out
    assert steady["gpu_util_mean_pct"] == 95.0 and steady["gpu_sm_clock_mean_mhz"] == 1600.0 and steady["gpu_temp_max_c"] == 43.0
    assert sampler.summary()["gpu_util_mean_pct"] == 47.5  # no windows: every sample
    assert sampler.summary([(200.0, 201.0)])["gpu_util_mean_pct"] == 47.5  # a window too short to hold a sample


def test_peak_memory_of_several_stretches_is_the_larger_of_each():
    assert measure.memory.max_memory({"peak_allocated_gb": 2.0, "peak_reserved_gb": 3.0},
                                     {"peak_allocated_gb": 2.5, "peak_reserved_gb": 2.8}) == \
        {"peak_allocated_gb": 2.5, "peak_reserved_gb": 3.0}
    assert measure.memory_gb(torch.device("cpu")) == {}  # no allocator to read on a CPU: nothing made up


def test_peak_lookup_and_environment():
    assert measure.peak_tflops("NVIDIA H100 80GB HBM3", "bf16-mixed") == 989.0
    assert measure.peak_tflops("NVIDIA A100-SXM4-40GB", "32") == 19.5
    assert measure.peak_tflops("NVIDIA A100-SXM4-40GB", "tf32") == 156.0
    assert measure.peak_tflops("Some CPU", "32") is None
    env = measure.environment(torch.device("cpu"))
    assert env["device"] == "cpu" and env["torch"] == torch.__version__


def test_the_environment_counts_the_devices_a_run_takes_part_on(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ddp = Config.model_validate({"task": "bert_squad", "train": {"strategy": "ddp", "devices": 2, "num_nodes": 2}})
    env = measure.environment_of(ddp)
    assert env["device"] == "cpu" and env["device_count"] == 2  # CPU ranks of this machine; nodes count on GPUs only


@pytest.mark.parametrize("mode, resets", [("default", 2), ("reduce-overhead", 1)])
def test_cuda_graphs_keep_the_whole_runs_memory_peak(monkeypatch, mode, resets):
    """The steady window resets the memory peaks, except under CUDA graphs, whose memory is taken while they are
    recorded, before the window: there the window's peak would leave it out. (One reset is training's start.)"""
    from labkit.measure import meter as meter_module

    calls = []
    monkeypatch.setattr(meter_module, "reset_peak_memory", lambda *devices: calls.append(devices))
    cfg = config(profile_steps=0)
    cfg.model.compile, cfg.model.compile_mode = True, mode
    run_meter(cfg, total=4, slow=set())
    assert len(calls) == resets


def test_collector_pauses_inside_the_steady_windows_are_told_apart():
    """Each collection is kept with its start; only those that began inside a steady window count as the steps'."""
    from labkit.measure.meter import CollectorPauses

    pauses = CollectorPauses()
    pauses.pauses = [(1.0, 0.25, 2), (5.0, 0.5, 2), (5.5, 0.125, 0), (9.0, 1.0, 1)]
    assert pauses.full == 2 and pauses.seconds() == 1.875
    assert pauses.seconds([(4.0, 6.0)]) == 0.625 and pauses.seconds([(0.0, 1.0), (6.0, 9.0)]) == 0.0


def test_the_trace_gives_each_call_its_own_host_time_and_each_kernel_its_device_time():
    from labkit.measure.profiler import device_times, host_self_times

    def call(name, ts, dur, tid=1, cat="cpu_op"):
        return {"ph": "X", "cat": cat, "name": name, "pid": 7, "tid": tid, "ts": ts, "dur": dur}

    events = [call("aten::linear", 0, 100), call("aten::addmm", 10, 40), call("cudaLaunchKernel", 20, 10, cat="cuda_runtime"),
              call("aten::relu", 60, 20), call("aten::linear", 200, 50, tid=2),  # another thread: nests on its own
              call("forward", 0, 300, tid=3, cat="user_annotation"),
              call("gemm_kernel", 30, 25, tid=9, cat="kernel"), call("ncclDevKernel_AllReduce", 60, 15, tid=9, cat="kernel"),
              call("Memcpy HtoD", 90, 5, tid=9, cat="gpu_memcpy"), call("ProfilerStep", 0, 400, cat="Trace")]
    assert host_self_times(events) == {"aten::linear": 40 + 50, "aten::addmm": 30, "cudaLaunchKernel": 10, "aten::relu": 20,
                                       "forward": 300}
    assert device_times(events) == {"gemm_kernel": 25, "ncclDevKernel_AllReduce": 15, "Memcpy HtoD": 5}


def test_starting_the_profiler_leaves_no_cycle_warning(monkeypatch, recwarn):
    # torch before 2.12 warns of cleared cycles on every start; on a newer torch, make it warn as the older one did
    start = torch.profiler.profile.start

    def warning_start(self):
        import warnings
        warnings.warn("Warning: Profiler clears events at the end of each cycle.", UserWarning)
        start(self)

    monkeypatch.setattr(torch.profiler.profile, "start", warning_start)
    profiler = measure.CommProfiler(torch.device("cpu"))
    profiler.start(step=0)
    torch.ones(4).sum()
    profiler.stop(step=1)
    assert profiler.summary()["profiled_steps"] == 1
    assert not [w for w in recwarn if "clears events" in str(w.message)]
