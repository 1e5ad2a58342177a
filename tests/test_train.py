"""The one training loop, on a small classification task built right here (no lab's data needed)."""
import gzip
import json

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from labkit.config import Config
from labkit.tasks import Task
from labkit.train import device_batches, fit, make_fabric


def blobs(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = torch.randn(n, 16, generator=g) * 0.5 + nn.functional.one_hot(y, 16).float() * 3
    return TensorDataset(x, y)


def make(data: dict | None = None, **train) -> tuple[Config, Task]:
    cfg = Config.model_validate({"task": "cifar_resnext", "train": {"epochs": 2, "batch_size": 32, "lr": 0.05,
                                 "optimizer": "sgd_momentum", "log_every": 2, **train}, "measure": {"warmup_steps": 2},
                                 "data": data or {}})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    seen = []
    task = Task(model=model, train_set=blobs(512, 0), val_set=blobs(128, 1),
                evaluate=lambda m, batch_size, limit: seen.append(1) or {"accuracy": 1.0})
    return cfg, task


def test_fit_learns_and_measures():
    cfg, task = make()
    out = fit(cfg, task, make_fabric(cfg))
    s, c = out["summary"], out["curves"]
    assert s["steps"] == 2 * (512 // 32)
    assert s["final_train_loss"] < 0.5 * s["first_train_loss"]
    assert len(c["val_loss"]) == 2 and s["accuracy"] == 1.0
    assert s["steady_state"] and s["samples_per_s"] > 0
    assert len(c["steps"]) == s["steps"] and {"data_s", "fwd_bwd_s", "optimizer_s", "step_s"} <= s.keys()
    assert s["params_trainable"] == s["params_total"] == 16 * 32 + 32 + 32 * 4 + 4


def test_profiled_steps_name_the_operators_that_took_the_time(tmp_path):
    cfg, task = make()
    cfg.measure.profile_steps = 3
    out = fit(cfg, task, make_fabric(cfg), trace=tmp_path / "trace.json.gz")
    ops = out["curves"]["top_ops"]
    assert out["summary"]["profiled_steps"] == 3
    # the last three steps, after the steady state: its median leaves them out
    assert out["summary"]["steps"] - 3 > cfg.measure.warmup_steps
    with gzip.open(tmp_path / "trace.json.gz", "rt") as f:  # a Chrome trace of the profiled steps
        events = json.load(f)["traceEvents"]
    assert any(e.get("name") == "aten::addmm" for e in events)
    phases = [e["name"] for e in events if e.get("cat") == "user_annotation" and e["name"] in ("data", "forward", "backward", "optimizer")]
    assert phases.count("optimizer") == 3 and phases.count("forward") == 3  # the step phases, for labkit.timeline
    assert any(o["op"] == "aten::addmm" and o["calls_per_step"] >= 2 for o in ops)  # two Linear layers' forward
    assert ops == sorted(ops, key=lambda o: (o["device_ms_per_step"], o["cpu_ms_per_step"]), reverse=True)  # no device here: host time orders them


def test_training_steps_run_with_the_set_up_heap_frozen(monkeypatch):
    """Everything alive when training starts (here a heap of 200,000 tracked objects, as a data set's features are)
    is frozen through the steps, so a full collection there walks only what training made; afterwards the
    collector sees all of it again."""
    import gc

    from labkit.measure.meter import Meter

    held = [[i] for i in range(200_000)]  # noqa: F841 - tracked containers that outlive set-up
    frozen, step_end = [], Meter.step_end
    monkeypatch.setattr(Meter, "step_end", lambda self, step, epoch: frozen.append(gc.get_freeze_count()) or
                        step_end(self, step, epoch))
    cfg, task = make(max_steps=4)
    summary = fit(cfg, task, make_fabric(cfg))["summary"]
    assert len(frozen) == 4 and min(frozen) > 200_000
    assert gc.get_freeze_count() == 0
    # one full collection, the one deferred to the validation that ends the run (train.gc: deferred)
    assert summary["gc_full_collections"] == 1 and summary["gc_pause_s"] >= summary["gc_steady_pause_s"] >= 0


@pytest.mark.parametrize("policy", ["deferred", "automatic"])
def test_full_collections_wait_for_validation_unless_python_decides(monkeypatch, policy):
    """Each step makes 200,000 containers that live until the next step's, long enough to reach the oldest
    generation, and so enough for Python to start full collections inside the steps; with train.gc: deferred none
    starts there, one runs at the validation instead, and Python's thresholds are as they were afterwards."""
    import gc

    from labkit.measure.meter import Meter

    started, in_steps, step_end, kept = [], [], Meter.step_end, []

    def littering_step_end(self, step, epoch):
        before = len(started)
        kept[:] = [[[] for _ in range(200_000)]]  # the previous step's containers die here
        in_steps.extend(started[before:])
        step_end(self, step, epoch)

    def seen(phase, info):
        if phase == "start":
            started.append(info["generation"])

    monkeypatch.setattr(Meter, "step_end", littering_step_end)
    thresholds = gc.get_threshold()
    cfg, task = make(max_steps=4, gc=policy)
    gc.callbacks.append(seen)
    try:
        summary = fit(cfg, task, make_fabric(cfg))["summary"]
    finally:
        gc.callbacks.remove(seen)
    assert in_steps and gc.get_threshold() == thresholds
    if policy == "deferred":
        assert 2 not in in_steps and summary["gc_full_collections"] == 1  # at the validation
    else:
        assert in_steps.count(2) >= 2 and summary["gc_full_collections"] >= 2


def test_the_collectors_pauses_during_training_are_counted(monkeypatch):
    """A full collection forced at every step is counted, and its time is host time the record keeps."""
    import gc

    from labkit.measure.meter import Meter

    step_end = Meter.step_end
    monkeypatch.setattr(Meter, "step_end", lambda self, step, epoch: gc.collect() or step_end(self, step, epoch))
    cfg, task = make(max_steps=3)
    summary = fit(cfg, task, make_fabric(cfg))["summary"]
    assert summary["gc_full_collections"] >= 3 and summary["gc_pause_s"] > 0
    assert not any(type(c).__name__ == "CollectorPauses" for c in gc.callbacks)  # unregistered after training


def test_max_steps_and_grad_accum_count_optimizer_steps():
    cfg, task = make(max_steps=5, grad_accum=2)
    out = fit(cfg, task, make_fabric(cfg))
    assert out["summary"]["steps"] == 5
    assert len(out["curves"]["val_loss"]) == 1  # stopped inside the first epoch, validated once


def test_grad_accum_matches_a_larger_batch():
    """Two accumulated micro-batches of 16 make the same update as one batch of 32 (SGD, no shuffle noise)."""
    losses = []
    for batch, accum in [(32, 1), (16, 2)]:
        cfg, task = make(max_steps=3, batch_size=batch, grad_accum=accum, optimizer="sgd", log_every=1)
        task.train_sampler = range(512)  # fixed order
        losses.append([v for _, _, v in fit(cfg, task, make_fabric(cfg))["curves"]["train_loss"]])
    assert torch.allclose(torch.tensor(losses[0]), torch.tensor(losses[1]), atol=1e-5)


def test_fp16_on_a_cpu_is_fp16_autocast_with_a_cpu_gradient_scaler():
    cfg, task = make(precision="16-mixed", max_steps=3)
    fabric = make_fabric(cfg)
    assert fabric._precision.precision == "16-mixed" and fabric._precision.device == "cpu"  # not Fabric's bf16 fallback
    assert fabric._precision.scaler is not None
    model = fabric.setup_module(task.model)
    with fabric.autocast():
        assert model.module[0](torch.randn(2, 16)).dtype == torch.float16
    assert fit(cfg, task, fabric)["summary"]["steps"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the copy stream is a GPU's")
def test_device_batches_copy_on_their_own_stream_and_arrive_whole_and_in_order():
    """On a GPU each batch is copied on a stream of its own, one batch ahead; the training stream waits for it,
    so a batch read there holds what the loader gave, in the loader's order, while the training stream is busy."""
    cfg, _ = make(accelerator="cuda")
    fabric = make_fabric(cfg)
    loader = [{"x": torch.full((256, 1024), float(i)), "i": torch.tensor(i)} for i in range(20)]
    busy = torch.randn(4096, 4096, device=fabric.device)
    seen = []
    for batch in device_batches(loader, fabric):
        for _ in range(4):
            busy = busy @ busy / 64  # keeps the training stream queued while the next copy runs
        seen.append((int(batch["i"]), float(batch["x"].mean()), batch["x"].device.type))
    assert seen == [(i, float(i), "cuda") for i in range(20)]


def test_the_copy_stream_setting_leaves_training_on_a_cpu_as_it_was():
    """data.copy_stream is a GPU's; on a CPU the loop trains exactly as without it."""
    losses = []
    for copy_stream in (False, True):
        cfg, task = make({"copy_stream": copy_stream}, accelerator="cpu")
        losses.append([loss for _, _, loss in fit(cfg, task, make_fabric(cfg))["curves"]["train_loss"]])
    assert losses[0] == losses[1] and len(losses[0]) > 3


def test_cudnn_times_as_many_algorithms_as_the_run_says():
    """train.cudnn_benchmark_limit reaches cuDNN for the run that sets it, and the next run gets its own."""
    from labkit import config

    fast = config.load("params/03_mixed_precision/fast_path.yaml", "smoke")
    assert fast.train.cudnn_benchmark_limit == 0  # the fast path times every algorithm
    make_fabric(fast)
    assert torch.backends.cudnn.benchmark and torch.backends.cudnn.benchmark_limit == 0
    make_fabric(config.load("params/03_mixed_precision/resnext_bf16.yaml", "smoke"))
    assert torch.backends.cudnn.benchmark_limit == 10
    with pytest.raises(config.ConfigError, match="cudnn_benchmark_limit"):
        config.load("params/03_mixed_precision/fast_path.yaml", "smoke", {"train.cudnn_benchmark_limit": -1})
