"""The course report: comparisons only within a device, unfinished runs never as numbers, sentences computed
from the records, and HTML pages that a real browser (headless chromium) renders offline from the index."""
import base64
import copy
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output  # noqa: E402

from labkit import report, results  # noqa: E402
from labkit.config import Config  # noqa: E402
from labkit.plots import tables  # noqa: E402

H100, A100 = "NVIDIA H100 80GB HBM3", "NVIDIA A100-SXM4-80GB"


def fake_record(notebook: str, config: str, status: str = "ok", task: str = "bert_squad", gpu: str | None = H100,
                profile: str = "gpu", summary: dict | None = None, error: str | None = None, **sections) -> dict:
    """A results record as labkit.launch.runner writes it (for tables and figures; no run behind it)."""
    cfg = Config.model_validate({"task": task, **sections})
    env = {"device": "cuda" if gpu else "cpu", "device_name": gpu or "x86_64", "torch": "2.5.1", "transformers": "5.0.0",
           "python": "3.11.9", "cuda": "12.4" if gpu else None, "driver": "550.54" if gpu else None, "host": "node1",
           "device_count": cfg.train.devices * cfg.train.num_nodes if gpu else 1, "date": "2025-01-01 10:00:00"}
    return {"run": {"notebook": notebook, "config": config, "profile": profile, "params_file": f"params/{notebook}/{config}.yaml",
                    "overrides": {}, "started": "2025-01-01 10:00:00", "finished": "2025-01-01 10:05:00"},
            "params": cfg.model_dump(mode="json"), "env": env, "status": status, "error": error,
            "summary": summary or {}, "curves": {}, "info": {}}


def course() -> list[dict]:
    """Precision runs on two GPU models, a scaling pair, and runs that did not finish (one with a stray number)."""
    bf16 = {"train": {"precision": "bf16-mixed"}}
    return [
        fake_record("03_mixed_precision", "bert_fp32", summary={"samples_per_s": 100.0, "train_time_s": 340.0, "final_val_loss": 2.0,
                                                               "gpu_util_mean_pct": 97.0, "gpu_temp_max_c": 71.0, "peak_allocated_gb": 9.5}),
        fake_record("03_mixed_precision", "bert_bf16", **bf16, summary={"samples_per_s": 340.0, "train_time_s": 100.0,
                                                                       "final_val_loss": 2.1, "gpu_util_mean_pct": 92.0, "gpu_temp_max_c": 66.0}),
        fake_record("03_mixed_precision", "bert_fp32_a100", gpu=A100, summary={"samples_per_s": 10.0, "train_time_s": 3400.0,
                                                                              "final_val_loss": 1.0}),
        fake_record("03_mixed_precision", "bert_fp16", status="oom", train={"precision": "16-mixed"},
                    error="out of memory: CUDA out of memory", summary={"samples_per_s": 5.0}),
        fake_record("05_ddp_fsdp", "single", summary={"samples_per_s": 100.0, "train_time_s": 400.0, "final_val_loss": 1.9}),
        fake_record("05_ddp_fsdp", "ddp", train={"strategy": "ddp", "devices": 2},
                    summary={"samples_per_s": 180.0, "train_time_s": 220.0, "final_val_loss": 1.95}),
        fake_record("05_ddp_fsdp", "ddp_8gpu", status="skipped", train={"strategy": "ddp", "devices": 8},
                    error="skipped: train.devices is 8: it needs 8 GPUs per node and 2 are visible"),
        fake_record("05_ddp_fsdp", "fsdp", status="failed", train={"strategy": "fsdp", "devices": 2}, error="RuntimeError: boom"),
    ]


