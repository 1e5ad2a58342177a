"""Notebook 06: memory breakdown and the LoRA rank x optimizer sweep."""
from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from labkit.plots.common import devices_in, legend_outside, memory_unit
from labkit.results import device_label, on_gpu

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
    unit, scale = memory_unit(values)
    rows = []
    for r in done:
        s, gpu = r["summary"], on_gpu(r)
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
    unit, scale = memory_unit(df.sum(axis=1).tolist() + [p for _, p in peaks])
    ax = (df * scale).plot.barh(stacked=True, figsize=(9, 0.45 * len(df) + 2))
    for i, (row, peak) in enumerate(peaks):
        if peak is not None:
            ax.plot(peak * scale, row, marker="|", color="black", markersize=18, mew=2,
                    label="peak allocated (whole run)" if i == 0 else None)
    ax.invert_yaxis()
    note = "" if peaks else "\nCPU run: computed only; activations need a GPU measurement"
    ax.set(xlabel=unit, ylabel="", title=f"Where the memory goes ({devices_in(done)}){note}")
    legend_outside(ax, fontsize=8)
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
        legend_outside(ax, fontsize=8)
    fig.suptitle(f"Lines: training loss; diamonds: test loss ({devices_in(done)})")
    fig.tight_layout()
    return fig


def generations_table(records: Sequence[dict]) -> pd.DataFrame:
    """The same test prompts answered greedily by each configuration after training, side by side."""
    rows = [{"prompt": g["prompt"], "reference": g["reference"], "config": r["run"]["config"], "generated": g["generated"]}
            for r in sweep_order(records) if r.get("status") == "ok" for g in r.get("info", {}).get("generations", [])]
    if not rows:
        if any(r.get("params", {}).get("data", {}).get("sft_format") == "dialogue_windows" for r in records):
            print("No greedy answers: dialogue-window runs (the original lab's data) have no prompt/response pairs to "
                  "answer; their sampled answers are scored in the dialogue-quality table.")
        return pd.DataFrame()
    df = pd.DataFrame(rows)
    order = list(dict.fromkeys(df["config"]))
    table = df.pivot_table(index=["prompt", "reference"], columns="config", values="generated", aggfunc="first", sort=False)
    return table[order]


def _quality_reason(record: dict) -> str:
    """Why a record has no dialogue quality."""
    if record.get("status") != "ok":
        return record.get("error") or f"status {record.get('status')}"
    if record.get("params", {}).get("measure", {}).get("reward_model", "off") == "off":
        return "not measured: measure.reward_model is off"
    return "not measured in this record (run it again to score it)"


def dialogue_quality_table(records: Sequence[dict]) -> pd.DataFrame:
    """Notebook 06's outcome as the original lab reported it: per configuration (full fine-tuning, then LoRA by
    rank), the share of test prompts whose fine-tuned answer the reward model scores at least as high as the untuned
    model's, beside both mean scores. A configuration without it shows '—' and says why."""
    rows = []
    for r in sweep_order(records):
        s, measure = r.get("summary", {}), r.get("params", {}).get("measure", {})
        measured = s.get("dialogue_quality") is not None
        note = "" if measured else _quality_reason(r)
        if measured and measure.get("reward_model") == "random":
            note = "random reward model: the path runs, its scores mean nothing"
        rows.append({"config": r["run"]["config"], "status": r.get("status"), "device": device_label(r.get("env", {})),
                     "fine-tuning": finetune_label(r), "optimizer": r["params"]["train"]["optimizer"],
                     "prompts scored": s.get("reward_prompts"), "mean reward, untuned": s.get("reward_untuned_mean"),
                     "mean reward, fine-tuned": s.get("reward_tuned_mean"),
                     "dialogue quality (fine-tuned >= untuned)": s.get("dialogue_quality"), "note": note})
    return pd.DataFrame(rows).set_index("config") if rows else pd.DataFrame()


def train_test_curves(records: Sequence[dict]) -> plt.Figure | None:
    """The training loss (left) and the test loss (right) against the optimizer step, one line per configuration,
    as the original lab drew train.jpg and test.jpg; with train.eval_every_steps the test curve has a point every
    that many steps, otherwise one per epoch."""
    done = [r for r in sweep_order(records) if r.get("status") == "ok"]
    label = {r["run"]["config"]: f"{r['run']['config']} ({finetune_label(r)}, {r['params']['train']['optimizer']})" for r in done}
    frames = {curve: pd.DataFrame([{"run": label[r["run"]["config"]], "step": step, "loss": v}
                                   for r in done for step, _, v in r.get("curves", {}).get(curve) or []])
              for curve in ("train_loss", "val_loss")}
    if all(f.empty for f in frames.values()):
        print("No loss curves: no run of these finished.")
        return None
    order = list(label.values())
    palette = dict(zip(order, sns.color_palette(n_colors=len(order))))
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5), sharex=True)  # the same steps under both curves
    for ax, (curve, title) in zip(axes, (("train_loss", "training loss"), ("val_loss", "test loss"))):
        if frames[curve].empty:
            ax.set(title=f"{title}: none recorded")
            continue
        sns.lineplot(data=frames[curve], x="step", y="loss", hue="run", hue_order=order, palette=palette,
                     marker="o" if curve == "val_loss" else None, ax=ax, legend=ax is axes[-1])
        ax.set(title=title, xlabel="optimizer step", ylabel="loss")
    legend_outside(axes[-1], fontsize=8)
    fig.suptitle(f"Training and test loss ({devices_in(done)})")
    fig.tight_layout()
    return fig
