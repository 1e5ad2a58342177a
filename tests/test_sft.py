"""SFT data: the embedded generator, JSON lines and hub sources, response-only labels, the test split, evaluate."""
import json
import math
import re

import pytest
import torch

import labkit

from labkit.tasks import gpt2_sft
from labkit.config import Config, ConfigError
from labkit.data.synthetic import sft
from labkit.models import gpt2
from labkit.data.tokenizers import train_bpe
from labkit.preflight import check_settings


def config(**data) -> Config:
    return Config.model_validate({"task": "gpt2_sft", "model": {"preset": "tiny"}, "train": {"batch_size": 8},
                                  "data": {"train_examples": 60, "val_examples": 12, "max_length": 256, **data}})


@pytest.fixture(scope="module")
def pairs() -> list[dict]:
    return sft.generate_pairs(24, seed=0)


@pytest.fixture(scope="module")
def tokenizer(pairs):
    return train_bpe([gpt2_sft.TEMPLATE.format(prompt=p["prompt"]) + p["response"] for p in pairs], vocab_size=400)


def test_embedded_pairs_are_deterministic_and_follow_their_rules(pairs):
    assert pairs == sft.generate_pairs(24, seed=0) and pairs != sft.generate_pairs(24, seed=1)
    assert len({p["prompt"].split(" ")[0] for p in pairs[: len(sft.KINDS)]}) == len(sft.KINDS)  # kinds in turn
    for p in pairs:
        if p["prompt"].startswith("Reverse the list: "):
            assert p["response"].split(", ") == p["prompt"].removeprefix("Reverse the list: ").split(", ")[::-1]
        elif m := re.fullmatch(r"What is (\d+) plus (\d+)\?", p["prompt"]):
            assert p["response"] == f"{m[1]} plus {m[2]} is {int(m[1]) + int(m[2])}."
        elif p["prompt"].startswith("Sort"):
            numbers = [int(x) for x in p["prompt"].split(": ")[1].split()]
            assert p["response"] == " ".join(map(str, sorted(numbers)))


def test_labels_mask_the_prompt_and_padding(pairs, tokenizer):
    features, truncated = gpt2_sft.encode(pairs, tokenizer, max_length=256)
    assert truncated == 0
    for f, p in zip(features, pairs):
        n = len(tokenizer(gpt2_sft.TEMPLATE.format(prompt=p["prompt"]))["input_ids"])
        assert f["labels"][:n] == [gpt2_sft.IGNORE] * n
        assert f["labels"][n:] == f["input_ids"][n:]
        assert tokenizer.decode(f["labels"][n:]) == p["response"] + tokenizer.eos_token
    batch = gpt2_sft.Collate(tokenizer.pad_token_id, width=64)(features[:4])
    assert batch["input_ids"].shape == (4, 64)
    assert (batch["labels"][batch["attention_mask"] == 0] == gpt2_sft.IGNORE).all()
    assert gpt2_sft.Collate(tokenizer.pad_token_id)(features[:4])["input_ids"].shape[1] == max(len(f["input_ids"]) for f in features[:4])


def test_no_loss_and_no_gradient_come_from_prompt_or_padding(pairs, tokenizer):
    torch.manual_seed(0)
    model = gpt2.build(config().model, len(tokenizer))[0]
    batch = gpt2_sft.Collate(tokenizer.pad_token_id, width=48)(gpt2_sft.encode(pairs[:4], tokenizer, 48)[0])
    out = model(**batch)
    out.logits.retain_grad()
    out.loss.backward()
    # logits at t predict token t+1: they get a gradient exactly where token t+1 is a response token
    learned = torch.zeros_like(batch["labels"], dtype=torch.bool)
    learned[:, :-1] = batch["labels"][:, 1:] != gpt2_sft.IGNORE
    touched = out.logits.grad.abs().sum(-1) > 0
    assert torch.equal(touched, learned)
    # and the loss is the mean cross-entropy over the response tokens alone
    logits, labels = out.logits[:, :-1].detach(), batch["labels"][:, 1:]
    manual = torch.nn.functional.cross_entropy(logits[labels != gpt2_sft.IGNORE], labels[labels != gpt2_sft.IGNORE])
    assert out.loss.item() == pytest.approx(manual.item(), rel=1e-5)


def test_a_long_pair_keeps_the_response_marker_and_half_the_window(tokenizer):
    long = [{"prompt": "Reverse the list: " + ", ".join(["cat"] * 60), "response": ", ".join(["dog"] * 40)}]
    (f,), truncated = gpt2_sft.encode(long, tokenizer, max_length=32)
    assert truncated == 1 and len(f["input_ids"]) == 32
    n_prompt = f["labels"].count(gpt2_sft.IGNORE)
    assert n_prompt == 16  # the response gets half the window
    marker = tokenizer("\n\n### Response:\n")["input_ids"]
    assert f["input_ids"][n_prompt - len(marker): n_prompt] == marker


def test_local_json_lines_map_their_fields_and_hold_out_a_test_split(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"q{i}?", "answer": f"a{i}", "id": i}) for i in range(50)) + "\n")
    train, test = gpt2_sft.load_splits(config(source="local", path=str(path), prompt_field="question", response_field="answer",
                                         train_examples=None, val_examples=None))
    assert len(train) == 45 and len(test) == 5  # 10% held out
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in test}
    assert all(p["response"] == "a" + p["prompt"][1:-1] for p in train + test)
    val = tmp_path / "val.jsonl"
    val.write_text(json.dumps({"question": "x?", "answer": "y"}))
    train, test = gpt2_sft.load_splits(config(source="local", path=str(path), val_path=str(val), prompt_field="question",
                                         response_field="answer", train_examples=20))
    assert len(train) == 20 and test == [{"prompt": "x?", "response": "y"}]


