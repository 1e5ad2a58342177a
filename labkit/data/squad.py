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
import random
import re
import string
from pathlib import Path
from typing import Any

import numpy as np

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
    `limit` keeps the first N examples; `context_length` is the embedded set's (see `generate_squad`)."""
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
    elif source == "hub":
        examples = _load_hub(hub_name, split, limit)
    else:
        raise ValueError(f"unknown data source {source!r}: expected 'embedded', 'local' or 'hub'")
    return examples if limit is None else examples[:limit]


def _load_hub(hub_name: str, split: str, limit: int | None) -> list[dict]:
    try:
        import datasets

        ds = datasets.load_dataset(hub_name, split=split)
    except Exception as err:  # offline, gated, renamed...: all end the same way for the user
        raise RuntimeError(
            f"could not load {hub_name!r} (split {split!r}) from the Hugging Face Hub "
            f"({type(err).__name__}: {err}). If the Hub is unreachable, download the official "
            "SQuAD 2.0 JSON elsewhere and use data.source: local with data.path, or use "
            "data.source: embedded for the offline synthetic set."
        ) from err
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    keys = ("id", "title", "context", "question", "answers")
    return [{k: row[k] for k in keys} for row in ds]


# ----------------------------------------------------------------------------- synthetic data
# Articles about invented cities, people and companies. Every fact is a sentence template whose
# slots become answer spans; each question template asks for one slot, so question wording maps
# regularly onto answer type and position, which is what makes the set learnable by a tiny model.
# Unanswerable questions (about a third) either ask for an attribute the paragraph does not state
# or ask about another entity of the same kind (SQuAD 2.0's typical distractors); their
# plausible_answers are the span a careless reader would pick.

_FIRST = ("Edda Tomas Ilse Marek Yara Oren Lucia Bram Nadia Felix Sana Hugo Greta Idris Mira Anton "
          "Leona Cyrus Vera Emil Talia Rafe Odile Kasimir Wren Dario Ines Pavel Selma Joren").split()
_SUR_A = "Mor Hal Bren Cask Dun Ell Fair Grim Hol Kest Lind Marr North Pell Quill Rook Stav Thorn Umber Wex".split()
_SUR_B = "row ford wick ley mont by well ton sen ard holm ett".split()
_PLACE_A = "Varn Ost Bel Cor Dray Elm Fen Gal Hark Isen Jor Kel Lor Mar Nor Pent Ravel Sel Tarn Ul Wyn Zel".split()
_PLACE_B = "holt burg mere stead vale wick haven port ford ness by dale".split()
_WORDS = {
    "river": "Amber Sile Orva Tamsin Kell Vire Ondra Lusk Merrow Isca Dove Brenna".split(),
    "good": ["copper", "wool", "salt", "timber", "glass", "silk", "amber", "tin", "barley", "wine", "paper",
             "iron", "olive oil", "honey", "marble", "linen", "tea", "clocks", "rope", "pottery"],
    "profession": "baker sailor teacher physician carpenter lawyer miner painter engineer banker farmer "
                  "printer soldier librarian".split(),
    "month": "January February March April May June July August September October November December".split(),
    "field": "astronomy botany chemistry geology mathematics medicine music philosophy physics zoology "
             "history linguistics".split(),
    "landmark": ["Bell Tower", "Old Bridge", "Grand Library", "Harbour Gate", "Clock Hall", "Stone Market",
                 "Royal Theatre", "Glass Pavilion", "North Lighthouse", "Salt Exchange"],
    "festival": "Lantern Harvest Salt River Spring Winter Kite Bread Candle Music".split(),
    "discovery": ["a new comet", "a species of moth", "a copper alloy", "the cause of marsh fever",
                  "a method for preserving fruit", "an ancient map", "a blue pigment", "a faster loom",
                  "a sunken temple", "a cure for blight"],
    "instrument": "violin cello harp flute oboe lute organ trumpet".split(),
    "book": ["The Silent Harbour", "A Year of Storms", "The Glass Orchard", "Letters from the North",
             "The Iron Garden", "Salt and Smoke", "The Last Ferry", "Notes on Clouds"],
    "colour": "red blue green gold white black silver purple".split(),
    "animal": "heron fox stag owl wolf hare swan bear".split(),
    "company_kind": "Works Mills Shipping Instruments Foundry Printing Glassworks Railways".split(),
}

