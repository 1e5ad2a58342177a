"""Offline tokenizers: train a WordPiece, byte-level BPE or Unigram vocabulary on local text in
seconds and wrap it in a transformers fast tokenizer (so `return_offsets_mapping`, overflowing
windows and `sequence_ids` work exactly as with a pretrained checkpoint). Nothing is downloaded.

transformers 5 note: the "Fast" names are aliases of the tokenizers-backed classes
(`BertTokenizerFast is BertTokenizer`, likewise GPT2 and T5); there are no slow tokenizers left.

Determinism: the `tokenizers` trainers iterate Rust hash maps, whose order changes from run to
run. Where that leaks into the result we pin it (WordPiece) or canonicalise it (Unigram), so the
same texts always give the same vocabulary and ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertTokenizerFast, GPT2TokenizerFast, RobertaTokenizerFast, T5TokenizerFast

from labkit.config import ModelConfig

BERT_SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
EOS = "<|endoftext|>"
ROBERTA_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
T5_SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
T5_EXTRA_IDS = 100  # <extra_id_0..99> sentinels, as T5 has, for span-corruption objectives


def train_wordpiece(texts: Iterable[str], vocab_size: int = 8000) -> BertTokenizerFast:
    """BERT-style uncased WordPiece: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4,
    `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` with token_type_ids 0/1."""
    texts = list(texts)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The trainer gives "##c" continuation characters ids in hash-map order, and ids break ties
    # between equally frequent merges. Registering every "##c" up front, sorted, pins those ids.
    chars: set[str] = set()
    for text in texts:
        chars.update(tok.normalizer.normalize_str(text))
    continuations = ["##" + c for c in sorted(chars) if not c.isspace()]
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=BERT_SPECIAL_TOKENS + continuations)
    tok.train_from_iterator(texts, trainer)
    # BertTokenizerFast rebuilds the same normalizer / pre-tokenizer / decoder / template from the
    # vocabulary; the "##c" entries become ordinary vocabulary, not special tokens.
    return BertTokenizerFast(vocab=tok.get_vocab(), do_lower_case=True)


def train_bpe(texts: Iterable[str], vocab_size: int = 8000) -> GPT2TokenizerFast:
    """GPT-2-style byte-level BPE (never produces an unknown token). `<|endoftext|>` (id 0) is
    bos, eos, unk and pad; nothing is added around sequences, as with GPT-2."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # trim_offsets: "Ġworld" maps to "world", not " world", so offsets slice back to clean spans;
    # add_prefix_space=False, or the first token of every overflowing window keeps its space.
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=True)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(texts, trainer)
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS)


def train_unigram(texts: Iterable[str], vocab_size: int = 8000) -> T5TokenizerFast:
    """T5-style SentencePiece Unigram: <pad>=0, </s>=1, <unk>=2, `A </s>` / `A </s> B </s>`, cased,
    plus T5's 100 `<extra_id_N>` sentinels at the end, counted in `vocab_size` (use
    `len(tokenizer)` for the model's vocabulary; a small corpus can give fewer pieces)."""
    tok = Tokenizer(models.Unigram())
    # The pre-tokenizer and decoder T5TokenizerFast builds itself (splitting on whitespace first
    # keeps the "▁" word marker out of the offsets). No normaliser: on reload, transformers 5
    # rebuilds the pipeline from the class and would drop one, changing the tokenisation.
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")]
    )
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=max(vocab_size - T5_EXTRA_IDS, len(T5_SPECIAL_TOKENS) + 1),
        special_tokens=T5_SPECIAL_TOKENS,
        unk_token="<unk>",
    )
    tok.train_from_iterator(texts, trainer)
    spec = json.loads(tok.to_str())
    spec["model"]["vocab"] = spec["model"]["vocab"][:3] + _canonical_pieces(spec["model"]["vocab"][3:])
    spec["model"]["unk_id"] = T5_SPECIAL_TOKENS.index("<unk>")
    tok = Tokenizer.from_str(json.dumps(spec))
    # T5TokenizerFast installs the `$A </s>` template and the sentinels itself.
    return T5TokenizerFast(tokenizer_object=tok, extra_ids=T5_EXTRA_IDS)


def _canonical_pieces(pieces: list[list]) -> list[list]:
    """Unigram pieces in an order and with scores that do not depend on hash-map order.
    The trainer's EM sums floats in hash-map order, so scores wobble in the last bits (rounding
    fixes that), and characters too rare to earn a piece are appended at the minimum score plus
    0.0001 steps in hash-set order (we re-deal those steps in character order). Ids then follow
    (score, piece)."""
    low = min(score for _, score in pieces)
    window = 1e-4 * sum(len(piece) == 1 for piece, _ in pieces)
    rare = sorted(piece for piece, score in pieces if len(piece) == 1 and score <= low + window)
    scores = {piece: round(score, 8) for piece, score in pieces}
    scores |= {piece: round(low + 1e-4 * k, 8) for k, piece in enumerate(rare)}
    return sorted(([piece, score] for piece, score in scores.items()), key=lambda ps: (-ps[1], ps[0]))


def train_roberta_bpe(texts: Iterable[str], vocab_size: int = 8000) -> RobertaTokenizerFast:
    """RoBERTa-style byte-level BPE: <s>=0, <pad>=1, </s>=2, <unk>=3, <mask>=4, `<s> A </s>`, as
    roberta-base numbers them, so `<s>` (the scorer's sentence embedding) is always the first token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=ROBERTA_SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    spec = json.loads(tok.to_str())["model"]
    # RobertaTokenizerFast rebuilds the byte-level pipeline and the `<s> A </s>` template from these two.
    return RobertaTokenizerFast(vocab=spec["vocab"], merges=[tuple(m) for m in spec["merges"]])


OFFLINE = {"wordpiece": train_wordpiece, "bpe": train_bpe, "unigram": train_unigram, "roberta_bpe": train_roberta_bpe}
TINY_VOCAB = 8000  # the tiny presets' offline vocabulary: quick to train, enough for the generated data


def load_tokenizer(model: ModelConfig, texts: list[str], offline: str, vocab_size: int, hub_id: str | None) -> Any:
    """The tokenizer a task's model reads. Pretrained weights (model.weights hub or local) come with their own:
    from model.path, model.hub_name or ``hub_id`` (the preset's). Random weights get an ``offline`` vocabulary
    (a key of OFFLINE) trained on ``texts``: TINY_VOCAB entries for the tiny preset, else ``vocab_size``, the
    real model's, so embedding and output layers have their real size."""
    # The fast tokenizer's thread pool and the loader's forked workers do not mix: one thread per worker.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if model.weights == "random":
        return OFFLINE[offline](texts, vocab_size=TINY_VOCAB if model.preset == "tiny" else vocab_size)
    from transformers import AutoTokenizer

    source = model.path if model.weights == "local" else (model.hub_name or hub_id)
    if source is None:
        raise ValueError(f"model.preset '{model.preset}' has no pretrained tokenizer on the hub: set model.hub_name, "
                         "or model.weights: random")
    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token is None:  # GPT-2 has none; padding is masked out of the loss anyway
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
