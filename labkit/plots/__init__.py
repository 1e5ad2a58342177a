"""Tables and seaborn figures the notebooks show, one module per lab; every figure and table names the
device it ran on. Notebooks use them as ``from labkit import plots; plots.<name>(records)``."""
from labkit.plots.checkpointing import batch_search_figure, checkpointing_table, largest_batch_curves, largest_batch_table
from labkit.plots.common import (PRECISION_NAMES, SUMMARY_COLUMNS, banner, bars, gpu_timeline, loss_curves,
                                 run_time_split, show_banner, step_split, summary_table)
from labkit.plots.finetune import (dialogue_quality_table, finetune_label, generations_table, memory_breakdown, memory_table,
                                   sweep_loss_curves, sweep_order, sweep_table, train_test_curves)
from labkit.plots.loaders import loader_comparison, loader_table, workers_figure
from labkit.plots.precision import precision_table
from labkit.plots.simcls import candidates_table, rouge_figure, rouge_table, setup_of, simcls_table
from labkit.plots.strategies import comm_split, memory_per_gpu, scaling_plot, strategy_rows, strategy_table, strategy_times
from labkit.plots.t5 import (gpus_of, metric_bars, pareto, parallelism, precision_speedups, scaling_bars, scaling_curve,
                             scaling_table, t5_table, val_loss_curves)
from labkit.plots.tables import install as _install_tables

_install_tables()  # every DataFrame a notebook shows reads like the kit's tables

__all__ = [
    "PRECISION_NAMES", "SUMMARY_COLUMNS", "banner", "bars", "batch_search_figure", "checkpointing_table", "comm_split",
    "finetune_label", "generations_table", "gpu_timeline", "gpus_of", "loader_comparison", "loader_table", "loss_curves",
    "memory_breakdown", "memory_per_gpu", "memory_table", "metric_bars", "pareto", "parallelism", "precision_speedups",
    "precision_table", "run_time_split", "scaling_bars", "scaling_plot", "scaling_table", "show_banner", "step_split",
    "strategy_rows",
    "strategy_table", "strategy_times", "summary_table", "sweep_loss_curves", "sweep_order", "sweep_table", "t5_table",
    "val_loss_curves", "workers_figure",
    "candidates_table", "rouge_figure", "rouge_table", "setup_of", "simcls_table",
    "dialogue_quality_table", "largest_batch_curves", "largest_batch_table", "scaling_curve", "train_test_curves",
]
