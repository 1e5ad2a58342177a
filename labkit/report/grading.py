"""The students' hand-in and the instructors' grading pages.

Student (``make hand-in NAME=ada``): every notebook of notebooks/ that has been run is copied, with its
answers and outputs, to runs/<profile>/students/<name>/, beside the results records of the labs it ran, and
packed as runs/<profile>/students/<name>.zip to hand in.

Instructor (``make grade``): the hand-ins unpacked under runs/<profile>/students/ become one HTML page per
student per lab in reports/<profile>/grading/, each with a side panel holding the questions, the student's
answers and the check cells' pass/fail beside the figures, and indexes per student and per lab.

Answers are the Markdown cells tagged ``answer``; the question is the cell just above each. Check cells are
code cells tagged ``check`` that test an exercise's code (``check``).
"""
from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from labkit import results
from labkit.report import pages

STUDENTS = "students"
UNANSWERED = "_Your answer here._"  # the answer cells' placeholder, as committed
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass
class Answer:
    question: str
    answer: str  # "" when the cell still holds the placeholder


@dataclass
class Check:
    source: str
    status: str  # "pass", "fail", "not answered" or "not run"
    detail: str = ""


@dataclass
class Graded:
    answers: list[Answer] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)

    @property
    def answered(self) -> int:
        return sum(bool(a.answer) for a in self.answers)


def _tags(cell: dict) -> set[str]:
    return set(cell.get("metadata", {}).get("tags", []))


def read_answers(nb: nbformat.NotebookNode) -> Graded:
    """The notebook's questions with the student's answers, and its check cells with their outcome."""
    graded = Graded()
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and "answer" in _tags(cell):
            question = nb.cells[i - 1].source if i else ""
            text = cell.source.strip()
            graded.answers.append(Answer(question.strip(), "" if text in ("", UNANSWERED) else text))
        elif cell.cell_type == "code" and "check" in _tags(cell):
            graded.checks.append(check(cell))
    return graded


def check(cell: dict) -> Check:
    """A check cell's outcome: it raises on a wrong answer (fail) and prints "Right: ..." on a right one, or
    "Exercise not answered yet" while the exercise still raises NotImplementedError."""
    outputs = cell.get("outputs", [])
    error = next((o for o in outputs if o.get("output_type") == "error"), None)
    text = "".join("".join(o.get("text", "")) for o in outputs if o.get("output_type") == "stream").strip()
    first = text.splitlines()[0] if text else ""
    if error:
        return Check(cell.source, "fail", f"{error.get('ename')}: {error.get('evalue')}")
    if not cell.get("execution_count"):
        return Check(cell.source, "not run")
    return Check(cell.source, "not answered" if "not answered" in text else "pass", first)


def was_run(nb: nbformat.NotebookNode) -> bool:
    return any(c.cell_type == "code" and c.get("execution_count") for c in nb.cells)


# ---- the student's side ------------------------------------------------------------------------------------

