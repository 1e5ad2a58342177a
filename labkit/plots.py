"""Tables and seaborn figures the notebooks show. Every figure and table names the device it ran on."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from labkit.results import device_label

sns.set_theme(style="whitegrid", context="notebook")


def banner(record: dict) -> str:
    """What a reader must know before reading any number of a run, as Markdown."""
    env, info, status = record.get("env", {}), record.get("info", {}), record.get("status")
    lines = [f"**{record['run']['notebook']} / {record['run']['config']}** (profile `{record['run']['profile']}`): "
             f"status **{status}**" + (f" — {record['error']}" if record.get("error") else "")]
    lines.append(f"- Device: **{device_label(env)}**; torch {env.get('torch')}, transformers {env.get('transformers')}")
    if env.get("device") != "cuda":
        lines.append("- These are **CPU smoke figures**: they show that the lab runs, not how fast a GPU is.")
    if info.get("weights") == "random":
        lines.append(f"- Model: {info.get('weights_source')} — **random weights**: losses and scores show learning from "
                     "scratch on this data, not the pretrained model's quality.")
    elif info:
        lines.append(f"- Model: {info.get('weights_source')} (pretrained)")
    if info.get("data_source"):
        lines.append(f"- Data: {info['data_source']} ({info.get('train_examples')} training / "
                     f"{info.get('val_examples')} validation examples)")
    return "\n".join(lines)


def show_banner(record: dict) -> None:
    from IPython.display import Markdown, display

    display(Markdown(banner(record)))


SUMMARY_COLUMNS = {
    "train_time_s": "training time (s)", "samples_per_s": "samples/s", "tokens_per_s": "real tokens/s",
    "step_s": "step (s)", "data_s": "loader wait (s)", "fwd_bwd_s": "forward+backward (s)", "optimizer_s": "optimizer (s)",
    "wait_s": "device waiting (s)",
    "mfu": "MFU", "peak_allocated_gb": "peak allocated (GB)", "peak_reserved_gb": "peak reserved (GB)",
    "gpu_util_mean_pct": "GPU util (%)", "gpu_temp_max_c": "max temp (°C)",
    "first_train_loss": "first train loss", "final_train_loss": "final train loss", "final_val_loss": "final val loss",
}


def summary_table(records: Sequence[dict] | pd.DataFrame, extra: Sequence[str] = ()) -> pd.DataFrame:
    """One row per run: device first, then the measured figures that exist."""
    if isinstance(records, pd.DataFrame):
        df = records.copy()
    else:
        df = pd.DataFrame([{"config": r["run"]["config"], "status": r["status"], "device": device_label(r.get("env", {})),
                            **r.get("summary", {})} for r in records])
    if df.empty:
        return df
    columns = ["config", "status", "device"] + [c for c in list(SUMMARY_COLUMNS) + list(extra) if c in df.columns]
    return df[columns].rename(columns=SUMMARY_COLUMNS).set_index("config")


def _curve_frame(records: Sequence[dict], key: str) -> pd.DataFrame:
    rows = []
    for r in records:
        for step, epoch, value in r.get("curves", {}).get(key, []):
            rows.append({"config": r["run"]["config"], "step": step, "epoch": epoch, "loss": value})
    return pd.DataFrame(rows)


def loss_curves(records: Sequence[dict], title: str = "Loss") -> plt.Figure | None:
    """Training loss against epoch, with validation loss as markers, one colour per configuration."""
    train, val = _curve_frame(records, "train_loss"), _curve_frame(records, "val_loss")
    if train.empty and val.empty:
        print("No loss curves: no run of these trained.")
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if not train.empty:
        sns.lineplot(data=train, x="epoch", y="loss", hue="config", ax=ax)
    if not val.empty:
        sns.scatterplot(data=val, x="epoch", y="loss", hue="config", marker="D", s=70, ax=ax, legend=False)
    ax.set(title=f"{title} — lines: training, diamonds: validation ({_devices(records)})", xlabel="epoch", ylabel="loss")
    fig.tight_layout()
    return fig


def gpu_timeline(records: Sequence[dict]) -> plt.Figure | None:
    """GPU utilisation, memory, temperature, power and SM clock over the run; None (and a note) without GPU samples."""
    rows = [{"config": r["run"]["config"], **s} for r in records for s in r.get("curves", {}).get("gpu", [])]
    if not rows:
        print("No GPU timeline: these runs had no GPU to sample (CPU smoke run).")
        return None
    df = pd.DataFrame(rows)
    panels = [("util_pct", "utilisation (%)"), ("mem_used_gb", "memory used (GB)"), ("temp_c", "temperature (°C)"),
              ("power_w", "power (W)"), ("sm_clock_mhz", "SM clock (MHz)")]
    panels = [(col, label) for col, label in panels if col in df]  # records from before the clock was sampled lack it
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.5))
    for ax, (col, label) in zip(axes, panels):
        # a layer-split model's GPUs are sampled side by side: one line style per GPU
        style = "gpu" if "gpu" in df and df["gpu"].nunique() > 1 else None
        sns.lineplot(data=df, x="t", y=col, hue="config", style=style, ax=ax, legend=ax is axes[0])
        ax.set(xlabel="seconds", ylabel=label)
    fig.suptitle(f"GPU timeline ({_devices(records)})")
    fig.tight_layout()
    return fig


def step_split(records: Sequence[dict]) -> plt.Figure | None:
    """Median step split into forward+backward, optimizer and device waiting (the three add up to the step)."""
    phases = {"fwd_bwd": "forward+backward", "optimizer": "optimizer", "wait": "waiting (input, copy, launch)"}
    rows = [{"config": r["run"]["config"], "phase": label, "ms": 1e3 * r["summary"][f"{phase}_s"]}
            for r in records if r.get("status") == "ok" and "wait_s" in r.get("summary", {})
            for phase, label in phases.items()]
    if not rows:
        print("No step times: no run of these finished.")
        return None
    df = pd.DataFrame(rows).pivot(index="config", columns="phase", values="ms")[list(phases.values())]
    ax = df.plot.barh(stacked=True, figsize=(8, 0.6 * len(df) + 1.5))
    ax.set(xlabel="median ms per step", ylabel="", title=f"Where a step's time goes ({_devices(records)})")
    ax.figure.tight_layout()
    return ax.figure


def bars(df: pd.DataFrame, x: str, y: str, title: str, hue: str | None = None, ax: plt.Axes | None = None) -> plt.Axes:
    """A labelled bar chart of one measured column; the title carries the device."""
    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    sns.barplot(data=df, x=x, y=y, hue=hue, ax=ax)
    for container in ax.containers:
        ax.bar_label(container, fmt="%.3g", fontsize=8)
    devices = ", ".join(sorted(df["device"].dropna().unique())) if "device" in df else ""
    ax.set(title=f"{title}" + (f" ({devices})" if devices else ""))
    ax.figure.tight_layout()
    return ax


def _devices(records: Sequence[dict]) -> str:
    return ", ".join(sorted({device_label(r.get("env", {})) for r in records}))


# ---- notebook 06: memory breakdown and the LoRA rank x optimizer sweep -----------------------------------

MEMORY_LABELS = {"weights": "weights", "gradients": "gradients", "optimizer": "optimizer state", "activations": "activations"}
OPTIMIZER_ORDER = ("adamw", "nesterov", "sgd_momentum", "sgd")


def finetune_label(record: dict) -> str:
    """'full' or 'LoRA r=<rank>', from the run's parameters."""
    model = record.get("params", {}).get("model", {})
    return f"LoRA r={model['lora']['rank']}" if model.get("finetune") == "lora" else "full"


