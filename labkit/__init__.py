"""labkit: the thin package behind the course's notebooks.

    record = labkit.run("params/01_baseline_bert_squad/baseline.yaml", profile="smoke")
    table = labkit.results.load(profile="smoke")
"""
from labkit import results
from labkit.launch.runner import run

__all__ = ["run", "results"]
