import collections
import json
import random
import re
import string
import time
from pathlib import Path

import numpy as np
import pytest

from labkit.data import squad
from labkit.data.synthetic.squad import generate_squad
from labkit.data.tokenizers import train_wordpiece

SAMPLE = Path(__file__).resolve().parents[2] / "shared/data" / "squad-v2-sample.json"


def example(qid: str, golds: list[str], context: str = "ctx") -> dict:
    return {"id": qid, "title": "t", "context": context, "question": "q?",
            "answers": {"text": golds, "answer_start": [0] * len(golds)}}


# ----------------------------------------------------------------------------- metric, by hand


def test_normalize_answer():
    assert squad.normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert squad.normalize_answer("an apple, a pear and the plum.") == "apple pear and plum"
    assert squad.normalize_answer("Theatre") == "theatre"  # articles only as whole words
    assert squad.normalize_answer("the") == ""


def test_evaluate_hand_worked():
    examples = [
        example("partial", ["quick brown fox"]),        # pred "brown fox jumps": EM 0, F1 2/3
        example("max", ["Denver Broncos", "Broncos"]),  # pred "the Broncos!": EM 1 via 2nd gold
        example("noans_right", []),                     # pred "": 1, 1
        example("noans_wrong", []),                     # pred "Paris": 0, 0
        example("missing", ["Paris"]),                  # no prediction: 0, 0, still counted
    ]
    preds = {"partial": "brown fox jumps", "max": "the Broncos!", "noans_right": "", "noans_wrong": "Paris"}
    r = squad.evaluate(examples, preds)
    assert r["total"] == 5 and r["HasAns_total"] == 3 and r["NoAns_total"] == 2
    assert r["exact"] == pytest.approx(100 * 2 / 5)
    assert r["f1"] == pytest.approx(100 * (2 / 3 + 1 + 1) / 5)
    assert r["HasAns_exact"] == pytest.approx(100 / 3)
    assert r["HasAns_f1"] == pytest.approx(100 * (2 / 3 + 1) / 3)
    assert r["NoAns_exact"] == pytest.approx(50) and r["NoAns_f1"] == pytest.approx(50)


def test_evaluate_empty_rules():
    # An answer of only articles/punctuation normalises to "", which is the no-answer answer.
    assert squad.evaluate([example("a", [])], {"a": "The."})["exact"] == 100
    # Gold answers that normalise to "" are dropped; an empty prediction is then wrong.
    r = squad.evaluate([example("a", ["!!", "Paris"])], {"a": ""})
    assert r["exact"] == 0 and r["f1"] == 0
    assert squad.evaluate([example("a", ["!!", "Paris"])], {"a": "paris"})["exact"] == 100
    # F1 of a non-empty prediction on an unanswerable question is 0, not partial.
    assert squad.evaluate([example("a", [])], {"a": "no answer"})["f1"] == 0
    # Subset keys appear only for non-empty subsets, as in the official script.
    assert "NoAns_total" not in squad.evaluate([example("a", ["x"])], {"a": "x"})
    assert "HasAns_total" not in squad.evaluate([example("a", [])], {"a": ""})


# ----------------------------------------------------------------------------- metric, real data


def official_eval(dataset: list, preds: dict) -> dict:
    """evaluate-v2.0.py's scoring, as in the script (all predictions present, no na_probs)."""
    def normalize(s):
        s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
        return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())

    def f1(gold, pred):
        g, p = normalize(gold).split() if gold else [], normalize(pred).split() if pred else []
        same = sum((collections.Counter(g) & collections.Counter(p)).values())
        if not g or not p:
            return int(g == p)
        return 0 if same == 0 else 2 * (same / len(p)) * (same / len(g)) / (same / len(p) + same / len(g))

    em, f, has = {}, {}, {}
    for article in dataset:
        for p in article["paragraphs"]:
            for qa in p["qas"]:
                has[qa["id"]] = bool(qa["answers"])
                golds = [a["text"] for a in qa["answers"] if normalize(a["text"])] or [""]
                em[qa["id"]] = max(int(normalize(a) == normalize(preds[qa["id"]])) for a in golds)
                f[qa["id"]] = max(f1(a, preds[qa["id"]]) for a in golds)
    out = {"exact": 100.0 * sum(em.values()) / len(em), "f1": 100.0 * sum(f.values()) / len(f), "total": len(em)}
    for name, want in (("HasAns", True), ("NoAns", False)):
        ids = [k for k, v in has.items() if v == want]
        if ids:
            out |= {f"{name}_exact": 100.0 * sum(em[k] for k in ids) / len(ids),
                    f"{name}_f1": 100.0 * sum(f[k] for k in ids) / len(ids), f"{name}_total": len(ids)}
    return out


