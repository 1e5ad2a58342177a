import time

import torch

from labkit import measure


def test_step_timer_splits_phases_on_cpu():
    timer = measure.StepTimer(torch.device("cpu"))
    for _ in range(4):
        with timer.data():
            time.sleep(0.01)
        timer.mark("start")
        time.sleep(0.02)
        timer.mark("backward_done")
        time.sleep(0.005)
        timer.mark("end")
    s = timer.summary(skip=1)
    assert len(timer.steps) == 4
    assert 0.009 < s["data_s"] < 0.05 and 0.019 < s["fwd_bwd_s"] < 0.07 and 0.004 < s["optimizer_s"] < 0.04
    assert abs(s["step_s"] - (s["data_s"] + s["fwd_bwd_s"] + s["optimizer_s"])) < 0.01
    assert abs(s["wait_s"] - s["data_s"]) < 0.01  # on a CPU the only time outside the phases is the loader's


def test_gpu_sampler_is_a_clean_no_op_without_gpu():
    with measure.GPUSampler(interval=0.01) as sampler:
        time.sleep(0.05)
    if not torch.cuda.is_available():
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


def test_peak_lookup_and_environment():
    assert measure.peak_tflops("NVIDIA H100 80GB HBM3", "bf16-mixed") == 989.0
    assert measure.peak_tflops("NVIDIA A100-SXM4-40GB", "32") == 19.5
    assert measure.peak_tflops("Some CPU", "32") is None
    env = measure.environment(torch.device("cpu"))
    assert env["device"] == "cpu" and env["torch"] == torch.__version__


def test_nvtx_range_is_usable_without_a_profiler():
    with measure.nvtx_range("forward"):
        pass
    with measure.nvtx_range("forward", enabled=False):
        pass
