"""T5 QA (notebook 07): GSM8K answers, text-to-text formatting, generated data, scoring, and the
layer-split model parallel placement (checked on the CPU)."""
import json
import re
from pathlib import Path

import pytest
import torch
from lightning.fabric import Fabric

from labkit import measure
from labkit.data import squad
from labkit.data.synthetic.bioqa import generate_bioqa
from labkit.data.synthetic.gsm8k import generate_gsm8k
from labkit.tasks import t5_qa
from labkit.config import Config, ConfigError, ModelConfig
from labkit.models import t5
from labkit.preflight import check_settings, skip_reason


def t5_config(**sections) -> Config:
    base = {"task": "t5_qa", "data": {"dataset": "gsm8k", "train_examples": 32, "val_examples": 8, "max_length": 64,
                                      "target_length": 48, "doc_stride": 0}, "model": {"preset": "tiny"},
            "train": {"batch_size": 4}}
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return Config.model_validate(base)


# ----------------------------------------------------------------------------- GSM8K answers


def test_final_answer_on_real_gsm8k_lines(shared_data):
    rows = t5_qa.read_gsm8k(shared_data / "gsm8k-train.jsonl")
    assert len(rows) == 7473
    expected = {0: "72", 345: "1080", 644: "109200000", 5715: "-7", 5844: "-47"}  # plain, commas, negatives
    assert rows[345]["answer"].endswith("#### 1,080") and rows[5715]["answer"].endswith("#### -7")
    assert {i: t5_qa.final_answer(rows[i]["answer"]) for i in expected} == expected
    for row in rows:
        number = t5_qa.final_answer(row["answer"])
        assert number is not None and re.fullmatch(r"-?\d+", number), row["answer"][-40:]
        target = t5_qa.gsm8k_target(row["answer"])
        assert "<<" not in target and t5_qa.final_answer(target) == number  # the target keeps the answer


@pytest.mark.parametrize("text, number", [
    ("so 5 more.\n#### 1,000", "1000"), ("#### -3", "-3"), ("#### 5.50", "5.5"), ("#### 0", "0"),
    ("#### 12\n#### 13", "13"), ("#### $10", "10"), ("The answer is 5", None), ("#### ", None), ("", None),
])
def test_final_answer_edge_cases(text, number):
    assert t5_qa.final_answer(text) == number


