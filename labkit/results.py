"""One results record per run: runs/<profile>/<notebook>/<config>/result.json.

Records are written atomically (write a temporary file, then rename), so a run killed at any
moment leaves either the previous record or the new one, never a torn file.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from labkit.config import ROOT

RUNS_DIR = ROOT / "runs"
TRACE = "trace.json.gz"  # the profiled steps' Chrome trace, beside result.json; a record's "trace" names it
STATUSES = ("ok", "oom", "failed", "skipped", "running")


def record_dir(profile: str, notebook: str, config: str, runs_dir: str | Path = RUNS_DIR) -> Path:
    return Path(runs_dir) / profile / notebook / config


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON so that readers see the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(data), f, indent=1, allow_nan=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    """NaN/inf become None (strict JSON), tuples lists, numpy/torch scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def save(record: dict, directory: Path) -> Path:
    path = directory / "result.json"
    write_json_atomic(path, record)
    return path


def new_record(identity: dict, params: dict, env: dict, status: str = "running") -> dict:
    """A record before its run has ended: which run it is, its settings and where it runs; no figures yet."""
    return {"run": {**identity, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, "params": params, "env": env,
            "status": status, "error": None, "summary": {}, "curves": {}, "info": {}, "clock": {"started": time.time()}}


# A run's way from start to end: each part's (name, the clock point it starts at, the point it ends at). The launcher,
# the rank's process and the loop each write the points they pass into the record's "clock" (Unix seconds).
TIME_SPLIT = (("start_processes_s", "launched", "process_started"),  # torchrun starting the ranks' interpreters
              ("imports_s", "process_started", "started"),  # the rank importing torch and labkit
              ("lightning_import_s", "started", "loop_imported"),  # Lightning, and torchmetrics, which it imports
              ("fabric_launch_s", "loop_imported", "fabric_made"),  # Fabric made and launched: device, process group
              ("build_task_s", "fabric_made", "task_built"),  # data set, tokenizer, model built
              ("setup_s", "task_built", "training_started"),  # model onto the device and wrapped (NCCL's first
              # communicator, made at the wrapper's first broadcast), loaders
              ("first_step_s", "training_started", "first_step"),  # the first step's lazy set-up (kernels, workers)
              ("training_s", "first_step", "training_ended"),  # the other steps and the validations
              ("finish_s", "training_ended", "finished"),  # the final evaluation, the summary's figures
              ("stop_processes_s", "finished", "launch_ended"))  # the ranks ending, the launcher collecting them


def time_split(record: Mapping[str, Any]) -> dict[str, float]:
    """Where a run's wall time went, in seconds, part by part (TIME_SPLIT) as far as its record's clock says: a
    run in the notebook's own process has no processes to start or stop, and a record from before the clock none."""
    clock = record.get("clock") or {}
    return {name: clock[end] - clock[start] for name, start, end in TIME_SPLIT if start in clock and end in clock}


class DamagedRecord(ValueError):
    """A record file that cannot be read: cut short (a copy, a disk that filled under another writer) or edited."""


def read(directory: str | Path, strict: bool = False) -> dict | None:
    """The record in ``directory``, or None if there is none. A damaged record counts as none (nothing shows
    that its run finished): a warning names the file, or, with ``strict``, DamagedRecord is raised."""
    return read_file(Path(directory) / "result.json", strict)


def read_file(path: Path, strict: bool = False) -> dict | None:
    """One record file (result.json or a history/ entry); see read()."""
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_bytes())
        if not isinstance(record, dict) or record.get("status") not in STATUSES:
            raise ValueError(f"no 'status' of {', '.join(STATUSES)}")
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        damaged = DamagedRecord(f"{path}: damaged results record ({type(err).__name__}: {err}); it counts as not "
                                "done: run the configuration again, which replaces it")
        if strict:
            raise damaged from None
        warnings.warn(str(damaged), stacklevel=3)
        return None
    return record


def keep_previous(directory: str | Path) -> Path | None:
    """Move an ended run's record out of the way of a new run of the same configuration, to
    <config>/history/<started>.json, where compare() finds it; None when there was none to keep."""
    record = read(directory)
    if not record or record.get("status") == "running":
        return None  # nothing, or a run that never ended (killed): the new run replaces it
    stamp = str(record.get("run", {}).get("started", "unknown")).replace(" ", "_").replace(":", "-")
    target, n = Path(directory) / "history" / f"{stamp}.json", 1
    while target.exists():
        target, n = target.with_name(f"{stamp}-{n}.json"), n + 1
    target.parent.mkdir(exist_ok=True)
    os.replace(Path(directory) / "result.json", target)
    return target


