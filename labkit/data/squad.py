"""SQuAD 2.0 extractive QA: data (official JSON, the Hub, or an embedded synthetic set), the
windowed features a QA model trains on, span post-processing and the official metric.

Examples use the Hugging Face `squad_v2` layout:
    {"id", "title", "context", "question", "answers": {"text": [...], "answer_start": [...]}}
with empty answer lists for unanswerable questions.

Feature building and post-processing follow transformers' `examples/pytorch/question-answering`
(`run_qa.py`, `utils_qa.py`); `evaluate` reproduces the official `evaluate-v2.0.py`.
"""

from __future__ import annotations

import collections
import json
import math
import re
import string
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from labkit.data.sources import load_hub
from labkit.data.synthetic.squad import MIN_QUESTIONS_PER_ARTICLE, generate_squad

EMBEDDED_ARTICLES = {"train": 300, "validation": 50}  # about 3,500 and 600 questions
SPLIT_FILES = {"train": "train-v2.0.json", "validation": "dev-v2.0.json"}  # official names, for a folder path
FORMAT_HINT = (
    "the official SQuAD format: an object with a 'data' list of articles, each with 'title' and "
    "'paragraphs'; each paragraph has a 'context' and 'qas' with 'id', 'question' and 'answers' "
    "(a list of {'text', 'answer_start'}), plus 'is_impossible' in SQuAD 2.0"
)


# ----------------------------------------------------------------------------- reading data


def flatten_squad(obj: dict, source: str) -> list[dict]:
    """Official SQuAD JSON (already parsed) -> one example per question, in the `squad_v2` layout.
    `source` names where `obj` came from, for error messages."""
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list):
        raise ValueError(f"{source} is not a SQuAD file: expected {FORMAT_HINT}")
    examples = []
    try:
        for article in obj["data"]:
            title = article.get("title", "")
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    # Impossible questions have no gold answers; their plausible_answers are
                    # distractors and are not used for training or scoring.
                    answers = [] if qa.get("is_impossible", False) else qa["answers"]
                    examples.append({
                        "id": qa["id"],
                        "title": title,
                        "context": context,
                        "question": qa["question"],
                        "answers": {
                            "text": [a["text"] for a in answers],
                            "answer_start": [int(a["answer_start"]) for a in answers],
                        },
                    })
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(
            f"{source} is not a SQuAD file ({type(err).__name__}: {err}): expected {FORMAT_HINT}"
        ) from None
    return examples


# Official SQuAD has no answer whose answer_start misses its text; a file with more than this share of such
# answers was built wrongly (offsets in bytes, or of another context) and would train on wrong spans.
MAX_MISPLACED = 0.05


def misplaced_answers(examples: list[dict]) -> int:
    """How many gold answers do not stand at their `answer_start` in their context (none in official data)."""
    return sum(e["context"][start:start + len(text)] != text
               for e in examples for text, start in zip(e["answers"]["text"], e["answers"]["answer_start"]))


def check_answers(examples: list[dict], source: str) -> int:
    """The number of misplaced answers (misplaced_answers), warned about; a ValueError naming `source` when more
    than MAX_MISPLACED of all answers are misplaced."""
    misplaced, total = misplaced_answers(examples), sum(len(e["answers"]["text"]) for e in examples)
    if misplaced and misplaced > MAX_MISPLACED * total:
        raise ValueError(f"{source}: {misplaced} of {total} answers are not at their answer_start in the context "
                         f"(more than {MAX_MISPLACED:.0%}): answer_start must be the character offset of the answer "
                         "text in its paragraph's context")
    if misplaced:
        warnings.warn(f"{source}: {misplaced} of {total} answers are not at their answer_start in the context; "
                      "they train on the span answer_start points at", stacklevel=2)
    return misplaced


