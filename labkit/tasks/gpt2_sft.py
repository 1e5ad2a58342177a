"""The GPT-2 supervised fine-tuning task (notebook 06): prompt/response pairs -> causal LM, loss on the response.

Sources (``data.source``):
  * ``hub``: a public instruction or dialogue data set, ``data.hub_name`` (default Dahoas/rm-static, whose
    rows have ``prompt`` and ``response``); its ``test`` split is the test set, else 10% of ``train`` is held out.
  * ``local``: a JSON-lines file, one object per line with the fields ``data.prompt_field`` and
    ``data.response_field`` (default ``prompt`` / ``response``; GSM8K's ``question`` / ``answer`` map the same
    way); ``data.val_path`` is the test file, else 10% of the file is held out.
  * ``embedded`` (default, offline): short instructions the kit generates (reverse a list, sort numbers, add,
    pick the animal, ...) whose responses follow a rule, so a model can learn them in minutes.

Every pair becomes ``TEMPLATE(prompt) + response + <eos>``; the labels are -100 on the prompt and the padding,
so the loss (and the gradient) comes from the response tokens only.

``data.sft_format: dialogue_windows`` trains as the original lab did instead: whole dialogues (hub: Anthropic/hh-rlhf's
``chosen`` dialogues less those Dahoas/rm-static also holds; local: a JSON list of dialogue strings, the original's
``sft_train.json``; embedded: the generated pairs as ``Human:``/``Assistant:`` turns), each ended by end-of-text and
joined into one token stream, cut into random ``data.max_length``-token windows with the loss on every token.
"""
from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from labkit.config import Config
from labkit.data import packing
from labkit.data.packing import padded_width
from labkit.data.sources import hold_out, load_hub
from labkit.data.synthetic.sft import generate_pairs
from labkit.data.tokenizers import load_tokenizer
from labkit.models import gpt2
from labkit.precision import PRECISIONS
from labkit.preflight import uses_cuda
from labkit.tasks import Task, transformer_flops_per_sample

HUB_DATASET = "Dahoas/rm-static"
DIALOGUE_HUB = "Anthropic/hh-rlhf"  # dialogue_windows: its 'chosen' dialogues, less those rm-static holds too
TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"
IGNORE = -100  # the label cross-entropy skips
GENERATIONS = 4  # test prompts answered greedily after each evaluation, stored in the record's info
GENERATE_TOKENS = 48


