"""Notebook 08's comparisons over every record of a profile.

Notebook 08 reads every results record of a profile (all notebooks, configurations and machines) and
draws the comparisons the original labs drew by hand; each figure comes with one sentence computed
from the records, and numbers are only ever set against runs of the same device and profile. A run
that did not finish (skipped, oom, failed, running) shows as such, never as a number.

Which run is measured against which (baselines, speed-ups, scaling efficiency, the Pareto front) is
decided by ``labkit.results.comparison``, the same function notebooks 05 and 07 use.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.patches import Patch

from labkit import results
from labkit.plots.common import legend_outside
from labkit.plots.tables import number
from labkit.results import name, on_gpu, task_of

# Summary key -> (label, measured on GPUs only)
METRICS = {
    "final_val_loss": ("final validation loss", False),
    "train_time_s": ("training time (s)", False),
    "gpu_util_mean_pct": ("mean GPU utilisation (%)", True),
    "gpu_temp_max_c": ("maximum GPU temperature (°C)", True),
}
NOT_FINISHED = {"skipped": "skipped", "oom": "out of memory", "failed": "failed", "running": "not finished"}


# ---- the records -------------------------------------------------------------------------------------------

def collect(profile: str, runs_dir: str | Path | None = None) -> list[dict]:
    """Every results record of a profile, in notebook and configuration order."""
    return results.records(profile, runs_dir=runs_dir)


def device(record: dict) -> str:
    """Where a run ran, with its GPU count (tables)."""
    return results.device_label(record.get("env", {}))


def machine(record: dict) -> str:
    """The kind of device, without the count: runs compare only on the same kind (figures, sentences)."""
    return results.device_label({**record.get("env", {}), "device_count": 1})


def _ok(record: dict, key: str) -> float | None:
    value = record.get("summary", {}).get(key) if record.get("status") == "ok" else None
    return value if isinstance(value, (int, float)) and value == value else None


def _cell(record: dict, key: str, scale: float = 1.0, gpu_only: bool = False) -> str:
    """A table cell: the measured value, or why there is none (never a number for an unfinished run)."""
    if record.get("status") != "ok":
        return NOT_FINISHED.get(record.get("status"), str(record.get("status")))
    value = _ok(record, key)
    if value is None:
        return "not measured (CPU)" if gpu_only and not on_gpu(record) else "—"
    return f"{_g(value * scale)}"


def _g(value: float) -> str:
    """Three significant figures without an exponent: 3,400 s rather than 3.4e+03 s."""
    return number(value) if abs(value) >= 1000 else f"{value:.3g}"


def _count_unfinished(records: Sequence[dict]) -> str:
    counts = Counter(r.get("status") for r in records if r.get("status") != "ok")
    if not counts:
        return ""
    listed = ", ".join(f"{n} {NOT_FINISHED.get(s, s)}" for s, n in sorted(counts.items()))
    return f"; {sum(counts.values())} of {len(records)} configurations have no value here ({listed})"


# ---- tables ------------------------------------------------------------------------------------------------

def _none(note: str) -> None:
    print(note)  # an empty table says nothing: say why there is none


def overview(records: Sequence[dict]) -> pd.DataFrame | None:
    """Per notebook: configurations by status, and the devices they ran on."""
    rows: dict[str, dict] = {}
    for r in records:
        row = rows.setdefault(r["run"]["notebook"], {"configurations": 0, **{s: 0 for s in results.STATUSES}, "devices": set()})
        row["configurations"] += 1
        row[r.get("status")] = row.get(r.get("status"), 0) + 1
        row["devices"].add(device(r))
    if not rows:
        return _none("No results records in this profile yet: run the other notebooks first (make run-all).")
    df = pd.DataFrame.from_dict(rows, orient="index").rename_axis("notebook")
    df["devices"] = df["devices"].map(lambda d: ", ".join(sorted(d)))
    return df


def environments(records: Sequence[dict]) -> pd.DataFrame | None:
    """Every distinct environment the records ran in, with how many runs and when."""
    rows = []
    for r in records:
        env = r.get("env", {})
        rows.append({"device": device(r), "CUDA": env.get("cuda") or "—", "driver": env.get("driver") or "—",
                     "torch": env.get("torch"), "transformers": env.get("transformers"), "python": env.get("python"),
                     "host": env.get("host"), "date": (r["run"].get("finished") or env.get("date") or "")[:10]})
    if not rows:
        return _none("No environments: no results records.")
    df = pd.DataFrame(rows)
    keys = [c for c in df.columns if c != "date"]
    return (df.groupby(keys, dropna=False).agg(runs=("date", "size"), first=("date", "min"), last=("date", "max"))
            .reset_index().set_index("device"))


def not_finished(records: Sequence[dict]) -> pd.DataFrame | None:
    """The runs without figures, each with its reason (the record's error)."""
    rows = [{"run": name(r), "status": r.get("status"), "device": device(r),
             "reason": (r.get("error") or "").removeprefix("skipped: ") or
                       ("started and not finished: still running, or the run was killed" if r.get("status") == "running" else "")}
            for r in records if r.get("status") != "ok"]
    return pd.DataFrame(rows).set_index("run") if rows else _none(f"All {len(records)} runs finished.")


def throughput_memory(records: Sequence[dict]) -> pd.DataFrame | None:
    """One row per run: throughput, step time, MFU and peak memory, or the reason a run has none."""
    rows = []
    for r in records:
        p = r.get("params", {})
        rows.append({"run": name(r), "status": r.get("status"), "device": device(r), "task": task_of(r),
                     "precision": p.get("train", {}).get("precision"), "global batch": _global_batch(r),
                     "samples/s": _cell(r, "samples_per_s"), "real tokens/s": _cell(r, "tokens_per_s"),
                     "step (ms)": _cell(r, "step_s", 1e3), "MFU (%)": _cell(r, "mfu", 100, gpu_only=True),
                     "peak allocated (GB)": _cell(r, "peak_allocated_gb", gpu_only=True),
                     "peak reserved (GB)": _cell(r, "peak_reserved_gb", gpu_only=True)})
    return pd.DataFrame(rows).set_index("run") if rows else _none("No throughput: no results records.")


def _global_batch(record: dict) -> int | None:
    """Samples per optimizer step, from the settings (a DataParallel process's batch_size is per GPU too)."""
    t = record.get("params", {}).get("train")
    return t["batch_size"] * t["grad_accum"] * t["devices"] * t["num_nodes"] if t else None


# ---- figures: each returns (figure or None, one sentence computed from the records) -------------------------

def show(finding: tuple[plt.Figure | None, str]) -> None:
    """In a notebook: the sentence, then the figure."""
    from IPython.display import Markdown, display

    figure, sentence = finding
    display(Markdown(f"**What this shows:** {sentence}"))
    if figure is not None:
        display(figure)
        plt.close(figure)


def _groups(records: Sequence[dict], key: Callable[[dict], tuple]) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    return groups


def per_configuration(records: Sequence[dict], metric: str) -> tuple[plt.Figure | None, str]:
    """A bar per configuration for one summary metric, a panel per notebook and device; unfinished runs are
    labelled with their status where their bar would be."""
    label, gpu_only = METRICS[metric]
    if not records:
        return None, "No results records for this profile yet: run the other notebooks first (make run-all)."
    if gpu_only:
        records = [r for r in records if on_gpu(r)]
        if not records:
            return None, (f"Not measured: every record of this profile ran on a CPU, which has no {label.split(' (')[0]} "
                          "to sample; run the profile on a GPU for this figure.")
    panels = _groups(records, lambda r: (r["run"]["notebook"], machine(r)))
    if not any(_ok(r, metric) is not None for r in records):
        return None, f"No run of these records has a {label}{_count_unfinished(records)}."
    heights = [len(rs) for rs in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 0.28 * sum(heights) + 1.1 * len(panels)),
                             gridspec_kw={"height_ratios": [h + 2 for h in heights]}, squeeze=False)
    for ax, ((notebook, where), group) in zip(axes[:, 0], panels.items()):
        counts = [r.get("env", {}).get("device_count") or 1 for r in group]
        configs = [r["run"]["config"] + (f" ({n} devices)" if n > 1 else "") for r, n in zip(group, counts)]
        values = [_ok(r, metric) for r in group]
        tasks = sorted(set(map(task_of, group)))  # a notebook over two models (03, 04): a colour each
        bars = ax.barh(configs, [v or 0 for v in values], color=[f"C{tasks.index(task_of(r)) % 10}" for r in group])
        if len(tasks) > 1:
            ax.legend(handles=[Patch(color=f"C{i % 10}", label=t) for i, t in enumerate(tasks)], fontsize=7)
            legend_outside(ax)
        ax.bar_label(bars, labels=[f"{_g(v)}" if v is not None else "" for v in values], fontsize=7, padding=2)
        for y, (r, v) in enumerate(zip(group, values)):
            if v is None:
                status = r.get("status")
                ax.annotate(NOT_FINISHED.get(status, "not measured") if status != "ok" else "not measured",
                            (0, y), xytext=(3, 0), textcoords="offset points", va="center", fontsize=7, color="grey")
        ax.invert_yaxis()
        if all(v is None for v in values):
            ax.set_xlim(0, 1)
        ax.set(title=f"{notebook} — {where}", xlabel=label)
        ax.tick_params(axis="y", labelsize=7)
        ax.margins(x=0.15)
    fig.tight_layout()
    return fig, _per_configuration_sentence(records, metric) + "."


