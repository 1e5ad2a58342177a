"""The teaching cells of notebooks 02-07 and 09: the technique cells run, each check accepts a right answer, and a
wrong answer makes the check fail with its explanation.

Each test executes, with papermill in a real kernel as `make run-all` does, only the notebook's cells tagged
`technique`, `exercise` and `check`: first with a right answer put into the exercise cell, then with a wrong
one (that check cell is tagged `raises-exception`, so execution records the error and goes on). The answers
live here, not in the notebooks.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
TEACHING = {"technique", "exercise", "check"}

# notebook -> (a right answer, a wrong answer, words the wrong answer's explanation must contain)
ANSWERS = {
    "01_baseline_bert_squad": (
        "def token_span(offsets, start_char, end_char):\n"
        "    inside = [i for i, o in enumerate(offsets) if o]\n"
        "    if offsets[inside[0]][0] > start_char or offsets[inside[-1]][1] < end_char:\n"
        "        return (0, 0)\n"
        "    start = next(i for i in inside if offsets[i][0] <= start_char < offsets[i][1])\n"
        "    end = next(i for i in inside if offsets[i][0] < end_char <= offsets[i][1])\n"
        "    return (start, end)\n",
        "def token_span(offsets, start_char, end_char):\n"
        "    start = next((i for i, o in enumerate(offsets) if o and o[0] == start_char), 0)\n"
        "    end = next((i for i, o in enumerate(offsets) if o and o[1] == end_char), 0)\n"
        "    return (start, end)\n",
        "containing start_char",
    ),
    "02_dataloader_workers": (
        "import math\n\ndef workers_needed(load_ms, step_ms):\n    return math.ceil(load_ms / step_ms)\n",
        "def workers_needed(load_ms, step_ms):\n    return max(1, int(load_ms // step_ms))\n",
        "still waits",
    ),
    "03_mixed_precision": (
        "def fp16_step(model, optimizer, scaler, x, y):\n"
        "    with torch.autocast(device, dtype=torch.float16):\n"
        "        loss = nn.functional.cross_entropy(model(x), y)\n"
        "    scaler.scale(loss).backward()\n    scaler.step(optimizer)\n    scaler.update()\n    return loss\n",
        "def fp16_step(model, optimizer, scaler, x, y):\n"
        "    with torch.autocast(device, dtype=torch.float16):\n"
        "        loss = nn.functional.cross_entropy(model(x), y)\n"
        "    scaler.scale(loss).backward()\n    optimizer.step()\n    scaler.update()\n    return loss\n",
        "scaler.step(optimizer)",
    ),
    "04_activation_checkpointing": (
        "def every_second_block(h):\n    for i, block in enumerate(blocks):\n"
        "        h = h + (checkpoint(block, h, use_reentrant=False) if i % 2 == 0 else block(h))\n    return h\n",
        "def every_second_block(h):\n    return every_block(h)\n",
        "only every second",
    ),
    "05_ddp_fsdp": (
        "def part_of(batch_size, rank, world_size):\n    return list(range(rank, batch_size, world_size))\n",
        "def part_of(batch_size, rank, world_size):\n    n = batch_size // world_size\n"
        "    return list(range(rank * n, (rank + 1) * n + 1))\n",
        "exactly once",
    ),
    "06_lora_optimizer_sweep": (
        "def optimizer_state_bytes(model, name):\n"
        "    states = {'sgd': 0, 'sgd_momentum': 1, 'nesterov': 1, 'adamw': 2}[name]\n"
        "    return states * sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)\n",
        "def optimizer_state_bytes(model, name):\n"
        "    states = {'sgd': 0, 'sgd_momentum': 1, 'nesterov': 1, 'adamw': 2}[name]\n"
        "    return states * sum(p.numel() * p.element_size() for p in model.parameters())\n",
        "Count only trainable",
    ),
    "07_t5_model_parallel": (
        "def crossing_bytes(batch, width, bytes_per_number):\n    return 2 * batch * width * bytes_per_number\n",
        "def crossing_bytes(batch, width, bytes_per_number):\n    return batch * width * bytes_per_number\n",
        "its gradient",
    ),
    "09_simcls": (
        "def candidate_term(scores, margin):\n"
        "    return sum(torch.relu(scores[:, d:] - scores[:, :-d] + margin * d).mean() for d in range(1, scores.shape[1]))\n",
        "def candidate_term(scores, margin):\n"
        "    return sum(torch.relu(scores[:, d:] - scores[:, :-d] + margin).mean() for d in range(1, scores.shape[1]))\n",
        "grow with the distance",
    ),
}


def teaching_notebook(name: str, right: str, wrong: str) -> nbformat.NotebookNode:
    """The notebook's teaching cells, each exercise answered rightly and checked, then answered wrongly and checked."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [c for c in nb.cells if c.cell_type == "code" and TEACHING & set(c.metadata.get("tags", []))]
    exercise = [i for i, c in enumerate(cells) if "exercise" in c.metadata["tags"]]
    assert len(exercise) == 1 and "check" in cells[exercise[0] + 1].metadata["tags"], "one exercise cell, then its check"
    assert "NotImplementedError" in cells[exercise[0]].source, "the notebook ships the exercise unanswered"
    check = cells[exercise[0] + 1]
    wrong_check = nbformat.v4.new_code_cell(check.source, metadata={"tags": ["check", "raises-exception"]})
    cells[exercise[0]] = nbformat.v4.new_code_cell(right)
    cells += [nbformat.v4.new_code_cell(wrong), wrong_check]
    nb.cells = cells
    return nb


