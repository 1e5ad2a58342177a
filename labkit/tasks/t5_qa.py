"""T5 question answering, text to text (notebook 07): GSM8K grade-school maths and biomedical factoid QA.

Every example becomes a pair of texts, ``question: ... [context: ...]`` -> answer, tokenised a batch at a
time in the loader's workers (so ``data.num_workers`` has the work the original lab gave it), sources to
``data.max_length`` tokens and targets to ``data.target_length``.

* GSM8K (``data.dataset: gsm8k``): JSON lines with ``question`` and ``answer``, the final number after
  ``#### `` on the answer's last line. The target is the worked solution without the calculator
  annotations (``<<48/2=24>>``, which repeat the step's result); a greedy generation scores when the number
  after its ``#### `` equals the reference's (exact numeric match: ``1,080`` == ``1080``).
* Biomedical QA (``data.dataset: bioqa``): SQuAD-format JSON (BioASQ factoid questions as BioBERT
  distributed them); the target is the first gold answer, scored by SQuAD's exact match and F1.

Sources: ``hub`` (GSM8K: ``openai/gsm8k`` ``main``; bioqa: a SQuAD-layout BioASQ upload, set data.hub_name to
use another), ``local`` (data.path, and data.val_path or the last tenth held out) or ``embedded``: generated
problems in the same formats (arithmetic word problems with worked answers; passages about invented genes,
drugs and diseases with factoid questions).
"""
from __future__ import annotations

import json
import os
import random
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5Block

from labkit.data import squad
from labkit.measure import output_absmax
from labkit.config import Config
from labkit.models import t5
from labkit.tasks import Task, transformer_flops_per_sample

GSM8K_HUB = ("openai/gsm8k", "main")
BIOQA_HUB = "reginaboateng/Bioasq7b_factoid"  # BioASQ 7b factoid in SQuAD layout: id, context, question, answers
EMBEDDED_SIZES = {"train": 2000, "validation": 200}
GSM8K_FORMAT = "JSON lines, one object per line with 'question' and 'answer' (the final number after '#### ')"


# ----------------------------------------------------------------------------- GSM8K answers


_FINAL = re.compile(r"####\s*\$?\s*(-?[\d,]*\.?\d+)")
_CALCULATOR = re.compile(r"<<[^>]*>>")


def final_answer(text: str) -> str | None:
    """The number after the last ``#### `` of a GSM8K solution, canonical (``1,080`` -> ``1080``,
    ``-7.0`` -> ``-7``), or None when there is none."""
    found = _FINAL.findall(text)
    if not found:
        return None
    number = Decimal(found[-1].replace(",", ""))
    return format(number.normalize(), "f") if number else "0"  # "0", never "-0" or "0.0"


def gsm8k_target(answer: str) -> str:
    """The worked solution T5 learns to write: the original answer without calculator annotations."""
    return _CALCULATOR.sub("", answer).strip()


def source_text(question: str, context: str | None = None) -> str:
    """T5's text-to-text input."""
    return f"question: {question.strip()} context: {context.strip()}" if context else f"question: {question.strip()}"