# kind -> facts; a fact is (sentence variants, [(question variants, answer slot), ...]). {E} is
# the article's subject; every other slot is drawn afresh per fact, and its name is its type,
# except the dated ones in _YEAR_SLOTS, which keep an article's years in a believable order.
_FACTS: dict[str, list[tuple[list[str], list[tuple[list[str], str]]]]] = {
    "city": [
        (["The city of {E} was founded in {founded} by {person}.", "{E} was founded by {person} in {founded}."],
         [(["In what year was {E} founded?", "When was {E} founded?"], "founded"),
          (["Who founded {E}?", "Who was the founder of {E}?"], "person")]),
        (["{E} lies on the banks of the {river} River.", "The {river} River flows through {E}."],
         [(["Which river flows through {E}?", "On which river does {E} lie?"], "river")]),
        (["In {year}, the population of {E} was {number}.", "{E} had {number} inhabitants in {year}."],
         [(["What was the population of {E} in {year}?", "How many people lived in {E} in {year}?"], "number")]),
        (["The main export of {E} is {good}.", "{E} grew rich on its trade in {good}."],
         [(["What is the main export of {E}?", "What did {E} grow rich trading?"], "good")]),
        (["The current mayor of {E} is {person}, a former {profession}."],
         [(["Who is the mayor of {E}?", "Who currently leads {E} as mayor?"], "person"),
          (["What did the mayor of {E} work as before?", "What was the former job of the mayor of {E}?"],
           "profession")]),
        (["The {landmark} of {E} was built in {year} by the architect {person}."],
         [(["Who designed the {landmark} of {E}?", "Which architect built the {landmark} of {E}?"], "person"),
          (["When was the {landmark} of {E} built?", "In what year was the {landmark} of {E} completed?"],
           "year")]),
        (["Every {month}, {E} holds the {festival} Festival.", "The {festival} Festival is held in {E} each {month}."],
         [(["In which month does {E} hold the {festival} Festival?", "When is the {festival} Festival of {E} held?"],
           "month")]),
        (["{E} is twinned with the town of {place}."],
         [(["Which town is {E} twinned with?", "What is the twin town of {E}?"], "place")]),
        (["The flag of {E} is {colours}."],
         [(["What colours are on the flag of {E}?", "What are the colours of the flag of {E}?"], "colours")]),
    ],
    "person": [
        (["{E} was born in {place} in {born}.", "Born in {born} in {place}, {E} grew up by the sea."],
         [(["Where was {E} born?", "In which town was {E} born?"], "place"),
          (["When was {E} born?", "In what year was {E} born?"], "born")]),
        (["{E} studied {field} at the University of {place}."],
         [(["What did {E} study?", "Which subject did {E} study at university?"], "field"),
          (["Where did {E} go to university?", "At which university did {E} study?"], "place")]),
        (["In {year}, {E} discovered {discovery}.", "{E} discovered {discovery} in {year}."],
         [(["What did {E} discover?", "What discovery is {E} known for?"], "discovery"),
          (["When did {E} make a discovery?", "In what year did {E} make a discovery?"], "year")]),
        (["For {count} years, {E} worked as a {profession}.", "{E} worked as a {profession} for {count} years."],
         [(["What did {E} work as?", "What was the profession of {E}?"], "profession"),
          (["For how many years did {E} work?", "How long did {E} work, in years?"], "count")]),
        (["{E} married {person} in {year}."],
         [(["Whom did {E} marry?", "Who was the spouse of {E}?"], "person"),
          (["When did {E} get married?", "In what year did {E} marry?"], "year")]),
        (["{E} wrote a book called {book}.", "The best-known book by {E} is {book}."],
         [(["What book did {E} write?", "What is the title of the book by {E}?"], "book")]),
        (["{E} died in {place} in {died}."],
         [(["Where did {E} die?", "In which town did {E} die?"], "place"),
          (["When did {E} die?", "In what year did {E} die?"], "died")]),
        (["{E} played the {instrument} in a small orchestra."],
         [(["Which instrument did {E} play?", "What instrument did {E} play in the orchestra?"], "instrument")]),
    ],
    "company": [
        (["{E} was founded in {founded} by {person}.", "{person} founded {E} in {founded}."],
         [(["When was {E} founded?", "In what year was {E} founded?"], "founded"),
          (["Who founded {E}?", "Who was the founder of {E}?"], "person")]),
        (["{E} has its headquarters in {place}.", "The headquarters of {E} are in {place}."],
         [(["Where is {E} headquartered?", "Where are the headquarters of {E}?"], "place")]),
        (["{E} is best known for making {good}.", "Today {E} mostly makes {good}."],
         [(["What is {E} best known for making?", "What does {E} make?"], "good")]),
        (["In {year}, {E} employed {number} people."],
         [(["How many people did {E} employ in {year}?", "How many employees did {E} have in {year}?"], "number")]),
        (["The chief executive of {E} is {person}."],
         [(["Who is the chief executive of {E}?", "Who runs {E}?"], "person")]),
        (["In {year}, {E} was bought by {company}.", "{company} bought {E} in {year}."],
         [(["Which company bought {E}?", "Who bought {E}?"], "company"),
          (["When was {E} bought?", "In what year was {E} sold?"], "year")]),
        (["{E} opened its first factory in {place} in {year}.", "In {year}, {E} opened its first factory, in {place}."],
         [(["Where did {E} open its first factory?", "In which town was the first factory of {E}?"], "place"),
          (["When did {E} open its first factory?", "In what year did {E} open its first factory?"], "year")]),
        (["The logo of {E} is a {logo}."],
         [(["What is the logo of {E}?", "What does the logo of {E} show?"], "logo")]),
    ],
}
# Sentences no question asks about; their slots still serve as distractors and plausible answers.
_FILLERS = {
    "city": ["A great fire destroyed much of {E} in {year}.", "Travellers often describe {E} as quiet and orderly.",
             "The houses of {E} are known for their {colour} shutters.", "Many families in {E} keep small gardens."],
    "person": ["Friends remembered {E} as patient and curious.", "In {year}, {E} spent a season in {place}.",
               "Some letters by {E} were later lost.", "{E} kept a diary for most of those years."],
    "company": ["Its early years were difficult, and profits were small.",
                "In {year}, a flood closed the works at {place} for a month.",
                "Workers at {E} formed a choir that still performs.", "{E} printed its own newspaper for a time."],
}
# Years after the article's start year (a city's or company's founding, a person's birth).
_YEAR_SLOTS = {"founded": (0, 0), "born": (0, 0), "died": (55, 90)}
_LATER_YEARS = {"city": (20, 400), "person": (18, 52), "company": (2, 120)}
# Sentences about nothing a question asks, lengthening paragraphs to SQuAD's length (context_length "squad").
# They name only the subject, so they add no typed span: no new distractor, no second answer.
_PADDING_SENTENCES = [
    "Much has been written about {E}, though not all of it is reliable.",
    "Local archives hold several boxes of papers concerning {E}.",
    "Visitors who arrive by road often ask for directions to the old quarter.",
    "Historians still disagree about parts of the early story of {E}.",
    "A short guide to {E} was printed for travellers and reprinted many times.",
    "Some of the surviving accounts were copied by hand more than once.",
    "Several small paintings from that period show scenes connected with {E}.",
    "The name {E} appears in tax rolls, letters and the minutes of council meetings.",
    "Many of these records were damaged by damp and have since been restored with care.",
    "Scholars who study the region often begin with the story of {E}.",
    "Not every tale told about {E} can be checked against the documents.",
    "The surrounding countryside is mostly farmland, with a few patches of woodland.",
    "In winter the roads were often closed for weeks at a time.",
    "A museum in the region keeps a modest collection of objects related to {E}.",
    "Newspapers of the time mentioned {E} only rarely.",
    "Later writers added details that earlier sources do not mention.",
    "Schoolchildren in the region still learn a little about {E}.",
    "Some accounts describe long evenings spent in conversation by the fire.",
    "The spelling of names in the oldest documents is not always consistent.",
    "A number of photographs survive, most of them undated.",
]
# Extra sentences per paragraph ~ Gamma(shape, scale): features of mean ~170 tokens (median ~160, 10th-90th
# percentile 90-280), right-skewed like SQuAD's.
_SQUAD_LENGTH_GAMMA = (2.5, 3.8)
# Each article has >= 2 paragraphs of >= 2 answerable and >= 1 unanswerable question.
MIN_QUESTIONS_PER_ARTICLE = 6
_SLOT = re.compile(r"\{(\w+)\}")