def read_squad_json(path: str | Path) -> list[dict]:
    """Read an official-format SQuAD (1.1 or 2.0) JSON file into flat examples."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"SQuAD file not found: {path}. Point data.path at an official-format SQuAD 2.0 JSON "
            "(e.g. train-v2.0.json / dev-v2.0.json), or use data.source: embedded for the offline "
            "synthetic set."
        )
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); expected {FORMAT_HINT}") from None
    return flatten_squad(obj, str(path))


def load_examples(
    source: str,
    split: str,
    path: str | None = None,
    hub_name: str = "rajpurkar/squad_v2",
    limit: int | None = None,
    seed: int = 0,
    context_length: str = "short",
) -> list[dict]:
    """Examples of one split ("train" or "validation") from `source`:
    "embedded": the synthetic set (offline; the two splits are disjoint articles),
    "local": an official-format JSON file (`path`; pass a separate file per split; a folder is
    searched for the official file names train-v2.0.json / dev-v2.0.json),
    "hub": `datasets.load_dataset(hub_name, split=split)`.
    `limit` keeps the first N examples; `context_length` is the embedded set's (see `labkit.data.synthetic.squad.generate_squad`)."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown split {split!r}: expected 'train' or 'validation'")
    if source == "embedded":
        # Disjoint seeds per split (2s, 2s+1), so validation articles never repeat training ones.
        num_articles = EMBEDDED_ARTICLES[split] if limit is None else math.ceil(limit / MIN_QUESTIONS_PER_ARTICLE)
        data = generate_squad(num_articles, 2 * seed + (split == "validation"), context_length)
        examples = flatten_squad(data, "embedded")
    elif source == "local":
        if path is None:
            raise ValueError("data.source is 'local' but no path was given: set data.path to a SQuAD 2.0 JSON file")
        file = Path(path)
        if file.is_dir():
            file = file / SPLIT_FILES[split]
        examples = read_squad_json(file)
        check_answers(examples, str(file))
    elif source == "hub":
        examples = _load_hub(hub_name, split, limit)
        check_answers(examples, f"{hub_name} ({split})")
    else:
        raise ValueError(f"unknown data source {source!r}: expected 'embedded', 'local' or 'hub'")
    return examples if limit is None else examples[:limit]


def _load_hub(hub_name: str, split: str, limit: int | None) -> list[dict]:
    ds = load_hub(hub_name, split=split)
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    keys = ("id", "title", "context", "question", "answers")
    return [{k: row[k] for k in keys} for row in ds]


# ----------------------------------------------------------------------------- features
# A window's "no answer" label is its first token outside the context: token 0 ([CLS] for BERT)
# whenever the tokenizer pads on the right, since the question comes first. run_qa.py uses the
# CLS token and falls back to token 0, which for a left-padding tokenizer without CLS can be a
# context token, i.e. a real answer start; this rule never is, and post-processing finds the same
# token from the offsets alone.