def read_jsonl(path: str | Path, prompt_field: str, response_field: str, setting: str = "data.path") -> list[dict[str, str]]:
    """Pairs from a JSON-lines file; a missing field names the line and the setting that maps it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{setting} '{path}': no such file; point it at a JSON-lines file of prompt/response pairs")
    pairs = []
    with path.open() as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}, line {n}: not JSON ({err}); the file needs one JSON object per line") from None
            for field, key in ((prompt_field, "prompt_field"), (response_field, "response_field")):
                if not isinstance(record, dict) or field not in record:
                    fields = sorted(record) if isinstance(record, dict) else type(record).__name__
                    raise ValueError(f"{path}, line {n}: no field '{field}' (it has {fields}); "
                                     f"set data.{key} to the field that holds the {key.split('_')[0]}")
            pairs.append({"prompt": str(record[prompt_field]), "response": str(record[response_field])})
    if not pairs:
        raise ValueError(f"{path}: no pairs in the file")
    return pairs


def read_hub(cfg: Config) -> tuple[list[dict[str, str]], list[dict[str, str]] | None]:
    """Train and (where the data set has one) test pairs of a hub data set."""
    d = cfg.data
    name = d.hub_name or HUB_DATASET
    splits = load_hub(name, d.hub_config)
    columns = splits["train"].column_names
    for field, key in ((d.prompt_field, "prompt_field"), (d.response_field, "response_field")):
        if field not in columns:
            raise ValueError(f"hub data set '{name}' has no column '{field}' (it has {columns}); set data.{key}")

    def pairs(split, limit: int | None) -> list[dict[str, str]]:
        rows = split.select(range(min(limit or len(split), len(split))))
        return [{"prompt": r[d.prompt_field], "response": r[d.response_field]} for r in rows]

    test = pairs(splits["test"], d.val_examples) if "test" in splits else None
    # Without a test split the test set is held out of all of train, so all of it is read.
    return pairs(splits["train"], d.train_examples if test is not None else None), test


def load_splits(cfg: Config) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    d = cfg.data
    if d.source == "embedded":
        train, test = generate_pairs(d.train_examples or 2000, seed=0), generate_pairs(d.val_examples or 200, seed=1)
    else:
        if d.source == "local":
            train = read_jsonl(d.path, d.prompt_field, d.response_field)
            test = read_jsonl(d.val_path, d.prompt_field, d.response_field, "data.val_path") if d.val_path else None
        else:
            train, test = read_hub(cfg)
        if test is None:  # the last tenth of the distinct prompts (or val_examples of them) is the test set
            train, test = hold_out(train, "prompt", d.val_examples)
    return train[: d.train_examples], test[: d.val_examples]


# ---- tokens: prompt masked, response learned -------------------------------------------------------------

def encode(pairs: list[dict[str, str]], tokenizer, max_length: int) -> tuple[list[dict[str, list[int]]], int]:
    """Token ids and labels per pair, and how many pairs were cut to ``max_length``.

    Prompt and response are tokenised apart, so the boundary between them is exact. A pair too long keeps
    at least half the window for the response: the prompt loses its beginning (the ``### Response:`` marker
    stays next to the response), then the response its end.
    """
    prompts = tokenizer([TEMPLATE.format(prompt=p["prompt"]) for p in pairs], add_special_tokens=False)["input_ids"]
    responses = tokenizer([p["response"] for p in pairs], add_special_tokens=False)["input_ids"]
    features, truncated = [], 0
    for prompt, response in zip(prompts, responses):
        response = response + [tokenizer.eos_token_id]
        if len(prompt) + len(response) > max_length:
            truncated += 1
            prompt = prompt[-(max_length - min(len(response), max_length // 2)):]
            response = response[: max_length - len(prompt)]
        features.append({"input_ids": prompt + response, "labels": [IGNORE] * len(prompt) + response})
    return features, truncated


@dataclass
class Collate:
    """Pads a batch on the right to ``width``, or (``width`` None) to its longest pair rounded up to a multiple of
    ``multiple``, at most ``most`` wide: padding is masked and unlabelled."""

    pad_id: int
    width: int | None = None
    multiple: int = 1
    most: int | None = None

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = self.width or padded_width(max(len(f["input_ids"]) for f in features), self.multiple, self.most)
        batch = {"input_ids": torch.full((len(features), width), self.pad_id),
                 "attention_mask": torch.zeros(len(features), width, dtype=torch.long),
                 "labels": torch.full((len(features), width), IGNORE)}
        for i, f in enumerate(features):
            n = len(f["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(f["input_ids"])
            batch["attention_mask"][i, :n] = 1
            batch["labels"][i, :n] = torch.tensor(f["labels"])
        return batch


@dataclass
class PackedPairs:
    """collate_fn: a batch of pairs as one packed row, each pair a segment of its own (labkit.data.packing.Packing,
    which labels each pair's first token and the padding IGNORE, so no token learns to predict the next pair)."""

    packing: packing.Packing

    def __call__(self, features: list[dict[str, list[int]]]) -> dict[str, torch.Tensor | int]:
        return self.packing([{"input_ids": torch.tensor(f["input_ids"]), "labels": torch.tensor(f["labels"]),
                              "attention_mask": torch.ones(len(f["input_ids"]), dtype=torch.long)} for f in features])


@torch.no_grad()
def generate(model: nn.Module, tokenizer, prompts: list[str], max_length: int) -> list[str]:
    """Greedy responses to ``prompts``, one at a time (no padding to get wrong); a long prompt loses its
    beginning, as in training, so prompt and answer fit the training window."""
    device = next(model.parameters()).device
    keep = max(max_length - GENERATE_TOKENS, max_length // 2)
    responses = []
    for prompt in prompts:
        ids = tokenizer(TEMPLATE.format(prompt=prompt), add_special_tokens=False)["input_ids"]
        ids = torch.tensor([ids[-keep:]], device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=GENERATE_TOKENS,
                             do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        responses.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    return responses


# ---- dialogue quality: the original lab's outcome measure ----------------------------------------------------

def reward_evaluation(cfg: Config, tokenizer, prompts: list[str], info: dict):
    """With measure.reward_model: after training, the fine-tuned model's sampled answers against the untuned
    model's (built again from the same weights, or freshly initialised ones), scored by the reward model."""
    if cfg.measure.reward_model == "off":
        return None
    prompts = prompts[: cfg.measure.reward_prompts]

    def final_evaluate(model: nn.Module) -> dict[str, float]:
        from labkit import reward

        untuned, _ = gpt2.build(cfg.model.model_copy(update={"finetune": "full"}), len(tokenizer))
        untuned.to(next(model.parameters()).device).eval()
        summary, info["reward_answers"] = reward.evaluate(cfg.measure, model, untuned, tokenizer, prompts)
        return summary

    return final_evaluate


def first_human_turn(dialogue: str) -> str:
    """The opening question of an hh-rlhf dialogue ('\n\nHuman: ... \n\nAssistant: ...')."""
    return dialogue.split("Human:", 1)[-1].split("\n\nAssistant:", 1)[0].strip()


# ---- dialogue windows: the original lab's data and loss ------------------------------------------------------

def read_dialogues(path: str | Path, setting: str) -> list[str]:
    """A JSON list of dialogue strings (the original lab's sft_train.json / sft_test.json)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{setting} '{path}': no such file; point it at a JSON list of dialogue strings")
    dialogues = json.loads(path.read_text(encoding="utf-8"))
    if not (isinstance(dialogues, list) and dialogues and all(isinstance(x, str) for x in dialogues)):
        raise ValueError(f"{path}: expected a non-empty JSON list of dialogue strings (data.sft_format: dialogue_windows)")
    return dialogues


def load_dialogues(cfg: Config) -> tuple[list[str], list[str]]:
    """Train and test dialogues for data.sft_format: dialogue_windows."""
    d = cfg.data
    if d.source == "embedded":
        return tuple([f"\n\nHuman: {p['prompt']}\n\nAssistant: {p['response']}" for p in split] for split in load_splits(cfg))
    if d.source == "local":
        train = read_dialogues(d.path, "data.path")
        if d.val_path:
            return train, read_dialogues(d.val_path, "data.val_path")
        n_test = max(1, len(train) // 10)  # no test file: the last tenth
        return train[:-n_test], train[-n_test:]
    dialogues, rm_static = load_hub(d.hub_name or DIALOGUE_HUB, d.hub_config), load_hub(HUB_DATASET)
    splits = []
    for split in ("train", "test"):
        seen = {r["prompt"] + r["chosen"] for r in rm_static[split]}  # the original's prepare_sft_dataset.py
        splits.append([c for c in dialogues[split]["chosen"] if c not in seen])
    return splits[0], splits[1]


class Windows(torch.utils.data.Dataset):
    """``length``-token windows of a token stream, the labels the inputs themselves (the loss on every token).
    An epoch has as many windows as the stream holds; training windows start anywhere, drawn afresh each time
    (as the original's sampler did), test windows are fixed by their index."""

    def __init__(self, tokens: list[int], length: int, fixed: bool):
        if len(tokens) <= length:
            raise ValueError(f"{len(tokens)} tokens of dialogue cannot fill a {length}-token window: lower data.max_length")
        self.tokens, self.length, self.fixed = tokens, length, fixed

    def __len__(self) -> int:
        return len(self.tokens) // self.length

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        draw = random.Random(i) if self.fixed else random
        start = draw.randrange(len(self.tokens) - self.length)
        ids = self.tokens[start: start + self.length]
        return {"input_ids": ids, "labels": ids}


def dialogue_task(cfg: Config) -> Task:
    d = cfg.data
    train, test = load_dialogues(cfg)
    tokenizer = load_tokenizer(cfg.model, train, "bpe", 50257, gpt2.PRESETS[cfg.model.preset][0])
    model, info = gpt2.build(cfg.model, len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    stream = lambda texts: [t for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]  # noqa: E731
                            for t in ids + [tokenizer.eos_token_id]]
    train_set, test_set = Windows(stream(train), d.max_length, fixed=False), Windows(stream(test), d.max_length, fixed=True)
    info.update(data_source=d.source if d.source != "hub" else f"hub: {d.hub_name or DIALOGUE_HUB} less {HUB_DATASET}",
                sft_format=d.sft_format, train_examples=len(train), val_examples=len(test),
                train_tokens=len(train_set.tokens), mean_real_tokens=float(d.max_length))
    n = gpt2.non_embedding_params(model)
    flops = transformer_flops_per_sample(n, info["layers"], info["hidden"], d.max_length)
    if cfg.model.finetune == "lora":
        flops -= 2 * n * d.max_length
    return Task(model=model, train_set=train_set, val_set=test_set, collate_fn=Collate(tokenizer.pad_token_id),
                flops_per_sample=flops, info=info,
                final_evaluate=reward_evaluation(cfg, tokenizer, [first_human_turn(t) for t in test], info))


# ---- the task -----------------------------------------------------------------------------------------------

def build_task(cfg: Config) -> Task:
    d = cfg.data
    if d.sft_format == "dialogue_windows":
        return dialogue_task(cfg)
    train_pairs, test_pairs = load_splits(cfg)
    texts = [TEMPLATE.format(prompt=p["prompt"]) + p["response"] for p in train_pairs]
    tokenizer = load_tokenizer(cfg.model, texts, "bpe", 50257, gpt2.PRESETS[cfg.model.preset][0])
    model, info = gpt2.build(cfg.model, len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    train_set, truncated = encode(train_pairs, tokenizer, d.max_length)
    test_set, _ = encode(test_pairs, tokenizer, d.max_length)
    lengths = [len(f["input_ids"]) for f in train_set]
    padded = Collate(tokenizer.pad_token_id, d.max_length if d.padding == "max_length" else None, d.pad_multiple,
                     d.max_length)
    collate, sampler = padded, None
    if d.padding == "packed":  # each pair a segment of one row; with data.pack_tokens every row one length
        model.set_attn_implementation(packing.register())
        row, sampler = packing.fixed_rows(cfg, lengths)
        collate = PackedPairs(packing.Packing((), d.pad_multiple, d.max_length, row_tokens=row, causal_labels="labels"))
        info.update(attention=packing.kernel_name(uses_cuda(cfg), PRECISIONS[cfg.train.precision].half),
                    attention_dropout="off (packed batches: the varlen kernel has none)", packed_row_tokens=row)
    samples = test_pairs[:GENERATIONS]

    @torch.no_grad()
    def evaluate(model: nn.Module, batch_size: int, limit: int | None) -> dict[str, float]:
        """Test loss per response token (perplexity is its exp), then greedy answers to the first test prompts."""
        # The model inside Fabric's wrapper, under the training precision's autocast: a compiled forward would compile
        # again for the evaluation's batch size, and Fabric refuses generate() on a compiled model.
        model = getattr(model, "module", model)
        device = next(model.parameters()).device
        nll, targets = torch.zeros((), device=device, dtype=torch.float64), 0
        pairs = test_set[:limit]
        with PRECISIONS[cfg.train.precision].autocast_on(device):
            for start in range(0, len(pairs), batch_size):
                batch = {k: v.to(device) for k, v in padded(pairs[start: start + batch_size]).items()}
                n = int((batch["labels"][:, 1:] != IGNORE).sum())  # the model predicts token t+1 from tokens <= t
                nll += model(**batch).loss.double() * n
                targets += n
        loss = (nll / targets).item()
        responses = generate(model, tokenizer, [s["prompt"] for s in samples], d.max_length)
        info["generations"] = [{"prompt": s["prompt"], "reference": s["response"], "generated": r}
                               for s, r in zip(samples, responses)]
        return {"test_loss": loss, "test_perplexity": math.exp(loss)}

    info.update(data_source=d.source if d.source != "hub" else f"hub: {d.hub_name or HUB_DATASET}",
                train_examples=len(train_set), val_examples=len(test_set), truncated_examples=truncated,
                mean_real_tokens=sum(lengths) / len(lengths),
                mean_response_tokens=sum(sum(t != IGNORE for t in f["labels"]) for f in train_set) / len(train_set))
    # 6·N·T: 2 forward, 2 for activation gradients, 2 for weight gradients; frozen weights get none (LoRA: ~4·N·T).
    seq = d.max_length if d.padding == "max_length" else info["mean_real_tokens"]
    n = gpt2.non_embedding_params(model)
    flops = transformer_flops_per_sample(n, info["layers"], info["hidden"], seq)
    if cfg.model.finetune == "lora":
        flops -= 2 * n * seq
    return Task(model=model, train_set=train_set, val_set=test_set, collate_fn=collate, evaluate=evaluate,
                flops_per_sample=flops, info=info, train_sampler=sampler,
                final_evaluate=reward_evaluation(cfg, tokenizer, [p["prompt"] for p in test_pairs], info))