def hand_in(name: str, profile: str, notebooks_dir: Path = pages.NOTEBOOKS, runs_dir: Path = results.RUNS_DIR) -> Path:
    """Copy every notebook the student ran, and the records of its lab, to runs/<profile>/students/<name>/,
    and pack that folder as <name>.zip beside it. Returns the zip."""
    if not _NAME.match(name):
        raise SystemExit(f"NAME={name!r}: use letters, digits, '.', '_' or '-' (e.g. NAME=ada_lovelace)")
    target = Path(runs_dir) / profile / STUDENTS / name
    ran = [(p, nbformat.read(p, as_version=4)) for p in sorted(Path(notebooks_dir).glob("[0-9][0-9]_*.ipynb"))]
    ran = [(p, nb) for p, nb in ran if was_run(nb)]
    if not ran:
        raise SystemExit(f"nothing to hand in: no notebook in {notebooks_dir} has been run (run one, save it, then hand in)")
    if target.exists():
        shutil.rmtree(target)  # a hand-in is the notebooks as they are now, not added to an older one
    for path, nb in ran:
        nb.metadata["labkit"] = {"student": name, "handed_in": time.strftime("%Y-%m-%d %H:%M:%S"), "profile": profile}
        (target / path.stem).mkdir(parents=True)
        nbformat.write(nb, target / path.stem / f"{path.stem}.ipynb")
        records = Path(runs_dir) / profile / path.stem
        for record in sorted(records.glob("*/result.json")):  # the lab's runs, so the pages can be checked against them
            shutil.copy2(record, (target / path.stem / record.parent.name).with_suffix(".json"))
        graded = read_answers(nb)
        print(f"{path.stem}: {graded.answered} of {len(graded.answers)} questions answered"
              + (f", checks: {sum(c.status == 'pass' for c in graded.checks)} of {len(graded.checks)} passed" if graded.checks else ""))
    archive = shutil.make_archive(str(target), "zip", root_dir=target.parent, base_dir=name)
    print(f"handed in: {target}/ (hand in {archive})")
    return Path(archive)


# ---- the instructor's side -----------------------------------------------------------------------------------

PANEL_STYLE = """<style>
body{margin-right:36%!important}
.labkit-panel{position:fixed;top:0;right:0;width:34%;height:100%;overflow:auto;box-sizing:border-box;padding:12px 16px;
  background:#fafaf5;border-left:2px solid #ccb;font-family:sans-serif;font-size:13px;z-index:10}
.labkit-panel h2{font-size:15px;margin:12px 0 6px} .labkit-panel .q{color:#333;margin-top:10px;font-weight:bold}
.labkit-panel .a{background:#fff;border:1px solid #ddd;padding:2px 8px;margin:4px 0} .labkit-panel .q p{margin:0}
.labkit-panel .missing{color:#a40;font-style:italic} .pass{color:#060} .fail{color:#b00} .notrun,.notanswered{color:#888}
</style>"""


def _markdown(text: str) -> str:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    return markdown2html_mistune(pages.render_math(text))


def panel(student: str, lab: str, graded: Graded) -> str:
    """The grading side panel: answers and checks, fixed beside the page as it scrolls through the figures.
    A student's answer is Markdown with any HTML of its own escaped: it is shown, never run."""
    answers = "".join(
        f'<div class="q">{_markdown(a.question)}</div>'
        + (f'<div class="a">{_markdown(html.escape(a.answer, quote=False))}</div>' if a.answer else
           '<div class="a missing">no answer</div>')
        for a in graded.answers) or "<p>This lab has no answer cells.</p>"
    checks = "".join(f'<li class="{c.status.replace(" ", "")}">check {i}: {c.status}'
                     + (f" — {html.escape(c.detail)}" if c.detail else "") + "</li>"
                     for i, c in enumerate(graded.checks, 1))
    return (f'{PANEL_STYLE}<aside class="labkit-panel"><h2>{html.escape(student)} — {html.escape(lab)}</h2>'
            f"<p>{graded.answered} of {len(graded.answers)} questions answered"
            + (f"; {sum(c.status == 'pass' for c in graded.checks)} of {len(graded.checks)} checks passed" if graded.checks else "")
            + f"</p><h2>Answers</h2>{answers}" + (f"<h2>Checks</h2><ul>{checks}</ul>" if checks else "") + "</aside>")