def sweep_order(records: Sequence[dict]) -> list[dict]:
    """Full fine-tuning first, then LoRA by falling rank, then optimizers from AdamW to plain SGD."""
    def key(r: dict) -> tuple:
        model, optimizer = r["params"]["model"], r["params"]["train"]["optimizer"]
        rank = model["lora"]["rank"] if model["finetune"] == "lora" else float("inf")
        return -rank, OPTIMIZER_ORDER.index(optimizer) if optimizer in OPTIMIZER_ORDER else len(OPTIMIZER_ORDER)
    return sorted(records, key=key)


def _unit(values) -> tuple[str, float]:
    """GB, or MB when every value is under a gigabyte (the tiny smoke models)."""
    top = max((v for v in values if v is not None and v == v), default=0.0)
    return ("GB", 1.0) if top >= 1 else ("MB", 1e3)


def sweep_table(records: Sequence[dict]) -> pd.DataFrame:
    """One row per configuration: what is trained, with what, and what it cost and reached."""
    rows = []
    for r in sweep_order(records):
        s = r.get("summary", {})
        rows.append({"config": r["run"]["config"], "status": r["status"], "device": device_label(r.get("env", {})),
                     "fine-tuning": finetune_label(r), "optimizer": r["params"]["train"]["optimizer"],
                     "trainable params": s.get("params_trainable"), "total params": s.get("params_total"),
                     "trainable %": 100 * s["params_trainable"] / s["params_total"] if s.get("params_total") else None,
                     "peak allocated (GB)": s.get("peak_allocated_gb"), "step (s)": s.get("step_s"),
                     "first train loss": s.get("first_train_loss"), "final train loss": s.get("final_train_loss"),
                     "test loss": s.get("test_loss"), "test perplexity": s.get("test_perplexity"),
                     "note": r.get("error") or ""})
    return pd.DataFrame(rows).set_index("config") if rows else pd.DataFrame()


