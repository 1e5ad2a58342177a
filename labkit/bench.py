"""Throughput of the configurations that decide speed, side by side (``make bench``).

    python -m labkit.bench --profile bench [--only bert 03/fast_path ...] [--steps N] [--runs-dir runs]

Each configuration in ``BENCH`` runs through ``labkit.run`` (its params file over the profile, for the
profile's fixed number of steps; ``--steps`` caps them all), one after another in this process, each with
torch.compile's caches empty (``fresh_compile_cache``), so each compiled configuration pays for, and is timed
after, its own compilation from a cold start. BERT also gets the Hugging Face Trainer on the same padded input
(benchmarks/trainer_bert_qa.py, in a process of its own). ``--only`` picks groups (bert, resnext, gpt2, t5)
or single rows ('01/fast_path', 'trainer'), and takes a row with settings changed
('01/fast_path_packed@model.compile_scope=blocks'). Records go under runs/<profile>/bench/, apart from the notebooks'
own; the comparison table of this run (configuration, device, samples/s, real tokens/s, MFU, peak memory,
epoch time) goes to runs/<profile>/bench/bench.csv and bench.md (bench-<only>.* with --only), with the
fast paths' goals below it, then each fast path's training loss against its baseline's at the same steps
(``LOSS_BASELINES``; the curves side by side in bench-loss.png), judged against the baseline's own spread over
its seeds where the bench runs it more than once (``other_seeds``), and is printed at the end;
runs/<profile>/bench/bench-ratios.csv holds one row per configuration with exactly the columns of ``RATIO_COLUMNS``: its samples/s, the samples/s of the row it is measured
against (``BASELINES``: the step it improves on), their ratio, MFU and GPU busy in percent, and peak allocated
memory in GB. GPU-only configurations on a CPU are recorded as skipped, with the reason.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from matplotlib.figure import Figure

from labkit import config, results
from labkit.config import ROOT
from labkit.launch.runner import run
from labkit.preflight import skip_reason

TRAINER = "trainer"  # the Hugging Face Trainer row
TRAINER_SCRIPT = ROOT / "benchmarks" / "trainer_bert_qa.py"
TRAINER_CONFIG = "params/01_baseline_bert_squad/baseline_bf16.yaml"  # its settings and input: bf16, SDPA, padded
BENCH = {  # group -> params files (or TRAINER), in table order
    "bert": ["params/01_baseline_bert_squad/baseline.yaml", "params/01_baseline_bert_squad/baseline_bf16.yaml",
             "params/01_baseline_bert_squad/baseline_bf16.yaml@seed=1", TRAINER, "params/01_baseline_bert_squad/fast_path_padded.yaml",
             "params/01_baseline_bert_squad/fast_path.yaml", "params/01_baseline_bert_squad/fast_path_packed.yaml"],
    "resnext": ["params/03_mixed_precision/resnext_bf16_channels_last.yaml",
                "params/03_mixed_precision/resnext_bf16_channels_last.yaml@seed=1", "params/03_mixed_precision/fast_path.yaml"],
    "gpt2": ["params/06_lora_optimizer_sweep/r10_adamw.yaml", "params/06_lora_optimizer_sweep/fast_path.yaml"],
    "t5": ["params/07_t5_model_parallel/gsm8k_bf16.yaml", "params/07_t5_model_parallel/fast_path.yaml"],
}
ROW = ["configuration", "device", "status", "samples_per_s", "tokens_per_s", "mfu", "gpu_util", "peak_allocated_gb", "step_s",
       "epoch_s", "first_step_s", "steady_compilations", "final_train_loss", "steps", "mean_real_tokens", "trainer_samples_per_s",
       "mfu_counts", "attention", "data", "note"]
# Each row against the row it improves on: bf16 against fp32, the Trainer against the kit's loop at the same settings,
# the BERT fast path on the padded input against the Trainer's steady state, dynamic padding and packing against the
# padded fast path, and each other fast path against its own notebook's baseline. Rows absent here are baselines.
BASELINES = {"01/baseline_bf16": "01/baseline", TRAINER: "01/baseline_bf16", "01/fast_path_padded": TRAINER,
             "01/fast_path": "01/fast_path_padded", "01/fast_path_packed": "01/fast_path_padded",
             "03/fast_path": "03/resnext_bf16_channels_last", "06/fast_path": "06/r10_adamw", "07/fast_path": "07/gsm8k_bf16"}
RATIO_COLUMNS = ["configuration", "samples_per_s", "baseline_samples_per_s", "ratio", "mfu", "gpu_busy", "peak_allocated_gb"]
# The goals: samples/s at least this many times the baseline's (BASELINES), one run of the bench on one GPU.
SPEEDUP_GOALS = {"01/fast_path_padded": 1.8, "01/fast_path_packed": 1.5, "06/fast_path": 1.3, "07/fast_path": 1.3}
# A fast path must train what its baseline trains: each one's loss against the kit's eager loop on the same model and data
# (the Trainer row records no loss curve, so the BERT fast paths are held against 01/baseline_bf16).
LOSS_BASELINES = {"01/fast_path_padded": "01/baseline_bf16", "01/fast_path": "01/baseline_bf16",
                  "01/fast_path_packed": "01/baseline_bf16", "03/fast_path": "03/resnext_bf16_channels_last",
                  "06/fast_path": "06/r10_adamw", "07/fast_path": "07/gsm8k_bf16"}
# An item "<params file>@key=value,..." is that configuration with those settings changed (values read as YAML), e.g.
# "...fast_path_packed.yaml@model.compile_scope=blocks"; --only takes a row name with such a suffix too. The key
# "seed" is special: "@seed=N" is train.seed N over the same data (data.seed held): other initial weights, batch
# order and augmentation. How far the curves of a LOSS_BASELINES row run with other seeds stray from its first run's
# is the noise against which a fast path's curve is judged (other_seeds).
AT = "@"
MFU_GOAL_PCT = 30.0  # 01/fast_path_padded, of the GPU's dense bf16 peak
FIRST_STEP_GOAL_S = 30.0  # 01/fast_path_packed: its first step, compilation included
EPOCH_GOAL_S = 2.5  # 03/fast_path: its last epoch, data included
# GPU busy: NVML's utilisation over the steady state; well under 100% means the host, not the GPU, sets the pace
COLUMNS = {"samples_per_s": "samples/s", "tokens_per_s": "real tokens/s", "mfu": "MFU (%)", "gpu_util": "GPU busy (%)",
           "peak_allocated_gb": "peak allocated (GB)", "step_s": "step (ms)", "epoch_s": "last epoch (s)",
           "first_step_s": "first step (s)", "steady_compilations": "compilations in the steady state",
           "final_train_loss": "last training loss"}


def file_stem(only: list[str] | None) -> str:
    """The table's file name: 'bench', then the rows or groups asked for, as a plain name; a long list is cut, with a
    digest of the whole so that two lists cut alike still differ (file systems refuse names past 255 bytes)."""
    stem = "-".join(["bench", *(re.sub(r"[^\w.-]+", "_", name) for name in only or [])])
    if len(stem) <= 120:
        return stem
    return f"{stem[:100]}-{hashlib.sha1(stem.encode()).hexdigest()[:10]}"


def name_of(item: str) -> str:
    """'01/fast_path' for params/01_baseline_bert_squad/fast_path.yaml, '03/x@seed=1' for an item with settings
    changed; 'trainer' for the Trainer."""
    file, _ = split_item(item)
    path = Path(file)
    return item if item == TRAINER else f"{path.parent.name[:2]}/{path.stem}{item[len(file):]}"


def split_item(item: str) -> tuple[str, dict[str, Any]]:
    """The params file of a BENCH item and the settings its suffix changes ({} for none)."""
    file, _, suffix = item.partition(AT)
    try:
        return file, config.parse_settings(suffix)
    except ValueError as err:
        raise SystemExit(f"bench item {item!r}: expected <params file>@key=value,... (e.g. @seed=1): {err}") from None


def selected(only: list[str] | None) -> list[str]:
    """The BENCH items of the groups or rows named (all without a name), in BENCH order; a row named with settings
    changed ('01/fast_path_packed@model.compile_scope=blocks') is that row's params file with them, after them."""
    items = [i for group in BENCH.values() for i in group]
    rows = {name_of(i): i for i in items}
    changed = [n for n in only or [] if AT in n and n not in rows]
    extra = []
    for name in changed:
        row, _, suffix = name.partition(AT)
        if row not in rows or AT in rows[row]:
            raise SystemExit(f"--only {name}: {row} is not a bench row; choose from {', '.join(sorted(rows))}")
        extra.append(f"{rows[row]}{AT}{suffix}")
    known = set(BENCH) | set(rows)
    if unknown := sorted(set(only or []) - known - set(changed)):
        raise SystemExit(f"--only {' '.join(unknown)}: not a bench group or row; choose from {', '.join(sorted(known))}")
    return [i for group, its in BENCH.items() for i in its if not only or group in only or name_of(i) in only] + extra