@pytest.fixture(scope="module")
def sample() -> list[dict]:
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE} is not present")
    return squad.read_squad_json(SAMPLE)


def test_sample_counts_and_layout(sample):
    assert len(sample) == 2805
    assert sum(not e["answers"]["text"] for e in sample) == 1527
    assert set(sample[0]) == {"id", "title", "context", "question", "answers"}
    for e in sample:
        for text, start in zip(e["answers"]["text"], e["answers"]["answer_start"]):
            assert e["context"][start:start + len(text)] == text


def test_sample_perfect_and_empty_predictions(sample):
    perfect = squad.evaluate(SAMPLE, {e["id"]: (e["answers"]["text"] or [""])[0] for e in sample})
    assert perfect["exact"] == 100 and perfect["f1"] == 100
    assert (perfect["total"], perfect["HasAns_total"], perfect["NoAns_total"]) == (2805, 1278, 1527)
    empty = squad.evaluate(sample, {e["id"]: "" for e in sample})
    assert empty["exact"] == pytest.approx(100 * empty["NoAns_total"] / empty["total"])
    assert empty["HasAns_exact"] == 0 and empty["NoAns_exact"] == 100


def test_sample_matches_official_script(sample):
    rng = random.Random(0)
    preds = {}
    for e in sample:  # a mix of right, re-cased, partial or wrong spans, and empty answers
        words, gold = e["context"].split(), (e["answers"]["text"] or [""])[-1]
        start, choice = rng.randrange(len(words)), rng.random()
        preds[e["id"]] = (
            gold if choice < 0.3
            else f"The {gold.upper()}." if choice < 0.4
            else " ".join(words[start:start + rng.randint(1, 6)]) if choice < 0.9
            else ""
        )
    official = official_eval(json.loads(SAMPLE.read_text())["data"], preds)
    ours = squad.evaluate(sample, preds)
    assert ours.keys() == official.keys()
    for k in official:
        assert ours[k] == pytest.approx(official[k], abs=1e-9), k
    assert 0 < ours["f1"] < 100 and ours["exact"] < ours["f1"]


# ----------------------------------------------------------------------------- reading data


def test_read_squad_json_missing_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json") as err:
        squad.read_squad_json(missing)
    assert "data.path" in str(err.value) and "data.source: embedded" in str(err.value)


@pytest.mark.parametrize("content", [
    '{"version": "1.0", "rows": []}',
    "[1, 2, 3]",
    '{"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": [{"question": "q"}]}]}]}',
    "not json at all",
])
def test_read_squad_json_not_squad(tmp_path, content):
    path = tmp_path / "other.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="other.json") as err:
        squad.read_squad_json(path)
    assert "SQuAD" in str(err.value) and "paragraphs" in str(err.value)


def test_load_examples_local_and_limit(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(generate_squad(4, seed=3)))
    examples = squad.load_examples("local", "validation", path=str(path))
    assert examples == squad.flatten_squad(generate_squad(4, seed=3), "x")
    assert squad.load_examples("local", "train", path=str(path), limit=5) == examples[:5]
    with pytest.raises(ValueError, match="source"):
        squad.load_examples("web", "train")


def test_load_examples_embedded_splits():
    train = squad.load_examples("embedded", "train")
    val = squad.load_examples("embedded", "validation")
    assert len(train) > 3000 and len(val) > 500
    assert not {e["context"] for e in train} & {e["context"] for e in val}
    assert not {e["id"] for e in train} & {e["id"] for e in val}
    more = squad.load_examples("embedded", "train", limit=5000)
    assert len(more) == 5000 and more[: len(train)] == train
    assert squad.load_examples("embedded", "train", seed=1)[:50] != train[:50]


def test_load_examples_hub(monkeypatch):
    import datasets

    rows = squad.flatten_squad(generate_squad(2), "x")
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config=None, split=None: datasets.Dataset.from_list(rows))
    assert squad.load_examples("hub", "train", limit=3) == rows[:3]

    def offline(name, config=None, split=None):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="rajpurkar/squad_v2") as err:
        squad.load_examples("hub", "validation")
    assert "source: local" in str(err.value) and "source: embedded" in str(err.value)


# ----------------------------------------------------------------------------- synthetic data


