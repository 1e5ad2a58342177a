"""Where a task's data comes from, the same way for every task: the Hugging Face Hub, and the rule that
holds a validation split out of a data set that has none."""
from __future__ import annotations

from typing import Any


def load_hub(name: str, config: str | None = None, split: str | None = None) -> Any:
    """``datasets.load_dataset(name, config, split=split)``; every way it can fail (offline, a gated or renamed
    data set, a wrong config) ends in one error that says what to do without the Hub."""
    try:
        import datasets

        return datasets.load_dataset(name, config, split=split)
    except Exception as err:  # each library error reads differently; all end the same way for the user
        what = f"hub data set {name!r}" + (f" ({config})" if config else "") + (f", split {split!r}," if split else "")
        raise RuntimeError(f"could not load {what} from the Hugging Face Hub ({type(err).__name__}: {err}). Without "
                           "the Hub, use data.source: local with data.path (a file in the original format), or "
                           "data.source: embedded") from err


def hold_out(rows: list[dict], key: str, size: int | None = None) -> tuple[list[dict], list[dict]]:
    """Training and validation rows of a data set that has no validation split. The last ``size`` distinct
    values of ``key`` (an article's title, a question; default a tenth of them, at least one) and every row
    that has them are validation, so nothing is in both splits. With a single value, both splits are every row."""
    groups = list(dict.fromkeys(r[key] for r in rows))
    if len(groups) < 2:
        return rows, rows
    n = size or max(1, len(groups) // 10)
    if n >= len(groups):
        raise ValueError(f"{len(groups)} distinct {key}s cannot spare {n} for validation: lower data.val_examples")
    held = set(groups[-n:])
    return [r for r in rows if r[key] not in held], [r for r in rows if r[key] in held]
