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

RUNS_DIR = Path(__file__).resolve().parent.parent / "runs"
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
            "strategy": params.get("train", {}).get("strategy"),
            "num_workers": params.get("data", {}).get("num_workers"),
            "path": str(path.parent),
        }
        row.update(rec.get("summary", {}))
        rows.append(row)
    return pd.DataFrame(rows)


def device_label(env: dict) -> str:
    """What a table shows in its device column: the GPU's name, or 'CPU (smoke figures)'."""
    if env.get("device") == "cuda":
        count = env.get("device_count") or 1
        return f"{count}x {env.get('device_name')}" if count > 1 else str(env.get("device_name"))
    return "CPU (smoke, not a GPU figure)" if env else "unknown"
