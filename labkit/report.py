"""HTML reports of executed notebooks (``make report``): one page per notebook and an index.

    python -m labkit.report --profile smoke   ->  reports/smoke/index.html

Pages embed their plots (no network needed to open them) and each says where its run ran.
"""
from __future__ import annotations

import argparse
import html
import re
import sys
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from labkit import results

ROOT = Path(__file__).resolve().parent.parent


def environment_line(record: dict | None) -> str:
    if not record:
        return "no results record (this notebook reads other runs' records)"
    env = record.get("env", {})
    return (f"{results.device_label(env)} · torch {env.get('torch')} · transformers {env.get('transformers')} · "
            f"{record.get('run', {}).get('finished') or env.get('date')} · status {record.get('status')}")


def build(profile: str, runs_dir: Path = results.RUNS_DIR, out_dir: Path | None = None) -> Path:
    """Convert every executed notebook of a profile to HTML and write an index linking them."""
    runs_dir = Path(runs_dir)
    out_dir = Path(out_dir or ROOT / "reports" / profile)
    exporter = HTMLExporter()  # embeds images as data URIs: pages open offline
    entries = []
    for nb_path in sorted((runs_dir / profile).glob("*/*.ipynb")):
        record = results.read(nb_path.with_suffix(""))
        notebook = nbformat.read(nb_path, as_version=4)
        body, _ = exporter.from_notebook_node(notebook)
        stamp = f'<div style="padding:8px;background:#eef;font-family:sans-serif">{html.escape(environment_line(record))}</div>'
        body = re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + stamp, body, count=1)
        target = out_dir / nb_path.parent.name / f"{nb_path.stem}.html"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(body)
        entries.append((nb_path.parent.name, nb_path.stem, target.relative_to(out_dir), environment_line(record)))
    rows = "\n".join(f'<tr><td>{html.escape(n)}</td><td><a href="{html.escape(str(href))}">{html.escape(c)}</a></td>'
                     f"<td>{html.escape(e)}</td></tr>" for n, c, href, e in entries)
    index = out_dir / "index.html"
    out_dir.mkdir(parents=True, exist_ok=True)
    index.write_text(f"""<!doctype html><html><head><meta charset="utf-8"><title>labkit reports: {profile}</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:4px 12px;text-align:left}}</style></head>
<body><h1>labkit reports — profile {html.escape(profile)}</h1>
<table><tr><th>notebook</th><th>configuration</th><th>where and when it ran</th></tr>
{rows}
</table></body></html>
""")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--runs-dir", default=str(results.RUNS_DIR))
    args = parser.parse_args(argv)
    index = build(args.profile, Path(args.runs_dir))
    print(f"reports: {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
