"""The largest batch that fits a memory budget, found by trying (notebook 04).

Each attempt is a few steps of the one training loop (``labkit.train.fit``) at one batch size:

* on CUDA the memory is the real peak (reserved by PyTorch's allocator, which is what has to fit);
  a budget below the card's memory is enforced with ``torch.cuda.set_per_process_memory_fraction``,
  so a batch over it fails with a genuine out-of-memory error, caught and recorded;
* on a CPU there is no peak to read, so what is measured is the activation memory: the bytes of the
  tensors autograd keeps for backward (``saved_tensors_hooks``) plus the inputs that checkpointed
  blocks keep, i.e. the part of training memory that checkpointing trades for recomputation. A batch
  whose activations exceed the budget is recorded ``over_budget``.

The search doubles the batch until an attempt fails, then bisects to within an eighth of the
largest batch that fitted. Every attempt, failed or not, is kept in the record. ``train_at_largest_batch`` then
trains the configuration at that batch for its epochs, as the original lab trained at the batches it found.
"""
from __future__ import annotations

import dataclasses
import gc
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import RandomSampler

from labkit import results
from labkit.config import Config
from labkit.launch.runner import is_out_of_memory, run
from labkit.models import Checkpointed
from labkit.preflight import uses_cuda
from labkit.tasks import Task, build_task
from labkit.train import fit, make_fabric


class SavedActivations:
    """Wraps a task's loss so that each forward pass measures the bytes it leaves for backward.

    Distinct storages are counted once (views share storage), parameters are left out (they are
    not activations), and the inputs of checkpointed blocks are added: checkpointing keeps those
    alive for its recomputation without going through the saved-tensor hooks.
    """

    def __init__(self) -> None:
        self.peak_bytes = 0

    def wrap(self, loss_fn: Callable) -> Callable:
        def measured(model: torch.nn.Module, batch) -> torch.Tensor:
            params = {p.untyped_storage().data_ptr() for p in model.parameters()}
            storages: dict[int, int] = {}

            def keep(t) -> None:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in params:
                    storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

            def pack(t: torch.Tensor) -> torch.Tensor:
                keep(t)
                return t

            def keep_inputs(module, args, kwargs) -> None:
                for a in (*args, *kwargs.values()):
                    keep(a)

            hooks = [m.register_forward_pre_hook(keep_inputs, with_kwargs=True)
                     for m in model.modules() if isinstance(m, Checkpointed)]
            try:
                with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                    loss = loss_fn(model, batch)
            finally:
                for h in hooks:
                    h.remove()
            self.peak_bytes = max(self.peak_bytes, sum(storages.values()))
            return loss

        return measured


