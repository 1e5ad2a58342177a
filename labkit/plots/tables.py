"""How every table of the labs reads on a page: about three significant figures, '—' where there is no
value, precisions by name, the device named once, reasons in full, and wide tables that scroll.

The table functions return plain DataFrames (numbers stay numbers for code and tests); this module only
decides how one is displayed. ``install()`` makes it the HTML form of every DataFrame a notebook shows, so a
table added in any lab reads the same without a call of its own.
"""
from __future__ import annotations

import html
import math
import numbers

import pandas as pd

from labkit.precision import PRECISIONS

MISSING = "—"
# Cells longer than this wrap (reasons, notes); shorter ones stay on one line (a device name, a number).
LONG_TEXT = 40
STYLE = """<style>
.labkit-table{overflow-x:auto;max-width:100%;margin:4px 0}
.labkit-table table{border-collapse:collapse;font-size:12px;font-variant-numeric:tabular-nums}
.labkit-table th,.labkit-table td{padding:2px 8px;white-space:nowrap;text-align:right;vertical-align:top}
.labkit-table td.labkit-long{white-space:normal;min-width:22em;max-width:48em;text-align:left}
.labkit-table table.labkit-plain td{white-space:normal}
.labkit-table caption{caption-side:top;text-align:left;font-size:12px;color:#444;padding:2px 0}
.labkit-table tr:nth-child(even){background:#f5f5f8}
</style>"""


def number(value: object) -> str:
    """About three significant figures, no exponent for everyday sizes, thousands grouped: 0.0123, 1.23, 2.00,
    12.3, 123, 8,760, 613,376; integers as integers; '—' for a missing or non-finite value."""
    if value is None or isinstance(value, bool):
        return MISSING if value is None else ("yes" if value else "no")
    if not isinstance(value, numbers.Real):
        return str(value)
    v = float(value)
    if not math.isfinite(v):
        return MISSING
    if v == 0:
        return "0"
    if abs(v) >= 100 or isinstance(value, numbers.Integral):
        return f"{round(v):,}"
    if abs(v) < 1e-3:
        return f"{v:.3g}"  # 5e-05, 1.23e-05: a learning rate reads as written
    return f"{v:.{2 - math.floor(math.log10(abs(v)))}f}"


def cell(value: object, column: object = None) -> str:
    if column == "precision" and value in PRECISIONS:
        return PRECISIONS[value].label
    if isinstance(value, str):
        return value or MISSING
    try:
        if pd.isna(value):
            return MISSING
    except (TypeError, ValueError):  # a list or an array in a cell: shown as it is
        return str(value)
    return number(value)


def _whole(column: pd.Series) -> bool:
    """Integers that a missing value turned into floats (a batch of 8.0): shown as integers."""
    values = pd.to_numeric(column, errors="coerce").dropna()
    return column.dtype.kind == "f" and not values.empty and bool((values == values.round()).all())


def tidy(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The table as strings, and its caption: a device column with one value becomes the caption."""
    caption = ""
    if "device" in df.columns and df["device"].nunique(dropna=True) == 1:
        caption = f"device: {df['device'].dropna().iloc[0]}"
        df = df.drop(columns="device")
    columns = []
    for i, name in enumerate(df.columns):
        column = df.iloc[:, i]
        whole = _whole(column)
        columns.append([cell(int(v) if whole and pd.notna(v) else v, "precision" if row == "precision" else name)
                        for row, v in zip(df.index, column)])  # a transposed table names precision in a row
    text = pd.DataFrame(dict(enumerate(columns)), index=df.index)
    text.columns = df.columns
    return text, caption


def to_html(df: pd.DataFrame) -> str:
    """A DataFrame as a page shows it: formatted, captioned with its device, long texts wrapped, scrollable."""
    if df.empty:
        return f'<div class="labkit-table"><i>{"empty table" if len(df.columns) else "no rows"}</i></div>'
    text, caption = tidy(df)
    if text.index.is_unique and text.columns.is_unique:
        classes = text.map(lambda s: "labkit-long" if len(s) > LONG_TEXT else "")
        styler = text.style.format(escape="html").set_td_classes(classes)
        table = (styler.set_caption(html.escape(caption)) if caption else styler).to_html()
    else:  # Styler's per-cell classes need unique labels; such a table wraps no cell on its own
        table = text.to_html(escape=True, classes="labkit-plain")
        table = f"<p>{html.escape(caption)}</p>{table}" if caption else table
    return f'{STYLE}<div class="labkit-table">{table}</div>'


def _display_html(df: pd.DataFrame) -> str | None:
    """IPython's HTML form of a DataFrame; None (pandas' own form) if formatting fails, so no cell ever fails
    because of how a table looks."""
    try:
        return to_html(df)
    except Exception:  # noqa: BLE001
        return None


def install() -> None:
    """Show every DataFrame in this kernel through ``to_html`` (no-op outside IPython)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        shell.display_formatter.formatters["text/html"].for_type(pd.DataFrame, _display_html)