def test_sentences_compare_runs_of_the_same_device_only():
    records = course()
    _, says = report.per_configuration(records, "train_time_s")
    # bf16 vs fp32 on the H100; the A100 run (10x slower still) is never set against them
    assert "03/bert_bf16 trained 3.4x faster than 03/bert_fp32 (100 s against 340 s" in says and H100 in says
    assert "A100" not in says and "34" not in says.replace("340", "")
    assert "3 of 8 configurations have no value here (1 failed, 1 out of memory, 1 skipped)" in says
    _, says = report.per_configuration(records, "gpu_util_mean_pct")
    assert says.startswith(f"On {H100}, mean GPU utilisation ranged from 92% (03/bert_bf16) to 97% (03/bert_fp32)")
    _, says = report.pareto(records)
    assert f"on {H100}" in says and "are on the front" in says and "A100" not in says.split(";")[0]


def test_unfinished_runs_show_their_status_never_a_number():
    table = report.throughput_memory(course())
    assert (table.loc["03/bert_fp16", ["samples/s", "step (ms)", "peak allocated (GB)"]] == "out of memory").all()
    assert (table.loc["05/ddp_8gpu", ["samples/s", "MFU (%)"]] == "skipped").all()
    assert table.loc["05/fsdp", "samples/s"] == "failed"
    assert table.loc["03/bert_fp32", "samples/s"] == "100" and table.loc["03/bert_fp32", "peak allocated (GB)"] == "9.5"
    assert table.loc["05/ddp", "global batch"] == 2 * 8
    reasons = report.not_finished(course())
    assert reasons.loc["05/ddp_8gpu", "reason"].startswith("train.devices is 8")
    fig, _ = report.per_configuration(course(), "final_val_loss")
    labels = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"out of memory", "skipped", "failed"} <= labels and "5" not in labels
    plt.close(fig)


def test_cpu_records_have_no_gpu_figures():
    cpu = [fake_record("01_baseline_bert_squad", "baseline", gpu=None, profile="smoke",
                       summary={"samples_per_s": 4.0, "train_time_s": 12.0, "final_val_loss": 4.3})]
    fig, says = report.per_configuration(cpu, "gpu_temp_max_c")
    assert fig is None and says.startswith("Not measured: every record of this profile ran on a CPU")
    assert report.throughput_memory(cpu).loc["01/baseline", "peak allocated (GB)"] == "not measured (CPU)"


def test_scaling_efficiency_against_the_one_device_run():
    table = report.scaling(course())
    assert table.loc["05/ddp", "scaling efficiency (%)"] == "90" and table.loc["05/ddp", "one-device run"] == "05/single"
    assert table.loc["05/ddp_8gpu", "scaling efficiency (%)"] == "skipped"
    fig, says = report.scaling_figure(course())
    assert says.startswith("05/ddp on 2 devices (NVIDIA H100 80GB HBM3) kept 90% of perfect scaling, 1.80x the samples/s of 05/single")
    assert "2 multi-device run(s) have no figure here (1 failed, 1 skipped)" in says
    plt.close(fig)


def test_pareto_front_holds_the_runs_nothing_beats_on_both():
    runs = [fake_record("03_mixed_precision", name, summary={"train_time_s": t, "final_val_loss": loss})
            for name, t, loss in [("fast", 100.0, 2.0), ("slow_good", 300.0, 1.5), ("beaten", 200.0, 2.5)]]
    fig, says = report.pareto(runs)
    assert says.startswith(f"Of the 3 finished BERT-QA / SQuAD runs on {H100}, 2 are on the front")
    assert "from the fastest, 03/fast (100 s, loss 2), to the best, 03/slow_good (300 s, loss 1.5)" in says
    plt.close(fig)


def png() -> str:
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1, 2], [3, 1, 2])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


TQDM = "cifar_resnext:  50%|#####     | 8/16 [00:01<00:01, 6.1step/s, epoch=1, loss=2.3]\r"
WARNINGS = ("/x/torch/utils/data/dataloader.py:627: UserWarning: This DataLoader will create 8 worker processes in total. "
            "Our suggested max number of worker in current system is 2.\n  warnings.warn(\n"
            "/x/y.py:1: FutureWarning: `foo` is deprecated\n  warnings.warn(\n")