def records(profile: str, notebook: str | None = None, runs_dir: str | Path | None = None) -> list[dict]:
    """Every results record of a profile (of one notebook, if named), in notebook and configuration order.
    Comparison sections call this when they render, so every page of a lab shows every configuration run so far."""
    base = Path(runs_dir or RUNS_DIR) / profile
    found = (read(path.parent) for path in sorted(base.glob(f"{notebook or '*'}/*/result.json")))
    return [r for r in found if r]


def load(runs_dir: str | Path = RUNS_DIR, profile: str | None = None, notebook: str | None = None) -> pd.DataFrame:
    """Every results record under runs_dir as one row each: identity, status, device, summary metrics.

    Columns: profile, notebook, config, status, error, device, device_name, weights, then the
    run's summary metrics and a few parameters (precision, batch_size, ...) for grouping.
    """
    pattern = f"{profile or '*'}/{notebook or '*'}/*/result.json"
    found = ((read_file(path), path.parent) for path in sorted(Path(runs_dir).glob(pattern)))
    return pd.DataFrame([row(record, folder) for record, folder in found if record])  # damaged: named, left out


def row(rec: dict, directory: str | Path | None = None) -> dict:
    """One record as load()'s row: identity, status, device, a few settings, then its summary metrics."""
    run, env, params = rec.get("run", {}), rec.get("env", {}), rec.get("params", {})
    train = params.get("train", {})
    return {
        "profile": run.get("profile"), "notebook": run.get("notebook"), "config": run.get("config"),
        "status": rec.get("status"), "error": rec.get("error"),
        "device": device_label(env), "device_name": env.get("device_name"),
        "weights": params.get("model", {}).get("weights"),
        "precision": train.get("precision"), "batch_size": train.get("batch_size"), "devices": train.get("devices"),
        "num_nodes": train.get("num_nodes"), "strategy": train.get("strategy"),
        "num_workers": params.get("data", {}).get("num_workers"),
        "path": str(directory) if directory is not None else None,
        **rec.get("summary", {}),
    }


COMPARED = {"train_time_s": "training time (s)", "samples_per_s": "samples/s", "step_s": "step (s)",
            "peak_allocated_gb": "peak allocated (GB)", "final_train_loss": "final train loss",
            "final_val_loss": "final val loss", "exact": "EM", "f1": "F1", "accuracy": "accuracy",
            "test_perplexity": "test perplexity"}


def compare(record: dict, runs_dir: str | Path | None = None) -> pd.DataFrame:
    """This run beside your earlier runs of the same notebook and profile: the earlier runs of its
    configuration (kept in history/ by keep_previous) and the latest run of each other configuration.

    Runs that did not finish show their status instead of figures; the ratio to this run's samples/s is
    given only for finished runs on the same device as this one."""
    run = record["run"]
    folder = Path(runs_dir or RUNS_DIR) / run["profile"] / run["notebook"]
    others = [r for p in sorted(folder.glob("*/result.json")) + sorted(folder.glob("*/history/*.json")) if (r := read_file(p))]
    same = lambda r: r["run"]["config"] == run["config"] and r["run"].get("started") == run.get("started")  # noqa: E731
    runs = [record] + sorted((r for r in others if not same(r)), key=lambda r: r["run"].get("started") or "", reverse=True)
    here = device_label(record.get("env", {}))
    rate = record.get("summary", {}).get("samples_per_s") if record.get("status") == "ok" else None
    measured = {k: v for k, v in COMPARED.items()  # the metrics some finished run of these has
                if any(r.get("status") == "ok" and isinstance(r.get("summary", {}).get(k), (int, float)) for r in runs)}
    rows = []
    for r in runs:
        ok, summary, where = r.get("status") == "ok", r.get("summary", {}), device_label(r.get("env", {}))
        row = {"run": "this run" if r is record else "earlier", "config": r["run"]["config"], "started": r["run"].get("started"),
               "overrides": ", ".join(f"{k}={v}" for k, v in (r["run"].get("overrides") or {}).items()) or "—",
               "status": r.get("status"), "device": where}
        for key, label in measured.items():
            value = summary.get(key)
            row[label] = (f"{value:.4g}" if isinstance(value, (int, float)) else "—") if ok else r.get("status")
        other = summary.get("samples_per_s") if ok else None
        row["samples/s vs this run"] = (f"{other / rate:.2f}x" if rate and other and where == here else
                                        "other device" if ok and where != here else "—")
        rows.append(row)
    return pd.DataFrame(rows).set_index(["run", "config", "started"])