def memory_table(records: Sequence[dict]) -> pd.DataFrame:
    """Weights, gradients, optimizer state and activations of each finished run: computed from parameter
    counts and dtypes, beside measured (allocated memory around the first step, GPU only)."""
    done = [r for r in sweep_order(records) if r.get("status") == "ok"]
    if not done:
        return pd.DataFrame()
    values = [v for r in done for k, v in r["summary"].items() if k.endswith(("_computed_gb", "_measured_gb"))]
    unit, scale = _unit(values)
    rows = []
    for r in done:
        s, gpu = r["summary"], r.get("env", {}).get("device") == "cuda"
        for part, label in MEMORY_LABELS.items():
            computed, measured = s.get(f"{part}_computed_gb"), s.get(f"{part}_measured_gb")
            rows.append({"config": r["run"]["config"], "part": label,
                         f"computed ({unit})": computed * scale if computed is not None else "needs a measurement",
                         f"measured ({unit})": measured * scale if measured is not None else
                         ("not measured" if gpu else "not measured: CPU run")})
        if s.get("peak_allocated_gb") is not None:
            rows.append({"config": r["run"]["config"], "part": "peak allocated, whole run", f"computed ({unit})": "",
                         f"measured ({unit})": s["peak_allocated_gb"] * scale})
    return pd.DataFrame(rows).set_index(["config", "part"])


def memory_breakdown(records: Sequence[dict]) -> plt.Figure | None:
    """Stacked bars per configuration: computed (weights, gradients, optimizer state) and, from a GPU run,
    measured (the same plus activations), with the run's peak allocated memory as a black tick."""
    done = [r for r in sweep_order(records) if r.get("status") == "ok"]
    if not done:
        print("No memory breakdown: no run of these finished.")
        return None
    rows, peaks = [], []
    for r in done:
        s, name = r["summary"], r["run"]["config"]
        rows.append({"bar": f"{name} · computed", **{p: s.get(f"{p}_computed_gb") or 0.0 for p in MEMORY_LABELS}})
        if any(f"{p}_measured_gb" in s for p in MEMORY_LABELS):
            rows.append({"bar": f"{name} · measured", **{p: s.get(f"{p}_measured_gb") or 0.0 for p in MEMORY_LABELS}})
            peaks.append((len(rows) - 1, s.get("peak_allocated_gb")))
    df = pd.DataFrame(rows).set_index("bar")[list(MEMORY_LABELS)].rename(columns=MEMORY_LABELS)
    df = df.loc[:, (df != 0).any()]  # a CPU run has no activations bar to explain
    unit, scale = _unit(df.sum(axis=1).tolist() + [p for _, p in peaks])
    ax = (df * scale).plot.barh(stacked=True, figsize=(9, 0.45 * len(df) + 2))
    for i, (row, peak) in enumerate(peaks):
        if peak is not None:
            ax.plot(peak * scale, row, marker="|", color="black", markersize=18, mew=2,
                    label="peak allocated (whole run)" if i == 0 else None)
    ax.invert_yaxis()
    note = "" if peaks else "\nCPU run: computed only; activations need a GPU measurement"
    ax.set(xlabel=unit, ylabel="", title=f"Where the memory goes ({_devices(done)}){note}")
    ax.legend(loc="lower right", fontsize=8)
    ax.figure.tight_layout()
    return ax.figure


def sweep_loss_curves(records: Sequence[dict]) -> plt.Figure | None:
    """Training loss (lines) and test loss (diamonds) against step: per LoRA rank with AdamW (left) and
    per optimizer at LoRA rank 1 (right)."""
    done = [r for r in sweep_order(records) if r.get("status") == "ok"]
    rank1 = [r for r in done if finetune_label(r) == "LoRA r=1"]
    panels = [("per rank, AdamW", [r for r in done if r["params"]["train"]["optimizer"] == "adamw"], finetune_label),
              ("per optimizer, LoRA rank 1", rank1, lambda r: r["params"]["train"]["optimizer"])]
    if not any(group for _, group, _ in panels):
        print("No loss curves: no run of these finished.")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharey=True)
    for ax, (title, group, label) in zip(axes, panels):
        train = pd.DataFrame([{"run": label(r), "step": step, "loss": v} for r in group
                              for step, _, v in r["curves"].get("train_loss", [])])
        val = pd.DataFrame([{"run": label(r), "step": step, "loss": v} for r in group
                            for step, _, v in r["curves"].get("val_loss", [])])
        if train.empty:
            ax.set(title=f"{title}: no finished run")
            continue
        order = list(dict.fromkeys(label(r) for r in group))
        palette = dict(zip(order, sns.color_palette(n_colors=len(order))))
        sns.lineplot(data=train, x="step", y="loss", hue="run", hue_order=order, palette=palette, ax=ax)
        if not val.empty:
            sns.scatterplot(data=val, x="step", y="loss", hue="run", hue_order=order, palette=palette, marker="D",
                            s=70, ax=ax, legend=False)
        ax.set(title=title, xlabel="optimizer step", ylabel="loss (response tokens)")
    fig.suptitle(f"Lines: training loss; diamonds: test loss ({_devices(done)})")
    fig.tight_layout()
    return fig