UNKNOWN = "/x/z.py:3: UserWarning: gradient overflow in layer 7\n"
SKIPPED = "skipped: train.devices is 8: it needs 8 GPUs per node and 2 are visible"
WIDE = {f"measured figure number {i} (ms)": [1234.5678 * i, 0.0123456] for i in range(1, 25)}


def executed(title: str, wide: bool = False) -> nbformat.NotebookNode:
    """A notebook as papermill leaves it: maths, a progress bar and warnings on stderr, a table, a plot."""
    plot = new_output("display_data", data={"image/png": png(), "text/plain": "<Figure>"})
    text = new_output("stream", name="stdout", text=f"{title}: done\n")
    noise = new_output("stream", name="stderr", text=TQDM + WARNINGS + UNKNOWN)
    frame = pd.DataFrame(WIDE if wide else {"status": ["ok", "skipped"], "samples/s": [8765.4321, None], "device": ["CPU", "CPU"],
                                            "note": ["", SKIPPED]}, index=["a", "b"])
    table = new_output("execute_result", data={"text/html": tables.to_html(frame), "text/plain": "table"}, execution_count=2)
    cells = [new_markdown_cell(f"# {title}\n\nThe trainable count is $r\\,(d + 3d)\\,L$, and `$HOME` is not maths."),
             new_code_cell("plot()", execution_count=1, outputs=[text, noise, plot]),
             new_code_cell("table()", execution_count=2, outputs=[table])]
    return new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})


@pytest.fixture
def built(tmp_path: Path) -> Path:
    runs = tmp_path / "runs"
    records = course()[:2] + course()[6:7]
    for r in records:
        results.save(r, results.record_dir("gpu", r["run"]["notebook"], r["run"]["config"], runs))
        nbformat.write(executed(r["run"]["config"], wide=r["run"]["config"] == "bert_bf16"),
                       runs / "gpu" / r["run"]["notebook"] / f"{r['run']['config']}.ipynb")
    (runs / "gpu" / "08_report").mkdir()
    nbformat.write(executed("report"), runs / "gpu" / "08_report" / "08_report.ipynb")  # reads records, has none
    return report.build("gpu", runs, tmp_path / "reports", rerun=False)


def test_index_links_every_executed_notebook_with_its_status_and_reason(built):
    index = built.read_text()
    hrefs = re.findall(r'<a href="([^"]+)"', index)
    assert sorted(hrefs) == ["03_mixed_precision/bert_bf16.html", "03_mixed_precision/bert_fp32.html",
                             "05_ddp_fsdp/ddp_8gpu.html", "08_report/08_report.html"]
    assert all((built.parent / h).is_file() for h in hrefs)
    assert "4 executed notebooks (3 ok, 1 skipped)" in index
    # the environment once, above the table, not on every row
    assert index.count("driver 550.54") == 1 and index.count("torch 2.5.1") == 1
    assert "train.devices is 8: it needs 8 GPUs per node and 2 are visible" in index  # the reason, in full
    assert "100 samples/s · val loss 2.00" in index  # a finished run's headline figures
    page = (built.parent / "03_mixed_precision" / "bert_fp32.html").read_text()
    stamp = re.search(r'<div class="labkit-environment"[^>]*>(.*?)</div>', page).group(1)
    assert H100 in stamp and "CUDA 12.4, driver 550.54" in stamp and "torch 2.5.1" in stamp and "status ok" in stamp
    assert "reads 3 results records" in (built.parent / "08_report" / "08_report.html").read_text()
    for h in hrefs:  # offline: no script or stylesheet from the network; the plot is inside the page
        page = (built.parent / h).read_text()
        assert not re.search(r'<(script|link)[^>]+(src|href)="https?://', page) and "data:image/png;base64," in page