def test_generated_data_is_consistent():
    start = time.process_time()  # this process's CPU time: other work on a loaded machine does not count
    data = generate_squad(180, seed=0)
    assert time.process_time() - start < 2.0
    examples = squad.flatten_squad(data, "generated")
    assert len(examples) >= 2000
    assert data["version"] == "v2.0"
    for article in data["data"]:
        assert len(article["paragraphs"]) >= 2
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                assert "{" not in qa["question"] and qa["question"].endswith("?")
                assert qa["is_impossible"] == (not qa["answers"])
                for a in qa["answers"] + qa.get("plausible_answers", []):
                    assert a["text"] and context[a["answer_start"]:a["answer_start"] + len(a["text"])] == a["text"]
    impossible = sum(not e["answers"]["text"] for e in examples) / len(examples)
    assert 0.28 < impossible < 0.39
    assert len({e["id"] for e in examples}) == len(examples)
    # Varied: many distinct contexts and questions, several kinds of article.
    assert len({e["context"] for e in examples}) > 400 and len({e["question"] for e in examples}) > 1000


def test_generated_data_is_deterministic():
    assert json.dumps(generate_squad(20, seed=7)) == json.dumps(generate_squad(20, seed=7))
    assert generate_squad(20, seed=7) != generate_squad(20, seed=8)
    assert generate_squad(30, seed=7)["data"][:20] == generate_squad(20, seed=7)["data"]


def test_read_squad_json_reads_generated_file(tmp_path):
    data = generate_squad(3, seed=1)
    (tmp_path / "g.json").write_text(json.dumps(data))
    assert squad.read_squad_json(tmp_path / "g.json") == squad.flatten_squad(data, "g")


# ----------------------------------------------------------------------------- features


@pytest.fixture(scope="module")
def qa_data():
    examples = squad.load_examples("embedded", "train", limit=240)
    long_context = ("Records of the valley are sparse. " * 12 + "The bridge at Ostvale was built in 1622 by "
                    "Ilse Kestford. " + "Later floods changed the river. " * 12)
    examples.append({"id": "long", "title": "Ostvale", "context": long_context,
                     "question": "Who built the bridge at Ostvale?",
                     "answers": {"text": ["Ilse Kestford"], "answer_start": [long_context.index("Ilse Kestford")]}})
    tokenizer = train_wordpiece([e["context"] for e in examples] + [e["question"] for e in examples], 2000)
    return examples, tokenizer


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_train_features_windows_and_labels(qa_data, padding_side):
    examples, tokenizer = qa_data
    tokenizer.padding_side = padding_side
    try:
        train = squad.prepare_train_features(examples, tokenizer, max_length=40, doc_stride=12)
        evalf = squad.prepare_eval_features(examples, tokenizer, max_length=40, doc_stride=12)
    finally:
        tokenizer.padding_side = "right"
    assert set(train) == {"input_ids", "attention_mask", "token_type_ids", "start_positions", "end_positions"}
    assert evalf["input_ids"] == train["input_ids"] and all(len(ids) == 40 for ids in train["input_ids"])
    windows = collections.Counter(evalf["example_id"])
    assert windows["long"] >= 5 and len(train["input_ids"]) > len(examples)
    by_id = {e["id"]: e for e in examples}
    found = set()
    for i, example_id in enumerate(evalf["example_id"]):
        e, offsets = by_id[example_id], evalf["offset_mapping"][i]
        start, end = train["start_positions"][i], train["end_positions"][i]
        context_chars = [o for o in offsets if o is not None]
        if padding_side == "right":
            assert offsets[0] is None and train["input_ids"][i][0] == tokenizer.cls_token_id
        if offsets[start] is None:  # labelled "no answer": the first token outside the context
            assert start == end == offsets.index(None)
            if e["answers"]["text"]:
                answer_start = e["answers"]["answer_start"][0]
                answer_end = answer_start + len(e["answers"]["text"][0])
                assert not (context_chars[0][0] <= answer_start and answer_end <= context_chars[-1][1])
        else:
            assert e["context"][offsets[start][0]:offsets[end][1]] == e["answers"]["text"][0]
            found.add(example_id)
    assert found == {e["id"] for e in examples if e["answers"]["text"]}


def test_eval_features_offsets_cover_context_only(qa_data):
    examples, tokenizer = qa_data
    evalf = squad.prepare_eval_features(examples[:20], tokenizer, max_length=64, doc_stride=16)
    for ids, types, offsets in zip(evalf["input_ids"], evalf["token_type_ids"], evalf["offset_mapping"]):
        for token, segment, offset in zip(ids, types, offsets):
            is_context = segment == 1 and token not in (tokenizer.sep_token_id, tokenizer.pad_token_id)
            assert (offset is not None) == is_context


# ----------------------------------------------------------------------------- post-processing