def on_gpu(record: dict) -> bool:
    """Whether a record's figures were measured on a GPU (a CPU figure is never shown as a GPU one)."""
    return record.get("env", {}).get("device") == "cuda"


def device_label(env: dict) -> str:
    """What a table shows in its device column: the GPU's name, or 'CPU (smoke figures)'."""
    if env.get("device") == "cuda":
        count = env.get("device_count") or 1
        return f"{count}x {env.get('device_name')}" if count > 1 else str(env.get("device_name"))
    return "CPU (smoke, not a GPU figure)" if env else "unknown"


# ---- run-to-run comparison: the one place that decides what a run is measured against --------------------

TASK_NAMES = {"bert_squad": "BERT-QA / SQuAD", "cifar_resnext": "ResNeXt / CIFAR-10", "gpt2_sft": "GPT-2 SFT", "t5_qa": "T5 QA",
              "simcls": "SimCLS / CORD-19"}
DATA_PARALLEL = ("dp", "ddp", "fsdp", "deepspeed")
# A run whose mean step is this much above its median lost time to a few slow steps (another job on the
# machine, a stall, a recompilation): its samples/s, a mean, understates what the median step shows.
SKEWED = 1.25


def name(record: dict) -> str:
    """A run's short name across notebooks: notebook number / configuration."""
    return f"{record['run']['notebook'][:2]}/{record['run']['config']}"


def task_of(record: dict) -> str:
    """The task, and the data set where a task has several (T5: GSM8K or biomedical QA)."""
    p = record.get("params", {})
    task = TASK_NAMES.get(p.get("task"), p.get("task") or "?")
    return f"{task} ({p['data']['dataset']})" if p.get("data", {}).get("dataset") else task


def n_devices(record: dict) -> int:
    """Devices a run uses: data-parallel processes (or DataParallel's GPUs) x the GPUs of a layer-split model."""
    t, m = record["params"]["train"], record["params"]["model"]
    return t["devices"] * t["num_nodes"] * m.get("split_devices", 1)


def baseline_key(record: dict) -> tuple:
    """What two runs must share to be compared: profile, device, task, model and per-device batch, within one
    notebook (a notebook's section of the profile sets its own data sizes and lengths)."""
    env, p = record.get("env", {}), record["params"]
    return (record["run"]["profile"], record["run"]["notebook"], env.get("device"), env.get("device_name"),
            task_of(record), p["model"].get("preset"), p["train"]["batch_size"])