def grade(profile: str, runs_dir: Path = results.RUNS_DIR, out_dir: Path | None = None) -> Path:
    """One page per student per lab, an index per student, one per lab, and the overview linking them."""
    base = Path(runs_dir) / profile / STUDENTS
    out = Path(out_dir or pages.ROOT / "reports" / profile) / "grading"
    export = pages.exporter()
    rows: list[tuple[str, str, Graded]] = []
    for nb_path in sorted(base.glob("*/*/*.ipynb")):
        student, lab = nb_path.parent.parent.name, nb_path.stem
        nb = nbformat.read(nb_path, as_version=4)
        graded = read_answers(nb)
        handed = nb.metadata.get("labkit", {}).get("handed_in", "?")
        header = panel(student, lab, graded) + pages.stamp(f"{student} · {lab} · handed in {handed}")
        pages.write(out / student / f"{lab}.html", pages.render(nb, header, export))
        rows.append((student, lab, graded))
    students = sorted({s for s, _, _ in rows})
    labs = sorted({lab for _, lab, _ in rows})
    for student in students:
        pages.write(out / student / "index.html", _list_page(
            f"{student}: hand-in, profile {profile}", [(lab, f"{lab}.html", g) for s, lab, g in rows if s == student], "lab"))
    for lab in labs:
        pages.write(out / "labs" / f"{lab}.html", _list_page(
            f"{lab}: every student, profile {profile}", [(s, f"../{s}/{lab}.html", g) for s, lab_, g in rows if lab_ == lab],
            "student"))
    pages.write(out / "index.html", _overview(profile, students, labs, {(s, lab): g for s, lab, g in rows}))
    return out / "index.html"


def _summary(graded: Graded) -> str:
    checks = graded.checks
    failed = sum(c.status == "fail" for c in checks)
    return (f"{graded.answered}/{len(graded.answers)} answered"
            + (f", {sum(c.status == 'pass' for c in checks)}/{len(checks)} checks" + (f" ({failed} failed)" if failed else "")
               if checks else ""))


def _list_page(title: str, items: Sequence[tuple[str, str, Graded]], what: str) -> str:
    rows = "".join(f'<tr><td><a href="{html.escape(href)}">{html.escape(label)}</a></td><td>{html.escape(_summary(g))}</td></tr>'
                   for label, href, g in items)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{pages.INDEX_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            "<p><a href=\"../index.html\">all students and labs</a></p>"
            f"<table><tr><th>{what}</th><th>answers and checks</th></tr>{rows}</table></body></html>")


def _overview(profile: str, students: Sequence[str], labs: Sequence[str], cells: dict[tuple[str, str], Graded]) -> str:
    head = "".join(f'<th><a href="labs/{html.escape(lab)}.html">{html.escape(lab)}</a></th>' for lab in labs)
    body = "".join(
        f'<tr><td><a href="{html.escape(s)}/index.html">{html.escape(s)}</a></td>'
        + "".join(f'<td><a href="{html.escape(s)}/{html.escape(lab)}.html">{html.escape(_summary(cells[s, lab]))}</a></td>'
                  if (s, lab) in cells else "<td>—</td>" for lab in labs) + "</tr>" for s in students)
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>grading: {html.escape(profile)}</title>'
            f"<style>{pages.INDEX_STYLE}</style></head><body><h1>Grading — profile {html.escape(profile)}</h1>"
            f"<p>{len(students)} students, {len(labs)} labs. Each page shows the student's executed notebook with their "
            "answers and the checks beside it.</p>"
            + (f"<table><tr><th>student</th>{head}</tr>{body}</table>" if students else
               f"<p>No hand-ins under runs/{html.escape(profile)}/{STUDENTS}/ yet: unpack each student's zip there.</p>")
            + "</body></html>")


def main(argv: list[str] | None = None) -> int:
    """``python -m labkit.report.grading NAME`` (``make hand-in NAME=...``); grading is ``python -m labkit.report --grade``."""
    parser = argparse.ArgumentParser(prog="python -m labkit.report.grading", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="your name as the hand-in's folder, e.g. ada_lovelace")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--runs-dir", default=str(results.RUNS_DIR))
    parser.add_argument("--notebooks-dir", default=str(pages.NOTEBOOKS))
    args = parser.parse_args(argv)
    hand_in(args.name, args.profile, Path(args.notebooks_dir), Path(args.runs_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