def read_gsm8k(path: str | Path) -> list[dict]:
    """A GSM8K JSON-lines file: [{"question", "answer"}, ...]."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GSM8K file not found: {path}. Point data.path at {GSM8K_FORMAT} "
                                "(e.g. train.jsonl of openai/gsm8k), or use data.source: embedded")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append({"question": row["question"], "answer": row["answer"]})
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise ValueError(f"{path}, line {n}: not a GSM8K line ({type(err).__name__}: {err}); "
                             f"expected {GSM8K_FORMAT}") from None
    return rows


# ----------------------------------------------------------------------------- generated data
# Templates of one- and two-step word problems, answered the way GSM8K answers them (a sentence per step
# with a calculator annotation, then '#### N'); large results sometimes carry thousands commas and
# temperatures go below zero, as in the real set.

_NAMES = "Natalia Weng Betty Julie James Albert Mark Tina Ken Rose Omar Lena Priya Diego Hana Ivan".split()
_ITEMS = "apples pencils stickers cookies marbles books stamps cards shells eggs buttons candles".split()
_MONTHS = "January February March April May June July August September October".split()


def _number(n: int, rng: random.Random) -> str:
    return f"{n:,}" if abs(n) >= 1000 and rng.random() < 0.5 else str(n)


def _problem(rng: random.Random) -> dict:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        a, b = rng.randint(5, 90), rng.randint(2, 60)
        c = rng.randint(1, a + b)
        s, r = a + b, a + b - c
        q = (f"{name} had {a} {item}. {name} bought {b} more and then gave {c} to a friend. "
             f"How many {item} does {name} have now?")
        steps = [f"After buying more, {name} had {a} + {b} = <<{a}+{b}={s}>>{s} {item}.",
                 f"After giving some away, {name} has {s} - {c} = <<{s}-{c}={r}>>{r} {item}."]
    elif kind == 1:
        a = 2 * rng.randint(3, 60)
        m1, m2 = rng.sample(_MONTHS, 2)
        h, r = a // 2, a + a // 2
        q = (f"{name} sold {a} {item} in {m1}, and then sold half as many {item} in {m2}. "
             f"How many {item} did {name} sell altogether in {m1} and {m2}?")
        steps = [f"{name} sold {a}/2 = <<{a}/2={h}>>{h} {item} in {m2}.",
                 f"{name} sold {a}+{h} = <<{a}+{h}={r}>>{r} {item} altogether in {m1} and {m2}."]
    elif kind == 2:
        a, b = rng.randint(2, 25), rng.randint(2, 9)
        p = a * b
        c = rng.choice([x for x in (20, 50, 100, 200, 500) if x > p] or [1000])
        r = c - p
        q = f"{name} buys {b} {item} at ${a} each and pays with a ${c} bill. How much change does {name} get?"
        steps = [f"The {item} cost {b} * {a} = $<<{b}*{a}={p}>>{p}.",
                 f"{name} gets {c} - {p} = $<<{c}-{p}={r}>>{r} in change."]
    elif kind == 3:
        a, b, c = rng.randint(12, 250), rng.randint(2, 12), rng.randint(2, 30)
        d, r = a * b, a * b * c
        q = f"A workshop makes {a} {item} every hour. It works {b} hours a day. How many {item} does it make in {c} days?"
        steps = [f"In one day it makes {a} * {b} = <<{a}*{b}={d}>>{d} {item}.",
                 f"In {c} days it makes {d} * {c} = <<{d}*{c}={r}>>{r} {item}."]
    elif kind == 4:
        a, b = rng.randint(-10, 30), rng.randint(3, 40)
        r = a - b
        q = (f"The temperature was {a} degrees Fahrenheit at noon. By midnight it had dropped by {b} degrees. "
             "What was the temperature at midnight?")
        steps = [f"The temperature at midnight was {a} - {b} = <<{a}-{b}={r}>>{r} degrees Fahrenheit."]
    else:
        b, r = rng.randint(2, 12), rng.randint(2, 30)
        a = b * r
        q = f"{name} has {a} {item} and shares them equally among {b} friends. How many {item} does each friend get?"
        steps = [f"Each friend gets {a} / {b} = <<{a}/{b}={r}>>{r} {item}."]
    return {"question": q, "answer": "\n".join(steps + [f"#### {_number(r, rng)}"])}


def generate_gsm8k(n: int, seed: int = 0) -> list[dict]:
    """``n`` GSM8K-format problems; problem i depends only on (seed, i)."""
    return [_problem(random.Random(f"labkit-gsm8k-{seed}-{i}")) for i in range(n)]


_GENE_A = "BRX KLT MAP ZNF SOX CDK TRP NRG FOX PAX LRR WNT".split()
_DRUG_A = "vero tala cili poma dena rita lumi sapo fexo quila".split()
_DRUG_B = "tinib mab zumab ciclib parib rafenib".split()
_DISEASE_A = "Harlow Menzies Okafor Pellard Quist Ravensky Tamura Ulloa Verhoeven Wexley".split()
_DISEASE_B = "syndrome disease dystrophy anemia ataxia".split()
_TISSUES = "liver kidney retina heart muscle pancreas lung skin cerebellum bone marrow".split()
_FACTS = [  # (sentence, question, slot the question asks for)
    ("{gene} is located on chromosome {chrom}.", "On which chromosome is {gene} located?", "chrom"),
    ("Mutations in {gene} cause {disease}.", "Mutations in which gene cause {disease}?", "gene"),
    ("{disease} is treated with {drug}.", "Which drug is used to treat {disease}?", "drug"),
    ("{drug} inhibits the kinase encoded by {gene}.", "Which gene encodes the kinase inhibited by {drug}?", "gene"),
    ("{gene} is mainly expressed in the {tissue}.", "In which tissue is {gene} mainly expressed?", "tissue"),
    ("{disease} affects about {prevalence} people in {count} births.",
     "How many people in {count} births are affected by {disease}?", "prevalence"),
]
_FILLER = ["The study enrolled patients from several centres.", "Expression was measured by quantitative PCR.",
           "Results were confirmed in an independent cohort.", "The protein forms a complex with two partners."]


def _bio_values(rng: random.Random) -> dict[str, str]:
    return {"gene": f"{rng.choice(_GENE_A)}{rng.randint(1, 40)}",
            "drug": rng.choice(_DRUG_A) + rng.choice(_DRUG_B),
            "disease": f"{rng.choice(_DISEASE_A)} {rng.choice(_DISEASE_B)}",
            "chrom": str(rng.randint(1, 22)), "tissue": rng.choice(_TISSUES),
            "prevalence": str(rng.randint(1, 9)), "count": rng.choice(["1,000", "10,000", "100,000"])}


def _passage(rng: random.Random, pid: str) -> dict:
    values = _bio_values(rng)
    facts = rng.sample(_FACTS, rng.randint(2, 4))
    sentences = [sentence for sentence, _, _ in facts] + rng.sample(_FILLER, 1)
    rng.shuffle(sentences)
    context, starts = "", {}
    for sentence in sentences:
        for slot in re.findall(r"\{(\w+)\}", sentence):  # where the slot's value lands in the context
            starts.setdefault(slot, len(context) + len(sentence[: sentence.index("{" + slot + "}")].format(**values)))
        context += sentence.format(**values) + " "
    qas = [{"id": f"{pid}-{n}", "question": question.format(**values),
            "answers": [{"text": values[slot], "answer_start": starts[slot]}]}
           for n, (_, question, slot) in enumerate(facts)]
    return {"context": context.strip(), "qas": qas}


def generate_bioqa(num_passages: int, seed: int = 0) -> dict:
    """Factoid passages with questions in the SQuAD JSON format (flatten with labkit.data.squad.flatten_squad)."""
    data = [{"title": f"synthetic-bio-{seed}-{i}", "paragraphs": [_passage(random.Random(f"labkit-bioqa-{seed}-{i}"),
                                                                             f"bio{seed}-{i}")]}
            for i in range(num_passages)]
    return {"version": "synthetic-bioasq-factoid", "data": data}


# ----------------------------------------------------------------------------- loading


def _hold_out(rows: list[dict], key: str) -> tuple[list[dict], list[dict]]:
    """Last tenth of the distinct ``key`` values for validation, so no question is in both splits."""
    groups = list(dict.fromkeys(r[key] for r in rows))
    held = set(groups[-max(1, len(groups) // 10):]) if len(groups) > 1 else set()
    return [r for r in rows if r[key] not in held] or rows, [r for r in rows if r[key] in held] or rows


def _hub(name: str, config: str | None, split: str) -> Any:
    try:
        import datasets

        return datasets.load_dataset(name, config, split=split)
    except Exception as err:  # offline, gated, renamed...: all end the same way for the user
        raise RuntimeError(f"could not load {name!r} (split {split!r}) from the Hugging Face Hub "
                           f"({type(err).__name__}: {err}). Without the Hub, use data.source: local with "
                           "data.path (the original format), or data.source: embedded") from err


def load_gsm8k(cfg: Config) -> tuple[list[dict], list[dict]]:
    d = cfg.data
    if d.source == "embedded":
        train = generate_gsm8k(d.train_examples or EMBEDDED_SIZES["train"], 2 * cfg.train.seed)
        val = generate_gsm8k(d.val_examples or EMBEDDED_SIZES["validation"], 2 * cfg.train.seed + 1)
    elif d.source == "local":
        rows = read_gsm8k(d.path)
        train, val = (rows, read_gsm8k(d.val_path)) if d.val_path else _hold_out(rows, "question")
    else:
        name, config = d.hub_name or GSM8K_HUB[0], d.hub_config or GSM8K_HUB[1]
        train, val = ([{"question": r["question"], "answer": r["answer"]} for r in _hub(name, config, split)]
                      for split in ("train", "test"))
    return train[: d.train_examples], val[: d.val_examples]


def load_bioqa(cfg: Config) -> tuple[list[dict], list[dict]]:
    d = cfg.data
    if d.source == "embedded":
        # 2 to 4 questions a passage, so n/2 passages give n; disjoint seeds: validation passages are unseen
        train = squad.flatten_squad(generate_bioqa(-(-(d.train_examples or EMBEDDED_SIZES["train"]) // 2),
                                                   2 * cfg.train.seed), "embedded")
        val = squad.flatten_squad(generate_bioqa(-(-(d.val_examples or EMBEDDED_SIZES["validation"]) // 2),
                                                 2 * cfg.train.seed + 1), "embedded")
    elif d.source == "local":
        train, val = ((squad.read_squad_json(d.path), squad.read_squad_json(d.val_path)) if d.val_path
                      else _hold_out(squad.read_squad_json(d.path), "question"))
    else:
        keys = ("id", "context", "question", "answers")
        train, val = ([{"title": row.get("title", ""), **{k: row[k] for k in keys}}
                       for row in _hub(d.hub_name or BIOQA_HUB, d.hub_config, split)] for split in ("train", "validation"))
    return train[: d.train_examples], val[: d.val_examples]


def text_pairs(dataset: str, examples: list[dict]) -> list[tuple[str, str]]:
    """(source, target) texts of GSM8K problems or SQuAD-layout QA examples."""
    if dataset == "gsm8k":
        return [(source_text(e["question"]), gsm8k_target(e["answer"])) for e in examples]
    return [(source_text(e["question"], e["context"]), (e["answers"]["text"] or [""])[0]) for e in examples]


# ----------------------------------------------------------------------------- batches


class TextToText:
    """collate_fn: a list of (source, target) pairs -> input_ids, attention_mask and labels (padding -100).
    Runs in the loader's worker processes, so tokenisation overlaps the GPU's work when num_workers > 0."""

    def __init__(self, tokenizer: Any, max_length: int, target_length: int, padding: str):
        if padding == "packed":
            raise ValueError("data.padding 'packed' is not supported for t5_qa (an encoder-decoder pairs each "
                             "source with its own target); use 'max_length' or 'dynamic'")
        self.tokenizer, self.max_length, self.target_length = tokenizer, max_length, target_length
        self.padding = "max_length" if padding == "max_length" else "longest"

    def __call__(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        sources, targets = zip(*pairs)
        batch = self.tokenizer(list(sources), max_length=self.max_length, truncation=True, padding=self.padding,
                               return_tensors="pt")
        labels = self.tokenizer(text_target=list(targets), max_length=self.target_length, truncation=True,
                                padding=self.padding, return_tensors="pt")["input_ids"]
        labels[labels == self.tokenizer.pad_token_id] = -100  # padding does not count in the loss
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}


def load_tokenizer(cfg: Config, texts: list[str]):
    """The pretrained model's own tokenizer, or offline a T5-style Unigram vocabulary trained on the data."""
    # The fast tokenizer's thread pool and the loader's forked workers do not mix: one thread per worker.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if cfg.model.weights == "random":
        from labkit.data.tokenizers import train_unigram

        return train_unigram(texts, vocab_size=8000 if cfg.model.preset == "tiny" else t5.T5_VOCAB)
    from transformers import AutoTokenizer

    source = cfg.model.path if cfg.model.weights == "local" else (cfg.model.hub_name or t5.PRESETS[cfg.model.preset][0])
    return AutoTokenizer.from_pretrained(source)


