"""The BERT-on-SQuAD 2.0 task: examples -> features -> BERT-QA, scored by the official metric.

Features are padded to ``data.max_length`` when tokenised; ``data.padding`` decides what a training
batch keeps of that padding: all of it (max_length), up to its longest feature (dynamic, best with
``data.group_by_length``), or none (packed: labkit.data.packing). The loss is the same in all three: a
cross-entropy over each feature's real tokens (padding never enters the softmax), so a packed batch
and the same batch padded give the same loss.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from labkit.data import packing
from labkit.data import squad
from labkit.data.sources import hold_out
from labkit.data.tokenizers import load_tokenizer
from labkit.config import Config
from labkit.models import bert
from labkit.precision import PRECISIONS
from labkit.preflight import uses_cuda
from labkit.tasks import Task, transformer_flops_per_sample

HUB_DATASET = "rajpurkar/squad_v2"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
LABELS = ("start_positions", "end_positions")


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
    kwargs = dict(hub_name=d.hub_name or HUB_DATASET, seed=cfg.data_seed, context_length=d.context_length)
    if d.source == "local" and not d.val_path:
        # One local file: hold out its last articles for validation, so validation is unseen text.
        examples = squad.load_examples("local", "train", path=d.path, **kwargs)
        train, val = hold_out(examples, "title")
        return train[: d.train_examples], val[: d.val_examples]
    train = squad.load_examples(d.source, "train", path=d.path, limit=d.train_examples, **kwargs)
    val = squad.load_examples(d.source, "validation", path=d.val_path or d.path, limit=d.val_examples, **kwargs)
    return train, val


def qa_loss(model: nn.Module, batch: dict, symbolic_rows: bool = True) -> torch.Tensor:
    """Mean of the start and end cross-entropies, each a softmax over the feature's real tokens only.
    ``symbolic_rows``: a compiled model takes a packed row's length as symbolic (see below)."""
    if "cu_seq_lens_q" in batch and symbolic_rows:
        # Without data.pack_tokens a packed row's length is the one input size that changes from batch to batch:
        # compiled, it alone is symbolic (the rest stays static), so the model compiles once and replays one CUDA
        # graph per row length. With data.pack_tokens every training row has one length, compiled static (a faster
        # compilation); a validation row of another length compiles on its own.
        # maybe_: should tracing ever specialise it, that length compiles on its own instead of failing the run.
        for key in ("input_ids", "token_type_ids", "position_ids"):
            torch._dynamo.maybe_mark_dynamic(batch[key], 1)
    out = model(**{k: v for k, v in batch.items() if k not in LABELS})
    if "cu_seq_lens_q" in batch:  # packed: one row, a softmax per segment
        cu = batch["cu_seq_lens_q"]
        segments = packing.segment_ids(cu, out.start_logits.shape[-1])

        def nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            # The features are the first len(target) segments; the row's last, its padding, is not read.
            logits = logits[0].float()
            return (packing.segment_logsumexp(logits, segments, len(cu) - 1)[: len(target)] - logits[target]).mean()
    else:
        padding = batch["attention_mask"] == 0

        def nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            # A target past the feature (data.squad_examples one_per_answer: the answer was cut off) is
            # ignored, as BertForQuestionAnswering ignores it.
            return F.cross_entropy(logits.float().masked_fill(padding, float("-inf")), target,
                                   ignore_index=logits.shape[-1])
    return (nll(out.start_logits, batch["start_positions"]) + nll(out.end_logits, batch["end_positions"])) / 2


def batching(cfg: Config, lengths: torch.Tensor, padding_side: str):
    """collate_fn and training sampler for data.padding and data.group_by_length."""
    d, t = cfg.data, cfg.train
    if d.padding != "max_length" and padding_side != "right":
        raise ValueError(f"data.padding '{d.padding}' cuts padding off the right of each feature, but this tokenizer "
                         "pads on the left: use data.padding max_length")
    row, sampler = packing.fixed_rows(cfg, lengths.tolist())  # with data.pack_tokens: one row length, batches that fit
    collate = {"max_length": None, "dynamic": packing.DynamicPadding(d.pad_multiple),
               "packed": packing.Packing(LABELS, d.pad_multiple, d.max_length, row_tokens=row)}[d.padding]
    if d.group_by_length:
        # One group is one optimizer micro-step's batches over every device, so each rank's batch is alike in length.
        sampler = packing.LengthGroupedSampler(lengths.tolist(), t.batch_size * t.devices * t.num_nodes, seed=t.seed)
    return collate, sampler