def _per_configuration_sentence(records: Sequence[dict], metric: str) -> str:
    label, gpu_only = METRICS[metric]
    done = [r for r in records if _ok(r, metric) is not None]
    unfinished = _count_unfinished(records)
    if gpu_only:  # a property of the GPU's load: across notebooks, per GPU model
        by_device = _groups(done, machine)
        where, group = max(by_device.items(), key=lambda kv: len(kv[1]))
        lo, hi = min(group, key=lambda r: _ok(r, metric)), max(group, key=lambda r: _ok(r, metric))
        unit = "%" if metric == "gpu_util_mean_pct" else " °C"
        return (f"On {where}, {label.split(' (')[0]} ranged from {_ok(lo, metric):.0f}{unit} ({name(lo)}) to "
                f"{_ok(hi, metric):.0f}{unit} ({name(hi)}) over {len(group)} runs{unfinished}")
    # within a notebook, a task and a device: the largest ratio between two configurations
    comparable = [g for g in _groups(done, lambda r: (r["run"]["notebook"], task_of(r), machine(r))).values() if len(g) > 1]
    if not comparable:
        r = done[0]
        return f"Only single runs per notebook and task finished, so nothing compares yet; e.g. {name(r)}: {_g(_ok(r, metric))}{unfinished}"
    group = max(comparable, key=lambda g: max(_ok(r, metric) for r in g) / max(min(_ok(r, metric) for r in g), 1e-12))
    lo, hi = min(group, key=lambda r: _ok(r, metric)), max(group, key=lambda r: _ok(r, metric))
    where = f"{lo['run']['notebook']}, {task_of(lo)}, on {machine(lo)}"
    if metric == "train_time_s":
        return (f"The largest difference within one notebook and task: {name(lo)} trained "
                f"{_ok(hi, metric) / _ok(lo, metric):.1f}x faster than {name(hi)} ({_g(_ok(lo, metric))} s against "
                f"{_g(_ok(hi, metric))} s; {where}){unfinished}")
    return (f"The largest spread within one notebook and task: {name(lo)} reached a {label} of {_g(_ok(lo, metric))} "
            f"and {name(hi)} {_g(_ok(hi, metric))}, {_ok(hi, metric) / _ok(lo, metric):.2f}x higher ({where}){unfinished}")