def _person(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)} {rng.choice(_SUR_A)}{rng.choice(_SUR_B)}"


def _place(rng: random.Random) -> str:
    return rng.choice(_PLACE_A) + rng.choice(_PLACE_B)


def _company(rng: random.Random) -> str:
    if rng.random() < 0.5:
        return f"{rng.choice(_SUR_A)}{rng.choice(_SUR_B)} & {rng.choice(_SUR_A)}{rng.choice(_SUR_B)}"
    return f"{_place(rng)} {rng.choice(_WORDS['company_kind'])}"


_NAMES = {"city": _place, "place": _place, "person": _person, "company": _company}


def _type(slot: str) -> str:
    return "year" if slot in _YEAR_SLOTS else slot


def _value(slot: str, kind: str, start_year: int, rng: random.Random) -> str:
    if slot in _NAMES:
        return _NAMES[slot](rng)
    if slot in _YEAR_SLOTS or slot == "year":
        return str(start_year + rng.randint(*_YEAR_SLOTS.get(slot, _LATER_YEARS[kind])))
    if slot == "number":
        return f"{rng.randint(12, 990) * 100:,}"
    if slot == "count":
        return str(rng.randint(2, 40))
    if slot == "colours":
        first, second = rng.sample(_WORDS["colour"], 2)
        return f"{first} and {second}"
    if slot == "logo":
        return f"{rng.choice(_WORDS['colour'])} {rng.choice(_WORDS['animal'])}"
    return rng.choice(_WORDS[slot])