@contextlib.contextmanager
def fresh_compile_cache() -> Iterator[None]:
    """torch.compile as in a new process on a new machine: compiled graphs dropped, and inductor's and Triton's
    caches (in memory and on disk) empty, in a temporary folder removed afterwards."""
    from torch._inductor import utils as inductor

    torch._dynamo.reset()
    try:
        fresh = getattr(inductor, "fresh_cache", None) or inductor.fresh_inductor_cache  # torch < 2.8: the old name
        with fresh():
            yield
    finally:
        torch._dynamo.reset()


def record_row(record: dict) -> dict:
    """One table row from a results record."""
    s, info, p = record.get("summary", {}), record.get("info", {}), record.get("params", {})
    epochs, steps = record.get("curves", {}).get("epoch_time_s", []), record.get("curves", {}).get("steps", [])
    return {"configuration": name_of(record["run"]["params_file"]), "device": results.device_label(record.get("env", {})),
            "status": record["status"], "samples_per_s": s.get("samples_per_s"), "tokens_per_s": s.get("tokens_per_s"),
            "mfu": 100 * s["mfu"] if s.get("mfu") is not None else None, "gpu_util": s.get("gpu_util_mean_pct"),
            "peak_allocated_gb": s.get("peak_allocated_gb"),
            "step_s": 1e3 * s["step_s"] if s.get("step_s") is not None else None,
            "epoch_s": epochs[-1] if p.get("task") == "cifar_resnext" and epochs else None,
            "first_step_s": steps[0]["step"] if steps else None,  # compilation, on a compiled model
            "steady_compilations": s.get("compilations_in_steady_state"),  # their time is inside samples_per_s
            "final_train_loss": s.get("final_train_loss"),  # the mean over the last log_every steps
            "steps": s.get("steps"), "mean_real_tokens": info.get("mean_real_tokens"),
            "mfu_counts": info.get("flops_counted"), "attention": info.get("attention"),
            "data": info.get("data_source"), "note": brief(record["error"]) if record.get("error") else p.get("description", "")}