def generations_table(records: Sequence[dict]) -> pd.DataFrame:
    """The same test prompts answered greedily by each configuration after training, side by side."""
    rows = [{"prompt": g["prompt"], "reference": g["reference"], "config": r["run"]["config"], "generated": g["generated"]}
            for r in sweep_order(records) if r.get("status") == "ok" for g in r.get("info", {}).get("generations", [])]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df["config"]))
    table = df.pivot_table(index=["prompt", "reference"], columns="config", values="generated", aggfunc="first", sort=False)
    return table[order]


# ---- notebooks 02-04: loaders, precision, checkpointing (one row per results record)

PRECISION_NAMES = {"32": "fp32", "tf32": "TF32", "16-mixed": "fp16 + loss scaling", "bf16-mixed": "bf16", "bf16-true": "bf16 (pure)"}


def _ms(summary: dict, *keys: str) -> float | None:
    values = [summary.get(k) for k in keys]
    return None if any(v is None for v in values) else 1e3 * sum(values)


def _model_of(record: dict) -> str:
    return {"cifar_resnext": "ResNeXt / CIFAR-10", "bert_squad": "BERT-QA / SQuAD"}.get(record["params"]["task"], record["params"]["task"])


def loader_table(records: Sequence[dict]) -> pd.DataFrame:
    """Notebook 02: per loader configuration, data wait and compute per step, epoch times, GPU utilisation."""
    rows = []
    for r in records:
        d, s, epochs = r["params"]["data"], r.get("summary", {}), r.get("curves", {}).get("epoch_time_s", [])
        rows.append({"config": r["run"]["config"], "status": r["status"], "device": device_label(r.get("env", {})),
                     "loader": "data set on the GPU" if d["on_gpu"] else f"{d['num_workers']} worker(s)",
                     "pin_memory": d["pin_memory"], "persistent": d["persistent_workers"],
                     "data wait / step (ms)": _ms(s, "data_s"), "compute / step (ms)": _ms(s, "fwd_bwd_s", "optimizer_s"),
                     "first epoch (s)": epochs[0] if epochs else None, "last epoch (s)": epochs[-1] if epochs else None,
                     "GPU util (%)": s.get("gpu_util_mean_pct"), "samples/s": s.get("samples_per_s"),
                     "note": r.get("error") or ""})
    return pd.DataFrame(rows).set_index("config") if rows else pd.DataFrame()


def workers_figure(records: Sequence[dict]) -> plt.Figure | None:
    """Epoch time (last epoch: workers already started) and mean GPU utilisation against the number of
    loader workers; the GPU-resident loader, which has no workers, is a dashed line."""
    ok = [r for r in records if r["status"] == "ok" and r.get("curves", {}).get("epoch_time_s")]
    workers = sorted((r for r in ok if not r["params"]["data"]["on_gpu"]), key=lambda r: r["params"]["data"]["num_workers"])
    if not workers:
        print("No worker runs finished yet: nothing to plot.")
        return None
    fig, ax = plt.subplots(figsize=(8, 4.5))
    x = [r["params"]["data"]["num_workers"] for r in workers]
    ax.plot(x, [r["curves"]["epoch_time_s"][-1] for r in workers], "o-", color="C0", label="epoch time")
    for r in ok:
        if r["params"]["data"]["on_gpu"]:
            ax.axhline(r["curves"]["epoch_time_s"][-1], color="C2", ls="--", label="data set on the GPU (no workers)")
    ax.set(xlabel="data-loader workers", ylabel="epoch time (s)", xticks=x)
    util = [r["summary"].get("gpu_util_mean_pct") for r in workers]
    if all(u is not None for u in util):
        ax2 = ax.twinx()
        ax2.plot(x, util, "s:", color="C3", label="GPU utilisation")
        ax2.set(ylabel="mean GPU utilisation (%)", ylim=(0, 105))
        ax2.grid(False)
        ax2.legend(loc="upper center")
    else:
        ax.text(0.02, 0.97, "no GPU utilisation: these runs had no GPU to sample", transform=ax.transAxes, va="top")
    ax.legend(loc="upper right")
    ax.set_title(f"Epoch time against loader workers ({_devices(ok)})")
    fig.tight_layout()
    return fig


def precision_table(records: Sequence[dict]) -> pd.DataFrame:
    """Notebook 03: step time, speed-up over the same model's fp32 run, peak memory, final loss and score."""
    rows = []
    for r in records:
        p, s = r["params"], r.get("summary", {})
        rows.append({"model": _model_of(r), "config": r["run"]["config"], "status": r["status"],
                     "device": device_label(r.get("env", {})),
                     "precision": PRECISION_NAMES[p["train"]["precision"]] + (", channels-last" if p["model"]["channels_last"] else ""),
                     "step (ms)": _ms(s, "step_s"), "compute / step (ms)": _ms(s, "fwd_bwd_s", "optimizer_s"),
                     "samples/s": s.get("samples_per_s"), "peak allocated (GB)": s.get("peak_allocated_gb"),
                     "final train loss": s.get("final_train_loss"), "final val loss": s.get("final_val_loss"),
                     "accuracy": s.get("accuracy"), "F1": s.get("f1"), "note": r.get("error") or "",
                     "_fp32": p["train"]["precision"] == "32" and not p["model"]["channels_last"]})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    base = df[df["_fp32"] & df["samples/s"].notna()].groupby("model")["samples/s"].first()
    df.insert(df.columns.get_loc("samples/s") + 1, "speed-up over fp32", df["samples/s"] / df["model"].map(base))
    return df.drop(columns="_fp32").dropna(axis=1, how="all").set_index(["model", "config"])