def flops_per_feature(cfg: Config, model: nn.Module, info: dict, lengths: torch.Tensor, sampler) -> tuple[float, dict]:
    """Training FLOPs per feature for MFU, counted over the tokens the model runs on, and what they count (for
    the record). Padded to max_length: that length. Dynamic: each batch's padded width, averaged over one
    epoch's batches as the sampler (or a shuffle) forms them. Packed: each feature's real tokens only."""
    d = cfg.data
    n = bert.non_embedding_params(model)
    flops = lambda tokens: transformer_flops_per_sample(n, info["layers"], info["hidden"], tokens)  # noqa: E731
    if d.padding == "max_length":
        return flops(d.max_length), {"flops_counted": f"every feature padded to {d.max_length} tokens"}
    if d.padding == "packed":
        return float(flops(lengths.double()).mean()), {
            "flops_counted": "real tokens only (not the packed row's padding), attention within each feature"}
    order = torch.tensor(list(sampler)) if sampler else torch.randperm(len(lengths), generator=torch.Generator().manual_seed(0))
    batches = lengths[order].split(cfg.train.batch_size)
    widths = torch.tensor([packing.padded_width(int(b.max()), d.pad_multiple, d.max_length) for b in batches], dtype=torch.float64)
    sizes = torch.tensor([len(b) for b in batches], dtype=torch.float64)
    padded = float((widths * sizes).sum() / sizes.sum())
    return float((flops(widths) * sizes).sum() / sizes.sum()), {
        "flops_counted": f"each batch's padded width (mean {padded:.0f} tokens)", "mean_padded_tokens": padded}


def make_evaluate(cfg: Config, val_examples: list[dict], tokenizer):
    """The official SQuAD 2.0 metric over the validation questions, from the windows' predictions."""
    d = cfg.data
    eval_features = squad.prepare_eval_features(val_examples, tokenizer, d.max_length, d.doc_stride)
    eval_set = Features(eval_features, MODEL_INPUTS)

    @torch.no_grad()
    def evaluate(model: nn.Module, batch_size: int, limit: int | None) -> dict[str, float]:
        examples = val_examples[:limit]
        kept = {e["id"] for e in examples}
        windows = sum(i in kept for i in eval_features["example_id"])  # an example's windows are consecutive
        device = next(model.parameters()).device
        starts, ends = [], []
        for i in range(0, windows, batch_size):
            batch = {k: v[i: min(i + batch_size, windows)].to(device) for k, v in eval_set.tensors.items()}
            out = model(**batch)
            starts.append(out.start_logits.float().cpu())
            ends.append(out.end_logits.float().cpu())
        predictions = squad.postprocess_predictions(examples, eval_features, torch.cat(starts).numpy(),
                                                    torch.cat(ends).numpy())
        return squad.evaluate(examples, predictions)

    return evaluate


def build_task(cfg: Config) -> Task:
    d = cfg.data
    train_examples, val_examples = load_splits(cfg)
    texts = list(dict.fromkeys(e["context"] for e in train_examples)) + [e["question"] for e in train_examples]
    tokenizer = load_tokenizer(cfg.model, texts, "wordpiece", 30522, bert.PRESETS[cfg.model.preset][0])
    model, info = bert.build(cfg.model, len(tokenizer), d.max_length)
    labelled = MODEL_INPUTS + LABELS
    if d.squad_examples == "one_per_answer":  # the original lab's preparation, scored by its loss alone
        train_set, val_set = (Features(squad.prepare_answer_examples(e, tokenizer, d.max_length), labelled)
                              for e in (train_examples, val_examples))
        evaluate = None
    else:
        train_set = Features(squad.prepare_train_features(train_examples, tokenizer, d.max_length, d.doc_stride), labelled)
        val_set = Features(squad.prepare_train_features(val_examples, tokenizer, d.max_length, d.doc_stride), labelled)
        evaluate = make_evaluate(cfg, val_examples, tokenizer)

    lengths = train_set.tensors["attention_mask"].sum(1)
    collate, sampler = batching(cfg, lengths, tokenizer.padding_side)
    if d.padding == "packed":
        model.set_attn_implementation(packing.register())
        info["attention"] = packing.kernel_name(uses_cuda(cfg), PRECISIONS[cfg.train.precision].half)
        info["attention_dropout"] = "off (packed batches: the varlen kernel has none)"
    source = "embedded, SQuAD-length contexts" if d.source == "embedded" and d.context_length == "squad" else d.source
    info.update(data_source=source, squad_examples=d.squad_examples, train_examples=len(train_examples), val_examples=len(val_examples),
                misplaced_answers=squad.misplaced_answers(train_examples) + squad.misplaced_answers(val_examples),
                train_features=len(train_set), val_features=len(val_set), padding=d.padding,
                group_by_length=d.group_by_length, mean_real_tokens=float(lengths.double().mean()),
                packed_row_tokens=getattr(collate, "row_tokens", None),
                real_token_percentiles={p: float(np.percentile(lengths.numpy(), p)) for p in (10, 50, 90)})
    flops, counted = flops_per_feature(cfg, model, info, lengths, sampler)
    info.update(counted)
    loss = functools.partial(qa_loss, symbolic_rows=d.pack_tokens is None)  # rows of one length compile static
    return Task(model=model, train_set=train_set, val_set=val_set, collate_fn=collate, evaluate=evaluate, loss=loss,
                flops_per_sample=flops, info=info, train_sampler=sampler)
