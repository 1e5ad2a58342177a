"""The BERT-on-SQuAD 2.0 task: examples -> features -> BERT-QA, scored by the official metric."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from labkit import squad
from labkit.config import Config
from labkit.models import bert
from labkit.tasks import Task, transformer_flops_per_sample

HUB_DATASET = "rajpurkar/squad_v2"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class Features(Dataset):
    """Tokenised features as one tensor per key; a batch is a dict the model takes as keyword arguments."""

    def __init__(self, features: dict[str, list], keys: tuple[str, ...]):
        self.tensors = {k: torch.tensor(features[k]) for k in keys if k in features}

    def __len__(self) -> int:
        return len(self.tensors["input_ids"])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def load_splits(cfg: Config) -> tuple[list[dict], list[dict]]:
    d = cfg.data
    kwargs = dict(hub_name=d.hub_name or HUB_DATASET, seed=cfg.train.seed)
    if d.source == "local" and not d.val_path:
        # One local file: hold out its last articles for validation, so validation is unseen text.
        examples = squad.load_examples("local", "train", path=d.path, **kwargs)
        titles = list(dict.fromkeys(e["title"] for e in examples))
        held_out = set(titles[-max(1, len(titles) // 10):]) if len(titles) > 1 else set()
        train = [e for e in examples if e["title"] not in held_out] or examples
        val = [e for e in examples if e["title"] in held_out] or examples
        return train[: d.train_examples], val[: d.val_examples]
    train = squad.load_examples(d.source, "train", path=d.path, limit=d.train_examples, **kwargs)
    val = squad.load_examples(d.source, "validation", path=d.val_path or d.path, limit=d.val_examples, **kwargs)
    return train, val


def load_tokenizer(cfg: Config, texts: list[str]):
    """The pretrained model's own tokenizer, or offline a WordPiece vocabulary trained on the data."""
    if cfg.model.weights == "random":
        from labkit.tokenizers import train_wordpiece

        return train_wordpiece(texts, vocab_size=8000 if cfg.model.preset == "tiny" else 30522)
    from transformers import AutoTokenizer

    source = cfg.model.path if cfg.model.weights == "local" else (cfg.model.hub_name or bert.PRESETS[cfg.model.preset][0])
    return AutoTokenizer.from_pretrained(source)


def build_task(cfg: Config) -> Task:
    d = cfg.data
    train_examples, val_examples = load_splits(cfg)
    texts = list(dict.fromkeys(e["context"] for e in train_examples)) + [e["question"] for e in train_examples]
    tokenizer = load_tokenizer(cfg, texts)
    model, info = bert.build(cfg.model, len(tokenizer), d.max_length)
    labelled = MODEL_INPUTS + ("start_positions", "end_positions")
    train_set = Features(squad.prepare_train_features(train_examples, tokenizer, d.max_length, d.doc_stride), labelled)
    val_set = Features(squad.prepare_train_features(val_examples, tokenizer, d.max_length, d.doc_stride), labelled)
    eval_features = squad.prepare_eval_features(val_examples, tokenizer, d.max_length, d.doc_stride)
    eval_set = Features(eval_features, MODEL_INPUTS)

    @torch.no_grad()
    def evaluate(model: nn.Module) -> dict[str, float]:
        device = next(model.parameters()).device
        starts, ends = [], []
        for i in range(0, len(eval_set), 2 * cfg.train.batch_size):
            batch = {k: v[i: i + 2 * cfg.train.batch_size].to(device) for k, v in eval_set.tensors.items()}
            out = model(**batch)
            starts.append(out.start_logits.float().cpu())
            ends.append(out.end_logits.float().cpu())
        predictions = squad.postprocess_predictions(val_examples, eval_features, torch.cat(starts).numpy(),
                                                    torch.cat(ends).numpy())
        return squad.evaluate(val_examples, predictions)

    info.update(data_source=d.source, train_examples=len(train_examples), val_examples=len(val_examples),
                train_features=len(train_set), val_features=len(val_set),
                mean_real_tokens=float(np.mean(train_set.tensors["attention_mask"].sum(1).numpy())))
    flops = transformer_flops_per_sample(bert.non_embedding_params(model), info["layers"], info["hidden"], d.max_length)
    return Task(model=model, train_set=train_set, val_set=val_set, evaluate=evaluate, flops_per_sample=flops, info=info)