def _slots(*templates: str) -> list[str]:
    """Slots in order of appearance (a list, not a set, so the draw order never varies)."""
    return [s for s in dict.fromkeys(_SLOT.findall(" ".join(templates))) if s != "E"]


def _fill(template: str, values: dict[str, str]) -> tuple[str, dict[str, tuple[int, int]]]:
    """Substitute {slots}, returning the text and each slot's (start, end) character span."""
    parts, spans, pos, last = [], {}, 0, 0
    for m in _SLOT.finditer(template):
        parts.append(template[last:m.start()])
        pos += m.start() - last
        value = values[m.group(1)]
        spans[m.group(1)] = (pos, pos + len(value))
        parts.append(value)
        pos += len(value)
        last = m.end()
    parts.append(template[last:])
    return "".join(parts), spans


def _article(rng: random.Random, qid: str, context_length: str = "short") -> dict:
    kind = rng.choice(list(_FACTS))
    subject = _NAMES[kind](rng)
    start_year = rng.randint(1150, 1850)
    facts = rng.sample(_FACTS[kind], len(_FACTS[kind]))
    values = [
        {"E": subject} | {s: _value(s, kind, start_year, rng)
                          for s in _slots(*sentences, *(q for qs, _ in asks for q in qs))}
        for sentences, asks in facts
    ]
    n_paragraphs, used, paragraphs = rng.choice((2, 3, 3, 4)), 0, []
    while len(paragraphs) < n_paragraphs and len(facts) - used >= 2:
        members = list(range(used, min(used + rng.randint(2, 3), len(facts))))
        used = members[-1] + 1
        paragraph = _paragraph(rng, kind, subject, start_year, facts, values, members, f"{qid}-{len(paragraphs)}",
                               context_length)
        paragraphs.append(paragraph)
    return {"title": subject.replace(" ", "_"), "paragraphs": paragraphs}


