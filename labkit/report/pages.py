"""HTML pages of executed notebooks: offline, clean, and the same complete comparisons on every page of a lab.

    python -m labkit.report --profile smoke   ->  reports/smoke/index.html   (``make report``)

Each page embeds its plots, renders its maths as MathML (no script, no network) and says where its run ran.
Before a page is written:

* the cells tagged ``comparison`` (a lab's "every configuration so far" sections) are run again, once per
  lab, over every record of the profile, so each page of a lab shows the same complete table whatever
  order the configurations ran in;
* progress bars and known harmless warnings are taken out of the page (a live notebook still shows them);
  any other warning stays.

Notebook 08 reads every record, so it is run again first whenever a record is newer than its page.
"""
from __future__ import annotations

import copy
import html
import os
import platform
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import nbformat
from latex2mathml.converter import convert as latex_to_mathml

from labkit import results
from labkit.config import ROOT
from labkit.plots.tables import number

NOTEBOOKS = ROOT / "notebooks"
REPORT_NOTEBOOK = "08_report"

# The lab template without the scripts it would fetch from a CDN (require.js, MathJax, Mermaid, the widget
# manager): plots are embedded PNGs and maths is MathML, so a page shows everything offline.
OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block body_header -%}{{ super() }}{{ resources.labkit_stamp }}{%- endblock body_header -%}
"""
STAMP_STYLE = "padding:8px 12px;margin-bottom:8px;background:#eef;font-family:sans-serif;font-size:13px"

# Output lines a graded page does without: progress bars and warnings the kit knows to be harmless here.
NOISE = [re.compile(p) for p in (
    r"\d+%\|",                                          # a tqdm bar
    r"\|\s*\d+/\d+ \[",                                 # a tqdm bar without a percentage
    r"This DataLoader will create \d+ worker",          # more workers than the machine's cores (notebook 02)
    r"^\*{20,}$",                                       # torchrun's OMP_NUM_THREADS banner ...
    r"Setting OMP_NUM_THREADS environment variable",    # ... and its text
    r"USDT|ActivityProfilerController|^STAGE:",         # the PyTorch profiler's start-up lines
    r"FutureWarning|DeprecationWarning",
    r"'pin_memory' argument is set as true but no accelerator",  # a CPU smoke run of a GPU loader setting
    r"The `srun` command is available on your system but is not used",  # Lightning, on a login node
    r"^Seed set to \d+$",                                # Lightning's seed line (the seed is in the record)
)]
WARNING = re.compile(r"^\S+:\d+: \w*Warning: ")  # Python's warning line; the indented source line follows it


def _tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


# ---- cleaning one notebook for its page ----------------------------------------------------------------------

def quiet(text: str) -> str:
    """``text`` without the lines NOISE matches (a progress bar's carriage-return frames included)."""
    kept, dropped_warning = [], False
    for line in (line.rsplit("\r", 1)[-1] for line in text.splitlines()):
        if dropped_warning and line.startswith((" ", "\t")):
            continue  # the source line under a warning that was dropped
        dropped_warning = False
        if any(p.search(line) for p in NOISE):
            dropped_warning = bool(WARNING.match(line))
        elif line.strip():
            kept.append(line)
    return "\n".join(kept)


_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_INLINE = re.compile(r"(?<![\\$])\$(?!\s)([^$\n]+?)(?<![\s\\])\$(?!\d)")
_CODE = re.compile(r"(```.*?```|`[^`\n]*`)", re.S)


def render_math(markdown: str) -> str:
    """``$...$`` and ``$$...$$`` in Markdown as MathML, which browsers draw without a script; code spans and
    blocks are left alone, and a formula latex2mathml cannot read stays as it was written."""
    def convert(match: re.Match, display: str) -> str:
        try:
            return latex_to_mathml(match.group(1).strip(), display=display)
        except Exception:  # noqa: BLE001 - an unknown macro: the reader still sees the LaTeX
            return match.group(0)

    parts = _CODE.split(markdown)
    for i in range(0, len(parts), 2):  # even parts are outside code
        parts[i] = _DISPLAY.sub(lambda m: convert(m, "block"), parts[i])
        parts[i] = _INLINE.sub(lambda m: convert(m, "inline"), parts[i])
    return "".join(parts)


def clean(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """A copy of ``nb`` as its page shows it: maths as MathML, stream outputs without NOISE."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = render_math(cell.source)
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = quiet("".join(output.get("text", "")))
                if not output["text"]:
                    continue
                output["text"] += "\n"
            kept.append(output)
        cell.outputs = kept
    return nb


# ---- comparisons that read every record when the page is made -------------------------------------------------

def refresh_comparisons(pages: Sequence[nbformat.NotebookNode], profile: str, runs_dir: Path) -> list[str]:
    """Run the cells tagged ``comparison`` of one lab once, over every record of the profile, and put their
    outputs into each of ``pages`` (executed notebooks of that lab). Returns the problems, if any: a cell that
    fails keeps the outputs it had."""
    from nbclient import NotebookClient
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [c for c in pages[0].cells if c.cell_type == "code" and "comparison" in _tags(c)]
    if not cells:
        return []
    setup = f"profile, runs_dir = {profile!r}, {str(runs_dir)!r}\nfrom labkit import plots, results"
    nb = new_notebook(cells=[new_code_cell(setup)] + [new_code_cell(c.source) for c in cells],
                      metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    headless = os.environ.get("LABKIT_HEADLESS")
    os.environ["LABKIT_HEADLESS"] = "1"  # the kernel inherits it: no widgets, plain progress lines
    try:
        NotebookClient(nb, timeout=900, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    finally:
        if headless is None:
            del os.environ["LABKIT_HEADLESS"]
    problems, fresh = [], {}
    for cell in nb.cells[1:]:
        error = next((o for o in cell.outputs if o.get("output_type") == "error"), None)
        if error:
            problems.append(f"{cell.source.splitlines()[0]!r}: {error.get('ename')}: {error.get('evalue')}")
        else:
            fresh[cell.source] = cell.outputs
    for page in pages:  # matched by source: a page executed from an older copy of the notebook keeps what differs
        for cell in page.cells:
            if cell.cell_type == "code" and "comparison" in _tags(cell) and cell.source in fresh:
                cell.outputs = copy.deepcopy(fresh[cell.source])
    return problems


def rerun_report(profile: str, runs_dir: Path) -> bool:
    """Execute notebook 08 again when a record is newer than its executed copy (or there is none)."""
    from labkit.launch import runall

    source = NOTEBOOKS / f"{REPORT_NOTEBOOK}.ipynb"
    out = runs_dir / profile / REPORT_NOTEBOOK / f"{REPORT_NOTEBOOK}.ipynb"
    records = list((runs_dir / profile).glob("*/*/result.json"))
    if not source.is_file() or not records:
        return False
    if out.is_file() and out.stat().st_mtime >= max(p.stat().st_mtime for p in records):
        return False
    status, message = runall.run_job(runall.Job(source, None), profile, runs_dir)
    if status != "ok":
        print(f"notebook 08 did not run again ({message}); its page is the last one that ran")
    return status == "ok"


# ---- one line about where a run ran, and one about what it gave ------------------------------------------------

def environment_line(record: dict | None, profile_records: Sequence[dict] = ()) -> str:
    """Where and when a page's run ran; for a page without a record (the report notebook), the records it read."""
    if record:
        env = record.get("env", {})
        parts = [results.device_label(env)]
        if env.get("device") == "cuda":
            parts.append(f"CUDA {env.get('cuda')}, driver {env.get('driver') or '?'}")
        parts += [f"torch {env.get('torch')}", f"transformers {env.get('transformers')}", f"python {env.get('python')}",
                  f"host {env.get('host')}"]
        if env.get("slurm_job_id"):
            parts.append(f"SLURM job {env['slurm_job_id']}")
        parts += [str(record.get("run", {}).get("finished") or env.get("date")), f"status {record.get('status')}"]
        spread = results.step_spread(record)
        if spread and spread["skewed"]:
            parts.append(f"mean step {number(spread['mean_ms'])} ms is far above the median {number(spread['median_ms'])} ms")
        return " · ".join(parts)
    import torch
    import transformers

    where = ", ".join(sorted({results.device_label(r.get("env", {})) for r in profile_records})) or "no records"
    return (f"reads {len(profile_records)} results records ({where}) · built {time.strftime('%Y-%m-%d %H:%M:%S')} on "
            f"{platform.node()} · torch {torch.__version__} · transformers {transformers.__version__} · "
            f"python {platform.python_version()}")


# Summary key -> how the index names it; the first few a run has make its headline.
HEADLINES = {"samples_per_s": "{} samples/s", "final_val_loss": "val loss {}", "accuracy": "accuracy {}", "f1": "F1 {}",
             "test_perplexity": "test perplexity {}"}


def headline(record: dict | None) -> str:
    """The index's one cell about a run: the reason it has no figures, or its main figures and the step spread."""
    if record is None:
        return "reads the records of the other notebooks"
    if record.get("status") != "ok":
        reason = (record.get("error") or "").removeprefix("skipped: ")
        return reason or ("started and not finished: still running, or killed" if record.get("status") == "running" else "")
    parts = [text.format(number(results.rate(record, key))) for key, text in HEADLINES.items()
             if results.rate(record, key) is not None]
    spread = results.step_spread(record)
    if spread:
        parts.insert(1, f"median step {number(spread['median_ms'])} ms (IQR {number(spread['iqr_ms'])} ms)"
                     + (", mean far above the median" if spread["skewed"] else ""))
    return " · ".join(parts) or "finished; no figures in its record"


# ---- writing pages -------------------------------------------------------------------------------------------

def write(path: Path, text: str) -> None:
    """Atomic: a report built beside another (two run-alls) never leaves half a page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide the pages from a web server or a course's shared folder
    os.replace(tmp, path)


def exporter():
    import jinja2
    from nbconvert import HTMLExporter

    return HTMLExporter(extra_loaders=[jinja2.DictLoader({"labkit_offline.html.j2": OFFLINE_TEMPLATE})],
                        template_file="labkit_offline.html.j2")


def render(nb: nbformat.NotebookNode, header: str, export=None) -> str:
    """One page: ``nb`` cleaned, with ``header`` (HTML) at the top of the body."""
    body, _ = (export or exporter()).from_notebook_node(clean(nb), resources={"labkit_stamp": header})
    return body


def stamp(line: str) -> str:
    return f'<div class="labkit-environment" style="{STAMP_STYLE}">{html.escape(line)}</div>'


def build(profile: str, runs_dir: Path = results.RUNS_DIR, out_dir: Path | None = None, rerun: bool = True) -> Path:
    """Every executed notebook of a profile as an HTML page, and an index; notebook 08 and the comparison
    sections are run again first (``rerun=False`` converts the notebooks as they are)."""
    runs_dir = Path(runs_dir)
    out_dir = Path(out_dir or ROOT / "reports" / profile)
    if rerun:
        rerun_report(profile, runs_dir)
    profile_records = results.records(profile, runs_dir=runs_dir)
    export = exporter()
    entries = []
    labs: dict[str, list[Path]] = {}
    for nb_path in sorted((runs_dir / profile).glob("*/*.ipynb")):
        labs.setdefault(nb_path.parent.name, []).append(nb_path)
    for lab, paths in labs.items():
        readable = {}
        for nb_path in paths:
            try:
                readable[nb_path] = nbformat.read(nb_path, as_version=4)
            except (OSError, ValueError, nbformat.ValidationError) as err:  # cut short (a full disk): say so, go on
                problem = f"{nb_path}: damaged notebook ({type(err).__name__}: {err}); run its configuration again"
                print(problem, file=sys.stderr)
                target = out_dir / lab / f"{nb_path.stem}.html"
                write(target, f"<!doctype html><meta charset='utf-8'><p>{html.escape(problem)}</p>")
                entries.append({"lab": lab, "config": nb_path.stem, "href": target.relative_to(out_dir).as_posix(),
                                "status": "damaged", "record": None})
        paths, notebooks = list(readable), list(readable.values())
        if rerun and notebooks and lab != REPORT_NOTEBOOK:
            try:
                problems = refresh_comparisons(notebooks, profile, runs_dir)
            except Exception as err:  # noqa: BLE001 - no kernel, a timeout: the pages keep the outputs they ran with
                problems = [f"{type(err).__name__}: {err}"]
            for problem in problems:
                print(f"{lab}: a comparison section kept the output it ran with: {problem}")
        for nb_path, nb in zip(paths, notebooks):
            record = results.read(nb_path.with_suffix(""))
            line = environment_line(record, profile_records)
            target = out_dir / lab / f"{nb_path.stem}.html"
            write(target, render(nb, stamp(line), export))
            entries.append({"lab": lab, "config": nb_path.stem, "href": target.relative_to(out_dir).as_posix(),
                            "status": record.get("status") if record else ("ok" if lab == REPORT_NOTEBOOK else "no record"),
                            "record": record})
    write(out_dir / "index.html", index(profile, entries, profile_records))
    return out_dir / "index.html"


INDEX_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px} td,th{padding:4px 12px;text-align:left;vertical-align:top}
tr.skipped,tr.oom,tr.failed,tr.running{color:#8a3b00} table{border-collapse:collapse} tr:nth-child(even){background:#f4f4f8}
.env{background:#eef;padding:8px 12px}"""


def environment(record: dict) -> str:
    """What a run's figures depend on, without where and when: device, CUDA and driver, library versions."""
    env = record.get("env", {})
    parts = [results.device_label({**env, "device_count": 1})]  # the kind of device; how many is the run's setting
    if env.get("device") == "cuda":
        parts.append(f"CUDA {env.get('cuda')}, driver {env.get('driver') or '?'}")
    return " · ".join(parts + [f"torch {env.get('torch')}", f"transformers {env.get('transformers')}",
                               f"python {env.get('python')}"])


def environment_summary(records: Sequence[dict]) -> str:
    """The environment, named once: one line when every run shares it, else a line per environment."""
    lines = Counter(environment(r) for r in records)
    if not lines:
        return "<p>No results records.</p>"
    return "".join(f'<p class="env">{html.escape(line)}' + (f" ({n} runs)" if len(lines) > 1 else "") + "</p>"
                   for line, n in sorted(lines.items()))


def index(profile: str, entries: Iterable[dict], profile_records: Sequence[dict]) -> str:
    entries = list(entries)
    counts = Counter(e["status"] for e in entries)
    devices = {environment(e["record"]) for e in entries if e["record"]}
    rows = "\n".join(
        f'<tr class="{html.escape(e["status"])}"><td>{html.escape(e["lab"])}</td>'
        f'<td><a href="{html.escape(e["href"])}">{html.escape(e["config"])}</a></td><td>{html.escape(e["status"])}</td>'
        + (f'<td>{html.escape(results.device_label(e["record"].get("env", {})) if e["record"] else "—")}</td>' if len(devices) > 1 else "")
        + f'<td>{html.escape(headline(e["record"]))}</td></tr>' for e in entries)
    device_th = "<th>device</th>" if len(devices) > 1 else ""
    smoke = ("<p>Figures of the smoke profile come from CPU runs: they show that a lab runs, not how fast a GPU is.</p>"
             if profile == "smoke" else "")
    return f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>labkit reports: {html.escape(profile)}</title>
<style>{INDEX_STYLE}</style></head><body><h1>labkit reports — profile {html.escape(profile)}</h1>
<p>Built {time.strftime('%Y-%m-%d %H:%M:%S')}: {len(entries)} executed notebooks ({html.escape(', '.join(f'{n} {s}' for s, n in sorted(counts.items())))}).</p>
{smoke}<h2>Where the runs ran</h2>
{environment_summary(profile_records)}
<h2>Executed notebooks</h2>
<table><tr><th>notebook</th><th>configuration</th><th>status</th>{device_th}<th>reason, or the run's figures</th></tr>
{rows}
</table></body></html>
"""
