"""The control at the top of each notebook: pick a configuration and a profile from dropdowns in JupyterLab.

The parameters cell stays the source of truth (papermill replaces it in ``make run-all``); a choice here
sets the notebook's ``config`` and ``profile`` for the cells below, and shows the two lines that make it
the notebook's default. Headless (LABKIT_HEADLESS, set by run-all) or outside a kernel it prints one line.
"""
from __future__ import annotations

import html
import os
from pathlib import Path

import yaml

from labkit import results
from labkit.config import PARAMS_DIR


def _has_frontend() -> bool:
    """A Jupyter kernel that a browser may be attached to (not plain Python, not run-all's papermill)."""
    if os.environ.get("LABKIT_HEADLESS"):
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and "IPKernelApp" in shell.config


def _describe(params_file: str, profile: str, runs_dir: str | Path | None) -> str:
    path = PARAMS_DIR.parent / params_file
    description = (yaml.safe_load(path.read_text()) or {}).get("description", "") if path.is_file() else ""
    record = results.read(results.record_dir(profile, path.parent.name, path.stem, runs_dir or results.RUNS_DIR))
    last = (f"last run in profile {profile}: {record['status']} on {results.device_label(record.get('env', {}))}, "
            f"{record['run'].get('finished') or record['run'].get('started')}") if record else f"not run yet in profile {profile}"
    return f"{html.escape(description)} <i>({html.escape(last)})</i>"


def chooser(notebook: str, namespace: dict):
    """Dropdowns for ``notebook``'s params files and the profiles, set from and writing to ``namespace``'s
    ``config`` and ``profile`` (pass ``globals()``). Returns the control, or None headless."""
    config, profile = namespace.get("config"), namespace.get("profile")
    if not _has_frontend():
        print(f"configuration {config or '(none: this notebook reads other runs)'}, profile {profile} "
              "(from the parameters cell; in JupyterLab a chooser shows here)")
        return None
    import ipywidgets as w

    files = [p.relative_to(PARAMS_DIR.parent).as_posix() for p in sorted((PARAMS_DIR / notebook).glob("*.yaml"))]
    profiles = sorted(p.stem for p in (PARAMS_DIR / "profiles").glob("*.yaml"))
    wide = {"style": {"description_width": "initial"}}
    pick_profile = w.Dropdown(options=profiles, value=profile if profile in profiles else None, description="profile", **wide)
    pick_config = w.Dropdown(options=[(Path(f).stem, f) for f in files], value=config if config in files else None,
                             description="configuration", layout=w.Layout(display="flex" if files else "none"), **wide)
    about, code = w.HTML(), w.HTML()

    def show() -> None:
        lines = [f'profile = "{pick_profile.value}"']
        if files and pick_config.value:
            lines.insert(0, f'config = "{pick_config.value}"')
            about.value = _describe(pick_config.value, pick_profile.value, namespace.get("runs_dir"))
        code.value = ("The cells below use this choice: run them (<b>Run ▸ Run Selected Cell and All Below</b>). "
                      f"To make it this notebook's default, put in the parameters cell: <code>{html.escape('; '.join(lines))}</code>")

    def choose(change) -> None:  # only a choice writes: the parameters cell's values stand until then
        namespace["config" if change["owner"] is pick_config else "profile"] = change["new"]
        show()

    pick_config.observe(choose, names="value")
    pick_profile.observe(choose, names="value")
    show()
    return w.VBox([w.HBox([pick_config, pick_profile]), about, code])