def _paragraph(rng: random.Random, kind: str, subject: str, start_year: int, facts: list, values: list[dict],
               members: list[int], qid: str, context_length: str = "short") -> dict:
    sentences = [(i, _fill(rng.choice(facts[i][0]), values[i])) for i in members]
    for filler in rng.sample(_FILLERS[kind], rng.randint(0, 2)):
        filler_values = {"E": subject} | {s: _value(s, kind, start_year, rng) for s in _slots(filler)}
        sentences.insert(rng.randint(0, len(sentences)), (None, _fill(filler, filler_values)))
    if context_length == "squad":  # a random stream of its own: the facts, questions and answers stay the same
        extra = random.Random(f"labkit-squad-length-{qid}")
        for _ in range(round(extra.gammavariate(*_SQUAD_LENGTH_GAMMA))):
            sentence = _fill(extra.choice(_PADDING_SENTENCES), {"E": subject})
            sentences.insert(extra.randint(0, len(sentences)), (None, sentence))
    context, spans, typed = "", {}, []  # spans: fact -> slot -> context span; typed: (type, span)
    for i, (text, local) in sentences:
        offset = len(context) + (1 if context else 0)
        context = f"{context} {text}" if context else text
        local = {s: (a + offset, b + offset) for s, (a, b) in local.items()}
        typed += [(_type(s), span) for s, span in local.items() if s != "E"]
        if i is not None:
            spans[i] = local

    def answer(span: tuple[int, int]) -> dict:
        return {"text": context[span[0]:span[1]], "answer_start": span[0]}

    qas = []
    for i in members:  # one answerable question per fact, sometimes two
        asks = facts[i][1] if len(facts[i][1]) > 1 and rng.random() < 0.3 else [rng.choice(facts[i][1])]
        for questions, slot in asks:
            question = _fill(rng.choice(questions), values[i])[0]
            qas.append({"question": question, "answers": [answer(spans[i][slot])], "is_impossible": False})
    n_answerable = len(qas)
    n_impossible = n_answerable // 2 + (rng.random() < (n_answerable % 2) / 2)  # a third of all, on average
    absent = [i for i in range(len(facts)) if i not in members]
    for _ in range(n_impossible):
        if absent and rng.random() < 0.5:
            # An attribute of the subject that this paragraph does not state.
            i = rng.choice(absent)
            questions, slot = rng.choice(facts[i][1])
            question = _fill(rng.choice(questions), values[i])[0]
            same_type = [span for t, span in typed if t == _type(slot)]
            plausible = [answer(rng.choice(same_type))] if same_type else []
        else:
            # A stated attribute, asked about another entity of the same kind.
            i = rng.choice(members)
            questions, slot = rng.choice(facts[i][1])
            other = _NAMES[kind](rng)
            while other in context:
                other = _NAMES[kind](rng)
            question = _fill(rng.choice(questions), values[i] | {"E": other})[0]
            plausible = [answer(spans[i][slot])]
        qas.append({"question": question, "answers": [], "is_impossible": True, "plausible_answers": plausible})
    rng.shuffle(qas)
    return {"context": context, "qas": [{"id": f"{qid}-{n}", **qa} for n, qa in enumerate(qas)]}


def generate_squad(num_articles: int, seed: int = 0, context_length: str = "short") -> dict:
    """A synthetic SQuAD 2.0 set in the official JSON format (flatten it with `flatten_squad`).
    Article i depends only on (seed, i), so a larger `num_articles` extends a smaller one.
    `context_length` "short": paragraphs of a few sentences (features of ~50 tokens, quick to learn);
    "squad": the same facts and questions among extra sentences that no question asks about, so
    features have SQuAD's length distribution (mean ~170 tokens, ~2% filling a 384-token window)."""
    if context_length not in ("short", "squad"):
        raise ValueError(f"context_length {context_length!r}: expected 'short' or 'squad'")
    data = [_article(random.Random(f"labkit-squad-{seed}-{i}"), f"syn{seed}-{i}", context_length)
            for i in range(num_articles)]
    return {"version": "v2.0", "data": data}


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
