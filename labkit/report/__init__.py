"""The course report: notebook 08's comparisons (``course``), the HTML pages (``pages``) and the students'
hand-in and grading path (``grading``).

    python -m labkit.report --profile smoke                  reports/smoke/index.html      (make report)
    python -m labkit.report --profile smoke --grade          reports/smoke/grading/...     (make grade)
    python -m labkit.report.grading NAME --profile smoke    runs/smoke/students/NAME.zip  (make hand-in)
"""
from labkit.report.course import (METRICS, NOT_FINISHED, collect, device, environments, machine, not_finished, on_gpu,
                                  overview, pareto, per_configuration, scaling, scaling_figure, show, spread,
                                  throughput_memory)
from labkit.report.pages import build, environment_line
from labkit.results import name, task_of

__all__ = ["METRICS", "NOT_FINISHED", "build", "collect", "device", "environment_line", "environments", "machine",
           "name", "not_finished", "on_gpu", "overview", "pareto", "per_configuration", "scaling", "scaling_figure", "show",
           "spread", "task_of", "throughput_memory"]