def test_gsm8k_reader_names_the_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"question": "q", "answer": "#### 1"}\n{"question": "q"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 2.*'answer'"):
        t5_qa.read_gsm8k(path)
    with pytest.raises(FileNotFoundError, match="data.source: embedded"):
        t5_qa.read_gsm8k(tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- generated data, formatting


def test_generated_gsm8k_is_in_the_original_format_and_its_arithmetic_is_right():
    problems = generate_gsm8k(300, seed=0)
    assert problems == generate_gsm8k(300, seed=0) and problems != generate_gsm8k(300, seed=1)
    finals = [t5_qa.final_answer(p["answer"]) for p in problems]
    assert all(f is not None for f in finals)
    assert any(f.startswith("-") for f in finals) and any("," in p["answer"].split("####")[1] for p in problems)
    for p in problems:
        steps = re.findall(r"<<([^=]+)=([^>]+)>>", p["answer"])
        assert steps
        for expression, result in steps:
            assert eval(expression) == float(result), p["answer"]  # noqa: S307 - generated arithmetic only
        assert float(steps[-1][1]) == float(t5_qa.final_answer(p["answer"]))


def test_generated_bioqa_is_squad_format_with_exact_spans():
    examples = squad.flatten_squad(generate_bioqa(40, seed=0), "embedded")
    assert len(examples) >= 80 and len({e["id"] for e in examples}) == len(examples)
    for e in examples:
        (text,), (start,) = e["answers"]["text"], e["answers"]["answer_start"]
        assert e["context"][start: start + len(text)] == text
    val = squad.flatten_squad(generate_bioqa(10, seed=1), "embedded")
    assert not {e["context"] for e in val} & {e["context"] for e in examples}


def test_text_to_text_formatting():
    assert t5_qa.source_text(" How many? ") == "question: How many?"
    assert t5_qa.source_text("Which gene?", "BRX1 is a gene.") == "question: Which gene? context: BRX1 is a gene."
    gsm = t5_qa.text_pairs("gsm8k", [{"question": "Q?", "answer": "2 + 2 = <<2+2=4>>4.\n#### 4"}])
    assert gsm == [("question: Q?", "2 + 2 = 4.\n#### 4")]
    qa = t5_qa.text_pairs("bioqa", [
        {"question": "Which?", "context": "C.", "answers": {"text": ["x", "y"], "answer_start": [0, 1]}},
        {"question": "None?", "context": "C.", "answers": {"text": [], "answer_start": []}}])
    assert qa == [("question: Which? context: C.", "x"), ("question: None? context: C.", "")]


def test_collate_tokenises_sources_and_targets_with_their_own_lengths():
    from labkit.data.tokenizers import train_unigram

    pairs = t5_qa.text_pairs("gsm8k", generate_gsm8k(64, seed=0))
    tokenizer = train_unigram([text for pair in pairs for text in pair], vocab_size=400)
    batch = t5_qa.TextToText(tokenizer, max_length=24, target_length=40, padding="max_length")(pairs[:4])
    assert batch["input_ids"].shape == (4, 24) and batch["labels"].shape == (4, 40)
    assert (batch["input_ids"][:, -1] == tokenizer.eos_token_id).all()  # long sources truncated, still closed by </s>
    short = t5_qa.TextToText(tokenizer, 512, 512, "max_length")([("question: Hi", "#### 4")])
    labels = short["labels"][0]
    assert (labels[labels != -100][-1] == tokenizer.eos_token_id) and (labels == -100).sum() > 0  # padding ignored
    assert tokenizer.decode(labels[labels != -100], skip_special_tokens=True).replace(" ", "") == "####4"
    dynamic = t5_qa.TextToText(tokenizer, 512, 512, "dynamic")(pairs[:3])
    assert dynamic["input_ids"].shape[1] < 512 and dynamic["attention_mask"][:, -1].any()


# ----------------------------------------------------------------------------- loading and scoring


def test_local_files_in_the_original_formats(tmp_path):
    gsm = tmp_path / "gsm8k.jsonl"
    gsm.write_text("\n".join(json.dumps(p) for p in generate_gsm8k(40, seed=3)))
    train, val, _ = t5_qa.load_gsm8k(t5_config(data={"source": "local", "path": str(gsm), "train_examples": None,
                                                 "val_examples": None}))
    assert len(train) == 36 and len(val) == 4 and not {p["question"] for p in val} & {p["question"] for p in train}
    bio = tmp_path / "BioASQ-train-factoid.json"
    bio.write_text(json.dumps(generate_bioqa(20, seed=3)))
    train, val, _ = t5_qa.load_bioqa(t5_config(data={"dataset": "bioqa", "source": "local", "path": str(bio),
                                                 "train_examples": None, "val_examples": None}))
    assert train and val and not {e["question"] for e in val} & {e["question"] for e in train}


def test_score_gsm8k_by_exact_numeric_match_and_qa_by_squad_em_f1():
    val_set = [("q1", "... #### 1,080"), ("q2", "... #### -7"), ("q3", "... #### 5")]
    generated = ["so #### 1080", "#### -7.0", "I do not know"]
    scores = t5_qa.score("gsm8k", generated, val_set, [])
    assert scores == {"accuracy": pytest.approx(200 / 3), "answered": pytest.approx(200 / 3)}
    examples = [{"id": "a", "answers": {"text": ["BRX12"], "answer_start": [0]}},
                {"id": "b", "answers": {"text": ["the liver"], "answer_start": [0]}}]
    scores = t5_qa.score("bioqa", ["BRX12.", "liver cells"], [], examples)  # SQuAD normalisation: punctuation, articles
    assert scores["accuracy"] == scores["exact"] == 50.0 and 50.0 < scores["f1"] < 100.0


def test_impossible_settings_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="(?s)t5.yaml: 1 problem.*data.dataset gsm8k or bioqa"):
        check_settings(t5_config(data={"dataset": None}), "t5.yaml")
    with pytest.raises(ConfigError, match="model.split_devices .* train.devices"):
        check_settings(t5_config(model={"split_devices": 2}, train={"devices": 2, "strategy": "ddp"}))
    with pytest.raises(ConfigError, match="data.padding 'packed' is not supported by t5_qa"):
        check_settings(t5_config(data={"padding": "packed"}))
    with pytest.raises(ValueError, match="not a T5 preset"):
        t5.build(ModelConfig(preset="huge"), 100)


def test_task_trains_and_evaluates_on_the_cpu():
    task = t5_qa.build_task(t5_config())
    assert task.info["weights"] == "random" and task.info["dataset"] == "gsm8k" and task.flops_per_sample > 0
    batch = task.collate_fn(task.train_set[:4])
    loss = task.loss(task.model, batch)
    loss.backward()
    assert torch.isfinite(loss) and task.model.shared.weight.grad.abs().sum() > 0
    fabric = Fabric(accelerator="cpu", devices=1)
    wrapped = fabric.setup_module(task.model)
    assert t5_qa.t5_of(wrapped) is task.model  # evaluate() generates with the bare model, never through wrappers
    metrics = task.evaluate(wrapped, 8, None)
    assert {"accuracy", "answered", "act_absmax", "act_over_fp16"} <= metrics.keys()
    assert 0 < metrics["act_absmax"] < torch.finfo(torch.float16).max and metrics["act_over_fp16"] == 0


def test_output_absmax_reports_the_peak_and_fp16_overflow():
    layer = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        layer.weight.fill_(5e4)
    half = torch.nn.Linear(2, 2, bias=False).half()
    half.load_state_dict(layer.state_dict())
    with measure.output_absmax({"fp32": layer, "fp16": half}) as peaks:
        layer(torch.ones(1, 2))
        layer(torch.full((1, 2), 1e-3))  # a smaller second call does not lower the peak
        half(torch.ones(1, 2, dtype=torch.float16))  # 1e5 > 65,504: inf in fp16
    assert peaks == {"fp32": pytest.approx(1e5), "fp16": float("inf")}


# ----------------------------------------------------------------------------- layer-split model parallel


def tiny_t5(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model, _ = t5.build(ModelConfig(preset="tiny", attn_implementation="eager"), 120)
    return model


def test_layer_split_puts_encoder_and_decoder_on_their_devices_and_keeps_the_tie():
    model = tiny_t5()
    placement = t5.place_layers(model, ["cpu", "meta"])  # meta: a second device whose parameters we can see
    assert all(p.device.type == "cpu" for p in model.encoder.parameters())
    assert all(p.device.type == "meta" for p in model.decoder.block.parameters())
    assert model.decoder.final_layer_norm.weight.device.type == "meta"
    # one tied matrix: the shared embedding, both stacks' lookups and the LM head, on the first device
    assert model.lm_head.weight is model.shared.weight is model.encoder.embed_tokens.weight is model.decoder.embed_tokens.weight
    assert model.shared.weight.device.type == "cpu"
    assert placement["encoder.block.1"] == "cpu" and placement["decoder.block.0"] == "meta" and placement["lm_head"] == "cpu"
    assert measure.devices_of(model, torch.device("cpu")) == [torch.device("cpu"), torch.device("meta")]


def test_layer_split_over_more_devices_cuts_the_blocks_in_order():
    placement = t5.place_layers(tiny_t5(), [f"cpu:{i}" for i in range(4)])  # labels only: all on the CPU
    blocks = [placement[f"{s}.block.{i}"] for s in ("encoder", "decoder") for i in range(2)]
    assert blocks == ["cpu:0", "cpu:1", "cpu:2", "cpu:3"]
    assert placement["shared"] == placement["lm_head"] == "cpu:0" and placement["decoder.final_layer_norm"] == "cpu:3"
    three = t5.place_layers(tiny_t5(), [f"cpu:{i}" for i in range(3)])
    assert [three[f"{s}.block.{i}"] for s in ("encoder", "decoder") for i in range(2)] == ["cpu:0", "cpu:0", "cpu:1", "cpu:2"]


def test_layer_split_forward_backward_and_generation_match_the_whole_model():
    whole, split = tiny_t5(), tiny_t5()
    t5.place_layers(split, ["cpu:0", "cpu:1"])
    batch = {"input_ids": torch.randint(3, 120, (3, 10)), "attention_mask": torch.ones(3, 10, dtype=torch.long),
             "labels": torch.randint(3, 120, (3, 6))}
    batch["attention_mask"][0, 7:] = 0
    whole.eval(), split.eval()  # no dropout, so the two are comparable
    losses = [m(**batch).loss for m in (whole, split)]
    for loss in losses:
        loss.backward()
    assert torch.allclose(losses[0], losses[1])
    # the tied matrix collects the gradients of both lookups and of the LM head, exactly as unsplit
    assert torch.allclose(whole.shared.weight.grad, split.shared.weight.grad)
    assert torch.allclose(whole.decoder.block[1].layer[-1].DenseReluDense.wo.weight.grad,
                          split.decoder.block[1].layer[-1].DenseReluDense.wo.weight.grad)
    with torch.no_grad():
        outs = [m.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], max_new_tokens=5,
                           do_sample=False) for m in (whole, split)]
    assert torch.equal(outs[0], outs[1])