def largest_batch(attempt: Callable[[int], dict], start: int, limit: int) -> tuple[int | None, list[dict]]:
    """Largest batch whose ``attempt(batch)["status"]`` is 'ok': double from ``start`` (halve if it
    fails) up to ``limit``, then bisect to a multiple of an eighth of the best batch so far.
    Returns it (None if even batch 1 fails) and every attempt in the order made."""
    tried: dict[int, dict] = {}

    def fits(batch: int) -> bool:
        if batch not in tried:
            tried[batch] = attempt(batch)
        return tried[batch]["status"] == "ok"

    lo, hi = None, None
    batch = max(1, min(start, limit))
    if fits(batch):
        lo = batch
        while lo < limit and hi is None:
            nxt = min(2 * lo, limit)
            lo, hi = (nxt, None) if fits(nxt) else (lo, nxt)
    else:
        hi = batch
        while hi > 1 and lo is None:
            nxt = hi // 2
            lo, hi = (nxt, hi) if fits(nxt) else (None, nxt)
    if lo is not None and hi is not None:
        grain = max(1, lo // 8)
        while True:
            mid = (lo + hi) // 2 // grain * grain
            if mid <= lo or mid >= hi:
                break
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo, list(tried.values())


def probe(cfg: Config, task: Task, batch: int, budget_gb: float | None) -> dict:
    """A few training steps at ``batch``: status ('ok', 'oom', 'over_budget'), memory and speed."""
    cuda = uses_cuda(cfg)
    warmup, timed = (3, 5) if cuda else (1, 2)
    raw = cfg.model_dump()
    raw["train"].update(batch_size=batch, global_batch_size=None, max_steps=warmup + timed, epochs=1, grad_accum=1,
                        eval_batches=1, log_every=warmup + timed)
    raw["measure"].update(warmup_steps=warmup, profile_steps=0)  # a probe measures memory and speed, no profile
    probe_cfg = Config.model_validate(raw)
    saved = None if cuda else SavedActivations()
    probe_task = dataclasses.replace(
        task, evaluate=None, loss=saved.wrap(task.loss) if saved else task.loss,
        # sample with replacement, so any batch size has its steps however small the data set
        train_sampler=RandomSampler(task.train_set, replacement=True, num_samples=batch * (warmup + timed)))
    out = {"batch": batch}
    try:
        summary = fit(probe_cfg, probe_task, make_fabric(probe_cfg))["summary"]
    except RuntimeError as err:  # torch.cuda.OutOfMemoryError is one
        if not is_out_of_memory(err):
            raise
        out.update(status="oom", error=str(err).splitlines()[0])
    else:
        memory = summary["peak_reserved_gb"] if cuda else saved.peak_bytes / 1e9
        over = budget_gb is not None and memory > budget_gb
        out.update(status="over_budget" if over else "ok", memory_gb=memory, step_s=summary.get("step_s"),
                   samples_per_s=summary["samples_per_s"], peak_allocated_gb=summary.get("peak_allocated_gb"))
    for p in task.model.parameters():  # an attempt that failed mid-step leaves its gradients behind
        p.grad = None
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return out


def batch_search(record: dict, runs_dir: str | Path | None = None) -> dict:
    """Find the largest batch that fits ``measure.memory_budget_gb`` for a finished run's configuration,
    add the attempts and the result to its record (saved again in place) and return the record.

    Without a budget, a GPU's budget is its whole memory; a CPU needs one (there is nothing to fill).
    The epoch time at the largest batch is the training set's size over the samples/s measured there.
    """
    if record.get("status") != "ok":
        print(f"No batch-size search: the run's status is {record.get('status')} ({record.get('error')}).")
        return record
    cfg = Config.model_validate(record["params"])
    cuda = uses_cuda(cfg)
    budget = cfg.measure.memory_budget_gb
    if cuda:
        device = torch.device("cuda", torch.cuda.current_device())
        total = torch.cuda.get_device_properties(device).total_memory / 1e9
        budget = min(budget or total, total)
    elif budget is None:
        raise ValueError(f"{record['run']['params_file']}: a CPU has no GPU memory to fill; set "
                         "measure.memory_budget_gb (a cap on activation memory, e.g. in the profile) to search")
    gc.collect()  # the finished run's model and optimizer state must not count against this search
    if cuda:
        torch.cuda.empty_cache()
    make_fabric(cfg).seed_everything(cfg.train.seed)
    task = build_task(cfg)
    if cuda and budget < total:
        torch.cuda.set_per_process_memory_fraction(budget / total, device)
    try:
        best, attempts = largest_batch(lambda b: probe(cfg, task, b, None if cuda else budget),
                                       cfg.train.batch_size, cfg.measure.max_batch)
    finally:
        if cuda:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    at = {a["batch"]: a for a in attempts}
    summary = {"memory_budget_gb": budget, "max_batch": best,
               "search_memory": "peak reserved GPU memory" if cuda else "activations saved for backward (CPU)"}
    if best is not None:
        summary.update(epoch_time_at_max_batch_s=len(task.train_set) / at[best]["samples_per_s"],
                       memory_at_max_batch_gb=at[best]["memory_gb"])
    if not cuda and cfg.train.batch_size in at and "memory_gb" in at[cfg.train.batch_size]:
        summary["saved_activations_gb"] = at[cfg.train.batch_size]["memory_gb"]  # at the run's own batch
    record["summary"].update(summary)
    record["curves"]["batch_search"] = attempts
    run = record["run"]
    results.save(record, results.record_dir(run["profile"], run["notebook"], run["config"], runs_dir or results.RUNS_DIR))
    return record


# What the run at the largest batch keeps in the searched record: enough to draw its curves beside the run's own.
LARGEST_BATCH_CURVES = ("train_loss", "val_loss", "val_metrics", "epoch_time_s")


def train_at_largest_batch(record: dict, runs_dir: str | Path | None = None) -> dict:
    """Train the searched configuration again at the largest batch its search found (``batch_search``), for its
    configured epochs, as the original lab did (batch 512 and 896 against 128); return the record with that run's
    outcome under ``record["at_max_batch"]`` (saved again in place).

    The run is ``labkit.run`` of the same params file and overrides with ``train.batch_size`` set to the largest
    batch, written to ``<config>/largest_batch/`` under the configuration's folder so that it never replaces the
    configuration's own record. It is not profiled: the trace of the configuration's own run is the one kept.
    """
    best, own = record.get("summary", {}).get("max_batch"), record.get("params", {}).get("train", {}).get("batch_size")
    if record.get("status") != "ok":
        print(f"No run at the largest batch: the run's status is {record.get('status')} ({record.get('error')}).")
        return record
    if best is None:
        print("No run at the largest batch: the batch-size search found no batch that fits (or has not run).")
        return record
    if best == own:
        print(f"No run at the largest batch: it is the run's own batch ({own}).")
        return record
    identity = record["run"]
    folder = results.record_dir(identity["profile"], identity["notebook"], identity["config"], runs_dir or results.RUNS_DIR)
    overrides = {**(identity.get("overrides") or {}), "train.batch_size": best, "train.global_batch_size": None,
                 "measure.profile_steps": 0}
    larger = run(identity["params_file"], identity["profile"], overrides, folder / "largest_batch")
    record["at_max_batch"] = {"batch": best, "status": larger["status"], "error": larger.get("error"),
                              "summary": larger.get("summary", {}),
                              "curves": {k: v for k, v in larger.get("curves", {}).items() if k in LARGEST_BATCH_CURVES}}
    results.save(record, folder)
    return record