# ----------------------------------------------------------------------------- the task


def build_task(cfg: Config) -> Task:
    d = cfg.data
    if d.dataset not in ("gsm8k", "bioqa"):
        raise ValueError(f"task t5_qa needs data.dataset: gsm8k or bioqa (got {d.dataset!r}); set it in the params file")
    if cfg.model.split_devices > 1 and cfg.train.devices * cfg.train.num_nodes > 1:
        raise ValueError("model.split_devices places one model over several GPUs in one process; it does not combine "
                         "with train.devices > 1 (data parallel): set one of them to 1")
    train_examples, val_examples = (load_gsm8k if d.dataset == "gsm8k" else load_bioqa)(cfg)
    train_set, val_set = text_pairs(d.dataset, train_examples), text_pairs(d.dataset, val_examples)
    tokenizer = load_tokenizer(cfg, [text for pair in train_set for text in pair if text])
    model, info = t5.build(cfg.model, len(tokenizer))
    collate = TextToText(tokenizer, d.max_length, d.target_length, d.padding)
    evaluate = make_evaluate(cfg, tokenizer, collate, val_set, val_examples)

    lengths = tokenizer([s for s, _ in train_set] + [t for _, t in train_set])["input_ids"]
    n = len(train_set)
    info.update(data_source=d.source, dataset=d.dataset, train_examples=n, val_examples=len(val_set),
                sources_truncated=sum(len(x) > d.max_length for x in lengths[:n]) / n,
                targets_truncated=sum(len(x) > d.target_length for x in lengths[n:]) / n)
    encoder, decoder = t5.non_embedding_params(t5_of(model))
    c = t5_of(model).config
    inner = c.num_heads * c.d_kv
    # Encoder and decoder as two transformers over their own lengths, plus cross-attention and the tied LM head.
    flops = (transformer_flops_per_sample(encoder, c.num_layers, inner, d.max_length)
             + transformer_flops_per_sample(decoder, c.num_decoder_layers, inner, d.target_length)
             + 12 * c.num_decoder_layers * inner * d.max_length * d.target_length
             + 6 * c.d_model * c.vocab_size * d.target_length)
    return Task(model=model, train_set=train_set, val_set=val_set, collate_fn=collate, evaluate=evaluate,
                flops_per_sample=flops, info=info)


