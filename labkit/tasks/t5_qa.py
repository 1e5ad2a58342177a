"""T5 question answering, text to text (notebook 07): GSM8K grade-school maths and biomedical factoid QA.

Every example becomes a pair of texts, ``question: ... [context: ...]`` -> answer, tokenised a batch at a
time in the loader's workers (so ``data.num_workers`` has the work the original lab gave it), sources to
``data.max_length`` tokens and targets to ``data.target_length``.

* GSM8K (``data.dataset: gsm8k``): JSON lines with ``question`` and ``answer``, the final number after
  ``#### `` on the answer's last line. The target is the worked solution without the calculator
  annotations (``<<48/2=24>>``, which repeat the step's result), or with ``data.gsm8k_target: final_number``
  the final number alone (the original lab's target); a greedy generation scores when its final number
  equals the reference's (exact numeric match: ``1,080`` == ``1080``).
* Biomedical QA (``data.dataset: bioqa``): SQuAD-format JSON (BioASQ factoid questions as BioBERT
  distributed them); the target is the first gold answer, scored by SQuAD's exact match and F1.

Sources: ``hub`` (GSM8K: ``openai/gsm8k`` ``main``; bioqa: a SQuAD-layout BioASQ upload, set data.hub_name to
use another), ``local`` (data.path, and data.val_path or the last tenth held out) or ``embedded``: generated
problems in the same formats (arithmetic word problems with worked answers; passages about invented genes,
drugs and diseases with factoid questions).
"""
from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.models.t5.modeling_t5 import T5Block

from labkit.data import squad
from labkit.data.packing import padded_width
from labkit.data.sources import hold_out, load_hub
from labkit.data.synthetic.bioqa import generate_bioqa
from labkit.data.synthetic.gsm8k import generate_gsm8k
from labkit.data.tokenizers import load_tokenizer
from labkit.measure import output_absmax
from labkit.config import Config
from labkit.models import t5
from labkit.precision import PRECISIONS
from labkit.preflight import uses_cuda
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
    if not rows:
        raise ValueError(f"{path}: no GSM8K lines in the file (it is empty); expected {GSM8K_FORMAT}")
    return rows


# ----------------------------------------------------------------------------- loading


def _original_splits(cfg: Config, train: list[dict], val: list[dict]) -> tuple[list[dict], list[dict], list[dict] | None]:
    """Train, validation and test examples. The original lab 07's preparation where the data options ask for it:
    one question per distinct context (data.drop_duplicate_contexts), then a random data.val_fraction of the
    training split (seed Config.data_seed; sklearn's train_test_split rounds up) held out for validation, and the
    source's own split kept as the test set (GSM8K's test.jsonl). Otherwise no test set."""
    d = cfg.data
    if d.drop_duplicate_contexts:
        train = list({e["context"]: e for e in reversed(train)}.values())[::-1]  # the first question of each context
    if not d.val_fraction:
        return train[: d.train_examples], val[: d.val_examples], None
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(cfg.data_seed)).tolist()
    held = order[: math.ceil(d.val_fraction * len(train))]
    kept = set(held)
    rest = [e for i, e in enumerate(train) if i not in kept]
    return rest[: d.train_examples], [train[i] for i in held][: d.val_examples], val or None


def load_gsm8k(cfg: Config) -> tuple[list[dict], list[dict], list[dict] | None]:
    d = cfg.data
    if d.source == "embedded":
        train = generate_gsm8k(d.train_examples or EMBEDDED_SIZES["train"], 2 * cfg.data_seed)
        val = generate_gsm8k(d.val_examples or EMBEDDED_SIZES["validation"], 2 * cfg.data_seed + 1)
    elif d.source == "local":
        rows = read_gsm8k(d.path)
        train, val = (rows, read_gsm8k(d.val_path)) if d.val_path else (rows, []) if d.val_fraction else hold_out(rows, "question")
    else:
        name, config = d.hub_name or GSM8K_HUB[0], d.hub_config or GSM8K_HUB[1]
        train, val = ([{"question": r["question"], "answer": r["answer"]} for r in load_hub(name, config, split)]
                      for split in ("train", "test"))
    return _original_splits(cfg, train, val)


