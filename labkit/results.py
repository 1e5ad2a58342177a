"""One results record per run: runs/<profile>/<notebook>/<config>/result.json.

Records are written atomically (write a temporary file, then rename), so a run killed at any
moment leaves either the previous record or the new one, never a torn file.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from labkit.config import ROOT

RUNS_DIR = ROOT / "runs"
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


def read(directory: str | Path) -> dict | None:
    path = Path(directory) / "result.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())


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


def load(runs_dir: str | Path = RUNS_DIR, profile: str | None = None, notebook: str | None = None) -> pd.DataFrame:
    """Every results record under runs_dir as one row each: identity, status, device, summary metrics.

    Columns: profile, notebook, config, status, error, device, device_name, weights, then the
    run's summary metrics and a few parameters (precision, batch_size, ...) for grouping.
    """
    rows = []
    pattern = f"{profile or '*'}/{notebook or '*'}/*/result.json"
    for path in sorted(Path(runs_dir).glob(pattern)):
        rec = json.loads(path.read_text())
        run, env, params = rec.get("run", {}), rec.get("env", {}), rec.get("params", {})
        row = {
            "profile": run.get("profile"), "notebook": run.get("notebook"), "config": run.get("config"),
            "status": rec.get("status"), "error": rec.get("error"),
            "device": device_label(env), "device_name": env.get("device_name"),
            "weights": params.get("model", {}).get("weights"),
            "precision": params.get("train", {}).get("precision"),
            "batch_size": params.get("train", {}).get("batch_size"),
            "devices": params.get("train", {}).get("devices"),
            "num_nodes": params.get("train", {}).get("num_nodes"),
            "strategy": params.get("train", {}).get("strategy"),
            "num_workers": params.get("data", {}).get("num_workers"),
            "path": str(path.parent),
        }
        row.update(rec.get("summary", {}))
        rows.append(row)
    return pd.DataFrame(rows)


def scaling_efficiency(df: pd.DataFrame) -> pd.DataFrame:
    """Adds n_devices, speedup and scaling_efficiency = samples/s on N devices / (N x samples/s on one) to
    load()'s rows. The one-device run is the finished strategy-'auto' run of the same profile, device and
    precision; without one (or for a run that did not finish) the two are NaN."""
    out = df.copy()
    if out.empty:
        return out
    out["n_devices"] = out["devices"] * out["num_nodes"].fillna(1)
    if "samples_per_s" not in out:
        out["samples_per_s"] = float("nan")
    keys = ["profile", "device_name", "precision"]
    ones = out[(out["status"] == "ok") & (out["n_devices"] == 1) & (out["strategy"] == "auto")]
    one = out[keys].merge(ones.groupby(keys, as_index=False)["samples_per_s"].first(), on=keys, how="left")["samples_per_s"]
    out["speedup"] = (out["samples_per_s"] / one.to_numpy()).where(out["status"] == "ok")
    out["scaling_efficiency"] = out["speedup"] / out["n_devices"]
    return out


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
    others = [json.loads(p.read_text()) for p in sorted(folder.glob("*/result.json")) + sorted(folder.glob("*/history/*.json"))]
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


def device_label(env: dict) -> str:
    """What a table shows in its device column: the GPU's name, or 'CPU (smoke figures)'."""
    if env.get("device") == "cuda":
        count = env.get("device_count") or 1
        return f"{count}x {env.get('device_name')}" if count > 1 else str(env.get("device_name"))
    return "CPU (smoke, not a GPU figure)" if env else "unknown"
