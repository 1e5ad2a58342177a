import time

import pytest
from transformers import AutoTokenizer, BertTokenizerFast, GPT2TokenizerFast, T5TokenizerFast

from labkit.data import squad
from labkit.data.synthetic.squad import generate_squad
from labkit.data.tokenizers import train_bpe, train_unigram, train_wordpiece

TRAINERS = [train_wordpiece, train_bpe, train_unigram]
SENTENCE = "The city of Varnholt was founded in 1312 by Edda Morrow, a former  baker (so they say)."


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    examples = squad.flatten_squad(generate_squad(60, seed=5), "generated")
    return list(dict.fromkeys(e["context"] for e in examples)) + [e["question"] for e in examples]


@pytest.fixture(scope="module")
def tokenizers(corpus) -> dict:
    return {train.__name__: train(corpus, vocab_size=1000) for train in TRAINERS}


def token_text(tokenizer, token: str) -> str:
    """What a token spells in the original text, per scheme (lower case for uncased BERT)."""
    if isinstance(tokenizer, BertTokenizerFast):
        return token.removeprefix("##")
    if isinstance(tokenizer, GPT2TokenizerFast):
        return tokenizer.convert_tokens_to_string([token]).strip()
    return token.removeprefix("▁")


@pytest.mark.parametrize("name", [t.__name__ for t in TRAINERS])
def test_offsets_map_back_to_text(tokenizers, name):
    tokenizer = tokenizers[name]
    question = "Who founded Varnholt?"
    enc = tokenizer(question, SENTENCE, return_offsets_mapping=True)
    texts = {0: question, 1: SENTENCE}
    seen = {0: "", 1: ""}
    tokens = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    for token, (start, end), seq in zip(tokens, enc["offset_mapping"], enc.sequence_ids()):
        if seq is None:
            assert token in tokenizer.all_special_tokens
            continue
        piece = texts[seq][start:end]
        if token == "▁":  # a lone Unigram word marker is aligned to the word's first character
            assert piece == texts[seq][start] and not piece.isspace()
            continue
        if token != tokenizer.unk_token:  # unseen characters, e.g. "(", are [UNK] for WordPiece
            expected = token_text(tokenizer, token)
            assert (piece.lower() if isinstance(tokenizer, BertTokenizerFast) else piece) == expected
        seen[seq] += piece
    # Together the tokens cover every non-space character of both texts.
    assert seen[0] == question.replace(" ", "") and seen[1] == SENTENCE.replace(" ", "")


def test_offsets_in_overflowing_windows(tokenizers):
    # Later windows start mid-text; their first token must not take in the preceding space.
    context = SENTENCE * 3
    for tokenizer in tokenizers.values():
        enc = tokenizer(["Where?"], [context], truncation="only_second", max_length=16, stride=4,
                        return_overflowing_tokens=True, return_offsets_mapping=True)
        assert len(enc["input_ids"]) > 3
        for i, offsets in enumerate(enc["offset_mapping"]):
            for (start, end), seq in zip(offsets, enc.sequence_ids(i)):
                if seq == 1:
                    assert start == end or not context[start].isspace()


def test_wordpiece_layout(tokenizers):
    tok = tokenizers["train_wordpiece"]
    assert isinstance(tok, BertTokenizerFast) and len(tok) == 1000
    assert [tok.convert_tokens_to_ids(t) for t in ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]] == [0, 1, 2, 3, 4]
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 2, 3, 4)
    enc = tok("Edda founded it", "who founded it?")
    ids, types = enc["input_ids"], enc["token_type_ids"]
    assert ids[0] == 2 and ids.count(3) == 2 and ids[-1] == 3
    first_sep = ids.index(3)
    assert set(types[: first_sep + 1]) == {0} and set(types[first_sep + 1:]) == {1}
    assert tok.convert_ids_to_tokens(tok("VARNHOLT")["input_ids"])[1:-1] == ["varnholt"]  # uncased
    assert tok("Varnholt §")["input_ids"][-2] == tok.unk_token_id  # unseen character


def test_bpe_layout(tokenizers):
    tok = tokenizers["train_bpe"]
    assert isinstance(tok, GPT2TokenizerFast) and len(tok) == 1000
    assert tok.eos_token == tok.bos_token == tok.pad_token == "<|endoftext|>"
    assert tok.pad_token_id == tok.eos_token_id == 0
    ids = tok("Varnholt was founded")["input_ids"]
    assert 0 not in ids  # nothing added around the text, as GPT-2
    assert tok.decode(tok("naïve café §")["input_ids"]) == "naïve café §"  # byte level: no unknowns


def test_unigram_layout(tokenizers):
    tok = tokenizers["train_unigram"]
    assert isinstance(tok, T5TokenizerFast) and len(tok) <= 1000
    assert [tok.convert_tokens_to_ids(t) for t in ["<pad>", "</s>", "<unk>"]] == [0, 1, 2]
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    ids = tok("Varnholt was founded")["input_ids"]
    assert ids[-1] == 1 and ids.count(1) == 1
    assert tok("a b", "c d")["input_ids"].count(1) == 2
    assert tok.decode(ids, skip_special_tokens=True) == "Varnholt was founded"
    sentinel = tok.convert_tokens_to_ids("<extra_id_0>")
    assert sentinel != tok.unk_token_id and tok.convert_ids_to_tokens(sentinel) == "<extra_id_0>"


@pytest.mark.parametrize("train", TRAINERS)
def test_deterministic(corpus, train):
    # The raw tokenizers trainers are not: their hash maps reorder ids and scores between runs.
    first, second = train(corpus, vocab_size=900), train(iter(corpus), vocab_size=900)
    assert first.get_vocab() == second.get_vocab()
    assert first.backend_tokenizer.to_str() == second.backend_tokenizer.to_str()
    assert first(corpus[:50])["input_ids"] == second(corpus[:50])["input_ids"]


@pytest.mark.parametrize("name", [t.__name__ for t in TRAINERS])
def test_save_and_reload(tokenizers, name, tmp_path):
    tok = tokenizers[name]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert type(again) is type(tok)
    a = tok("Who founded it?", SENTENCE, return_offsets_mapping=True)
    b = again("Who founded it?", SENTENCE, return_offsets_mapping=True)
    assert a["input_ids"] == b["input_ids"] and a["offset_mapping"] == b["offset_mapping"]


def test_fast_on_a_megabyte():
    examples = squad.flatten_squad(generate_squad(900, seed=11), "generated")
    texts = [e["context"] + " " + e["question"] for e in examples]
    assert sum(map(len, texts)) > 1_000_000
    for train in TRAINERS:
        # CPU time of this process (all of the trainer's threads), not wall time: a loaded machine cannot fail it
        start = time.process_time()
        train(texts, vocab_size=8000)
        assert time.process_time() - start < 20, train.__name__


def test_one_loader_for_every_task_tokenizer():
    from labkit.config import ModelConfig
    from labkit.data.tokenizers import TINY_VOCAB, load_tokenizer

    texts = [e["context"] for e in squad.flatten_squad(generate_squad(20, seed=1), "generated")]
    tiny = load_tokenizer(ModelConfig(preset="tiny"), texts, "bpe", 50257, None)
    assert isinstance(tiny, GPT2TokenizerFast) and len(tiny) <= TINY_VOCAB
    with pytest.raises(ValueError, match="model.preset 'tiny' has no pretrained tokenizer.*model.hub_name"):
        load_tokenizer(ModelConfig(preset="tiny", weights="hub"), texts, "bpe", 50257, None)