def t5_of(model: nn.Module) -> nn.Module:
    """The bare T5 model inside Fabric's (and DDP's) wrappers; Fabric's ``module`` is the uncompiled original."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


AUTOCAST = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}


def make_evaluate(cfg: Config, tokenizer: Any, collate: TextToText, val_set: list[tuple[str, str]],
                  val_examples: list[dict]):
    """Answer accuracy by greedy generation over the validation set, and the activations' range (fp16 check)."""
    dataset, batch_size = cfg.data.dataset, 2 * cfg.train.batch_size
    if cfg.train.eval_batches:  # the validation loss's cap, in examples, applies to the answers too
        val_set, val_examples = (v[: cfg.train.eval_batches * cfg.train.batch_size] for v in (val_set, val_examples))

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        # The bare T5 inside Fabric's wrapper, run eagerly under the training precision's autocast: inference
        # needs nothing of DDP's forward, and a compiled forward would recompile for every generated length.
        core = t5_of(model)
        device = next(core.parameters()).device
        autocast = torch.autocast(device.type, dtype=AUTOCAST.get(cfg.train.precision, torch.float32),
                                  enabled=cfg.train.precision in AUTOCAST)
        sharded = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        # FSDP2 keeps the root's own parameters (the tied embedding) sharded outside the root's forward, and
        # generate() runs the encoder on its own first: gather them for the whole generation.
        fsdp = hasattr(core, "unshard") and hasattr(core, "reshard")
        if fsdp:
            core.unshard()
        generated = []
        try:
            with autocast:
                for i in range(0, len(val_set), batch_size):
                    batch = collate(val_set[i: i + batch_size])
                    out = core.generate(input_ids=batch["input_ids"].to(device),
                                        attention_mask=batch["attention_mask"].to(device),
                                        max_new_tokens=cfg.data.target_length, do_sample=False, num_beams=1,
                                        synced_gpus=sharded)  # sharded ranks step together until all have finished
                    generated += tokenizer.batch_decode(out, skip_special_tokens=True)
                metrics = score(dataset, generated, val_set, val_examples)
                metrics.update(activation_range(core, collate(val_set[:batch_size]), device))
        finally:
            if fsdp:
                core.reshard()
        return metrics

    return evaluate


