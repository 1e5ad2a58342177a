"""labkit: the thin package behind the course's notebooks.

    record = labkit.run("params/01_baseline_bert_squad/baseline.yaml", profile="smoke")
    table = labkit.results.load(profile="smoke")
"""
from typing import Any

from labkit import results

__all__ = ["run", "results"]


def __getattr__(name: str) -> Any:
    # labkit.run brings torch and the model libraries, ~6 s of CPU: loaded when first used, so that the command-line
    # tools (run-all, make slurm, each SLURM job before its notebook starts) do not pay for it
    if name == "run":
        from labkit.launch.runner import run

        return run
    raise AttributeError(f"module 'labkit' has no attribute {name!r}")