def setting(record: dict, dotted: str) -> Any:
    """A resolved setting of a run, by dotted key ("train.precision")."""
    value: Any = record.get("params", {})
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def rate(record: dict | None, key: str = "samples_per_s") -> float | None:
    """A finished run's measured value; None for a run that did not finish or did not measure it."""
    if not record or record.get("status") != "ok":
        return None
    value = record.get("summary", {}).get(key)
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def comparison(runs: Sequence[dict], reference: Mapping[str, Any] | None = None, quality: str | None = None,
               lower_is_better: bool = True) -> pd.DataFrame:
    """Each run set against its baseline, one row per run, whatever order the runs finished in.

    The baseline is the fastest finished one-device run with the same profile, notebook, device, task, model
    and per-device batch (``baseline_key``) and, by default, the same precision; ``reference`` names the settings
    the baseline must have instead (``{"train.precision": "32"}``: speed-ups over fp32). ``speedup`` is
    samples/s over the baseline's; ``scaling_efficiency`` = speed-up / devices, for one-device and data-parallel
    runs (a layer-split model runs its GPUs one after the other, so it has none). With
    ``quality`` (a summary key), ``on_front`` marks the runs no run of the same profile, device and task beats
    on both training time and quality (the Pareto front). Unfinished runs keep their row, without figures.
    """
    columns = ["run", "notebook", "config", "status", "device", "task", "model", "batch", "precision", "devices",
               "samples_per_s", "baseline", "speedup", "scaling_efficiency"] + (["on_front"] if quality else [])
    if not runs:
        return pd.DataFrame(columns=columns)

    def candidate(base: dict, run: dict) -> bool:
        if rate(base) is None or n_devices(base) != 1 or baseline_key(base) != baseline_key(run):
            return False
        wanted = reference or {"train.precision": setting(run, "train.precision")}
        return all(setting(base, k) == v for k, v in wanted.items())

    front = pareto_front(runs, quality, lower_is_better) if quality else set()
    rows = []
    for run in runs:
        base = max((b for b in runs if candidate(b, run)), key=lambda b: (rate(b), name(b)), default=None)
        speedup = rate(run) / rate(base) if rate(run) and base else None
        n = n_devices(run)
        parallel = setting(run, "train.strategy") in DATA_PARALLEL and setting(run, "model.split_devices") in (1, None)
        row = {"run": name(run), "notebook": run["run"]["notebook"], "config": run["run"]["config"],
               "status": run.get("status"), "device": device_label(run.get("env", {})), "task": task_of(run),
               "model": setting(run, "model.preset"), "batch": setting(run, "train.batch_size"),
               "precision": setting(run, "train.precision"), "devices": n, "samples_per_s": rate(run),
               "baseline": name(base) if base else None, "speedup": speedup,
               "scaling_efficiency": speedup / n if speedup and (parallel or n == 1) else None}
        if quality:
            row["on_front"] = name(run) in front if rate(run, quality) is not None else None
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def pareto_front(runs: Sequence[dict], quality: str, lower_is_better: bool = True, time: str = "train_time_s") -> set[str]:
    """Names of the finished runs that no other run of the same profile, device and task beats on both
    ``time`` (lower) and ``quality`` (lower or higher is better)."""
    sign = 1 if lower_is_better else -1
    done = [r for r in runs if rate(r, time) is not None and rate(r, quality) is not None]
    groups: dict[tuple, list[dict]] = {}
    for r in done:
        env = r.get("env", {})  # the kind of device, not how many: a 2-GPU run competes with the 1-GPU runs
        groups.setdefault((r["run"]["profile"], env.get("device"), env.get("device_name"), task_of(r)), []).append(r)
    front = set()
    for group in groups.values():
        best = math.inf
        for r in sorted(group, key=lambda r: (rate(r, time), sign * rate(r, quality))):
            if sign * rate(r, quality) < best:
                front.add(name(r))
                best = sign * rate(r, quality)
    return front


def each_rank(summary: Mapping[str, Any]) -> dict[int, dict[str, float]]:
    """Each rank's own median step split of a multi-rank record, {rank: {"step_s": ..., "data_s": ..., ...}} from its
    ``<phase>_s_rank<r>`` fields; {} for a run of one process."""
    out: dict[int, dict[str, float]] = {}
    for key, value in summary.items():
        phase, found, rank = key.rpartition("_rank")
        if found and phase.endswith("_s") and rank.isdigit():
            out.setdefault(int(rank), {})[phase] = value
    return dict(sorted(out.items()))


def step_spread(record: dict) -> dict[str, float | bool] | None:
    """Median, interquartile range and mean of the steady-state step times (ms), and whether the mean is far
    above the median (``skewed``: a few slow steps, not the typical one, set the run's samples/s);
    None for a run without step times."""
    steps = [s for s in record.get("curves", {}).get("steps") or [] if isinstance(s, dict) and isinstance(s.get("step"), (int, float))]
    if any("steady" in s for s in steps):  # the loop marked its steady-state steps
        steady = [s["step"] for s in steps if s.get("steady")]
    else:  # a record written before steps were marked: its warm-up and profiled steps came first
        measure = record.get("params", {}).get("measure", {})
        steady = [s["step"] for s in steps[measure.get("warmup_steps", 0) + measure.get("profile_steps", 0):]]
    steady = steady or [s["step"] for s in steps]
    if len(steady) < 2:
        return None
    q1, median, q3 = statistics.quantiles(steady, n=4, method="inclusive")
    mean = statistics.fmean(steady)
    return {"median_ms": 1e3 * median, "iqr_ms": 1e3 * (q3 - q1), "mean_ms": 1e3 * mean, "steps": len(steady),
            "skewed": mean > SKEWED * median}
