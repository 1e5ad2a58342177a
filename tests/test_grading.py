"""The student's hand-in and the instructor's grading pages: answers and checks beside the figures."""
import re
import zipfile

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from test_report import executed, fake_record

from labkit import results
from labkit.report import grading


def student_notebook(answer: str, right: bool) -> nbformat.NotebookNode:
    """A lab as a student leaves it: figures, an exercise's check, and two questions, one answered."""
    nb = executed("03 mixed precision")
    check_output = (new_output("stream", name="stdout", text="Right: the scale halves\n") if right else
                    new_output("error", ename="AssertionError", evalue="fp16_step kept an overflowing step", traceback=[]))
    nb.cells += [
        new_code_cell("try:\n    check()\nexcept NotImplementedError:\n    print('Exercise not answered yet')",
                      execution_count=3, outputs=[check_output], metadata={"tags": ["check"]}),
        new_markdown_cell("## Questions for your report"),
        new_markdown_cell("**1.** Rank the settings by speed-up.", metadata={"tags": ["question"]}),
        new_markdown_cell(answer, metadata={"tags": ["answer"]}),
        new_markdown_cell("**2.** Why does TF32 not save memory?", metadata={"tags": ["question"]}),
        new_markdown_cell(grading.UNANSWERED, metadata={"tags": ["answer"]}),
    ]
    return nb


def test_hand_in_collects_the_run_notebooks_with_answers_and_records(tmp_path, capsys):
    notebooks, runs = tmp_path / "notebooks", tmp_path / "runs"
    notebooks.mkdir()
    nbformat.write(student_notebook("bf16 first, then tf32", right=True), notebooks / "03_mixed_precision.ipynb")
    nbformat.write(new_notebook(cells=[new_code_cell("x = 1")]), notebooks / "04_activation_checkpointing.ipynb")  # not run
    record = fake_record("03_mixed_precision", "bert_bf16", profile="smoke", gpu=None)
    results.save(record, results.record_dir("smoke", "03_mixed_precision", "bert_bf16", runs))

    archive = grading.hand_in("ada", "smoke", notebooks, runs)
    folder = runs / "smoke" / "students" / "ada"
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) == [
        "03_mixed_precision/03_mixed_precision.ipynb", "03_mixed_precision/bert_bf16.json"]
    assert nbformat.read(folder / "03_mixed_precision" / "03_mixed_precision.ipynb", 4).metadata["labkit"]["student"] == "ada"
    assert "ada/03_mixed_precision/03_mixed_precision.ipynb" in zipfile.ZipFile(archive).namelist()
    assert "03_mixed_precision: 1 of 2 questions answered, checks: 1 of 1 passed" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="NAME='../x'"):
        grading.hand_in("../x", "smoke", notebooks, runs)


def test_grading_pages_show_answers_and_checks_per_student_and_lab(tmp_path):
    runs, out = tmp_path / "runs", tmp_path / "reports"
    for student, right in (("ada", True), ("alan", False)):
        folder = runs / "smoke" / "students" / student / "03_mixed_precision"
        folder.mkdir(parents=True)
        nb = student_notebook(f"{student}: bf16 is fastest <b>here</b>", right)
        nb.metadata["labkit"] = {"student": student, "handed_in": "2025-01-01 10:00:00"}
        nbformat.write(nb, folder / "03_mixed_precision.ipynb")

    index = grading.grade("smoke", runs, out).read_text()
    assert re.findall(r'href="([^"]+)"', index) == ["labs/03_mixed_precision.html", "ada/index.html",
                                                    "ada/03_mixed_precision.html", "alan/index.html",
                                                    "alan/03_mixed_precision.html"]
    assert "1/2 answered, 1/1 checks" in index and "1/2 answered, 0/1 checks (1 failed)" in index
    page = (out / "grading" / "ada" / "03_mixed_precision.html").read_text()
    panel = re.search(r'<aside class="labkit-panel">(.*?)</aside>', page, re.S).group(1)
    assert "Rank the settings by speed-up." in panel and "ada: bf16 is fastest &lt;b&gt;here&lt;/b&gt;" in panel
    assert 'class="a missing">no answer' in panel and "check 1: pass" in panel
    assert "data:image/png;base64," in page  # the figures the answers refer to, on the same page
    failing = (out / "grading" / "alan" / "03_mixed_precision.html").read_text()
    assert "check 1: fail" in failing and "fp16_step kept an overflowing step" in failing
    assert "ada/03_mixed_precision.html" in (out / "grading" / "labs" / "03_mixed_precision.html").read_text()
    assert 'href="03_mixed_precision.html"' in (out / "grading" / "ada" / "index.html").read_text()


def test_an_unanswered_exercise_is_not_a_pass():
    cell = new_code_cell("check()", execution_count=5,
                         outputs=[new_output("stream", name="stdout", text="Exercise not answered yet: write f above\n")])
    assert grading.check(cell).status == "not answered"
    assert grading.check(new_code_cell("check()")).status == "not run"