def score(dataset: str, generated: list[str], val_set: list[tuple[str, str]],
          val_examples: list[dict]) -> dict[str, float]:
    """GSM8K: % exact numeric match of the final answers (and % of generations that give one);
    QA: SQuAD exact match and F1 (labkit.data.squad.evaluate) of the generated answers. ``accuracy`` is the
    headline figure of both (numeric match, or exact match)."""
    if dataset == "gsm8k":
        predicted = [final_answer(g) for g in generated]
        expected = [final_answer(target) for _, target in val_set]
        correct = sum(p is not None and p == e for p, e in zip(predicted, expected))
        return {"accuracy": 100.0 * correct / len(generated),
                "answered": 100.0 * sum(p is not None for p in predicted) / len(generated)}
    scores = squad.evaluate(val_examples, {e["id"]: g for e, g in zip(val_examples, generated)})
    return {"accuracy": scores["exact"], "exact": scores["exact"], "f1": scores["f1"]}


def activation_range(model: nn.Module, batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, float]:
    """Largest |output| of every linear layer and block on one batch, in the precision the caller runs it
    (evaluate: the training's): above 65,504 (or inf) a float16 value has overflowed or would."""
    watched = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Linear, T5Block))}
    with output_absmax(watched) as peaks:
        model(**{k: v.to(device) for k, v in batch.items()})
    finite = [v for v in peaks.values() if v == v and v != float("inf")]
    return {"act_absmax": max(finite, default=float("nan")),
            "act_over_fp16": sum(not (v <= torch.finfo(torch.float16).max) for v in peaks.values())}