def brief(error: str, limit: int = 400) -> str:
    """An error on one line for the table, cut at ``limit`` characters; the record keeps the whole of it."""
    line = " ".join(error.split())
    return line if len(line) <= limit else line[:limit].rstrip() + " … (the whole error is in the row's results record)"


def trainer_row(profile: str, steps: int | None, directory: Path) -> dict:
    """The Trainer on notebook 01's bf16 configuration, in a fresh process (skipped where its settings need a GPU)."""
    cuda = torch.cuda.is_available()
    row = {"configuration": TRAINER, "status": "skipped",
           "device": results.device_label({"device": "cuda", "device_name": torch.cuda.get_device_name()} if cuda else
                                          {"device": "cpu"})}
    # bf16 autocast runs on a CPU, but the Trainer is here to be compared with the kit's loop on a GPU
    reason = skip_reason(config.load(TRAINER_CONFIG, profile), cuda) or (None if cuda else "the Trainer comparison is a GPU measurement")
    if reason:
        return {**row, "note": f"skipped: {reason}"}
    out = directory / "trainer.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, str(TRAINER_SCRIPT), "--config", TRAINER_CONFIG, "--profile", profile, "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command + (["--steps", str(steps)] if steps else []), cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode or not out.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {**row, "status": "failed", "note": f"benchmarks/trainer_bert_qa.py exited {done.returncode}: {last}"}
    r = json.loads(out.read_text())
    return {**row, "status": "ok", "samples_per_s": r["samples_per_s"],
            "tokens_per_s": r["tokens_per_s"], "mfu": 100 * r["mfu"] if r.get("mfu") is not None else None,
            "peak_allocated_gb": r.get("peak_allocated_gb"), "step_s": 1e3 * r["step_s"], "steps": r["steps"],
            "mean_real_tokens": r["mean_real_tokens"], "mfu_counts": r["flops_counted"],
            "trainer_samples_per_s": r["trainer_samples_per_s"],
            "note": f"HF Trainer {r['transformers']}, {r['precision']}, optimizer {r['optimizer']}, no compile; its own "
                    f"train_samples_per_second (whole train() call, start-up included): {r['trainer_samples_per_s']:.1f}"}


