"""A run's profiler timeline: the Chrome trace of its last few steps, drawn as a figure, and its top kernels.

Each run with ``measure.profile_steps`` > 0 keeps a torch.profiler trace of its last steps beside its
results record (``trace.json.gz``; open it in https://ui.perfetto.dev or chrome://tracing as it is). The
figure has one row for the host's step phases (the ``data``, ``forward``, ``backward`` and ``optimizer``
ranges the training loop marks while profiling), one row per host thread for the operators it ran, and one
row per GPU stream for its kernels, memory copies and communication: where the GPU waits for the host shows
as gaps in the stream rows.

Nsight Systems records the same steps with the NVTX ranges of those phases and CUDA memory use, as the
original ResNeXt lab did; ``nsys_command`` gives the command and ``make nsys CONFIG=... PROFILE=gpu`` runs it.
"""
from __future__ import annotations

import argparse
import gzip
import json
import shlex
import shutil
import subprocess
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from labkit import results

PHASES = ("data", "forward", "backward", "optimizer")
GPU_KINDS = {"kernel": "kernel", "gpu_memcpy": "memory copy", "gpu_memset": "memory set"}
COMM = ("nccl", "gloo:")  # how NCCL kernels and gloo collectives are named
COLORS = {"data": "#8c8c8c", "forward": "#4c72b0", "backward": "#dd8452", "optimizer": "#55a868",
          "operator": "#64b5cd", "kernel": "#4c72b0", "memory copy": "#c44e52", "memory set": "#937860",
          "communication": "#8172b3"}


def trace_path(record: dict, runs_dir: str | Path | None = None) -> Path | None:
    """The trace kept beside ``record``, or None when the run kept none (not profiled, skipped, out of memory)."""
    if not record.get("trace"):
        return None
    run = record["run"]
    path = results.record_dir(run["profile"], run["notebook"], run["config"], runs_dir or results.RUNS_DIR) / record["trace"]
    return path if path.is_file() else None