def _scaling_rows(records: Sequence[dict]) -> list[dict]:
    """Each data-parallel run on several devices with its one-device baseline (``results.comparison``)."""
    table = results.comparison(records)
    by_name = {name(r): r for r in records}
    return [{"record": by_name[row.run], "base": by_name.get(row.baseline), "n": row.devices,
             "speedup": row.speedup if pd.notna(row.speedup) else None,
             "efficiency": 100 * row.scaling_efficiency if pd.notna(row.scaling_efficiency) else None}
            for row in table.itertuples()
            if row.devices > 1 and results.setting(by_name[row.run], "train.strategy") in results.DATA_PARALLEL
            and results.setting(by_name[row.run], "model.split_devices") == 1]


def scaling(records: Sequence[dict]) -> pd.DataFrame | None:
    """Scaling efficiency = samples/s on N devices / (N x samples/s on one device), per data-parallel run."""
    rows = []
    for row in _scaling_rows(records):
        r, base = row["record"], row["base"]
        missing = _cell(r, "samples_per_s") if r.get("status") != "ok" else "no one-device run"
        rows.append({"run": name(r), "status": r.get("status"), "device": device(r),
                     "strategy": r["params"]["train"]["strategy"], "devices": row["n"],
                     "samples/s": _cell(r, "samples_per_s"), "one-device run": name(base) if base else "none finished",
                     "one-device samples/s": _cell(base, "samples_per_s") if base else "—",
                     "speed-up": f"{row['speedup']:.2f}" if row["speedup"] else missing,
                     "scaling efficiency (%)": f"{row['efficiency']:.0f}" if row["efficiency"] else missing})
    return pd.DataFrame(rows).set_index("run") if rows else _none("No data-parallel run on several devices in these records.")