def checkpointing_table(records: Sequence[dict]) -> pd.DataFrame:
    """Notebook 04: memory and step time per checkpointing mode, overhead over the same model without it,
    and the largest batch under the memory budget with the epoch time there."""
    rows = []
    for r in records:
        m, s = r["params"]["model"], r.get("summary", {})
        mode = {"off": "off", "full": "every block"}.get(m["checkpointing"], f"one block in {m['checkpoint_every']}")
        rows.append({"model": _model_of(r), "config": r["run"]["config"], "status": r["status"],
                     "device": device_label(r.get("env", {})), "checkpointing": mode,
                     "precision": PRECISION_NAMES[r["params"]["train"]["precision"]],
                     "batch": r["params"]["train"]["batch_size"],
                     "peak allocated (GB)": s.get("peak_allocated_gb"),
                     "activations after forward (GB)": s.get("activations_measured_gb"),
                     "activations saved for backward (GB, CPU)": s.get("saved_activations_gb"),
                     "step (ms)": _ms(s, "step_s"), "compute / step (ms)": _ms(s, "fwd_bwd_s", "optimizer_s"),
                     "memory budget (GB)": s.get("memory_budget_gb"), "largest batch in budget": s.get("max_batch"),
                     "epoch at that batch (s)": s.get("epoch_time_at_max_batch_s"), "note": r.get("error") or "",
                     "_off": m["checkpointing"] == "off"})
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    base = df[df["_off"] & df["compute / step (ms)"].notna()].groupby("model")["compute / step (ms)"].first()
    df.insert(df.columns.get_loc("compute / step (ms)") + 1, "overhead (%)",
              100 * (df["compute / step (ms)"] / df["model"].map(base) - 1))
    return df.drop(columns="_off").dropna(axis=1, how="all").set_index(["model", "config"])