def warm_up_gpu(seconds: float) -> float:
    """Keep the GPU busy with bf16 matrix products for ``seconds`` before the first row, which is a baseline the
    ratios divide by: the first run on a freshly started machine measured slower on the GPU itself than the runs
    after it (docs/benchmarks.md, H200 run 1). Returns the seconds spent: 0 without a GPU."""
    if not torch.cuda.is_available() or seconds <= 0:
        return 0.0
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(20):
            a @ a
        torch.cuda.synchronize()
    del a
    torch.cuda.empty_cache()
    return time.perf_counter() - start


class Budget:
    """Rows run one after another within ``seconds`` (None: no limit). A row is begun only if it would end within
    them, judged by the longest row so far, so that no row is cut off half-measured by a time limit."""

    def __init__(self, seconds: float | None):
        self.seconds, self.began, self.longest, self._row = seconds, time.perf_counter(), 0.0, 0.0

    def next_row_fits(self) -> bool:
        """Whether the next row, begun now, fits; its time counts from here."""
        self._row = time.perf_counter()
        return self.seconds is None or self._row - self.began + self.longest <= self.seconds

    def row_done(self) -> float:
        """The seconds the row just ended took."""
        took = time.perf_counter() - self._row
        self.longest = max(self.longest, took)
        return took