def test_local_errors_name_the_line_and_the_setting(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"prompt": "p", "response": "r"}) + "\n" + json.dumps({"question": "q", "answer": "a"}) + "\n")
    with pytest.raises(ValueError, match=r"line 2: no field 'prompt'.*data.prompt_field"):
        gpt2_sft.load_splits(config(source="local", path=str(path)))
    path.write_text("{not json\n")
    with pytest.raises(ValueError, match="line 1: not JSON"):
        gpt2_sft.load_splits(config(source="local", path=str(path)))
    with pytest.raises(FileNotFoundError, match="data.path"):
        gpt2_sft.load_splits(config(source="local", path=str(tmp_path / "missing.jsonl")))


def test_hub_source_uses_its_test_split_and_columns(monkeypatch):
    import datasets

    rows = {"prompt": [f"\n\nHuman: q{i}\n\nAssistant:" for i in range(30)], "response": [f" a{i}" for i in range(30)],
            "chosen": [""] * 30}
    splits = datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows), "test": datasets.Dataset.from_dict(rows)})
    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda name, conf, split=None: asked.append(name) or splits)
    train, test = gpt2_sft.load_splits(config(source="hub", train_examples=10, val_examples=4))
    assert asked == [gpt2_sft.HUB_DATASET] and len(train) == 10 and len(test) == 4
    assert train[3] == {"prompt": rows["prompt"][3], "response": rows["response"][3]}
    with pytest.raises(ValueError, match="no column 'question'.*data.prompt_field"):
        gpt2_sft.load_splits(config(source="hub", hub_name="someone/else", prompt_field="question"))


    def offline(name, conf, split=None):
        raise ConnectionError("no internet")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="could not load hub data set 'Dahoas/rm-static'.*data.source: local"):
        gpt2_sft.load_splits(config(source="hub"))


def test_gsm8k_maps_question_and_answer(shared_data):
    train, test = gpt2_sft.load_splits(config(source="local", path=str(shared_data / "gsm8k-train.jsonl"),
                                         prompt_field="question", response_field="answer", train_examples=100, val_examples=None))
    assert len(train) == 100 and len(test) == 747  # 10% of 7,473 held out
    assert all("####" in p["response"] for p in train + test)


def test_task_evaluates_test_loss_perplexity_and_generations():
    cfg = config(padding="dynamic")
    task = gpt2_sft.build_task(cfg)
    assert task.info["weights"] == "random" and task.info["train_examples"] == 60 and task.info["val_examples"] == 12
    task.model.eval()
    metrics = task.evaluate(task.model, 8, None)
    assert metrics["test_perplexity"] == pytest.approx(math.exp(metrics["test_loss"]))
    assert abs(metrics["test_loss"] - math.log(len(task.model.get_input_embeddings().weight))) < 1.0  # untrained
    generations = task.info["generations"]
    assert len(generations) == gpt2_sft.GENERATIONS and generations[0]["prompt"].startswith("Reverse the list")
    assert {"prompt", "reference", "generated"} == set(generations[0])
    with pytest.raises(ConfigError, match="leave nothing to pack"):
        check_settings(config(padding="packed", sft_format="dialogue_windows"))


def test_packed_pairs_train_as_the_padded_batch(tmp_path):
    """Each pair a causal segment of one row: the loss is the padded batch's; with data.pack_tokens every row has
    one length; the kit trains it end to end and scores the test set on padded batches."""
    task = gpt2_sft.build_task(config(padding="packed"))
    pairs = task.train_set[:6]
    padded = gpt2_sft.Collate(0, None, 8, 256)(pairs)  # right padding, masked and unlabelled: its id does not matter
    row = task.collate_fn(pairs)
    assert row["input_ids"].shape[0] == 1 and len(row["cu_seq_lens_q"]) == 6 + 2
    starts = row["cu_seq_lens_q"][:-1].long()
    assert (row["labels"][0, starts] == gpt2_sft.IGNORE).all()  # no pair learns the next pair's first token
    task.model.eval()
    with torch.no_grad():
        assert task.model(**row).loss.item() == pytest.approx(task.model(**padded).loss.item(), rel=1e-5)
    assert "SDPA with a block-diagonal mask" in task.info["attention"]
    fixed = gpt2_sft.build_task(config(padding="packed", pack_tokens="auto"))
    assert {fixed.collate_fn(fixed.train_set[i:i + 8])["input_ids"].shape[1] for i in range(0, 40, 8)
            if sum(len(f["input_ids"]) for f in fixed.train_set[i:i + 8]) < fixed.info["packed_row_tokens"]} == \
        {fixed.info["packed_row_tokens"]}
    record = labkit.run("params/06_lora_optimizer_sweep/r10_adamw.yaml", "smoke",
                        {"data.padding": "packed", "data.pack_tokens": "auto", "train.max_steps": 3}, tmp_path)
    assert record["status"] == "ok", record.get("error")
    assert record["summary"]["samples_per_s"] > 0 and "test_loss" in record["summary"]


def test_one_hold_out_rule_keeps_groups_whole():
    from labkit.data.sources import hold_out

    rows = [{"title": f"t{i // 3}", "n": i} for i in range(30)]  # ten groups of three
    train, val = hold_out(rows, "title")
    assert [r["n"] for r in val] == [27, 28, 29] and len(train) == 27  # the last tenth of the groups, whole
    assert hold_out(rows, "title", 4)[1][0]["title"] == "t6"
    assert hold_out(rows[:3], "title") == (rows[:3], rows[:3])  # one group: nothing to hold out
    with pytest.raises(ValueError, match="10 distinct titles cannot spare 10.*data.val_examples"):
        hold_out(rows, "title", 10)
