"""Notebook 09: SimCLS re-ranking under loader workers, precision and checkpointing."""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from labkit.plots.common import PRECISION_NAMES, devices_in, ms_of
from labkit.results import device_label

ROUGE = {"rouge1": "R-1", "rouge2": "R-2", "rougeL": "R-L"}
CHOICES = {"top_beam_": "generator's top beam", "": "re-ranked by the scorer", "oracle_": "best candidate (oracle)"}


def setup_of(record: dict) -> str:
    """What a SimCLS configuration varies, in words: workers, precision, checkpointing, batch."""
    p = record["params"]
    checkpointing = {"off": "no checkpointing", "full": "every layer checkpointed"}.get(
        p["model"]["checkpointing"], f"every {p['model']['checkpoint_every']}th layer checkpointed")
    return (f"{p['data']['num_workers']} worker(s) · {PRECISION_NAMES.get(p['train']['precision'], p['train']['precision'])}"
            f" · {checkpointing} · batch {p['train']['batch_size']}"
            + (f" x {p['train']['grad_accum']} accumulated" if p["train"]["grad_accum"] > 1 else ""))


def simcls_table(records: Sequence[dict]) -> pd.DataFrame:
    """Time and memory per setup: loader wait and compute per step, the last epoch's time, throughput, peak
    memory (a GPU figure; the CPU has no peak to read) and the scorer's final losses."""
    rows = []
    for r in records:
        s, epochs = r.get("summary", {}), r.get("curves", {}).get("epoch_time_s", [])
        rows.append({"config": r["run"]["config"], "setup": setup_of(r), "status": r["status"],
                     "device": device_label(r.get("env", {})),
                     "loader wait / step (ms)": ms_of(s, "data_s"), "compute / step (ms)": ms_of(s, "fwd_bwd_s", "optimizer_s"),
                     "step (ms)": ms_of(s, "step_s"), "last epoch (s)": epochs[-1] if epochs else None,
                     "documents/s": s.get("samples_per_s"), "peak allocated (GB)": s.get("peak_allocated_gb"),
                     "final train loss": s.get("final_train_loss"), "final val loss": s.get("final_val_loss"),
                     "note": r.get("error") or ""})
    return pd.DataFrame(rows).dropna(axis=1, how="all").set_index("config") if rows else pd.DataFrame()


def rouge_table(records: Sequence[dict]) -> pd.DataFrame:
    """ROUGE-1/2/L (F-measure x100) on the validation set of the generator's top beam, of the candidate the
    scorer ranks first and of the best candidate there was; 'picked best' is how often the scorer's choice has
    the best ROUGE (ties count)."""
    rows = []
    for r in records:
        s = r.get("summary", {})
        if r["status"] != "ok" or "rouge1" not in s:
            continue
        row = {("", "config"): r["run"]["config"], ("", "candidates"): r["params"]["simcls"]["num_candidates"]}
        for prefix, choice in CHOICES.items():
            row.update({(choice, label): s[prefix + key] for key, label in ROUGE.items()})
        row[("", "picked best (%)")] = s["picked_best"]
        rows.append(row)
    if not rows:
        print("No ROUGE yet: no SimCLS configuration has finished here.")
        return pd.DataFrame()
    table = pd.DataFrame(rows)
    table.columns = pd.MultiIndex.from_tuples(table.columns)  # a header over each choice's, R-L
    return table.set_index(("", "config")).rename_axis("config")


def rouge_figure(record: dict) -> plt.Figure | None:
    """ROUGE-1/2/L of one run: the generator's top beam, the re-ranked choice and the oracle side by side."""
    s = record.get("summary", {})
    if record["status"] != "ok" or "rouge1" not in s:
        print(f"No ROUGE: this run is {record['status']}.")
        return None
    frame = pd.DataFrame({choice: [s[prefix + key] for key in ROUGE] for prefix, choice in CHOICES.items()},
                         index=list(ROUGE.values()))
    ax = frame.plot.bar(rot=0, figsize=(7, 3.8))
    ax.set(ylabel="F-measure x100", title=f"ROUGE before and after re-ranking ({devices_in([record])})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.figure.tight_layout()
    return ax.figure


def candidates_table(record: dict, row: int = 0) -> pd.DataFrame:
    """One validation abstract's candidates as the scorer trains on them: best first by mean ROUGE against the
    reference, with the generator's top beam marked (read from the run's candidate cache)."""
    from labkit.tasks.simcls import order_by_rouge

    path = Path(record.get("info", {}).get("candidates_cache", ""))
    if record["status"] != "ok" or not path.is_file():
        print(f"No candidates to show: this run is {record['status']}" + ("" if record["status"] != "ok" else
                                                                          f" and its cache {path} is gone"))
        return pd.DataFrame()
    example = order_by_rouge(json.loads(path.read_text())["validation"][row])
    print(f"Reference: {example['title']}")
    return pd.DataFrame([{"rank by ROUGE": k + 1, "candidate": text, **{label: 100 * rouge[j] for j, label in enumerate(ROUGE.values())},
                          "generator's top beam": k == example["top_beam"]}
                         for k, (text, rouge) in enumerate(zip(example["candidates"], example["rouge"]))]).set_index("rank by ROUGE")
