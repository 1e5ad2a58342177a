"""Re-ranking summaries with SimCLS (notebook 09): the second model of the original optimisation lab.

SimCLS (Liu and Liu, 2021) summarises in two stages. A sequence-to-sequence *generator* writes several
candidate summaries of a document; a *scorer* (RoBERTa) embeds the document and each candidate and picks the
candidate whose embedding is closest to the document's. The scorer learns from ROUGE: candidates are ordered
by their ROUGE against the reference, and a margin ranking loss asks each to score higher than every worse one,
by a margin that grows with their distance in that order, and the reference to score higher than them all.
The original lab summarised CORD-19 abstracts into titles with a fine-tuned t5-small and trained
roberta-base as the scorer.

Here, as there:
  1. Candidates: the generator writes ``simcls.num_candidates`` titles per abstract by diverse beam search
     (one beam per group, each group penalised for the tokens earlier groups chose at the same step), once per
     data set and generator; they are cached (``CACHE``) with their ROUGE, so every configuration of the sweep
     trains on the same candidates and only the first pays for generating them.
  2. Training: the scorer is the model of the kit's one training loop; a batch holds token ids of the
     abstracts, their references and their candidates (best first), tokenised in the loader's workers as the
     original's data set did, and the task's loss is ``ranking_loss``.
  3. Evaluation: ROUGE-1/2/L of the candidate the scorer picks, beside the generator's own top beam (its most
     probable candidate) and the best candidate there was (the oracle), with Google's ``rouge-score``.

Data (``data.source``): ``local``, a CSV in the original's layout (an ``abstract`` and a ``title`` column, one
row per paper; ``data.val_path`` or the last tenth held out); ``hub``, a Hugging Face data set with those
columns (``data.hub_name``); ``embedded`` (default), invented studies in that layout
(``labkit.data.synthetic.cord19``). Generator: ``simcls.generator`` (a T5 preset; hub, local or random weights).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers.modeling_outputs import BaseModelOutput

from labkit.config import ROOT, Config
from labkit.data.synthetic.cord19 import generate_cord19
from labkit.measure import progress_bar
from labkit.models import roberta, t5
from labkit.preflight import uses_cuda
from labkit.tasks import Task, transformer_flops_per_sample

CSV_FORMAT = ("a CSV file with a header row and the columns 'abstract' (the document) and 'title' (its reference "
              "summary), one paper per row, as the original lab's clean_covid.csv")
EMBEDDED_SIZES = {"train": 2000, "validation": 200}
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
CACHE = Path.home() / ".cache" / "labkit" / "simcls"
CACHE_VERSION = 1  # bump when the cached candidates would come out differently for the same settings


# ----------------------------------------------------------------------------- the ranking loss


def ranking_loss(scores: torch.Tensor, reference_scores: torch.Tensor, margin: float, gold_margin: float = 0.0,
                 gold_weight: float = 1.0) -> torch.Tensor:
    """SimCLS's loss. ``scores`` (B, C) are the scorer's scores of each document's candidates, ordered best first
    by ROUGE against the reference; ``reference_scores`` (B,) the reference's own scores.

    For every distance d = 1 .. C-1, each candidate i must outscore candidate i + d by ``margin * d``:
    mean over the pairs of max(0, s[i+d] - s[i] + margin * d), summed over d. Then the reference must outscore
    every candidate by ``gold_margin``: ``gold_weight`` x mean of max(0, s[i] - s_ref + gold_margin).
    (torch.nn.MarginRankingLoss with target 1, as the original wrote it, is the same max(0, x2 - x1 + margin).)
    """
    loss = scores.new_zeros(())
    for d in range(1, scores.shape[1]):
        loss = loss + F.relu(scores[:, d:] - scores[:, :-d] + margin * d).mean()
    return loss + gold_weight * F.relu(scores - reference_scores.unsqueeze(1) + gold_margin).mean()


# ----------------------------------------------------------------------------- data


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows {"abstract", "title"} of a CSV in the original's layout; rows missing either are dropped, as the
    original's ``dropna`` did. Other columns are ignored."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SimCLS data file not found: {path}. Point data.path at {CSV_FORMAT}; "
                                "or use data.source: embedded")
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a readable CSV ({type(err).__name__}: {err}); expected {CSV_FORMAT}") from None
    missing = [c for c in ("abstract", "title") if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: no column {' or '.join(repr(c) for c in missing)} (its columns: "
                         f"{', '.join(map(repr, frame.columns)) or 'none'}); expected {CSV_FORMAT}")
    rows = [{"abstract": a.strip(), "title": t.strip()} for a, t in zip(frame["abstract"], frame["title"])
            if a.strip() and t.strip()]
    if not rows:
        raise ValueError(f"{path}: no row has both an abstract and a title; expected {CSV_FORMAT}")
    return rows


def _hold_out(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The last tenth for validation (the original split its CSV 80/10/10; here there is no test split)."""
    if len(rows) < 2:
        raise ValueError(f"{len(rows)} row(s): a training and a validation split need at least 2; add rows or set data.val_path")
    k = max(1, len(rows) // 10)
    return rows[:-k], rows[-k:]


def _from_hub(name: str | None, config: str | None) -> tuple[list[dict], list[dict]]:
    if not name:
        raise ValueError("data.source is 'hub' but data.hub_name is not set: name a Hugging Face data set with "
                         "'abstract' and 'title' columns, or use data.source: local with a CSV in the original's layout")
    try:
        import datasets

        splits = datasets.load_dataset(name, config)
    except Exception as err:  # offline, gated, renamed...: all end the same way for the user
        raise RuntimeError(f"could not load {name!r} from the Hugging Face Hub ({type(err).__name__}: {err}). Without "
                           "the Hub, use data.source: local with data.path (the original CSV), or data.source: embedded") from err
    missing = [c for c in ("abstract", "title") if c not in splits["train"].column_names]
    if missing:
        raise ValueError(f"hub data set {name!r} has no column {' or '.join(map(repr, missing))} "
                         f"(its columns: {', '.join(splits['train'].column_names)}); SimCLS needs 'abstract' and 'title'")
    rows = {s: [{"abstract": r["abstract"].strip(), "title": r["title"].strip()} for r in splits[s]
                if (r["abstract"] or "").strip() and (r["title"] or "").strip()] for s in splits}
    return (rows["train"], rows["validation"]) if "validation" in rows else _hold_out(rows["train"])


def _in_kit(path: str) -> Path:
    """A relative data path as given, or else under the kit's root (notebooks run from notebooks/)."""
    return Path(path) if Path(path).exists() or Path(path).is_absolute() else ROOT / path


def load_pairs(cfg: Config) -> tuple[list[dict], list[dict]]:
    """(train, validation) rows {"abstract", "title"}, cut to data.train_examples / data.val_examples."""
    d = cfg.data
    if d.source == "embedded":  # disjoint seeds: validation studies are unseen
        train = generate_cord19(d.train_examples or EMBEDDED_SIZES["train"], 2 * cfg.data_seed)
        val = generate_cord19(d.val_examples or EMBEDDED_SIZES["validation"], 2 * cfg.data_seed + 1)
    elif d.source == "local":
        rows = read_csv(_in_kit(d.path))
        train, val = (rows, read_csv(_in_kit(d.val_path))) if d.val_path else _hold_out(rows)
    else:
        train, val = _from_hub(d.hub_name, d.hub_config)
    return train[: d.train_examples], val[: d.val_examples]


# ----------------------------------------------------------------------------- candidates


@torch.no_grad()
def diverse_beam_search(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, groups: int,
                        penalty: float, max_new_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Diverse beam search (Vijayakumar et al., 2016) with one beam per group, as the original generated its
    candidates (``num_beams = num_beam_groups = num_return_sequences``). At every step the groups choose in
    turn; each token's log-probability is lowered by ``penalty`` for every earlier group that chose it at this
    step (Hamming diversity), so group 0 decodes greedily and later groups are pushed off its path.

    Returns the generated ids (B, groups, T; after end-of-sequence, padding) and each candidate's mean
    log-probability per token under the model, unpenalised: the generator's own ranking of its candidates.
    (transformers 5 moved group beam search out of the library, to code downloaded from the Hub.)
    """
    c = model.config
    batch = input_ids.shape[0]
    encoded = model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    encoder_outputs = BaseModelOutput(last_hidden_state=encoded.repeat_interleave(groups, 0))
    mask = attention_mask.repeat_interleave(groups, 0)
    tokens = torch.full((batch * groups, 1), c.decoder_start_token_id, device=input_ids.device)
    done = torch.zeros(batch * groups, dtype=torch.bool, device=input_ids.device)
    logprob, length = torch.zeros(batch * groups, device=input_ids.device), torch.zeros(batch * groups, device=input_ids.device)
    # The decoder's key/value cache: transformers 5 renamed the argument (and output) past_key_values to cache.
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    cache = None
    for _ in range(max_new_tokens):
        out = model(encoder_outputs=encoder_outputs, attention_mask=mask, decoder_input_ids=tokens[:, -1:],
                    use_cache=True, **{name: cache})
        cache = getattr(out, name)
        step = out.logits[:, -1].float().log_softmax(-1)  # (B * groups, vocab)
        grouped, live = step.view(batch, groups, -1), (~done).view(batch, groups).float()
        chosen_by_earlier = torch.zeros_like(grouped[:, 0])
        picks = []
        for g in range(groups):
            pick = (grouped[:, g] - penalty * chosen_by_earlier).argmax(-1)
            chosen_by_earlier.scatter_add_(1, pick.unsqueeze(1), live[:, g: g + 1])
            picks.append(pick)
        chosen = torch.where(done, c.pad_token_id, torch.stack(picks, 1).view(-1))
        logprob += torch.where(done, 0.0, step.gather(1, chosen.unsqueeze(1)).squeeze(1))
        length += (~done).float()
        done |= chosen == c.eos_token_id
        tokens = torch.cat([tokens, chosen.unsqueeze(1)], 1)
        if done.all():
            break
    return tokens[:, 1:].view(batch, groups, -1), (logprob / length.clamp(min=1)).view(batch, groups)


def rouge_scores(references: list[str], candidates: list[list[str]]) -> list[list[list[float]]]:
    """F-measures [rouge1, rouge2, rougeL] of each candidate against its reference (Porter stemming, as the
    original's scorer), per example and candidate."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    return [[[s[k].fmeasure for k in ROUGE_TYPES] for s in (scorer.score(ref, cand) for cand in cands)]
            for ref, cands in zip(references, candidates)]


def load_generator_tokenizer(cfg: Config, texts: list[str]) -> Any:
    """The generator's own tokenizer, or offline a T5-style Unigram vocabulary trained on the data."""
    g = cfg.simcls.generator
    if g.weights == "random":
        from labkit.data.tokenizers import train_unigram

        return train_unigram(texts, vocab_size=8000 if g.preset == "tiny" else t5.T5_VOCAB)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(g.path if g.weights == "local" else (g.hub_name or t5.PRESETS[g.preset][0]))


def cache_key(cfg: Config) -> str:
    """What the candidates depend on: the data, the generator and how it generates; not the scorer's settings, so
    every configuration of the sweep (workers, precision, checkpointing) reads the same file."""
    d, s = cfg.data, cfg.simcls
    files = {p: [os.path.getsize(p), os.path.getmtime(p)] for p in (d.path, d.val_path) if p and d.source == "local"}
    settings = dict(version=CACHE_VERSION, source=d.source, path=d.path, val_path=d.val_path, files=files,
                    hub=[d.hub_name, d.hub_config], examples=[d.train_examples, d.val_examples], seed=cfg.train.seed,
                    data_seed=cfg.data_seed, lengths=[d.max_length, d.target_length], generator=s.generator.model_dump(),
                    prefix=s.source_prefix, tuning=[s.generator_steps, s.generator_lr],
                    candidates=s.num_candidates, penalty=s.diversity_penalty)
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def finetune_generator(cfg: Config, generator: nn.Module, tokenizer: Any, rows: list[dict]) -> dict:
    """``simcls.generator_steps`` steps of the kit's one training loop on (abstract -> title) pairs, as the
    original fine-tuned its t5-small before generating (finetune_model.py); returns the loop's summary."""
    from labkit.tasks.t5_qa import TextToText
    from labkit.train import fit, make_fabric

    s, d = cfg.simcls, cfg.data
    pairs = [(s.source_prefix + r["abstract"], r["title"]) for r in rows]
    batch = min(16, len(pairs))
    raw = {"task": "t5_qa", "model": s.generator.model_dump(),
           "data": {"padding": "dynamic", "max_length": d.max_length, "target_length": d.target_length, "doc_stride": 0},
           "train": {"max_steps": s.generator_steps, "epochs": -(-s.generator_steps // (len(pairs) // batch)),
                     "batch_size": batch, "lr": s.generator_lr, "seed": cfg.train.seed, "accelerator": cfg.train.accelerator,
                     "eval_every_epoch": False, "eval_batches": 1, "log_every": max(1, s.generator_steps // 10)},
           "measure": {"warmup_steps": 0, "nvtx": False}}
    generator_cfg = Config.model_validate(raw)
    task = Task(model=generator, train_set=pairs, val_set=pairs[:batch],
                collate_fn=TextToText(tokenizer, d.max_length, d.target_length, "dynamic"))
    # make_fabric sets the process's matmul precision for fp32 training; the scorer's run keeps its own.
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.get_float32_matmul_precision())
    try:
        return fit(generator_cfg, task, make_fabric(generator_cfg))["summary"]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags[:2]
        torch.set_float32_matmul_precision(flags[2])


def generate_candidates(cfg: Config, rows: list[dict], train_rows: int, device: torch.device) -> tuple[list[dict], dict]:
    """Each row with ``candidates`` (the generator's most probable first) and their ``rouge``, after fine-tuning
    the generator on the first ``train_rows`` rows where ``simcls.generator_steps`` asks; one pass over the rows
    in batches of ``simcls.generation_batch``, with a progress bar. Also returns what the fine-tuning did."""
    s, d = cfg.simcls, cfg.data
    tokenizer = load_generator_tokenizer(cfg, [text for r in rows[:train_rows] for text in (r["abstract"], r["title"])])
    generator, _ = t5.build(s.generator, len(tokenizer))
    tuned = {}
    if s.generator_steps:
        summary = finetune_generator(cfg, generator, tokenizer, rows[:train_rows])
        tuned = {"generator_steps": summary["steps"], "generator_first_loss": summary["first_train_loss"],
                 "generator_final_loss": summary["final_train_loss"]}
    generator.to(device).eval()
    out = []
    for i in progress_bar(iterable=range(0, len(rows), s.generation_batch), desc="candidates", unit="batch"):
        chunk = rows[i: i + s.generation_batch]
        batch = tokenizer([s.source_prefix + r["abstract"] for r in chunk], max_length=d.max_length, truncation=True,
                          padding=True, return_tensors="pt").to(device)
        ids, logprob = diverse_beam_search(generator, batch["input_ids"], batch["attention_mask"], s.num_candidates,
                                           s.diversity_penalty, d.target_length)
        order = logprob.argsort(dim=1, descending=True, stable=True)  # the generator's top beam first
        ids = ids.gather(1, order.unsqueeze(-1).expand_as(ids))
        texts = tokenizer.batch_decode(ids.flatten(0, 1).cpu(), skip_special_tokens=True)
        candidates = [[t.strip() for t in texts[k * s.num_candidates: (k + 1) * s.num_candidates]] for k in range(len(chunk))]
        for row, cands, rouge in zip(chunk, candidates, rouge_scores([r["title"] for r in chunk], candidates)):
            out.append({**row, "candidates": cands, "rouge": rouge})
    return out, tuned


def cached_candidates(cfg: Config, train: list[dict], val: list[dict], device: torch.device) -> tuple[list, list, dict]:
    """(train, val) rows with their candidates, from the cache or generated now (and cached); and what happened."""
    path = CACHE / f"{cache_key(cfg)}.json"
    if path.is_file():
        cached = json.loads(path.read_text())
        return cached["train"], cached["validation"], {"candidates_cache": str(path), **cached["generation"],
                                                       "candidates_generated_s": 0.0}
    start = time.perf_counter()
    # The generator draws its random weights from a stream of its own, so the scorer's initial weights are the
    # same whether its candidates were generated now or read from the cache.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.train.seed)
        rows, generation = generate_candidates(cfg, train + val, len(train), device)
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the generator is gone; its cached blocks would count against the scorer's peak
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    partial.write_text(json.dumps({"train": rows[: len(train)], "validation": rows[len(train):], "generation": generation}))
    os.replace(partial, path)  # atomic: a run-all beside this one reads a whole file or none
    return rows[: len(train)], rows[len(train):], {"candidates_cache": str(path), **generation,
                                                   "candidates_generated_s": time.perf_counter() - start}


def order_by_rouge(row: dict) -> dict:
    """The row's candidates best first by mean ROUGE-1/2/L against the reference (the order the loss assumes),
    and where the generator's top beam (candidate 0 as generated) went."""
    order = sorted(range(len(row["candidates"])), key=lambda k: -sum(row["rouge"][k]))  # stable: ties keep beam order
    return {**row, "candidates": [row["candidates"][k] for k in order], "rouge": [row["rouge"][k] for k in order],
            "top_beam": order.index(0)}


# ----------------------------------------------------------------------------- batches


class Reranking(Dataset):
    """Rows {"abstract", "title", "candidates" (best first), "rouge", "top_beam"}; an item is their token ids
    under the scorer's tokenizer, made in ``__getitem__``, which runs in the loader's worker processes."""

    def __init__(self, rows: list[dict], tokenizer: Any, max_length: int, target_length: int):
        self.rows, self.tokenizer, self.max_length, self.target_length = rows, tokenizer, max_length, target_length

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        summaries = self.tokenizer([row["title"], *row["candidates"]], max_length=self.target_length,
                                   truncation=True)["input_ids"]
        source = self.tokenizer(row["abstract"], max_length=self.max_length, truncation=True)["input_ids"]
        return {"input_ids": source, "reference_ids": summaries[0], "candidate_ids": summaries[1:]}


class PadBatch:
    """collate_fn: pads with the scorer's padding id, to each batch's longest sequence ('dynamic') or to the
    configured lengths ('max_length'); candidates come out as (batch, candidates, length)."""

    def __init__(self, pad_token_id: int, padding: str, max_length: int, target_length: int):
        self.pad, self.fixed = pad_token_id, padding == "max_length"
        self.max_length, self.target_length = max_length, target_length

    def _pad(self, seqs: list[list[int]], fixed: int) -> torch.Tensor:
        width = fixed if self.fixed else max(map(len, seqs))
        return torch.tensor([s + [self.pad] * (width - len(s)) for s in seqs])

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        candidates = self._pad([c for item in items for c in item["candidate_ids"]], self.target_length)
        return {"input_ids": self._pad([item["input_ids"] for item in items], self.max_length),
                "reference_ids": self._pad([item["reference_ids"] for item in items], self.target_length),
                "candidate_ids": candidates.view(len(items), -1, candidates.shape[-1])}


# ----------------------------------------------------------------------------- the task


def load_scorer_tokenizer(cfg: Config, texts: list[str]) -> Any:
    """The scorer's own tokenizer, or offline a RoBERTa-style byte-level BPE trained on the data."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # its thread pool and forked loader workers do not mix
    if cfg.model.weights == "random":
        from labkit.data.tokenizers import train_roberta_bpe

        return train_roberta_bpe(texts, vocab_size=8000 if cfg.model.preset == "tiny" else roberta.ROBERTA_VOCAB)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cfg.model.path if cfg.model.weights == "local"
                                         else (cfg.model.hub_name or roberta.PRESETS[cfg.model.preset][0]))


def build_task(cfg: Config) -> Task:
    d, s = cfg.data, cfg.simcls
    train_rows, val_rows = load_pairs(cfg)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if uses_cuda(cfg) else torch.device("cpu")
    train_rows, val_rows, generated = cached_candidates(cfg, train_rows, val_rows, device)
    train_rows, val_rows = [order_by_rouge(r) for r in train_rows], [order_by_rouge(r) for r in val_rows]

    texts = [x for r in train_rows for x in (r["abstract"], r["title"], *r["candidates"]) if x]
    tokenizer = load_scorer_tokenizer(cfg, texts)
    model, info = roberta.build(cfg.model, len(tokenizer), tokenizer.pad_token_id)
    train_set = Reranking(train_rows, tokenizer, d.max_length, d.target_length)
    val_set = Reranking(val_rows, tokenizer, d.max_length, d.target_length)
    collate = PadBatch(tokenizer.pad_token_id, d.padding, d.max_length, d.target_length)

    def loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(batch["input_ids"], batch["candidate_ids"], batch["reference_ids"])
        return ranking_loss(out["scores"], out["reference_scores"], s.margin, s.gold_margin, s.gold_weight)

    c, params = model.encoder.config, roberta.non_embedding_params(model)
    # Every example runs the encoder over its document, its reference and each candidate, at most these lengths.
    flops = (transformer_flops_per_sample(params, c.num_hidden_layers, c.hidden_size, d.max_length)
             + (s.num_candidates + 1) * transformer_flops_per_sample(params, c.num_hidden_layers, c.hidden_size, d.target_length))
    g = s.generator
    source = g.path if g.weights == "local" else (g.hub_name or t5.PRESETS[g.preset][0])
    info.update(data_source=d.source, train_examples=len(train_set), val_examples=len(val_set),
                num_candidates=s.num_candidates, generator=f"{source} ({g.preset}, {g.weights} weights)", **generated)
    return Task(model=model, train_set=train_set, val_set=val_set, collate_fn=collate, loss=loss,
                evaluate=make_evaluate(val_set, collate), flops_per_sample=flops, info=info)


def make_evaluate(val_set: Reranking, collate: PadBatch):
    """ROUGE-1/2/L (x100, F-measure) on the first ``limit`` validation rows (None: all) of the candidate the
    scorer ranks first, of the generator's top beam and of the best candidate (oracle); ``picked_best``: % of
    rows where the scorer's choice is a candidate with the best ROUGE."""
    @torch.no_grad()
    def evaluate(model: nn.Module, batch_size: int, limit: int | None) -> dict[str, float]:
        rows = val_set.rows[:limit]
        device = next(model.parameters()).device
        picked: list[int] = []
        for i in range(0, len(rows), batch_size):
            batch = collate([val_set[k] for k in range(i, min(i + batch_size, len(rows)))])
            scores = model(batch["input_ids"].to(device), batch["candidate_ids"].to(device))["scores"]
            picked += scores.argmax(1).tolist()
        metrics = {}
        for name, choose in (("", lambda r, k: k), ("top_beam_", lambda r, k: r["top_beam"]), ("oracle_", lambda r, k: 0)):
            for j, rouge in enumerate(ROUGE_TYPES):
                metrics[name + rouge] = 100 * sum(r["rouge"][choose(r, k)][j] for r, k in zip(rows, picked)) / len(rows)
        metrics["picked_best"] = 100 * sum(sum(r["rouge"][k]) == sum(r["rouge"][0]) for r, k in zip(rows, picked)) / len(rows)
        return metrics

    return evaluate