def batch_search_figure(records: Sequence[dict]) -> plt.Figure | None:
    """Every attempt of the batch-size search: memory against batch, failed attempts marked, budget dashed."""
    rows = [{"config": r["run"]["config"], **a} for r in records for a in r.get("curves", {}).get("batch_search", [])]
    if not rows:
        print("No batch-size search in these records yet.")
        return None
    df = pd.DataFrame(rows)
    if "memory_gb" not in df:
        df["memory_gb"] = float("nan")
    top = df["memory_gb"].max() if df["memory_gb"].notna().any() else 1.0
    oom = df["memory_gb"].isna()  # an out-of-memory attempt has no peak: drawn at the top
    df.loc[oom, "memory_gb"] = 1.05 * top
    fig, ax = plt.subplots(figsize=(8, 4.5))
    sns.scatterplot(data=df, x="batch", y="memory_gb", hue="config", style="status", s=80, ax=ax,
                    markers={"ok": "o", "over_budget": "X", "oom": "X"})
    for _, a in df[oom].iterrows():
        ax.annotate("out of memory", (a["batch"], a["memory_gb"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for r in records:
        budget = r.get("summary", {}).get("memory_budget_gb")
        if budget:
            ax.axhline(budget, color="grey", ls="--")
            ax.annotate(f"budget {budget:.3g} GB", (ax.get_xlim()[0], budget), textcoords="offset points", xytext=(4, 4), fontsize=8)
            break
    kinds = {r.get("summary", {}).get("search_memory") for r in records} - {None}
    ax.set(xlabel="batch size", ylabel="memory (GB)",
           title=f"Batch-size search, every attempt ({_devices(records)})\nmemory: {', '.join(sorted(kinds))}")
    sns.move_legend(ax, "upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    return fig


def loader_comparison(records: Sequence[dict]) -> pd.DataFrame:
    """Notebook 02: the fastest worker configuration (by last epoch) beside the GPU-resident loader."""
    table = loader_table(records)
    if table.empty:
        return table
    workers = table[(table["status"] == "ok") & (table["loader"] != "data set on the GPU")]
    rows = table[table["loader"] == "data set on the GPU"]
    if not workers.empty:
        rows = pd.concat([workers.loc[[workers["last epoch (s)"].idxmin()]], rows])
    best = rows["last epoch (s)"].min()
    columns = ["status", "device", "loader", "data wait / step (ms)", "compute / step (ms)", "last epoch (s)", "GPU util (%)", "note"]
    return rows[columns].assign(**{"last epoch vs fastest": rows["last epoch (s)"] / best})


# ---- notebook 07: T5 question answering — workers, precision, data parallel and model parallel ----------


def gpus_of(record: dict) -> int:
    """GPUs a run uses: data-parallel processes x the devices of a layer-split model."""
    p = record["params"]
    return p["train"]["devices"] * p["train"]["num_nodes"] * p["model"]["split_devices"]


def parallelism(record: dict) -> str:
    p = record["params"]
    if p["model"]["split_devices"] > 1:
        return f"layer split over {p['model']['split_devices']} GPUs"
    if p["train"]["strategy"] in ("dp", "ddp", "fsdp", "deepspeed"):
        return f"{p['train']['strategy'].upper()} x {p['train']['devices'] * p['train']['num_nodes']}"
    return "one device"


def t5_table(records: Sequence[dict]) -> pd.DataFrame:
    """One row per configuration: how it ran, what it cost (time, memory per GPU, GPU load) and what it reached."""
    rows = []
    for r in records:
        p, s = r["params"], r.get("summary", {})
        per_gpu = [s[k] for k in sorted(s) if k.startswith("peak_allocated_gb_gpu")]
        rows.append({"config": r["run"]["config"], "status": r["status"], "device": device_label(r.get("env", {})),
                     "data set": p["data"]["dataset"], "model": f"t5-{p['model']['preset']}",
                     "parallelism": parallelism(r), "precision": PRECISION_NAMES[p["train"]["precision"]],
                     "attention": p["model"]["attn_implementation"] + (f", compiled ({p['model'].get('compile_mode', 'default')})" if p["model"]["compile"] else ""),
                     "workers": p["data"]["num_workers"], "training time (s)": s.get("train_time_s"),
                     "samples/s": s.get("samples_per_s"), "step (ms)": _ms(s, "step_s"),
                     "peak allocated (GB)": s.get("peak_allocated_gb"),
                     "per GPU (GB)": " / ".join(f"{v:.2f}" for v in per_gpu) or None,
                     "GPU util (%)": s.get("gpu_util_mean_pct"), "max temp (°C)": s.get("gpu_temp_max_c"),
                     "SM clock (MHz)": s.get("gpu_sm_clock_mean_mhz"),
                     "final val loss": s.get("final_val_loss"), "accuracy (%)": s.get("accuracy"), "F1": s.get("f1"),
                     "max |activation|": s.get("act_absmax"), "fp16 overflows": s.get("act_over_fp16"),
                     "note": r.get("error") or ""})
    return pd.DataFrame(rows).set_index("config").dropna(axis=1, how="all") if rows else pd.DataFrame()


def _by_dataset(records: Sequence[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["params"]["data"].get("dataset") or r["params"]["task"], []).append(r)
    return groups


def val_loss_curves(records: Sequence[dict]) -> plt.Figure | None:
    """Validation loss after each epoch, one line per configuration, one panel per data set."""
    groups = {k: [r for r in v if r.get("curves", {}).get("val_loss")] for k, v in _by_dataset(records).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        print("No validation loss: no run of these finished an epoch.")
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    for ax, (name, group) in zip(axes[0], groups.items()):
        df = pd.DataFrame([{"config": r["run"]["config"], "epoch": e, "val loss": v}
                           for r in group for _, e, v in r["curves"]["val_loss"]])
        sns.lineplot(data=df, x="epoch", y="val loss", hue="config", marker="o", ax=ax)
        ax.set(title=name, xticks=sorted(df["epoch"].unique()))
        ax.legend(fontsize=7)
    fig.suptitle(f"Validation loss ({_devices(records)})")
    fig.tight_layout()
    return fig


def metric_bars(records: Sequence[dict], metrics: dict[str, str]) -> plt.Figure | None:
    """One panel per measured metric (summary key -> label), a bar per finished configuration."""
    df = pd.DataFrame([{"config": r["run"]["config"], "device": device_label(r.get("env", {})), **r["summary"]}
                       for r in records if r.get("status") == "ok"])
    present = {k: v for k, v in metrics.items() if k in df and df[k].notna().any()}
    for key in set(metrics) - set(present):
        print(f"No {metrics[key]}: " + ("these runs had no GPU to sample (CPU smoke run)." if key.startswith("gpu_")
                                         else "not measured in these runs."))
    if not present:
        return None
    fig, axes = plt.subplots(1, len(present), figsize=(5.5 * len(present), 0.35 * len(df) + 2), squeeze=False)
    for ax, (key, label) in zip(axes[0], present.items()):
        bars(df.dropna(subset=[key]), x=key, y="config", title=label, ax=ax)
        ax.set(xlabel=label, ylabel="")
    for ax in axes[0][1:]:
        ax.set_yticklabels([])
    fig.tight_layout()
    return fig


def scaling_table(records: Sequence[dict]) -> pd.DataFrame:
    """Scaling efficiency = samples/s on N GPUs / (N x samples/s of the fastest one-GPU run of the same data
    set, model and precision). 100%: N GPUs do N times the work; a layer-split model runs its GPUs one
    after the other, so it is measured by what it makes possible (memory per GPU), not by this."""
    ok = [r for r in records if r.get("status") == "ok" and r["summary"].get("samples_per_s")]
    key = lambda r: (r["params"]["data"].get("dataset"), r["params"]["model"]["preset"], r["params"]["train"]["precision"])  # noqa: E731
    best: dict[tuple, dict] = {}
    for r in ok:
        if gpus_of(r) == 1 and r["summary"]["samples_per_s"] > best.get(key(r), {}).get("summary", {}).get("samples_per_s", 0):
            best[key(r)] = r
    rows = []
    for r in ok:
        n, base = gpus_of(r), best.get(key(r))
        if n == 1:
            continue
        speedup = r["summary"]["samples_per_s"] / base["summary"]["samples_per_s"] if base else None
        rows.append({"config": r["run"]["config"], "device": device_label(r.get("env", {})), "parallelism": parallelism(r),
                     "devices": n, "samples/s": r["summary"]["samples_per_s"],
                     "one-GPU baseline": base["run"]["config"] if base else "none finished",
                     "baseline samples/s": base["summary"]["samples_per_s"] if base else None,
                     "speed-up": speedup, "scaling efficiency (%)": 100 * speedup / n if speedup else None,
                     "peak allocated (GB)": r["summary"].get("peak_allocated_gb"),
                     "baseline peak (GB)": base["summary"].get("peak_allocated_gb") if base else None})
    return pd.DataFrame(rows).set_index("config").dropna(axis=1, how="all") if rows else pd.DataFrame()


def scaling_bars(table: pd.DataFrame) -> plt.Figure | None:
    """Scaling efficiency per multi-GPU configuration, against the 100% of perfect scaling."""
    if table.empty or "scaling efficiency (%)" not in table:
        print("No scaling efficiency: no multi-GPU run finished beside a one-GPU run of the same model and precision.")
        return None
    df = table.dropna(subset=["scaling efficiency (%)"]).reset_index()
    ax = bars(df, x="scaling efficiency (%)", y="config", title="Scaling efficiency, N GPUs against one")
    ax.axvline(100, color="black", ls="--", lw=1)
    ax.set(ylabel="")
    return ax.figure


def pareto(records: Sequence[dict], x: str = "train_time_s", y: str = "accuracy") -> plt.Figure | None:
    """Accuracy against training time, a point per finished configuration and a panel per data set; the line
    joins the configurations no other beats on both (faster and at least as accurate)."""
    groups = {k: [r for r in v if r.get("status") == "ok" and r["summary"].get(x) is not None
                  and r["summary"].get(y) is not None] for k, v in _by_dataset(records).items()}
    groups = {k: v for k, v in groups.items() if v}
    if not groups:
        print(f"No time-accuracy plot: no finished run has both {x} and {y}.")
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4.5), squeeze=False)
    for ax, (name, group) in zip(axes[0], groups.items()):
        df = pd.DataFrame([{"config": r["run"]["config"], x: r["summary"][x], y: r["summary"][y]} for r in group])
        df = df.sort_values([x, y], ascending=[True, False])
        front = df[df[y] > df[y].cummax().shift(fill_value=-float("inf"))]
        ax.plot(front[x], front[y], "-", color="grey", zorder=1, label="no configuration is both faster and better")
        sns.scatterplot(data=df, x=x, y=y, hue="config", s=80, ax=ax, zorder=2)
        ax.set(title=name, xlabel="training time (s)" if x == "train_time_s" else x, ylabel=f"{y} (%)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Time against accuracy ({_devices(records)})")
    fig.tight_layout()
    return fig


def precision_speedups(records: Sequence[dict], baseline: str = "tf32") -> pd.DataFrame:
    """Step time of each one-GPU run against the same data set and model in ``baseline`` precision."""
    rows = [{"config": r["run"]["config"], "status": r["status"], "device": device_label(r.get("env", {})),
             "model": f"t5-{r['params']['model']['preset']}", "data set": r["params"]["data"].get("dataset"),
             "precision": r["params"]["train"]["precision"],
             "attention": r["params"]["model"]["attn_implementation"] + (f", compiled ({r['params']['model'].get('compile_mode', 'default')})" if r["params"]["model"]["compile"] else ""),
             "step (ms)": _ms(r.get("summary", {}), "step_s"),
             "forward+backward (ms)": _ms(r.get("summary", {}), "fwd_bwd_s"),
             "MFU": r.get("summary", {}).get("mfu"), "note": r.get("error") or ""}
            for r in records if gpus_of(r) == 1]
    if not rows:
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    base = df[(df["precision"] == baseline) & df["step (ms)"].notna()].groupby(["data set", "model"])["step (ms)"].min()
    df[f"speed-up over {baseline}"] = [base.get((d, m)) / s if s and base.get((d, m)) else None
                                       for d, m, s in zip(df["data set"], df["model"], df["step (ms)"])]
    df["precision"] = df["precision"].map(PRECISION_NAMES)
    return df.set_index("config").dropna(axis=1, how="all")


# ---- notebook 05: parallel strategies ---------------------------------------------------------------------

STRATEGY_ORDER = ("auto", "dp", "ddp", "fsdp", "deepspeed")
STRATEGY_COLUMNS = {
    "strategy": "strategy", "n_devices": "devices", "global_batch": "global batch", "train_time_s": "training time (s)",
    "samples_per_s": "samples/s", "speedup": "speed-up", "scaling_efficiency": "scaling efficiency",
    "peak_allocated_gb": "peak allocated per GPU, max (GB)", "step_s": "step (s)", "compute_s": "compute per step (s)",
    "comm_s": "communication per step (s)", "final_train_loss": "final train loss", "final_val_loss": "final val loss",
    "exact": "EM", "f1": "F1", "error": "note",
}


def strategy_rows(df: pd.DataFrame) -> pd.DataFrame:
    """load()'s rows of notebook 05 with scaling efficiency, by device count, then strategy."""
    from labkit.results import scaling_efficiency

    df = scaling_efficiency(df)
    if df.empty:
        return df
    rank = df["strategy"].map({s: i for i, s in enumerate(STRATEGY_ORDER)})
    return df.assign(_rank=rank).sort_values(["n_devices", "_rank", "config"]).drop(columns="_rank")


def strategy_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: time, throughput, scaling, memory, compute vs communication, quality."""
    df = strategy_rows(df)
    if df.empty:
        return df
    columns = ["config", "status", "device"] + [c for c in STRATEGY_COLUMNS if c in df.columns]
    return df[columns].rename(columns=STRATEGY_COLUMNS).set_index("config").dropna(axis=1, how="all")


def strategy_times(df: pd.DataFrame) -> plt.Axes | None:
    """Training time of each finished configuration (the same data for each, so times compare)."""
    done = strategy_rows(df)
    done = done[done["status"] == "ok"] if not done.empty else done
    if done.empty:
        print("No training times: no configuration of this notebook has finished.")
        return None
    ax = bars(done, "config", "train_time_s", "Training time per strategy (s)", ax=_wide())
    ax.set(xlabel="", ylabel="training time (s)")
    return ax


def scaling_plot(df: pd.DataFrame) -> plt.Axes | None:
    """Scaling efficiency of each finished configuration; 1.0 (dashed) is perfect scaling."""
    rows = strategy_rows(df)
    rows = rows[rows["scaling_efficiency"].notna()] if not rows.empty else rows
    if rows.empty:
        print("No scaling efficiency: it needs a finished one-device run ('single') and others beside it.")
        return None
    rows = rows.assign(label=[f"{c}\n({n:g} dev.)" for c, n in zip(rows["config"], rows["n_devices"])])
    ax = bars(rows, "label", "scaling_efficiency", "Scaling efficiency = samples/s on N / (N x samples/s on 1)", ax=_wide())
    ax.axhline(1.0, ls="--", color="grey")
    ax.set(xlabel="", ylabel="scaling efficiency")
    return ax


def memory_per_gpu(df: pd.DataFrame) -> plt.Axes | None:
    """Peak allocated memory of every GPU of each finished run (one bar per GPU)."""
    rows = []
    for _, r in strategy_rows(df).iterrows() if not df.empty else []:
        if r["status"] != "ok" or pd.isna(r.get("peak_allocated_gb")):
            continue
        per_gpu = {k: v for k, v in r.items() if str(k).startswith("peak_allocated_gb_gpu") and pd.notna(v)}
        for key, gb in (per_gpu or {"peak_allocated_gb_gpu0": r["peak_allocated_gb"]}).items():
            rows.append({"config": r["config"], "GPU": key.removeprefix("peak_allocated_gb_gpu"), "GB": gb, "device": r["device"]})
    if not rows:
        print("No GPU memory: these runs ran on a CPU, where there is no GPU memory to measure.")
        return None
    return bars(pd.DataFrame(rows), "config", "GB", "Peak allocated memory per GPU (GB)", hue="GPU", ax=_wide())


def comm_split(df: pd.DataFrame) -> plt.Axes | None:
    """Per profiled step: time in computation, time in communication and the whole step (wall clock)."""
    rows = strategy_rows(df)
    if rows.empty or "comm_s" not in rows:
        print("No compute/communication split: no finished run was profiled (measure.profile_steps).")
        return None
    rows = rows[(rows["status"] == "ok") & rows["comm_s"].notna()]
    parts = {"compute_s": "compute", "comm_s": "communication", "profiled_step_s": "whole step (wall clock)"}
    long = rows.melt(id_vars=["config", "device"], value_vars=list(parts), var_name="part", value_name="ms")
    long = long.assign(part=long["part"].map(parts), ms=1e3 * long["ms"])
    ax = bars(long, "config", "ms", "Per profiled step (ms)", hue="part", ax=_wide())
    ax.set(xlabel="", ylabel="ms per step")
    return ax


def _wide() -> plt.Axes:
    return plt.subplots(figsize=(10, 4.5))[1]