def test_layer_split_with_activation_checkpointing_trains():
    torch.manual_seed(0)
    model, info = t5.build(ModelConfig(preset="tiny", checkpointing="full"), 120)
    assert info["checkpointed_blocks"] == 4
    t5.place_layers(model, ["cpu:0", "cpu:1"])
    loss = model(input_ids=torch.randint(3, 120, (2, 8)), labels=torch.randint(3, 120, (2, 5))).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_split_configurations_are_skipped_without_enough_gpus(monkeypatch):
    cfg = t5_config(model={"split_devices": 2})
    assert "needs GPUs" in skip_reason(cfg, cuda=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert skip_reason(cfg, cuda=True) == ("model.split_devices is 2: the layer-split model needs that many GPUs "
                                           "and 1 are visible")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert skip_reason(cfg, cuda=True) is None


def _fsdp_rank(rank: int, world: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor
    from transformers.models.t5.modeling_t5 import T5Block

    from labkit.train import shard_blocks

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        seen = []
        score = t5_qa.score
        t5_qa.score = lambda dataset, generated, *rest: seen.append(generated) or score(dataset, generated, *rest)
        torch.manual_seed(0)
        task = t5_qa.build_task(t5_config(data={"val_examples": 4, "target_length": 6}))
        task.model.eval()
        whole = task.evaluate(task.model, 8, None)
        model = shard_blocks(task.model, init_device_mesh("cpu", (world,)), "32")
        task.loss(model, task.collate_fn(task.train_set[:2])).backward()  # the root's forward runs first, as in training
        asked = []
        generate = type(model).generate
        type(model).generate = lambda self, input_ids, **kw: asked.append(len(input_ids)) or generate(self, input_ids, **kw)
        sharded = task.evaluate(model, 8, None)
        type(model).generate = generate
        # afterwards every unit holds its shard again, and the blocks free their gathered parameters after forward
        after_eval = all(isinstance(p, DTensor) for p in model.parameters())
        loss = task.loss(model, task.collate_fn(task.train_set[:2]))
        block = next(m for m in model.modules() if isinstance(m, T5Block))
        block_resharded = all(isinstance(p, DTensor) for p in block.parameters())
        loss.backward()
        Path(out, f"{rank}.json").write_text(json.dumps({
            "whole": whole, "sharded": sharded, "texts": seen, "asked": asked, "after_eval": after_eval,
            "block_resharded": block_resharded}))
    finally:
        dist.destroy_process_group()


def test_generation_under_fsdp2_matches_the_whole_model(tmp_path, free_port):
    """FSDP2 leaves the root's tied embedding sharded outside its forward, and generate() calls the encoder
    first: evaluate() gathers the whole model once, each rank answers its share, and the answers are those of the
    whole model; afterwards the model is sharded as before (checked with 2 gloo processes on the CPU)."""
    pytest.importorskip("torch.distributed.device_mesh")
    # fork: the ranks start with this process's imports instead of importing everything again
    torch.multiprocessing.start_processes(_fsdp_rank, args=(2, free_port, str(tmp_path)), nprocs=2, start_method="fork")
    for rank in range(2):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        whole_texts, sharded_texts = result["texts"]
        assert sharded_texts == whole_texts and len(whole_texts) == 4
        assert result["sharded"]["act_absmax"] == pytest.approx(result["whole"]["act_absmax"], rel=1e-5)
        # the parameters gathered once, each rank answered its half of the four questions
        assert result["asked"] == [2]
        assert result["after_eval"] and result["block_resharded"]