def outputs_text(cell: nbformat.NotebookNode) -> str:
    return "".join(out.get("text", "") if out["output_type"] == "stream" else json.dumps(out) for out in cell.get("outputs", []))


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_technique_runs_and_checks_judge_answers(name, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("LABKIT_HEADLESS", "1")
    right, wrong, explanation = ANSWERS[name]
    source = tmp_path / f"{name}.ipynb"
    nbformat.write(teaching_notebook(name, right, wrong), source)
    out = tmp_path / "out.ipynb"
    with pytest.raises(papermill.PapermillExecutionError) as failed:  # papermill reports the first cell that failed
        papermill.execute_notebook(str(source), str(out), cwd=str(NOTEBOOKS), kernel_name="python3", progress_bar=False)
    executed = nbformat.read(out, as_version=4)
    executed.cells = [c for c in executed.cells if c.cell_type == "code"]  # without papermill's error banners
    # the first failure is the last cell, the check of the wrong answer, and it says why
    assert failed.value.cell_index == len(executed.cells) - 1, failed.value
    assert failed.value.ename == "AssertionError" and explanation in failed.value.evalue, failed.value.evalue
    first_check = next(c for c in executed.cells if "check" in c.metadata.get("tags", []))
    assert "Right" in outputs_text(first_check)
    assert all(c.get("outputs") for c in executed.cells if "technique" in c.metadata.get("tags", [])), "a technique cell printed nothing"


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_unanswered_exercise_is_reported_not_failed(name):
    """Run headless as committed (the exercise unanswered), the check says so instead of failing the report."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    tagged = [c for c in nb.cells if TEACHING & set(c.metadata.get("tags", []))]
    check = next(c for c in tagged if c.cell_type == "code" and "check" in c.metadata["tags"])
    assert "except NotImplementedError" in check.source and "not answered yet" in check.source
    assert any(c.cell_type == "markdown" and "Where labkit does this" in c.source for c in tagged)


def test_gpu_figures_name_real_configurations_and_mark_the_rest_unmeasured():
    from labkit import gpu_figures
    from labkit.config import PARAMS_DIR

    measured = gpu_figures.measured()
    for notebook, config in measured.index:
        assert (PARAMS_DIR / notebook / f"{config}.yaml").is_file(), f"{notebook}/{config} in {gpu_figures.FIGURES.name}"
    assert measured["source"].str.startswith("docs/benchmarks.md").all() and measured["device"].str.len().gt(0).all()
    table = gpu_figures.table("05_ddp_fsdp")
    assert table.loc["ddp", "device"] == "2x NVIDIA H200" and table.loc["ddp_8gpu", "device"] == "unmeasured"
    table = gpu_figures.table("03_mixed_precision")
    assert table.loc["resnext_fp32", "samples/s"] == 2518 and table.loc["resnext_fp32", "date"] == "2026-11-25"


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("0[1-7]_*.ipynb")), ids=lambda p: p.stem)
def test_each_lab_shows_its_timeline_and_gpu_figures(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "timeline.draw(record" in code and "timeline.top_kernels(record" in code and "make nsys" in code
    assert f'gpu_figures.table("{path.stem}")' in code


@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_where_labkit_does_this_names_files_and_functions_that_exist(name):
    """Every file named under each 'Where labkit does this' exists, and every name in backticks is in one of them."""
    root = NOTEBOOKS.parent
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    texts = [c.source for c in nb.cells if "technique" in c.metadata.get("tags", []) and "Where labkit does this" in c.source]
    assert texts
    for text in texts:
        text = text[text.index("Where labkit does this"):]
        files = re.findall(r"`(labkit/[\w/]+\.py)`", text)
        assert files and all((root / f).is_file() for f in files), files
        source = "\n".join((root / f).read_text() for f in files)
        for word in re.findall(r"`([A-Za-z_]\w*)`", text):
            assert re.search(rf"\b{word}\b", source), f"`{word}` is named in {name} but is not in {files}"