def peaked_logits(train: dict, null: float = 4.0, span: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits of `null` at token 0 of every window and `span` at each labelled answer span."""
    n, length = len(train["input_ids"]), len(train["input_ids"][0])
    starts, ends = np.full((n, length), -10.0), np.full((n, length), -10.0)
    starts[:, 0], ends[:, 0] = null, null
    for i, (s, e) in enumerate(zip(train["start_positions"], train["end_positions"])):
        if s != 0:
            starts[i, s], ends[i, e] = span, span
    return starts, ends


def test_postprocess_round_trip(qa_data):
    examples, tokenizer = qa_data
    train = squad.prepare_train_features(examples, tokenizer, 40, 12)
    evalf = squad.prepare_eval_features(examples, tokenizer, 40, 12)
    starts, ends = peaked_logits(train)
    preds = squad.postprocess_predictions(examples, evalf, starts, ends)
    assert preds == {e["id"]: (e["answers"]["text"] or [""])[0] for e in examples}
    assert squad.evaluate(examples, preds)["exact"] == 100
    # No-answer logits highest in every window: every prediction is "".
    starts[:, 0] += 100
    ends[:, 0] += 100
    assert set(squad.postprocess_predictions(examples, evalf, starts, ends).values()) == {""}


def test_postprocess_threshold_and_length(qa_data):
    examples, tokenizer = qa_data
    answerable = [e for e in examples if len(e["answers"]["text"]) and len(e["answers"]["text"][0].split()) >= 2][:20]
    train = squad.prepare_train_features(answerable, tokenizer, 64, 16)
    evalf = squad.prepare_eval_features(answerable, tokenizer, 64, 16)
    starts, ends = peaked_logits(train, null=4.5, span=5.0)  # null 9 vs span 10: answer wins by 1
    golds = {e["id"]: e["answers"]["text"][0] for e in answerable}
    assert squad.postprocess_predictions(answerable, evalf, starts, ends) == golds
    assert set(squad.postprocess_predictions(answerable, evalf, starts, ends,
                                             null_score_diff_threshold=-2).values()) == {""}
    # Multi-token answers are out of reach with max_answer_length=1; nothing else scores.
    short = squad.postprocess_predictions(answerable, evalf, starts, ends, max_answer_length=1)
    assert all(short[k] != golds[k] for k in golds)


def reference_postprocess(examples, features, all_start, all_end, n_best=20, max_answer_length=30):
    """utils_qa.postprocess_qa_predictions (version_2_with_negative), written as its loops."""
    per_example = collections.defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        per_example[example_id].append(i)
    out = {}
    for e in examples:
        null, candidates = None, []
        for i in per_example[e["id"]]:
            start_logits, end_logits, offsets = all_start[i], all_end[i], features["offset_mapping"][i]
            null = start_logits[0] + end_logits[0] if null is None else min(null, start_logits[0] + end_logits[0])
            for s in np.argsort(start_logits)[-1: -n_best - 1: -1]:
                for t in np.argsort(end_logits)[-1: -n_best - 1: -1]:
                    if offsets[s] is None or offsets[t] is None or t < s or t - s + 1 > max_answer_length:
                        continue
                    candidates.append((start_logits[s] + end_logits[t], e["context"][offsets[s][0]:offsets[t][1]]))
        best = max(candidates, key=lambda c: c[0], default=None)
        out[e["id"]] = "" if best is None or null - best[0] > 0 else best[1]
    return out


def test_postprocess_matches_reference_loops(qa_data):
    examples, tokenizer = qa_data
    evalf = squad.prepare_eval_features(examples, tokenizer, 48, 16)
    rng = np.random.default_rng(0)
    starts, ends = rng.normal(size=(2, len(evalf["input_ids"]), 48))
    for kwargs in ({}, {"n_best": 3, "max_answer_length": 4}):
        ours = squad.postprocess_predictions(examples, evalf, starts, ends, **kwargs)
        assert ours == reference_postprocess(examples, evalf, starts, ends, **kwargs)
        assert 0 < sum(p == "" for p in ours.values()) < len(ours)


def test_answers_that_miss_their_text_are_counted_and_many_refuse_the_file(tmp_path):
    data = generate_squad(num_articles=4, seed=3)
    answers = [a for art in data["data"] for par in art["paragraphs"] for qa in par["qas"] for a in qa["answers"]]
    path = tmp_path / "train-v2.0.json"
    answers[0]["answer_start"] += 1  # one answer off by a character: counted and warned about, still read
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match=rf"{re.escape(str(path))}: 1 of {len(answers)} answers are not at their answer_start"):
        examples = squad.load_examples("local", "train", path=str(path))
    assert squad.misplaced_answers(examples) == 1
    for a in answers[: len(answers) // 4]:  # a quarter point past their context: a file built wrongly
        a["answer_start"] = 10_000
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: {len(answers) // 4} of {len(answers)} answers are not at"):
        squad.load_examples("local", "train", path=str(path))