def scaling_figure(records: Sequence[dict]) -> tuple[plt.Figure | None, str]:
    """Scaling efficiency per data-parallel run; 100% (dashed) is N devices doing N times the work."""
    rows = _scaling_rows(records)
    if not rows:
        return None, "No scaling efficiency: these records have no data-parallel run on several devices."
    done = [row for row in rows if row["efficiency"]]
    unfinished = Counter(row["record"].get("status") for row in rows if row["record"].get("status") != "ok")
    rest = (f"; {sum(unfinished.values())} multi-device run(s) have no figure here ("
            + ", ".join(f"{n} {NOT_FINISHED.get(s, s)}" for s, n in sorted(unfinished.items())) + ")" if unfinished else "")
    if not done:
        return None, ("No scaling efficiency: no multi-device run finished beside a finished one-device run of the same "
                      f"notebook, model, precision, per-device batch and device{rest}.")
    fig, ax = plt.subplots(figsize=(9, 0.35 * len(done) + 1.6))
    bars = ax.barh([f"{name(row['record'])} ({row['n']} × {device(row['base'])})" for row in done],
                   [row["efficiency"] for row in done], color="C0")
    ax.bar_label(bars, fmt="%.0f%%", fontsize=8, padding=2)
    ax.axvline(100, color="black", ls="--", lw=1)
    ax.invert_yaxis()
    ax.margins(x=0.12)
    ax.set(xlabel="scaling efficiency (%)", title="Scaling efficiency: samples/s on N devices / (N × one device)")
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    best, worst = max(done, key=lambda row: row["efficiency"]), min(done, key=lambda row: row["efficiency"])
    sentence = (f"{name(best['record'])} on {best['n']} devices ({device(best['base'])}) kept {best['efficiency']:.0f}% of "
                f"perfect scaling, {best['speedup']:.2f}x the samples/s of {name(best['base'])}")
    if worst is not best:
        sentence += f", and {name(worst['record'])} the least, {worst['efficiency']:.0f}% on {worst['n']} devices"
    if best["efficiency"] > 105:  # more than N times one device: the two were not measured alike
        sentence += (" — above 100%, so these runs were not measured alike (on a CPU, other work shares its cores "
                     "from run to run): read it as noise, not as a speed-up")
    return fig, sentence + rest + "."