def read_trace(path: str | Path) -> list[dict]:
    """The complete events ('X': a name, a start and a duration in microseconds) of a Chrome trace, gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt") as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    return [e for e in events if e.get("ph") == "X" and "dur" in e]


def _events(source: dict | str | Path | Sequence[dict], runs_dir: str | Path | None) -> list[dict] | None:
    if isinstance(source, dict):
        path = trace_path(source, runs_dir)
        return read_trace(path) if path else None
    if isinstance(source, (str, Path)):
        return read_trace(source)
    return list(source)


def _kind(event: dict) -> str | None:
    """What a device event is: a kernel, a memory copy or set, or communication; None for host events."""
    kind = GPU_KINDS.get(event.get("cat", ""))
    if kind == "kernel" and any(c in event["name"].lower() for c in COMM):
        return "communication"
    return kind


def _top_level(events: list[dict]) -> list[dict]:
    """Host operators not inside another operator of the same thread (what the thread itself was doing)."""
    out = []
    by_thread = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op":
            by_thread[(e["pid"], e["tid"])].append(e)
    for ops in by_thread.values():
        end = float("-inf")
        for e in sorted(ops, key=lambda e: (e["ts"], -e["dur"])):
            if e["ts"] >= end:
                out.append(e)
                end = e["ts"] + e["dur"]
    return out


def rows(source: dict | str | Path | Sequence[dict], steps: int = 3, runs_dir: str | Path | None = None) -> pd.DataFrame:
    """The bars of the timeline over the first ``steps`` profiled steps: row, name, kind, start_ms, duration_ms.

    A step ends with its ``optimizer`` range; device work launched in the window is kept until it ends."""
    events = _events(source, runs_dir)
    columns = ["row", "name", "kind", "start_ms", "duration_ms"]
    if not events:
        return pd.DataFrame(columns=columns)
    phases = sorted((e for e in events if e.get("cat") == "user_annotation" and e["name"] in PHASES), key=lambda e: e["ts"])
    marked = phases or [e for e in events if e.get("cat") == "cpu_op"]
    start = min(e["ts"] for e in marked)
    ends = [e["ts"] + e["dur"] for e in phases if e["name"] == "optimizer"]
    end = ends[min(steps, len(ends)) - 1] if ends else max(e["ts"] + e["dur"] for e in marked)
    # device work belongs to the window when the host launched it there (the GPU may run it later); traces
    # without correlation ids fall back to when it started
    launched = {e["args"]["correlation"] for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver")
                and start <= e["ts"] <= end and "correlation" in e.get("args", {})}
    device = [e for e in events if _kind(e) and (e.get("args", {}).get("correlation") in launched if launched
                                                 else start <= e["ts"] <= end)]
    device_end = max([end] + [e["ts"] + e["dur"] for e in device])
    bars = [("host: step phases", e["name"], e["name"], e) for e in phases if start <= e["ts"] < end]
    operators = _top_level(events)
    threads = sorted({(e["pid"], e["tid"]) for e in operators}, key=str)
    for e in operators:
        if start <= e["ts"] < end:
            bars.append((f"host thread {threads.index((e['pid'], e['tid'])) + 1}: operators", e["name"], "operator", e))
    for e in device:
        bars.append((f"GPU {e.get('args', {}).get('device', e['pid'])} stream {e.get('args', {}).get('stream', e['tid'])}",
                     e["name"], _kind(e), e))
    frame = pd.DataFrame([{"row": row, "name": name, "kind": kind, "start_ms": (e["ts"] - start) / 1e3,
                           "duration_ms": e["dur"] / 1e3} for row, name, kind, e in bars], columns=columns)
    frame.attrs["window_ms"] = (device_end - start) / 1e3
    return frame


def draw(source: dict | str | Path | Sequence[dict], steps: int = 3, runs_dir: str | Path | None = None, ax=None):
    """The timeline as a figure (one horizontal row per phase row, host thread and GPU stream); None, with the
    reason printed, when there is no trace."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    bars = rows(source, steps, runs_dir)
    if bars.empty:
        print(_missing(source))
        return None
    names = sorted(bars["row"].unique(), key=lambda r: (not r.startswith("host: "), r.startswith("GPU"), r))
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 0.9 + 0.55 * len(names)))
    for y, name in enumerate(names):
        part = bars[bars["row"] == name]
        ax.broken_barh(list(zip(part["start_ms"], part["duration_ms"])), (y - 0.4, 0.8),
                       facecolors=[COLORS[k] for k in part["kind"]], edgecolor="white", linewidth=0.2)
        if name == "host: step phases":
            for _, bar in part[part["duration_ms"] > 0.04 * bars.attrs["window_ms"]].iterrows():
                ax.text(bar["start_ms"] + bar["duration_ms"] / 2, y, bar["name"], ha="center", va="center", fontsize=8, color="white")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, bars.attrs["window_ms"])
    ax.set_xlabel("ms from the start of the first profiled step")
    kinds = [k for k in COLORS if k in set(bars["kind"])]
    ax.legend(handles=[Patch(color=COLORS[k], label=k) for k in kinds], loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    title = "Profiler timeline"
    if isinstance(source, dict):
        title += f": {source['run']['config']} on {results.device_label(source.get('env', {}))}"
    ax.set_title(title)
    ax.figure.tight_layout()
    return ax.figure


def top_kernels(source: dict | str | Path | Sequence[dict], n: int = 10, runs_dir: str | Path | None = None) -> pd.DataFrame:
    """The GPU kernels (and copies) that took the most time per profiled step; on a CPU run, which has none,
    the host operators that took the most self time (time not spent in the operators they called)."""
    events = _events(source, runs_dir)
    if not events:
        print(_missing(source))
        return pd.DataFrame()
    steps = max(1, sum(e.get("cat") == "user_annotation" and e["name"] == "optimizer" for e in events))
    device = [e for e in events if _kind(e)]
    if device:
        spent = [(e["name"], e["dur"]) for e in device]
        what, total = "kernel", sum(e["dur"] for e in device)
    else:
        spent, what = _self_times(events), "host operator"
        total = sum(t for _, t in spent)
    table = pd.DataFrame(spent, columns=[what, "us"]).groupby(what)["us"].agg(["count", "sum"])
    table = table.sort_values("sum", ascending=False).head(n)
    out = pd.DataFrame({"calls per step": table["count"] / steps, "ms per step": table["sum"] / steps / 1e3,
                        "mean us per call": table["sum"] / table["count"], "share of the time %": 100 * table["sum"] / total})
    out.index = [name if len(name) <= 90 else name[:87] + "..." for name in out.index]
    out.index.name = what
    return out


def _self_times(events: list[dict]) -> list[tuple[str, float]]:
    """(name, self time) of each host operator: its duration less that of the operators directly inside it."""
    by_thread = defaultdict(list)
    for e in events:
        if e.get("cat") == "cpu_op":
            by_thread[(e["pid"], e["tid"])].append(e)
    out = []
    for ops in by_thread.values():
        stack: list[list] = []  # [event, self time so far]
        for e in sorted(ops, key=lambda e: (e["ts"], -e["dur"])):
            while stack and e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
                done = stack.pop()
                out.append((done[0]["name"], done[1]))
            if stack:
                stack[-1][1] -= e["dur"]
            stack.append([e, e["dur"]])
        out.extend((event["name"], self_time) for event, self_time in stack)
    return out


def _missing(source) -> str:
    if isinstance(source, dict):
        if source.get("status") != "ok":
            return f"No timeline: this configuration's status is {source.get('status')!r} ({source.get('error') or 'no reason recorded'})."
        return ("No timeline: this run kept no profiler trace (measure.profile_steps is 0 in its profile, "
                "or it ran before the kit kept traces).")
    return f"No events in {source}."


def nsys_command(config: str, profile: str = "gpu", output: str | Path | None = None, python: str = sys.executable) -> list[str]:
    """Nsight Systems over one configuration, as the original lab profiled it: CUDA API and kernels, NVTX ranges
    (the loop's data/forward/backward/optimizer phases) and CUDA memory use. Writes ``output``.nsys-rep."""
    stem = Path(config).with_suffix("")
    output = output or results.RUNS_DIR / profile / "nsys" / f"{stem.parent.name}_{stem.name}"
    run = "import labkit, sys; labkit.run(sys.argv[1], sys.argv[2])"
    return ["nsys", "profile", "-t", "cuda,nvtx", "--cuda-memory-usage", "true", "--force-overwrite", "true",
            "-o", str(output), python, "-c", run, config, profile]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m labkit.timeline", description=nsys_command.__doc__)
    parser.add_argument("--config", required=True, help="a params file, e.g. params/02_dataloader_workers/workers_2.yaml")
    parser.add_argument("--profile", default="gpu")
    parser.add_argument("--dry-run", action="store_true", help="print the command only")
    args = parser.parse_args(argv)
    command = nsys_command(args.config, args.profile)
    print(shlex.join(command))
    if args.dry_run:
        return 0
    if shutil.which("nsys") is None:
        print("nsys (Nsight Systems) is not on the PATH: install it with the CUDA toolkit, or load its module on a cluster",
              file=sys.stderr)
        return 1
    Path(command[command.index("-o") + 1]).parent.mkdir(parents=True, exist_ok=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