def test_pages_are_clean(built):
    page = (built.parent / "03_mixed_precision" / "bert_fp32.html").read_text()
    page = page[page.index("<main"):]  # what the reader sees (the template's stylesheet says "None" in a comment)
    assert "<math" in page and "(d + 3d)" not in page and "$HOME" in page  # maths as MathML; code spans left alone
    assert "it/s" not in page and "8/16 [" not in page  # no progress bar
    assert "DataLoader will create" not in page and "FutureWarning" not in page and "warnings.warn" not in page
    assert "gradient overflow in layer 7" in page  # a warning the kit does not know stays
    assert "8,765" in page and "NaN" not in page and "None" not in page and "—" in page
    assert "device: CPU" in page  # a table's one device is named once, in its caption


def test_numbers_read_at_three_significant_figures():
    assert [tables.number(v) for v in (0.0123456, 1.23456, 12.3456, 123.456, 8765.4, 613376.0, 2.0, float("nan"), None)] == \
        ["0.0123", "1.23", "12.3", "123", "8,765", "613,376", "2.00", "—", "—"]
    text, caption = tables.tidy(pd.DataFrame({"device": ["x", "x"], "precision": ["16-mixed", "tf32"], "n": [1, None]}))
    assert caption == "device: x" and list(text["precision"]) == ["fp16", "tf32"] and list(text["n"]) == ["1", "—"]
    text, caption = tables.tidy(pd.DataFrame({"device": ["x", "y"]}))
    assert caption == "" and list(text["device"]) == ["x", "y"]  # two devices: the column stays
    assert "<td>2</td>" in tables.to_html(pd.DataFrame({"a": [1, 2]}, index=["x", "x"]))  # repeated labels: still shown


def test_comparison_sections_show_every_record_whatever_the_run_order(tmp_path):
    """A lab's first configuration ran before the second existed; its page still shows both."""
    runs = tmp_path / "runs"
    cell = new_code_cell('print("configurations:", [r["run"]["config"] for r in results.records(profile, "03_mixed_precision", runs_dir)])',
                         execution_count=1, metadata={"tags": ["comparison"]},
                         outputs=[new_output("stream", name="stdout", text="configurations: ['bert_fp32']\n")])
    for r in course()[:2]:
        results.save(r, results.record_dir("gpu", r["run"]["notebook"], r["run"]["config"], runs))
        nb = new_notebook(cells=[copy.deepcopy(cell)], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}})
        nbformat.write(nb, runs / "gpu" / r["run"]["notebook"] / f"{r['run']['config']}.ipynb")
    report.build("gpu", runs, tmp_path / "reports", rerun=True)
    for config in ("bert_fp32", "bert_bf16"):
        page = (tmp_path / "reports" / "03_mixed_precision" / f"{config}.html").read_text()
        assert "configurations: ['bert_bf16', 'bert_fp32']" in html.unescape(page), config


HARNESS = """<!doctype html><html><body><pre id="out">pending</pre><script>
const frame = src => new Promise(done => { const f = document.createElement("iframe");
  f.style.width = "1200px"; f.style.height = "800px";
  f.onload = () => done(f); setTimeout(() => done(f), 5000); f.src = src; document.body.appendChild(f); });
(async () => {
  const index = (await frame("index.html")).contentDocument;
  const pages = {index: {text: index.body.innerText}};
  for (const a of index.querySelectorAll("a[href]")) {
    const d = (await frame(a.getAttribute("href"))).contentDocument;  // null: the link did not resolve
    const images = d ? [...d.images] : [];
    const math = d && d.querySelector("math");
    const tables = d ? [...d.querySelectorAll(".labkit-table")] : [];
    pages[a.getAttribute("href")] = {opened: !!(d && d.querySelector("main")), images: images.length,
      drawn: images.filter(i => i.complete && i.naturalWidth > 0).length,
      stamp: d && d.querySelector(".labkit-environment") ? d.querySelector(".labkit-environment").textContent : null,
      math: math ? math.getBoundingClientRect().width : 0,
      tables: tables.map(t => ({overflow: getComputedStyle(t).overflowX, scroll: t.scrollWidth, width: t.clientWidth})),
      text: d ? d.querySelector("main").innerText : ""};
  }
  document.getElementById("out").textContent = JSON.stringify(pages);
})();
</script></body></html>"""


def chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no chromium here (Debian: apt-get install -y chromium)")
    return browser


def headless(browser: str, profile_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--allow-file-access-from-files", f"--user-data-dir={profile_dir}", "--hide-scrollbars",
                           *args], capture_output=True, text=True, timeout=120)


def test_pages_render_in_a_headless_browser(built, tmp_path):
    browser = chromium()
    harness = built.parent / "harness.html"
    harness.write_text(HARNESS)
    out = headless(browser, tmp_path / "chromium", "--virtual-time-budget=20000", "--dump-dom", harness.as_uri())
    pages = json.loads(html.unescape(re.search(r'<pre id="out">(.*?)</pre>', out.stdout, re.S).group(1)))
    index = pages.pop("index")
    assert len(pages) == 4, out.stdout[:2000]
    for href, page in pages.items():
        assert page["opened"], href  # the index's link resolved to a page that rendered
        assert page["images"] >= 1 and page["drawn"] == page["images"], (href, page)  # plots decoded and drawn
        assert page["stamp"], href
        assert page["math"] > 0, href  # MathML laid out by the browser itself: no script, no network
        assert "NaN" not in page["text"] and "it/s" not in page["text"] and "FutureWarning" not in page["text"]
    skipped = pages["05_ddp_fsdp/ddp_8gpu.html"]
    assert "status skipped" in skipped["stamp"]
    assert SKIPPED in skipped["text"] and "—" in skipped["text"]  # a skipped row: its reason uncut, no number
    assert "train.devices is 8: it needs 8 GPUs per node and 2 are visible" in index["text"]  # the reason, uncut
    wide = pages["03_mixed_precision/bert_bf16.html"]["tables"][0]
    assert wide["overflow"] == "auto" and wide["scroll"] > wide["width"]  # wider than the page: it scrolls, not cut


def test_screenshots_of_a_wide_table_and_a_skipped_run(built, tmp_path):
    """What a grader sees, as pictures: kept beside the test's files (tmp_path) to look at when it fails."""
    browser = chromium()
    for href in ("index.html", "03_mixed_precision/bert_bf16.html", "05_ddp_fsdp/ddp_8gpu.html"):
        shot = tmp_path / (href.replace("/", "_") + ".png")
        headless(browser, tmp_path / "chromium", "--window-size=1280,1000", f"--screenshot={shot}",
                 (built.parent / href).as_uri())
        pixels = plt.imread(shot)
        assert pixels.shape[:2] == (1000, 1280) and pixels.std() > 0.05, href  # drawn, not a blank page


def test_the_results_block_names_the_configuration_run_and_flags_slow_steps():
    from labkit import plots

    r = fake_record("03_mixed_precision", "bert_bf16", train={"precision": "bf16-mixed", "lr": 3e-5, "batch_size": 16},
                    measure={"warmup_steps": 0}, summary={"samples_per_s": 50.0})
    r["run"]["overrides"] = {"train": {"batch_size": 16}, "train.lr": 3e-5}
    r["curves"]["steps"] = [{"step": s} for s in [0.040] * 16 + [0.5] * 4]  # four stalls among twenty steps
    text = plots.banner(r)
    assert "batch 16 per device x 1 device (global 16) · lr 3e-05 · bf16 · strategy auto · optimizer adamw" in text
    assert "changed from the params file: `train.batch_size=16`, `train.lr=3e-05`" in text
    assert "median 40.0 ms" in text and "Mean step 132 ms is far above the median" in text
    assert "far above the median 40.0 ms" in report.environment_line(r)  # and in its page's header
