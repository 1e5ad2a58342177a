"""The batch-size search: its logic, the activation measure, and out-of-memory attempts that do not stop it."""
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from labkit import memory
from labkit.launch.runner import is_out_of_memory
from labkit.config import Config
from labkit.tasks import Task, default_loss


def fake(limit: int, error: bool = False):
    def attempt(batch: int) -> dict:
        return {"batch": batch, "status": "ok" if batch <= limit else ("oom" if error else "over_budget")}
    return attempt


def test_search_doubles_then_bisects():
    best, attempts = memory.largest_batch(fake(900), start=128, limit=4096)
    assert best == 896  # 512 fits, 1024 does not; bisected in steps of 512/8
    assert [a["batch"] for a in attempts] == [128, 256, 512, 1024, 768, 896, 960]


def test_search_halves_when_the_start_does_not_fit():
    best, attempts = memory.largest_batch(fake(20), start=128, limit=4096)
    assert best == 20 and [a["batch"] for a in attempts][:4] == [128, 64, 32, 16]
    assert len({a["batch"] for a in attempts}) == len(attempts)  # no batch tried twice


def test_search_stops_at_the_cap_and_when_nothing_fits():
    assert memory.largest_batch(fake(10_000), start=100, limit=300)[0] == 300
    best, attempts = memory.largest_batch(fake(0), start=8, limit=64)
    assert best is None and [a["batch"] for a in attempts] == [8, 4, 2, 1]


def test_saved_activations_counts_what_backward_keeps():
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU())
    saved = memory.SavedActivations()
    x = torch.randn(8, 16)
    saved.wrap(lambda m, b: m(b).sum())(model, x).backward()
    # Linear keeps its input (weights are parameters, not counted); ReLU keeps its output
    assert saved.peak_bytes == x.nbytes + 8 * 32 * 4


class OOMAbove(nn.Module):
    """A classifier that raises CUDA's out-of-memory error for batches above ``limit`` (a simulated GPU)."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.net = limit, nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))

    def forward(self, x):
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(x)} MiB (simulated)")
        return self.net(x)


def test_an_oom_attempt_is_recorded_and_the_search_goes_on():
    cfg = Config.model_validate({"task": "cifar_resnext", "train": {"batch_size": 8, "optimizer": "sgd", "lr": 0.01},
                                 "measure": {"warmup_steps": 1}})
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(64, 16, generator=g), torch.randint(0, 4, (64,), generator=g))
    task = Task(model=OOMAbove(limit=40), train_set=data, val_set=data, loss=default_loss)
    best, attempts = memory.largest_batch(lambda b: memory.probe(cfg, task, b, budget_gb=None), start=8, limit=256)
    statuses = {a["batch"]: a["status"] for a in attempts}
    assert best == 40 and statuses[64] == "oom" and statuses[32] == "ok" and statuses[40] == "ok"
    oom = next(a for a in attempts if a["status"] == "oom")
    assert "out of memory" in oom["error"] and "memory_gb" not in oom
    ok = next(a for a in attempts if a["batch"] == 32)
    assert ok["memory_gb"] > 0 and ok["samples_per_s"] > 0
    assert all(p.grad is None for p in task.model.parameters())  # nothing left behind by the failed attempts


def test_budget_decides_on_a_cpu():
    cfg = Config.model_validate({"task": "cifar_resnext", "train": {"batch_size": 8, "optimizer": "sgd"},
                                 "measure": {"warmup_steps": 1}})
    data = TensorDataset(torch.randn(64, 16), torch.randint(0, 4, (64,)))
    task = Task(model=nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)), train_set=data, val_set=data)
    # bytes kept for backward per sample: the first Linear's input, ReLU's output (also the second Linear's
    # input: one storage), log-softmax's output and the int64 target
    per_sample = 16 * 4 + 32 * 4 + 4 * 4 + 8
    result = memory.probe(cfg, task, 16, budget_gb=15 * per_sample / 1e9)
    assert result["status"] == "over_budget" and result["memory_gb"] == pytest.approx(16 * per_sample / 1e9, rel=0.01)
    assert memory.probe(cfg, task, 8, budget_gb=15 * per_sample / 1e9)["status"] == "ok"


def test_search_needs_a_finished_run_and_a_budget_on_a_cpu(monkeypatch):
    record = {"status": "skipped", "error": "skipped: needs a GPU", "summary": {}}
    assert memory.batch_search(record) is record and record["summary"] == {}
    ok = {"status": "ok", "run": {"params_file": "params/x.yaml"}, "summary": {}, "curves": {},
          "params": Config.model_validate({"task": "cifar_resnext"}).model_dump(mode="json")}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # on a GPU machine too: the CPU's rule
    with pytest.raises(ValueError, match="params/x.yaml: a CPU has no GPU memory to fill; set measure.memory_budget_gb"):
        memory.batch_search(ok)


def test_bert_checkpointing_same_gradients_fewer_saved_bytes():
    """Notebook 04's second model: BERT-QA layers checkpointed by the kit's wrapper, measured on a dict batch."""
    from labkit.config import ModelConfig
    from labkit.models import bert

    g = torch.Generator().manual_seed(0)
    batch = {"input_ids": torch.randint(5, 100, (4, 32), generator=g), "attention_mask": torch.ones(4, 32, dtype=torch.long),
             "start_positions": torch.tensor([1, 2, 3, 0]), "end_positions": torch.tensor([4, 5, 6, 0])}
    out = {}
    for mode in ("off", "full"):
        torch.manual_seed(0)
        model, info = bert.build(ModelConfig(preset="tiny", checkpointing=mode, attn_implementation="eager"), 100, 32)
        model.train()
        saved = memory.SavedActivations()
        saved.wrap(default_loss)(model, batch).backward()
        grads = {n.replace(".block", ""): p.grad for n, p in model.named_parameters() if p.grad is not None}
        out[mode] = (grads, saved.peak_bytes, info["checkpointed_blocks"])
    (g_off, bytes_off, n_off), (g_full, bytes_full, n_full) = out["off"], out["full"]
    assert n_off == 0 and n_full == 2 and g_off.keys() == g_full.keys()
    for name in g_off:
        torch.testing.assert_close(g_full[name], g_off[name], rtol=1e-4, atol=1e-6, msg=name)
    assert 0 < bytes_full < bytes_off


def test_workspace_allocation_failures_count_as_out_of_memory():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert not is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied (8x16 and 32x4)"))


@pytest.mark.parametrize("error, status", [(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"), "oom"),
                                           (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "failed")])
def test_a_run_out_of_memory_is_recorded_and_returns_other_errors_raise(tmp_path, monkeypatch, error, status):
    """A run that runs out of memory (also as cuBLAS's workspace error) is an 'oom' record and returns, so a sweep
    goes on; any other error is a 'failed' record and raises."""
    import labkit.train
    from labkit import results
    from labkit.launch.runner import run

    def fit(*args, **kwargs):
        raise error

    monkeypatch.setattr(labkit.train, "fit", fit)
    if status == "failed":
        with pytest.raises(RuntimeError):
            run("params/01_baseline_bert_squad/baseline.yaml", "smoke", runs_dir=tmp_path)
    else:
        assert run("params/01_baseline_bert_squad/baseline.yaml", "smoke", runs_dir=tmp_path)["status"] == "oom"
    saved = results.read(results.record_dir("smoke", "01_baseline_bert_squad", "baseline", tmp_path))
    assert saved["status"] == status and ("out of memory" in saved["error"]) == (status == "oom")