def _tokenize(examples: list[dict], tokenizer: Any, max_length: int, doc_stride: int) -> tuple[Any, int]:
    """Windows of (question, context) pairs; returns the encoding and the context's sequence id.
    Left-padding tokenizers get (context, question), as in run_qa.py, so that padding never sits
    between question and context."""
    pad_on_right = tokenizer.padding_side == "right"
    # Some SQuAD questions start with long runs of spaces that would only waste the window.
    questions = [e["question"].lstrip() for e in examples]
    contexts = [e["context"] for e in examples]
    encoding = tokenizer(
        questions if pad_on_right else contexts,
        contexts if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    return encoding, 1 if pad_on_right else 0


def _model_inputs(encoding: Any) -> dict[str, list]:
    return {k: v for k, v in encoding.items() if k not in ("offset_mapping", "overflow_to_sample_mapping")}


def prepare_train_features(examples: list[dict], tokenizer: Any, max_length: int, doc_stride: int) -> dict[str, list]:
    """Overlapping windows of `max_length` tokens (consecutive windows share `doc_stride` context
    tokens), labelled with the answer's first and last token; a window that does not hold the
    whole answer, or an unanswerable question, is labelled with the no-answer token (token 0 for
    right-padding tokenizers, see above). Keys: input_ids, attention_mask, token_type_ids (when
    the tokenizer makes them), start_positions, end_positions."""
    encoding, context_id = _tokenize(examples, tokenizer, max_length, doc_stride)
    features = _model_inputs(encoding)
    features["start_positions"], features["end_positions"] = [], []
    for i, offsets in enumerate(encoding["offset_mapping"]):
        answers = examples[encoding["overflow_to_sample_mapping"][i]]["answers"]
        sequence_ids = encoding.sequence_ids(i)
        in_context = [s == context_id for s in sequence_ids]
        start = end = in_context.index(False)
        if answers["answer_start"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            first = in_context.index(True)
            last = len(in_context) - 1 - in_context[::-1].index(True)
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                # Last token starting at or before the answer, first token ending at or after it
                # (bounded by the context: run_qa.py's loop can run on into [SEP] and padding).
                start = first
                while start <= last and offsets[start][0] <= start_char:
                    start += 1
                start -= 1
                end = last
                while end >= first and offsets[end][1] >= end_char:
                    end -= 1
                end += 1
        features["start_positions"].append(start)
        features["end_positions"].append(end)
    return features


def prepare_answer_examples(examples: list[dict], tokenizer: Any, max_length: int) -> dict[str, list]:
    """The original lab 01/05 preparation (``data.squad_examples: one_per_answer``): answerable questions
    only, one feature per given answer, (context, question) cut to max_length with no windows, padded to
    max_length. An answer whose stated start is off by one or two characters is moved onto its text, as the
    original did. Labels as the original computed them: the token of the answer's first character, and the
    token of the character just after the answer (the last character's token where that is none); an answer
    cut off by the truncation gets position max_length, which the loss ignores."""
    contexts, questions, spans = [], [], []
    for e in examples:
        context = e["context"]
        for text, start in zip(e["answers"]["text"], e["answers"]["answer_start"]):
            for shift in (0, 1, 2):  # SQuAD answers that "eat" one or two characters of their span
                if context[start - shift: start - shift + len(text)] == text:
                    start -= shift
                    break
            contexts.append(context)
            questions.append(e["question"])
            spans.append((start, start + len(text)))
    encoding = tokenizer(contexts, questions, truncation=True, max_length=max_length, padding="max_length")
    features = _model_inputs(encoding)
    features["start_positions"], features["end_positions"] = [], []
    for i, (start_char, end_char) in enumerate(spans):
        start = encoding.char_to_token(i, start_char)
        end = encoding.char_to_token(i, end_char)
        if end is None:
            end = encoding.char_to_token(i, end_char - 1)
        features["start_positions"].append(max_length if start is None else start)
        features["end_positions"].append(max_length if end is None else end)
    return features


def prepare_eval_features(examples: list[dict], tokenizer: Any, max_length: int, doc_stride: int) -> dict[str, list]:
    """The same windows, unlabelled, plus `example_id` (the example a window came from) and
    `offset_mapping` (each token's (start, end) characters in the context, None for question,
    special and padding tokens, so post-processing knows which tokens may bound an answer).
    Give the model only its input keys."""
    encoding, context_id = _tokenize(examples, tokenizer, max_length, doc_stride)
    features = _model_inputs(encoding)
    features["example_id"] = [examples[s]["id"] for s in encoding["overflow_to_sample_mapping"]]
    features["offset_mapping"] = [
        [tuple(o) if s == context_id else None for o, s in zip(offsets, encoding.sequence_ids(i))]
        for i, offsets in enumerate(encoding["offset_mapping"])
    ]
    return features


# ----------------------------------------------------------------------------- predictions


def postprocess_predictions(
    examples: list[dict],
    features: dict[str, list],
    start_logits: Any,
    end_logits: Any,
    n_best: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, str]:
    """Window logits -> one answer per example id ("" for no answer), as utils_qa.py's
    postprocess_qa_predictions with version_2_with_negative: the best-scoring span among the
    n_best start x n_best end tokens of all of an example's windows (both ends in the context,
    start <= end, at most max_answer_length tokens) against the lowest no-answer score over those
    windows; "" when no-answer beats the span by more than null_score_diff_threshold. Where no
    span is valid at all the answer is "" (utils_qa.py would answer the placeholder "empty")."""
    start_logits, end_logits = np.asarray(start_logits), np.asarray(end_logits)
    windows = collections.defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        windows[example_id].append(i)

    predictions = {}
    for example in examples:
        null_score, best_score, best_text = np.inf, -np.inf, ""
        for i in windows[example["id"]]:
            offsets = features["offset_mapping"][i]
            s_logits, e_logits = start_logits[i][: len(offsets)], end_logits[i][: len(offsets)]
            null = offsets.index(None)
            null_score = min(null_score, s_logits[null] + e_logits[null])
            starts = np.argsort(s_logits)[::-1][:n_best]
            ends = np.argsort(e_logits)[::-1][:n_best]
            # Character spans of the candidates; (-1, -1) marks tokens outside the context.
            s_chars = np.array([offsets[k] if offsets[k] is not None else (-1, -1) for k in starts])
            e_chars = np.array([offsets[k] if offsets[k] is not None else (-1, -1) for k in ends])
            length = ends[None, :] - starts[:, None] + 1
            valid = (
                (s_chars[:, None, 0] >= 0) & (e_chars[None, :, 0] >= 0)
                & (length >= 1) & (length <= max_answer_length)
                & (e_chars[None, :, 1] > s_chars[:, None, 0])  # not an empty string
            )
            if not valid.any():
                continue
            scores = np.where(valid, s_logits[starts][:, None] + e_logits[ends][None, :], -np.inf)
            a, b = np.unravel_index(np.argmax(scores), scores.shape)  # first maximum, as utils_qa.py
            if scores[a, b] > best_score:
                best_score = scores[a, b]
                best_text = example["context"][s_chars[a, 0]: e_chars[b, 1]]
        no_answer = best_score == -np.inf or null_score - best_score > null_score_diff_threshold
        predictions[example["id"]] = "" if no_answer else best_text
    return predictions


# ----------------------------------------------------------------------------- official metric


_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation, the articles a/an/the and extra whitespace (evaluate-v2.0.py)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def compute_exact(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def compute_f1(gold: str, pred: str) -> float:
    gold_tokens, pred_tokens = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not gold_tokens or not pred_tokens:
        return float(gold_tokens == pred_tokens)  # no-answer: right only if both are empty
    common = sum((collections.Counter(gold_tokens) & collections.Counter(pred_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def evaluate(dataset: str | Path | list[dict], predictions: dict[str, str]) -> dict[str, float]:
    """The official SQuAD 2.0 scores (percentages) of `predictions` (id -> text, "" for no
    answer) on `dataset`: a path to an official-format JSON file, or flat examples.
    As in evaluate-v2.0.py, each question scores its best match over the gold answers that do not
    normalise to empty, an unanswerable question's only gold answer is "", and the HasAns/NoAns
    keys appear only when that subset is non-empty. A missing prediction scores 0 and still counts
    in the totals (the official script would skip it from `total`, then fail on the subsets)."""
    examples = read_squad_json(dataset) if isinstance(dataset, (str, Path)) else dataset
    exact, f1, has_answer = {}, {}, {}
    for example in examples:
        qid = example["id"]
        has_answer[qid] = bool(example["answers"]["text"])
        golds = [a for a in example["answers"]["text"] if normalize_answer(a)] or [""]
        if qid not in predictions:
            exact[qid], f1[qid] = 0, 0.0
            continue
        exact[qid] = max(compute_exact(g, predictions[qid]) for g in golds)
        f1[qid] = max(compute_f1(g, predictions[qid]) for g in golds)

    def scores(qids: list[str]) -> dict[str, float]:
        return {
            "exact": 100.0 * sum(exact[q] for q in qids) / len(qids),
            "f1": 100.0 * sum(f1[q] for q in qids) / len(qids),
            "total": len(qids),
        }

    result = scores(list(exact))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        subset = [q for q, has in has_answer.items() if has == wanted]
        if subset:
            result |= {f"{prefix}_{k}": v for k, v in scores(subset).items()}
    return result