def load_bioqa(cfg: Config) -> tuple[list[dict], list[dict], list[dict] | None]:
    d = cfg.data
    if d.source == "embedded":
        # 2 to 4 questions a passage, so n/2 passages give n; disjoint seeds: validation passages are unseen
        train = squad.flatten_squad(generate_bioqa(-(-(d.train_examples or EMBEDDED_SIZES["train"]) // 2),
                                                   2 * cfg.data_seed), "embedded")
        val = squad.flatten_squad(generate_bioqa(-(-(d.val_examples or EMBEDDED_SIZES["validation"]) // 2),
                                                 2 * cfg.data_seed + 1), "embedded")
    elif d.source == "local":
        # A folder: every SQuAD-format file in it, in name order (BioASQ-train-factoid-4b.json, ...), as one set.
        files = sorted(Path(d.path).glob("*.json")) if Path(d.path).is_dir() else [d.path]
        rows = [e for f in files for e in squad.read_squad_json(f)]
        train, val = ((rows, squad.read_squad_json(d.val_path)) if d.val_path
                      else (rows, []) if d.val_fraction else hold_out(rows, "question"))
    else:
        keys = ("id", "context", "question", "answers")
        train, val = ([{"title": row.get("title", ""), **{k: row[k] for k in keys}}
                       for row in load_hub(d.hub_name or BIOQA_HUB, d.hub_config, split)] for split in ("train", "validation"))
    return _original_splits(cfg, train, val)


def text_pairs(dataset: str, examples: list[dict], gsm8k_answer: str = "solution") -> list[tuple[str, str]]:
    """(source, target) texts of GSM8K problems (the target: the worked solution, or the final number alone)
    or SQuAD-layout QA examples."""
    if dataset == "gsm8k":
        target = gsm8k_target if gsm8k_answer == "solution" else (lambda answer: final_answer(answer) or "")
        return [(source_text(e["question"]), target(e["answer"])) for e in examples]
    return [(source_text(e["question"], e["context"]), (e["answers"]["text"] or [""])[0]) for e in examples]


# ----------------------------------------------------------------------------- batches


class TextToText:
    """collate_fn: a list of (source, target) pairs -> input_ids, attention_mask and labels (padding -100).
    Runs in the loader's worker processes, so tokenisation overlaps the GPU's work when num_workers > 0.

    Padding ``dynamic``: sources and targets each to their batch's longest, rounded up to a multiple of
    ``multiple``. The rounding keeps the shapes few: a compiled model compiles each (source, target) shape it
    meets, and eager attention kernels that plan per shape (cuDNN's) plan each once, not every step."""

    def __init__(self, tokenizer: Any, max_length: int, target_length: int, padding: str, multiple: int = 1):
        self.tokenizer, self.max_length, self.target_length = tokenizer, max_length, target_length
        self.padding = "max_length" if padding == "max_length" else "longest"
        self.multiple = multiple

    def __call__(self, pairs: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
        sources, targets = zip(*pairs)
        batch = self.tokenizer(list(sources), max_length=self.max_length, truncation=True, padding=self.padding,
                               return_tensors="pt")
        labels = self.tokenizer(text_target=list(targets), max_length=self.target_length, truncation=True,
                                padding=self.padding, return_tensors="pt")["input_ids"]
        if self.padding == "longest":  # the tokenizer's own pad_to_multiple_of refuses a max_length off the multiple
            batch = {k: self.widen(v, self.max_length, 0 if k == "attention_mask" else self.tokenizer.pad_token_id)
                     for k, v in batch.items()}
            labels = self.widen(labels, self.target_length, self.tokenizer.pad_token_id)
        labels[labels == self.tokenizer.pad_token_id] = -100  # padding does not count in the loss
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "labels": labels}

    def widen(self, ids: torch.Tensor, most: int, value: int) -> torch.Tensor:
        """``ids`` padded on the right to the next multiple of ``multiple`` (at most ``most`` wide)."""
        return nn.functional.pad(ids, (0, padded_width(ids.shape[1], self.multiple, most) - ids.shape[1]), value=value)


# ----------------------------------------------------------------------------- the task


def build_task(cfg: Config) -> Task:
    d = cfg.data
    train_examples, val_examples, test_examples = (load_gsm8k if d.dataset == "gsm8k" else load_bioqa)(cfg)
    train_set, val_set = (text_pairs(d.dataset, e, d.gsm8k_target) for e in (train_examples, val_examples))
    test_set = text_pairs(d.dataset, test_examples, d.gsm8k_target) if test_examples else None
    tokenizer = load_tokenizer(cfg.model, [text for pair in train_set for text in pair if text], "unigram", t5.T5_VOCAB,
                               t5.PRESETS[cfg.model.preset][0])
    # Drawn on this process's GPU where the run uses one (Fabric has made it the current device).
    device = torch.device("cuda", torch.cuda.current_device()) if uses_cuda(cfg) else None
    model, info = t5.build(cfg.model, len(tokenizer), device)
    collate = TextToText(tokenizer, d.max_length, d.target_length, d.padding, d.pad_multiple)
    evaluate = make_evaluate(cfg, tokenizer, collate, val_set, val_examples)

    lengths = tokenizer([s for s, _ in train_set] + [t for _, t in train_set])["input_ids"]
    n = len(train_set)
    info.update(data_source=d.source, dataset=d.dataset, train_examples=n, val_examples=len(val_set),
                test_examples=len(test_set) if test_set else 0,
                sources_truncated=sum(len(x) > d.max_length for x in lengths[:n]) / n,
                targets_truncated=sum(len(x) > d.target_length for x in lengths[n:]) / n,
                # the source's tokens, as the loop counts real tokens (its attention mask), and the answer's
                mean_real_tokens=sum(min(len(x), d.max_length) for x in lengths[:n]) / n,
                mean_target_tokens=sum(min(len(x), d.target_length) for x in lengths[n:]) / n)
    encoder, decoder = t5.non_embedding_params(t5_of(model))
    c = t5_of(model).config
    inner = c.num_heads * c.d_kv
    # Padded to max_length, the model computes every position; padded dynamically, the real tokens are the work
    # counted (as gpt2_sft counts them), so MFU does not credit the padding a dynamic batch no longer carries.
    source, target = ((d.max_length, d.target_length) if d.padding == "max_length"
                      else (info["mean_real_tokens"], info["mean_target_tokens"]))
    # Encoder and decoder as two transformers over their own lengths, plus cross-attention and the tied LM head.
    flops = (transformer_flops_per_sample(encoder, c.num_layers, inner, source)
             + transformer_flops_per_sample(decoder, c.num_decoder_layers, inner, target)
             + 12 * c.num_decoder_layers * inner * source * target
             + 6 * c.d_model * c.vocab_size * target)
    return Task(model=model, train_set=train_set, val_set=val_set, collate_fn=collate, evaluate=evaluate,
                flops_per_sample=flops, info=info, test_set=test_set)


def t5_of(model: nn.Module) -> nn.Module:
    """The bare T5 model inside Fabric's (and DDP's) wrappers; Fabric's ``module`` is the uncompiled original."""
    while isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


@contextlib.contextmanager
def whole_parameters(model: nn.Module) -> Iterator[str | None]:
    """Evaluation of an FSDP2 model with each unit's parameters gathered once and kept until the block ends, then
    sharded again; yields None for a model that is not sharded. Generating an answer runs the decoder once per
    token: with the units resharding after every forward, each token would gather every block's parameters again.
    The root unit is gathered by hand: FSDP2 keeps its parameters (T5's tied embedding) sharded outside the root's
    own forward, and generate() runs the encoder on its own first. Yields "once", or "per forward" on an older torch
    without ``set_reshard_after_forward``, where only the root stays gathered."""
    if not (hasattr(model, "unshard") and hasattr(model, "reshard")):  # FSDP2's methods on a sharded module
        yield None
        return
    units = [m for m in model.modules() if hasattr(m, "unshard") and hasattr(m, "reshard")]
    once = hasattr(model, "set_reshard_after_forward")
    if once:
        model.set_reshard_after_forward(False)  # every unit below it too
    model.unshard()
    try:
        yield "once" if once else "per forward"
    finally:
        if once:  # as fully_shard left them: the blocks reshard after forward, the root (run first in backward) not
            model.set_reshard_after_forward(True)
            model.set_reshard_after_forward(False, recurse=False)
        for unit in units:
            unit.reshard()


def make_evaluate(cfg: Config, tokenizer: Any, collate: TextToText, val_set: list[tuple[str, str]],
                  val_examples: list[dict]):
    """Answer accuracy by greedy generation over the validation set, and the activations' range (fp16 check)."""
    dataset = cfg.data.dataset
    answer_tokens = [len(ids) for ids in tokenizer([t for _, t in val_set])["input_ids"]]

    @torch.no_grad()
    def evaluate(model: nn.Module, batch_size: int, limit: int | None) -> dict[str, float]:
        pairs, examples = val_set[:limit], val_examples[:limit]
        # No reference answer is longer than this (its end-of-sequence token counted): a model that has learnt the
        # task stops earlier, at its own end of sequence, and an untrained one is cut here, not at target_length.
        max_new_tokens = min(cfg.data.target_length, max(answer_tokens[:limit], default=1))
        # The bare T5 inside Fabric's wrapper, run eagerly under the training precision's autocast: inference
        # needs nothing of DDP's forward, and a compiled forward would recompile for every generated length.
        core = t5_of(model)
        device = next(core.parameters()).device
        autocast = PRECISIONS[cfg.train.precision].autocast_on(device)
        sharded = torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1
        with whole_parameters(core) as gathering, autocast:
            # A rank that holds the whole model (DDP, ZeRO-2, FSDP2 gathered once) answers its share of the questions
            # and the ranks pool the answers; an FSDP2 model whose units gather their parameters at every forward
            # (an older torch) runs the collectives in step, so there every rank answers every question.
            shared = sharded and gathering != "per forward"
            ranks, rank = (torch.distributed.get_world_size(), torch.distributed.get_rank()) if shared else (1, 0)
            share = math.ceil(len(pairs) / ranks)
            mine, generated = pairs[rank * share: (rank + 1) * share], []
            for i in range(0, len(mine), batch_size):
                batch = collate(mine[i: i + batch_size])
                out = core.generate(input_ids=batch["input_ids"].to(device),
                                    attention_mask=batch["attention_mask"].to(device),
                                    max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                                    synced_gpus=sharded and not shared)
                generated += tokenizer.batch_decode(out, skip_special_tokens=True)
            if shared:
                pooled: list[list[str]] = [[] for _ in range(ranks)]
                torch.distributed.all_gather_object(pooled, generated)
                generated = [answer for part in pooled for answer in part]  # rank order is the questions' order
            metrics = score(dataset, generated, pairs, examples, cfg.data.gsm8k_target)
            metrics.update(activation_range(core, collate(pairs[:batch_size]), device))
        return metrics

    return evaluate


def score(dataset: str, generated: list[str], val_set: list[tuple[str, str]], val_examples: list[dict],
          gsm8k_answer: str = "solution") -> dict[str, float]:
    """GSM8K: % exact numeric match of the final answers (after the generation's ``#### ``, or the whole
    generation where the target is the final number alone), and % of generations that give one;
    QA: SQuAD exact match and F1 (labkit.data.squad.evaluate) of the generated answers. ``accuracy`` is the
    headline figure of both (numeric match, or exact match)."""
    if dataset == "gsm8k":
        number = final_answer if gsm8k_answer == "solution" else (lambda text: final_answer(f"#### {text.strip()}"))
        predicted = [number(g) for g in generated]
        expected = [number(target) for _, target in val_set]
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
