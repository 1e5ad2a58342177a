"""SimCLS re-ranking (notebook 09): the ranking loss against a hand computation and the original's formulation,
the CSV reader's errors, the generated data, diverse beam search against greedy decoding, the evaluation's
choice, one configuration trained on the smoke profile, and the notebook executed on the smoke profile."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import labkit
from labkit import preflight, results
from labkit.config import Config, ModelConfig
from labkit.data.synthetic.cord19 import generate_cord19
from labkit.data.tokenizers import train_unigram
from labkit.launch import runall
from labkit.models import t5
from labkit.preflight import setting_conflicts
from labkit.tasks import simcls


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    """Candidates cached under the test's own folder, so a test never reads another run's candidates."""
    folder = tmp_path / "cache"
    monkeypatch.setattr(simcls, "CACHE", folder)
    return folder


# ----------------------------------------------------------------------------- the ranking loss


def test_ranking_loss_equals_the_hand_computation():
    # Candidates best first by ROUGE; margin 0.1 per step of distance in that order.
    # d=1: pairs (1,2) 0.70-0.50+0.1=0.30, (2,3) 0.40-0.70+0.1<0 -> 0, (3,4) 0.45-0.40+0.1=0.15; mean 0.15
    # d=2: (1,3) 0.40-0.50+0.2=0.10, (2,4) 0.45-0.70+0.2<0 -> 0; mean 0.05
    # d=3: (1,4) 0.45-0.50+0.3=0.25
    # reference 0.60 vs candidates: only 0.70 beats it, by 0.10; mean over 4 = 0.025.   Total 0.475
    loss = simcls.ranking_loss(torch.tensor([[0.50, 0.70, 0.40, 0.45]]), torch.tensor([0.60]), margin=0.1)
    assert loss.item() == pytest.approx(0.475, abs=1e-6)
    # gold_margin 0.2: reference terms 0.1, 0.3, 0.0, 0.05 -> mean 0.1125; gold_weight 2 doubles it
    loss = simcls.ranking_loss(torch.tensor([[0.50, 0.70, 0.40, 0.45]]), torch.tensor([0.60]), margin=0.1,
                               gold_margin=0.2, gold_weight=2.0)
    assert loss.item() == pytest.approx(0.45 + 2 * 0.1125, abs=1e-6)


def original_ranking_loss(score, summary_score, margin, gold_margin, gold_weight):
    """The original lab's RankingLoss (SimCLS's model.py), written with torch.nn.MarginRankingLoss as there."""
    total = torch.nn.MarginRankingLoss(0.0)(score, score, torch.ones_like(score))
    for i in range(1, score.size(1)):
        pos, neg = score[:, :-i].reshape(-1), score[:, i:].reshape(-1)
        total = total + torch.nn.MarginRankingLoss(margin * i)(pos, neg, torch.ones_like(pos))
    pos, neg = summary_score.unsqueeze(-1).expand_as(score).reshape(-1), score.reshape(-1)
    return total + gold_weight * torch.nn.MarginRankingLoss(gold_margin)(pos, neg, torch.ones_like(pos))


@pytest.mark.parametrize("margin, gold_margin, gold_weight", [(0.01, 0.0, 1.0), (0.1, 0.05, 0.5), (0.0, 0.0, 0.0)])
def test_ranking_loss_and_its_gradient_equal_the_originals(margin, gold_margin, gold_weight):
    torch.manual_seed(0)
    scores = (torch.rand(3, 6) * 0.2).requires_grad_()
    reference = (torch.rand(3) * 0.2).requires_grad_()
    ours = simcls.ranking_loss(scores, reference, margin, gold_margin, gold_weight)
    theirs = original_ranking_loss(scores, reference, margin, gold_margin, gold_weight)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-7) and ours.item() > 0
    assert all(torch.allclose(a, b) for a, b in zip(torch.autograd.grad(ours, (scores, reference)),
                                                    torch.autograd.grad(theirs, (scores, reference))))


def test_a_scorer_that_orders_the_candidates_beyond_the_margins_has_nothing_to_learn():
    scores = torch.tensor([[0.9, 0.7, 0.5, 0.3]], requires_grad=True)
    loss = simcls.ranking_loss(scores, torch.tensor([1.0]), margin=0.1)
    loss.backward()
    assert loss.item() == 0 and not scores.grad.any()
    # the same gaps with the order reversed cost every pair, more at larger distances
    assert simcls.ranking_loss(torch.tensor([[0.3, 0.5, 0.7, 0.9]]), torch.tensor([1.0]), margin=0.1).item() > 1


# ----------------------------------------------------------------------------- data


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_reader_reads_the_original_layout(tmp_path):
    path = write(tmp_path / "clean_covid.csv",
                 'cord_uid,title,abstract\n'
                 'a1,"Remdesivir, a trial","Background: one.\nMethods: two, with a comma."\n'
                 'a2,,An abstract without a title is dropped\n'
                 'a3,  Title three ,  Abstract three  \n')
    assert simcls.read_csv(path) == [{"abstract": "Background: one.\nMethods: two, with a comma.", "title": "Remdesivir, a trial"},
                                     {"abstract": "Abstract three", "title": "Title three"}]


def test_csv_reader_errors_name_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.csv.*'abstract'.*'title'.*data\.source: embedded"):
        simcls.read_csv(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match=r"no column 'title' \(its columns: 'abstract', 'summary'\)"):
        simcls.read_csv(write(tmp_path / "columns.csv", "abstract,summary\nsome text,a title\n"))
    with pytest.raises(ValueError, match=r"no column 'abstract' or 'title'"):
        simcls.read_csv(write(tmp_path / "other.csv", "text,label\nx,y\n"))
    with pytest.raises(ValueError, match=r"empty\.csv: not a readable CSV"):
        simcls.read_csv(write(tmp_path / "empty.csv", ""))
    with pytest.raises(ValueError, match=r"no row has both an abstract and a title"):
        simcls.read_csv(write(tmp_path / "blank.csv", "abstract,title\ntext,\n,title\n"))


def test_local_source_holds_out_the_last_tenth(tmp_path):
    rows = generate_cord19(30, seed=5)
    path = tmp_path / "pairs.csv"
    import pandas as pd

    pd.DataFrame(rows).to_csv(path, index=False)
    cfg = Config.model_validate({"task": "simcls", "data": {"source": "local", "path": str(path), "doc_stride": 0}})
    train, val = simcls.load_pairs(cfg)
    assert train == rows[:27] and val == rows[27:]


def test_generated_pairs_are_titles_of_their_abstracts():
    rows = generate_cord19(200, seed=0)
    assert rows == generate_cord19(200, seed=0) and rows != generate_cord19(200, seed=1)
    assert generate_cord19(50, seed=0) == rows[:50]  # a longer set extends a shorter one
    assert len({r["title"] for r in rows}) > 190 and all(set(r) == {"abstract", "title"} for r in rows)
    for r in rows:  # the title's content words come from its abstract, as a summary's do
        words = [w.strip(":?,").lower() for w in r["title"].split()]
        shared = sum(w in r["abstract"].lower() for w in words if len(w) > 3)
        assert shared >= 0.5 * sum(len(w) > 3 for w in words), r


# ----------------------------------------------------------------------------- candidates


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    rows = generate_cord19(40, seed=0)
    tokenizer = train_unigram([x for r in rows for x in r.values()], vocab_size=400)
    model, _ = t5.build(ModelConfig(preset="tiny"), len(tokenizer))
    batch = tokenizer([r["abstract"] for r in rows[:5]], max_length=64, truncation=True, padding=True, return_tensors="pt")
    return model.eval(), batch


def test_first_group_of_diverse_beam_search_is_greedy_decoding(generator):
    model, batch = generator
    ids, logprob = simcls.diverse_beam_search(model, batch["input_ids"], batch["attention_mask"], groups=4,
                                              penalty=1.0, max_new_tokens=12)
    greedy = model.generate(**batch, max_new_tokens=12, do_sample=False, num_beams=1)[:, 1:]  # without the start token
    assert ids.shape[:2] == (5, 4) and logprob.shape == (5, 4)
    width = min(ids.shape[2], greedy.shape[1])
    assert torch.equal(ids[:, 0, :width], greedy[:, :width])
    assert (logprob <= 0).all()


def test_diversity_penalty_pushes_later_groups_off_the_first_groups_tokens(generator):
    model, batch = generator
    same, _ = simcls.diverse_beam_search(model, batch["input_ids"], batch["attention_mask"], 3, 0.0, 6)
    assert all(torch.equal(same[:, g], same[:, 0]) for g in range(3))  # no penalty: every group decodes greedily
    apart, _ = simcls.diverse_beam_search(model, batch["input_ids"], batch["attention_mask"], 3, 1e4, 6)
    first = apart[:, :, 0]  # a huge penalty forbids a token an earlier group chose at the same step
    assert all(len(set(row.tolist())) == 3 for row in first)


def test_candidates_are_ordered_by_rouge_and_the_top_beam_is_tracked():
    row = {"abstract": "a", "title": "t", "candidates": ["c0", "c1", "c2"],
           "rouge": [[0.2, 0.0, 0.2], [0.5, 0.1, 0.4], [0.2, 0.0, 0.2]]}
    ordered = simcls.order_by_rouge(row)
    assert ordered["candidates"] == ["c1", "c0", "c2"] and ordered["top_beam"] == 1  # ties keep the beam order
    rouge = simcls.rouge_scores(["remdesivir reduces mortality"], [["remdesivir reduced mortality", "masks"]])[0]
    assert rouge[0] == pytest.approx([1.0, 1.0, 1.0]) and rouge[1] == [0.0, 0.0, 0.0]  # Porter stemming


class FixedScores(nn.Module):
    """A scorer whose choice is known: it scores candidate k of every abstract by the table given."""

    def __init__(self, scores: list[list[float]]):
        super().__init__()
        self.scores = nn.Parameter(torch.tensor(scores), requires_grad=False)

    def forward(self, input_ids, candidate_ids, reference_ids=None):
        return {"scores": self.scores[: len(input_ids)]}


def test_evaluation_scores_the_chosen_candidate_the_top_beam_and_the_oracle():
    rows = [simcls.order_by_rouge({"abstract": "a b", "title": "t", "candidates": ["x", "y"], "rouge": r})
            for r in ([[0.1, 0.0, 0.1], [0.5, 0.2, 0.4]], [[0.3, 0.1, 0.3], [0.0, 0.0, 0.0]])]
    tokenizer = simcls.load_scorer_tokenizer(Config.model_validate({"task": "simcls"}), ["a b t x y"] * 20)
    val_set = simcls.Reranking(rows, tokenizer, 16, 8)
    evaluate = simcls.make_evaluate(val_set, simcls.PadBatch(tokenizer.pad_token_id, "dynamic", 16, 8))
    # abstract 1: candidates best first are y (0.5, 0.2, 0.4), x; top beam x.  abstract 2: x (0.3, 0.1, 0.3), y; top beam x
    metrics = evaluate(FixedScores([[0.0, 1.0], [0.0, 1.0]]), 1, None)  # picks the second of each: x, then y
    assert metrics["rouge1"] == pytest.approx(100 * (0.1 + 0.0) / 2) and metrics["picked_best"] == 0
    assert metrics["top_beam_rouge1"] == pytest.approx(100 * (0.1 + 0.3) / 2)
    assert metrics["oracle_rouge1"] == pytest.approx(100 * (0.5 + 0.3) / 2)
    assert metrics["oracle_rouge2"] == pytest.approx(100 * (0.2 + 0.1) / 2)
    assert evaluate(FixedScores([[1.0, 0.0], [1.0, 0.0]]), 2, None)["picked_best"] == 100
    assert evaluate(FixedScores([[1.0, 0.0], [0.0, 1.0]]), 2, 1)["oracle_rouge1"] == pytest.approx(50)  # the first row only


def test_offline_scorer_tokenizer_numbers_tokens_as_roberta_and_batches_pad_with_its_pad():
    texts = [x for r in generate_cord19(30, seed=2) for x in r.values()]
    tokenizer = simcls.load_scorer_tokenizer(Config.model_validate({"task": "simcls"}), texts)
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id) == (0, 1, 2)  # roberta-base's ids
    ids = tokenizer("Remdesivir and mortality in children")["input_ids"]
    assert ids[0] == 0 and ids[-1] == 2 and tokenizer.decode(ids[1:-1]) == "Remdesivir and mortality in children"
    rows = [simcls.order_by_rouge({"abstract": texts[0], "title": "a title", "candidates": ["one", "two words", "three"],
                                   "rouge": [[0.0] * 3] * 3})]
    item = simcls.Reranking(rows, tokenizer, 16, 6)[0]
    assert len(item["input_ids"]) == 16 and len(item["candidate_ids"]) == 3  # the abstract is cut to max_length
    for padding, width in (("dynamic", max(map(len, item["candidate_ids"]))), ("max_length", 6)):
        batch = simcls.PadBatch(tokenizer.pad_token_id, padding, 16, 6)([item, item])
        assert batch["candidate_ids"].shape == (2, 3, width) and batch["input_ids"].shape == (2, 16)
        assert (batch["candidate_ids"][0, 0, len(item["candidate_ids"][0]):] == 1).all()


def test_packed_batches_are_refused_before_any_work():
    cfg = Config.model_validate({"task": "simcls", "data": {"padding": "packed", "doc_stride": 0}})
    assert any("simcls" in problem for problem in setting_conflicts(cfg))


def test_tables_show_each_setup_and_rouge_before_and_after_re_ranking():
    from labkit import plots

    def record(config, status, **summary):
        params = {"data": {"num_workers": 2}, "train": {"precision": "bf16-mixed", "batch_size": 4, "grad_accum": 2},
                  "model": {"checkpointing": "full", "checkpoint_every": 2}, "simcls": {"num_candidates": 4}}
        return {"run": {"config": config}, "status": status, "params": params, "env": {"device": "cpu"},
                "summary": summary, "curves": {"epoch_time_s": [3.0, 2.0]}, "error": "" if status == "ok" else "skipped: x"}

    rouge = {f"{p}{k}": v for p, base in (("", 20), ("top_beam_", 10), ("oracle_", 30))
             for k, v in zip(("rouge1", "rouge2", "rougeL"), (base, base / 2, base - 1))}
    done = record("bf16", "ok", step_s=0.5, data_s=0.1, fwd_bwd_s=0.3, optimizer_s=0.1, samples_per_s=8.0,
                  final_train_loss=0.1, picked_best=50.0, **rouge)
    skipped = record("fp16", "skipped")
    assert plots.setup_of(done) == "2 worker(s) · bf16 · every layer checkpointed · batch 4 x 2 accumulated"
    times = plots.simcls_table([done, skipped])
    assert times.loc["bf16", "step (ms)"] == 500 and times.loc["bf16", "loader wait / step (ms)"] == 100
    assert times.loc["bf16", "compute / step (ms)"] == 400 and times.loc["bf16", "last epoch (s)"] == 2.0
    assert times.loc["fp16", "status"] == "skipped" and times.loc["fp16", "note"] == "skipped: x"
    table = plots.rouge_table([done, skipped])
    assert list(table.index) == ["bf16"]  # a run without ROUGE has no row
    assert table.loc["bf16", ("generator's top beam", "R-1")] == 10 and table.loc["bf16", ("re-ranked by the scorer", "R-2")] == 10
    assert table.loc["bf16", ("best candidate (oracle)", "R-L")] == 29 and table.loc["bf16", ("", "picked best (%)")] == 50


# ----------------------------------------------------------------------------- one configuration, trained


SMALL = {"data.train_examples": 32, "data.val_examples": 8, "simcls.generator_steps": 10, "simcls.num_candidates": 3,
         "train.epochs": 1, "measure.profile_steps": 0}


@pytest.mark.slow
def test_smoke_configuration_trains_and_a_cached_run_starts_from_the_same_scorer(tmp_path, cache):
    first = labkit.run("params/09_simcls/workers_0.yaml", "smoke", SMALL, tmp_path / "runs")
    s, info = first["summary"], first["info"]
    assert first["status"] == "ok" and info["weights"] == "random" and info["num_candidates"] == 3
    assert info["candidates_generated_s"] > 0 and info["generator_steps"] == 10
    assert info["generator_final_loss"] < info["generator_first_loss"]  # the generator was trained before generating
    assert Path(info["candidates_cache"]).parent == cache and s["steps"] == 4  # 32 abstracts, 4 x 2 a step, one epoch
    for rouge in ("rouge1", "rouge2", "rougeL"):
        assert 0 <= s[rouge] <= s[f"oracle_{rouge}"] <= 100 and s[f"top_beam_{rouge}"] <= s[f"oracle_{rouge}"]
    assert first["curves"]["train_loss"] and first["curves"]["val_loss"]

    again = labkit.run("params/09_simcls/workers_0.yaml", "smoke", SMALL, tmp_path / "again")
    assert again["info"]["candidates_generated_s"] == 0 and again["info"]["candidates_cache"] == info["candidates_cache"]
    # the generator's random weights come from a stream of their own: the scorer trains the same either way
    assert again["curves"]["train_loss"] == first["curves"]["train_loss"]


# ----------------------------------------------------------------------------- the notebook


@pytest.mark.slow
def test_notebook_09_runs_on_smoke(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # one math thread per kernel on a busy 2-core machine
    # bf16, which a CPU without bf16 instructions skips (this one is made to look so), runs as the run cell runs it,
    # without a kernel of its own; the notebook executes for the baseline, on the smaller run above
    monkeypatch.setattr(preflight, "cpu_multiplies", lambda dtype: False)
    labkit.run("params/09_simcls/bf16.yaml", "smoke", SMALL, tmp_path)
    assert runall.main(["--profile", "smoke", "--only", "09", "--config", "baseline", "--runs-dir", str(tmp_path)],
                       overrides=SMALL) == 0
    runs = {r["run"]["config"]: r for r in results.records("smoke", "09_simcls", tmp_path)}
    assert runs["baseline"]["status"] == "ok" and runs["baseline"]["params"]["data"]["num_workers"] == 2
    assert runs["bf16"]["status"] == "skipped" and "bf16-mixed" in runs["bf16"]["error"]
    executed = json.loads((tmp_path / "smoke" / "09_simcls" / "baseline.ipynb").read_text())
    outputs = [o for cell in executed["cells"] if cell["cell_type"] == "code" for o in cell["outputs"]]
    assert not [o for o in outputs if o["output_type"] == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # loss curves (2), ROUGE bars, step split
    text = json.dumps(outputs)
    assert "re-ranked by the scorer" in text and "Reference:" in text and "Exercise not answered yet" in text