def bench(profile: str, items: list[str], steps: int | None, directory: Path,
          budget_s: float | None = None) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Run ``items`` one after another: one table row each, and the results records of those that finished ('ok'),
    by row name (the Trainer's run keeps none). With ``budget_s``, a row that the longest row so far says would end
    more than ``budget_s`` seconds after the first began is not started, and its row says so."""
    overrides = {"train.max_steps": steps} if steps else {}
    rows, finished = [], {}
    budget = Budget(budget_s)
    for item in items:
        if not budget.next_row_fits():
            rows.append({"configuration": name_of(item), "status": "not run",
                         "note": f"not started: it would have ended past --budget-s {budget_s:.0f}"})
            print(f"[bench] {name_of(item)}: not started (--budget-s {budget_s:.0f})", flush=True)
            continue
        print(f"[bench] {name_of(item)} (profile {profile})", flush=True)
        if item == TRAINER:
            rows.append(trainer_row(profile, steps, directory))
        else:
            file, changes = split_item(item)
            # beside, not over, the first run's record: runs/.../bench/seed1, .../model.compile_scope-blocks
            where = directory / "_".join(f"{k}{v}" if k == "seed" else f"{k}-{v}" for k, v in changes.items()) \
                if changes else directory
            if "seed" in changes:
                changes.update({"train.seed": changes.pop("seed"), "data.seed": config.load(file, profile, overrides).data_seed})
            try:
                # A fresh compilation per configuration: no graph, no kernel and no cache limit carried over from
                # the rows before, so a compiled row's first step is a cold start, as on a new machine.
                with fresh_compile_cache():
                    run(file, profile, {**overrides, **changes}, where)
            except Exception as err:  # recorded as failed by the runner; the bench goes on
                print(f"[bench] {name_of(item)} failed: {type(err).__name__}: {err}", flush=True)
            finally:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            record = results.read(results.record_dir(profile, Path(file).parent.name, Path(file).stem, where))
            rows.append({**record_row(record), "configuration": name_of(item)})
            if record["status"] == "ok":
                finished[name_of(item)] = record
        print(f"[bench] {name_of(item)}: {rows[-1]['status']} after {budget.row_done():.0f} s", flush=True)
    return pd.DataFrame(rows).reindex(columns=ROW).set_index("configuration"), finished


def ratios(table: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration of ``table``: RATIO_COLUMNS, the ratio against its BASELINES row where both ran."""
    rows = []
    for name, row in table.iterrows():
        own = row["samples_per_s"] if row["status"] == "ok" else None
        base = BASELINES.get(name)
        base_sps = table.loc[base, "samples_per_s"] if base in table.index and table.loc[base, "status"] == "ok" else None
        rows.append({"configuration": name, "samples_per_s": own, "baseline_samples_per_s": base_sps,
                     "ratio": own / base_sps if own is not None and base_sps is not None else None,
                     "mfu": row["mfu"], "gpu_busy": row["gpu_util"], "peak_allocated_gb": row["peak_allocated_gb"]})
    return pd.DataFrame(rows, columns=RATIO_COLUMNS).set_index("configuration")


def targets(table: pd.DataFrame) -> list[str]:
    """The bench's goals, each from rows of this table (so from one run of the bench), or why it is not measured."""
    speedups = ratios(table)["ratio"]

    def ok(name: str) -> pd.Series | None:
        return table.loc[name] if name in table.index and table.loc[name, "status"] == "ok" else None

    def missing(*names: str) -> str:
        return ", ".join(f"{n}: {table.loc[n, 'status'] if n in table.index else 'not run'}" for n in names if ok(n) is None)

    def verdict(met: bool) -> str:
        return "met" if met else "missed"

    def speedup(name: str, what: str) -> str:
        goal, base = SPEEDUP_GOALS[name], BASELINES[name]
        if pd.isna(speedups.get(name)):
            return f"{what}: not measured ({missing(name, base)})"
        return f"{what}: {speedups[name]:.2f}x {base}'s samples/s (goal: at least {goal}x, {verdict(speedups[name] >= goal)})"

    padded, trainer, packed = ok("01/fast_path_padded"), ok(TRAINER), ok("01/fast_path_packed")
    line = speedup("01/fast_path_padded", "BERT fast path on the padded input vs the HF Trainer's steady state on the same input")
    if padded is not None and pd.notna(padded["mfu"]):
        line += f"; MFU {padded['mfu']:.1f}% (goal: at least {MFU_GOAL_PCT:.0f}%, {verdict(padded['mfu'] >= MFU_GOAL_PCT)})"
    if padded is not None and trainer is not None:
        line += (f"; {padded['samples_per_s'] / trainer['trainer_samples_per_s']:.2f}x the Trainer's own figure "
                 "(its whole train() call, start-up included)")
    lines = [line]
    line = speedup("01/fast_path_packed", "padding-free vs padded, same fast path")
    if packed is not None:
        line += f", features of mean {packed['mean_real_tokens']:.0f} real tokens"
        if pd.notna(packed["first_step_s"]):
            line += (f"; first step {packed['first_step_s']:.1f} s, compilation included (goal: under {FIRST_STEP_GOAL_S:.0f} s, "
                     f"{verdict(packed['first_step_s'] < FIRST_STEP_GOAL_S)})")
    lines.append(line)
    resnext = ok("03/fast_path")
    if resnext is not None and pd.notna(resnext["epoch_s"]):
        lines.append(f"ResNeXt fast path: {resnext['epoch_s']:.2f} s for its last epoch, data included "
                     f"(goal: under {EPOCH_GOAL_S} s, {verdict(resnext['epoch_s'] < EPOCH_GOAL_S)})")
    else:
        lines.append(f"ResNeXt fast path epoch: not measured ({missing('03/fast_path')})")
    lines.append(speedup("06/fast_path", "GPT-2 fast path"))
    lines.append(speedup("07/fast_path", "T5 fast path"))
    for name, row in table.iterrows():  # a figure that holds compilations is not the compiled step's speed
        if row["status"] == "ok" and pd.notna(row["steady_compilations"]) and row["steady_compilations"] > 0:
            lines.append(f"{name}: {int(row['steady_compilations'])} compilation(s) inside its steady state, whose time "
                         "its samples/s includes")
    return lines


def _train_loss(record: dict) -> dict[int, float]:
    return {step: loss for step, _, loss in record.get("curves", {}).get("train_loss", [])}


def loss_comparison(records: dict[str, dict]) -> list[str]:
    """Each fast path's training loss against its LOSS_BASELINES row's, at the optimizer steps both logged (each
    logged value is the mean over the steps since the one before). The largest gap is given as a share of the
    baseline's first logged loss, the curve's own scale: a share of the loss at each step would make two curves
    that both approach zero (ResNeXt on the generated images) look far apart."""
    lines = []
    for fast, base in LOSS_BASELINES.items():
        if fast not in records or base not in records:
            continue
        mine, theirs = _train_loss(records[fast]), _train_loss(records[base])
        shared = sorted(set(mine) & set(theirs))
        if not shared:
            lines.append(f"{fast}: no training loss logged at the steps {base} logged")
            continue
        widest = max(shared, key=lambda k: abs(mine[k] - theirs[k]))
        gap, last, scale = abs(mine[widest] - theirs[widest]), shared[-1], theirs[min(theirs)]
        line = (f"{fast}: training loss {mine[last]:.3f} at step {last} against {base}'s {theirs[last]:.3f}; the two "
                f"curves differ by at most {gap:.3f} (step {widest}) at the {len(shared)} steps both logged, "
                f"{100 * gap / abs(scale):.1f}% of {base}'s first logged loss ({scale:.3f})")
        if seeds := other_seeds(base, records):
            again = [_train_loss(records[name]) for name in seeds]
            steps = sorted(set(theirs) & set(mine) & set.intersection(*(set(curve) for curve in again)))
            if steps:
                band = max(abs(curve[k] - theirs[k]) for curve in again for k in steps)
                within = max(abs(mine[k] - theirs[k]) for k in steps) <= band
                one = len(seeds) == 1
                line += (f". {' and '.join(seeds)} ({'another seed' if one else 'other seeds'}, the same data) "
                         f"differ{'s' if one else ''} from {base} by at most {band:.3f} at the same steps: the fast "
                         f"path's curve is {'within' if within else 'outside'} that noise")
        lines.append(line)
    return lines


def other_seeds(base: str, records: dict[str, dict]) -> list[str]:
    """The runs of row ``base`` with another train.seed ('<base>@seed=N') among ``records``: the baseline's own noise."""
    return sorted(name for name in records if re.fullmatch(rf"{re.escape(base)}{AT}seed=\d+", name))


def loss_figure(records: dict[str, dict]) -> Figure | None:
    """One panel per fast path: its training loss and its LOSS_BASELINES row's against the optimizer step."""
    pairs = [(fast, base) for fast, base in LOSS_BASELINES.items() if fast in records and base in records]
    if not pairs:
        return None
    fig = Figure(figsize=(4.5 * len(pairs), 3.6), layout="constrained")
    for ax, (fast, base) in zip(fig.subplots(1, len(pairs), squeeze=False)[0], pairs):
        seeds = other_seeds(base, records)
        for name in (base, *seeds, fast):  # the baseline's other seeds, where they ran, dashed: the noise
            curve = sorted(_train_loss(records[name]).items())
            ax.plot([k for k, _ in curve], [v for _, v in curve], marker="o", markersize=3, label=name,
                    linestyle="--" if name in seeds else "-")
        ax.set(title=f"{fast}\n{results.device_label(records[fast].get('env', {}))}", xlabel="optimizer step",
               ylabel="training loss")
        ax.legend(fontsize="small")
    return fig


def markdown(df: pd.DataFrame) -> str:
    """A Markdown table (pandas' to_markdown needs tabulate, which the kit does not install)."""
    cells = [[str(df.index.name)] + list(df.columns)] + [[str(i)] + [_cell(v) for v in row] for i, row in df.iterrows()]
    lines = ["| " + " | ".join(c) + " |" for c in cells]
    return "\n".join([lines[0], "|" + "---|" * len(cells[0])] + lines[1:])


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return " ".join(str(value).split()).replace("|", "/")  # a Markdown table's cell holds one line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="bench")
    parser.add_argument("--only", nargs="*", help="groups (bert, resnext, gpt2, t5) or rows ('01/fast_path') to run")
    parser.add_argument("--steps", type=int, help="cap every configuration at this many optimizer steps")
    parser.add_argument("--runs-dir", default=str(results.RUNS_DIR))
    parser.add_argument("--warm-up-s", type=float, default=15.0, help="seconds of GPU work before the first row (0: none)")
    parser.add_argument("--budget-s", type=float, help="start no row that the longest so far says would end later than "
                                                       "this many seconds after the first row began; the table lists it as not run")
    args = parser.parse_args(argv)
    os.environ["LABKIT_HEADLESS"] = "1"  # plain, infrequent progress lines
    items = selected(args.only)
    directory = Path(args.runs_dir).resolve() / args.profile / "bench"
    directory.mkdir(parents=True, exist_ok=True)
    if warmed := warm_up_gpu(args.warm_up_s):
        print(f"[bench] GPU warmed up for {warmed:.0f} s before the first row", flush=True)
    table, finished = bench(args.profile, items, args.steps, directory, args.budget_s)
    stem = file_stem(args.only)
    table.to_csv(directory / f"{stem}.csv")
    ratios(table).to_csv(directory / f"{stem}-ratios.csv")
    shown = table[["device", "status", *COLUMNS]].rename(columns=COLUMNS)
    data = sorted({f"{d}, mean {t:.0f} real tokens per sample" if pd.notna(t) else d
                   for d, t in zip(table["data"], table["mean_real_tokens"]) if isinstance(d, str)})
    lines, losses = targets(table), loss_comparison(finished)
    same_training = "".join(f"- {line}\n" for line in losses) or "No fast path ran beside its baseline.\n"
    if figure := loss_figure(finished):
        figure.savefig(directory / f"{stem}-loss.png", dpi=120)
        same_training += f"\n![each fast path's training loss beside its baseline's]({stem}-loss.png)\n"
    (directory / f"{stem}.md").write_text(
        f"# Throughput, profile `{args.profile}`\n\n{markdown(shown)}\n\nData: {'; '.join(data) or 'none'}.\n\n"
        "## Goals\n\n" + "".join(f"- {line}\n" for line in lines) + "\n## The same training\n\n" + same_training +
        "\n## Notes\n\n" + markdown(table[["steps", "mfu_counts", "attention", "note"]]) + "\n")
    print(f"\n{shown.to_string(na_rep='', float_format=lambda v: f'{v:,.1f}')}\n")
    print("\n".join(lines + losses))
    print(f"\ntable: {directory / stem}.md and .csv; ratios against the baselines: {directory / stem}-ratios.csv")
    return 0 if not (table["status"] == "failed").any() else 1


if __name__ == "__main__":
    sys.exit(main())