def pareto(records: Sequence[dict], x: str = "train_time_s", y: str = "final_val_loss") -> tuple[plt.Figure | None, str]:
    """Validation loss against training time, a panel per task and device; the line joins the runs that no
    other run beats on both (faster and a lower loss), ``results.pareto_front``. Points are numbered and the
    numbers named beside each panel, so labels never overlap however close the runs are."""
    done = [r for r in records if _ok(r, x) is not None and _ok(r, y) is not None]
    if not done:
        return None, f"No time-quality plot: no finished run has both a training time and a validation loss{_count_unfinished(records)}."
    on_front = results.pareto_front(done, y, lower_is_better=True, time=x)
    panels = _groups(done, lambda r: (task_of(r), machine(r)))
    columns = min(len(panels), 2)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(8 * columns, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.remove()
    fronts = {}
    for ax, ((task, where), group) in zip(axes.flat, panels.items()):
        group = sorted(group, key=lambda r: (_ok(r, x), _ok(r, y)))
        front = [r for r in group if name(r) in on_front]
        fronts[(task, where)] = (front, group)
        ax.step([_ok(r, x) for r in front], [_ok(r, y) for r in front], where="post", color="grey", zorder=1)
        for i, r in enumerate(group, 1):
            colour = "C3" if r in front else "C0"
            ax.scatter(_ok(r, x), _ok(r, y), color=colour, zorder=2,
                       label=f"{i}  {name(r)}" + ("  (front)" if r in front else ""))
            ax.annotate(str(i), (_ok(r, x), _ok(r, y)), xytext=(4, 4), textcoords="offset points", fontsize=8, color=colour)
        ax.set(title=f"{task} — {where}", xlabel="training time (s)", ylabel="final validation loss")
        legend_outside(ax, fontsize=7, title="red: on the front")
    fig.tight_layout()
    (task, where), (front, group) = max(fronts.items(), key=lambda kv: len(kv[1][1]))
    fast, good = front[0], front[-1]
    sentence = (f"Of the {len(group)} finished {task} runs on {where}, {len(front)} {'is' if len(front) == 1 else 'are'} on the front (no other run was "
                f"both faster and reached a lower validation loss)")
    if len(group) == 1:
        sentence = f"Only one {task} run on {where} has finished, {name(fast)} ({_g(_ok(fast, x))} s, loss {_g(_ok(fast, y))})"
    elif fast is good:
        sentence += f": {name(fast)} was both the fastest and the best ({_g(_ok(fast, x))} s, loss {_g(_ok(fast, y))})"
    else:
        sentence += (f", from the fastest, {name(fast)} ({_g(_ok(fast, x))} s, loss {_g(_ok(fast, y))}), to the best, "
                     f"{name(good)} ({_g(_ok(good, x))} s, loss {_g(_ok(good, y))})")
    if len(panels) > 1:
        sentence += f"; {len(panels) - 1} more panel(s) for other tasks or devices"
    return fig, sentence + "."


def spread(records: Sequence[dict]) -> pd.DataFrame | None:
    """Per finished run: the median step and its interquartile range, the mean step, and a flag where the mean
    is far above the median (a few slow steps, e.g. another job on the machine, set its samples/s)."""
    rows = []
    for r in records:
        s = results.step_spread(r) if r.get("status") == "ok" else None
        if s:
            rows.append({"run": name(r), "device": device(r), "median step (ms)": s["median_ms"],
                         "IQR (ms)": s["iqr_ms"], "mean step (ms)": s["mean_ms"], "steps": s["steps"],
                         "mean / median": s["mean_ms"] / s["median_ms"],
                         "mean far above median": "yes: a few slow steps set its samples/s" if s["skewed"] else "no"})
    return pd.DataFrame(rows).set_index("run") if rows else _none("No step times in these records.")
