"""Synthetic SQuAD 2.0 articles in the official JSON format: the offline default of bert_squad.

Articles about invented cities, people and companies. Every fact is a sentence template whose
slots become answer spans; each question template asks for one slot, so question wording maps
regularly onto answer type and position, which is what makes the set learnable by a tiny model.
Unanswerable questions (about a third) either ask for an attribute the paragraph does not state
or ask about another entity of the same kind (SQuAD 2.0's typical distractors); their
plausible_answers are the span a careless reader would pick.
"""
from __future__ import annotations

import random
import re

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
