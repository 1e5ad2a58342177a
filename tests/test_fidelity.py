"""The `full` profile against the original labs: docs/fidelity.md's tables are the reference, and the options
that reproduce the originals (SQuAD one example per answer, Adam with L2, ResNeXt's original checkpointing,
GPT-2's trainable set, T5's targets and splits) do what the table says."""
from __future__ import annotations

import math
import re

import pytest
import torch
import yaml

from labkit import config
from labkit.config import ConfigError, ModelConfig, TrainConfig

DOC = config.ROOT / "docs" / "fidelity.md"
HELD = re.compile(r"^Held to this table: (.+)$")
CELL_SPLIT = re.compile(r"(?<!\\)\|")  # a cell may hold a regular expression with escaped pipes


def tables() -> list[tuple[list[str], list[dict[str, str]]]]:
    """(configuration files, rows as {column: cell}) for every table with a 'Held to this table' line."""
    found, files, lines = [], None, DOC.read_text().splitlines()
    i = 0
    while i < len(lines):
        held = HELD.match(lines[i])
        if held:
            files = re.findall(r"`(params/[^`]+\.yaml)`", held.group(1))
        elif lines[i].startswith("|") and files is not None:
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append([c.strip().replace("\\|", "|") for c in CELL_SPLIT.split(lines[i])[1:-1]])
                i += 1
            header, rows = block[0], block[2:]
            found.append((files, [dict(zip(header, r)) for r in rows]))
            files = None
            continue
        i += 1
    return found


def held_rows() -> list[tuple[str, str, str, str]]:
    """(configuration file, setting, dotted key, expected value as written) for every row with a key."""
    rows = []
    for files, table in tables():
        for row in table:
            key = re.fullmatch(r"`([\w.]+)`", row["key"])
            if key:
                rows += [(f, row["setting"], key.group(1), row["labkit full"]) for f in files]
    return rows


def resolved(cfg: config.Config, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return list(value) if isinstance(value, tuple) else value


def written(cell: str):
    """The table's value: one YAML scalar or flow sequence between backticks."""
    match = re.fullmatch(r"`(.+)`", cell)
    assert match, f"the 'labkit full' cell of a row with a key must be one `value`, got {cell!r}"
    return yaml.safe_load(match.group(1))


def test_the_table_covers_every_original_lab():
    files = {f for f, *_ in held_rows()}
    for notebook in ("01_", "02_", "03_", "04_", "05_", "06_", "07_"):
        assert any(f"/{notebook}" in f for f in files), f"docs/fidelity.md holds no configuration of notebook {notebook}"
    assert len(held_rows()) > 150


@pytest.mark.parametrize("file,setting,key,cell", held_rows(), ids=lambda v: str(v)[:60])
def test_full_resolves_to_the_table(file, setting, key, cell):
    cfg = config.load(config.ROOT / file, "full")
    expected, actual = written(cell), resolved(cfg, key)
    if isinstance(actual, float):
        expected = float(expected)
        assert actual == pytest.approx(expected), f"{file}: {setting} ({key}) is {actual!r} under full, the table says {cell}"
    else:
        assert actual == expected, f"{file}: {setting} ({key}) is {actual!r} under full, the table says {cell}"


# ---- the profile's per-configuration sections ---------------------------------------------------------


def test_a_configuration_section_of_a_profile_lies_over_the_file(tmp_path, monkeypatch):
    params = tmp_path / "params"
    (params / "profiles").mkdir(parents=True)
    (params / "nb").mkdir()
    (params / "profiles" / "p.yaml").write_text(
        "cifar_resnext: {train: {lr: 0.5, epochs: 3}}\nnb: {train: {epochs: 4}}\n"
        "nb/a*: {train: {lr: 0.25}}\nnb/b*: {train: {lr: 0.125}}\n")
    (params / "nb" / "a1.yaml").write_text("task: cifar_resnext\ntrain: {lr: 0.1}\n")
    monkeypatch.setattr(config, "PARAMS_DIR", params)
    cfg = config.load(params / "nb" / "a1.yaml", "p")
    assert (cfg.train.lr, cfg.train.epochs) == (0.25, 4)  # section over file over notebook over task
    assert config.load(params / "nb" / "a1.yaml", "p", {"train.lr": 0.75}).train.lr == 0.75  # overrides on top


@pytest.mark.parametrize("file,override,task", [
    ("01_baseline_bert_squad/baseline.yaml", {"model.checkpointing": "stage_and_conv"}, "cifar_resnext"),
    ("02_dataloader_workers/workers_2.yaml", {"data.squad_examples": "one_per_answer", "data.doc_stride": 0}, "bert_squad"),
    ("02_dataloader_workers/workers_2.yaml", {"data.gsm8k_target": "final_number"}, "t5_qa"),
])
def test_an_option_of_one_task_is_refused_elsewhere(file, override, task):
    with pytest.raises(ConfigError, match=f"applies to task '{task}' only"):
        config.load(config.PARAMS_DIR / file, "smoke", override)


def test_one_example_per_answer_needs_no_windows():
    with pytest.raises(ConfigError, match="doc_stride: 0"):
        config.load(config.PARAMS_DIR / "01_baseline_bert_squad/baseline.yaml", "smoke", {"data.squad_examples": "one_per_answer"})


# ---- optimizers ---------------------------------------------------------------------------------------


def test_adam_decays_every_parameter_through_the_gradient():
    from labkit.optim import build_optimizer

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    opt = build_optimizer(model, TrainConfig(optimizer="adam", lr=0.01, weight_decay=5e-4, weight_decay_on="all", eps=1e-6))
    assert type(opt) is torch.optim.Adam
    assert [(len(g["params"]), g["weight_decay"], g["eps"]) for g in opt.param_groups] == [(4, 5e-4, 1e-6)]
    kit = build_optimizer(model, TrainConfig(optimizer="adamw", weight_decay=0.01))
    assert [(len(g["params"]), g["weight_decay"]) for g in kit.param_groups] == [(1, 0.01), (3, 0.0)]


# ---- ResNeXt: the original's model and checkpointing ------------------------------------------------------


def test_resnext29_4x64d_is_the_original_architecture():
    from labkit.models import resnext

    with torch.device("meta"):
        model = resnext.ResNeXt(**resnext.PRESETS["resnext29_4x64d"])
    # kuangliu's ResNeXt29_4x64d: cardinality 4, widths 256/512/1024 grouped, 2048 features into the classifier
    assert model.blocks[0].conv2.groups == 4 and model.blocks[0].conv2.out_channels == 256
    assert model.linear.in_features == 2048
    assert sum(p.numel() for p in model.parameters()) == 27_104_586


def test_stage_and_conv_checkpointing_changes_no_gradient():
    from labkit.models import resnext

    torch.manual_seed(0)
    plain, _ = resnext.build(ModelConfig(preset="tiny"))
    checkpointed, info = resnext.build(ModelConfig(preset="tiny", checkpointing="stage_and_conv"))
    names = {n.replace(".block", ""): p for n, p in checkpointed.named_parameters()}
    with torch.no_grad():
        for n, p in plain.named_parameters():
            names[n].copy_(p)
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    for model in (plain, checkpointed):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    assert info["checkpointed_stages"] == 3
    for n, p in plain.named_parameters():
        torch.testing.assert_close(names[n].grad, p.grad, rtol=1e-4, atol=1e-6)


# ---- SQuAD as the original lab 01 prepared it ------------------------------------------------------------


def test_one_example_per_answer_context_first_with_the_original_labels():
    from labkit.data import squad
    from labkit.data.tokenizers import train_wordpiece

    context = "The river Xylo flows north past the old mill into the lake."
    examples = [
        {"id": "a", "title": "t", "context": context, "question": "Where does it flow?",
         "answers": {"text": ["north", "into the lake"], "answer_start": [context.index("north"), context.index("into")]}},
        {"id": "b", "title": "t", "context": context, "question": "Who built it?", "answers": {"text": [], "answer_start": []}},
        {"id": "c", "title": "t", "context": context, "question": "Which river?",
         "answers": {"text": ["Xylo"], "answer_start": [11]}},  # the stated start is one character late
    ]
    tokenizer = train_wordpiece([context] + [e["question"] for e in examples], vocab_size=200)
    features = squad.prepare_answer_examples(examples, tokenizer, max_length=32)
    assert len(features["input_ids"]) == 3  # two answers of 'a', none of the unanswerable 'b', one of 'c'
    ids = features["input_ids"][0]
    assert tokenizer.decode(ids[1:4]).startswith("the river")  # the context comes first
    assert all(len(i) == 32 for i in features["input_ids"])
    decode = lambda f, a, b: tokenizer.decode(features["input_ids"][f][a:b])  # noqa: E731
    # start: the answer's first token; end: the token of the character just after the answer, or of its
    # last character where that one is a space (the original's labels)
    assert features["start_positions"][0] == features["end_positions"][0]
    assert decode(0, features["start_positions"][0], features["start_positions"][0] + 1) == "north"
    assert decode(1, features["start_positions"][1], features["end_positions"][1] + 1) == "into the lake."
    assert decode(2, features["start_positions"][2], features["end_positions"][2] + 1) == "xylo"  # start moved back
    # an answer cut off by truncation gets position max_length, which the loss ignores
    short = squad.prepare_answer_examples(examples[:1], tokenizer, max_length=12)
    assert short["start_positions"][1] == short["end_positions"][1] == 12


def test_the_qa_loss_ignores_a_cut_off_answer():
    from labkit.tasks.bert_squad import qa_loss

    class Out:
        def __init__(self, start, end):
            self.start_logits, self.end_logits = start, end

    logits = torch.randn(2, 6)
    model = lambda **batch: Out(logits, logits)  # noqa: E731
    batch = {"attention_mask": torch.ones(2, 6, dtype=torch.long), "start_positions": torch.tensor([1, 6]),
             "end_positions": torch.tensor([2, 6])}
    expected = (torch.nn.functional.cross_entropy(logits[:1], torch.tensor([1]))
                + torch.nn.functional.cross_entropy(logits[:1], torch.tensor([2]))) / 2
    torch.testing.assert_close(qa_loss(model, batch), expected)


# ---- GPT-2: the trainable set behind the original's memory figures -------------------------------------------


def state_bytes(cfg: config.Config) -> int:
    """Bytes of one optimizer state tensor per trainable parameter, each allocation rounded to 512 bytes."""
    from labkit.models import gpt2

    with torch.device("meta"):
        model, _ = gpt2.build(cfg.model.model_copy(update={"weights": "random"}), 50257)
    trainable = {id(p): p for p in model.parameters() if p.requires_grad}
    return sum(math.ceil(p.numel() * 4 / 512) * 512 for p in trainable.values())


def test_the_trainable_set_reproduces_the_original_optimizer_memory():
    # SGD_lora1.log, SGD_Mom_lora1.log, AdamW_lora1.log: memory_allocated after the loop minus before it
    sgd, momentum, adamw = 1_663_992_832, 1_877_104_128, 2_090_215_424
    one = state_bytes(config.load(config.PARAMS_DIR / "06_lora_optimizer_sweep/r1_sgd_momentum.yaml", "full"))
    assert momentum - sgd == one  # a momentum buffer per trainable parameter
    assert adamw - sgd == 2 * one  # AdamW's two moments
    kit = state_bytes(config.load(config.PARAMS_DIR / "06_lora_optimizer_sweep/r1_sgd_momentum.yaml", "gpu"))
    assert kit < one / 100  # the kit's own LoRA (adapters on c_attn only) trains a sliver of that


# ---- T5: the original lab 07's targets and splits ---------------------------------------------------------


def test_gsm8k_final_number_target_and_a_held_out_twentieth():
    from labkit.tasks import t5_qa

    cfg = config.load(config.PARAMS_DIR / "07_t5_model_parallel/gsm8k_1worker_fp32.yaml", "smoke",
                      {"data.gsm8k_target": "final_number", "data.val_fraction": 0.05,
                       "data.train_examples": None, "data.val_examples": None})
    train, val, test = t5_qa.load_gsm8k(cfg)
    assert (len(train), len(val)) == (1900, 100)  # of the 2,000 embedded training problems
    assert len(test) == 200  # the source's own validation split becomes the test set
    pairs = t5_qa.text_pairs("gsm8k", [{"question": "Q?", "answer": "6 x 3 = <<6*3=18>>18\n#### 1,018"}], "final_number")
    assert pairs == [("question: Q?", "1018")]
    scores = t5_qa.score("gsm8k", ["1018", "7", "#### 9"], [("", "1018"), ("", "8"), ("", "9")], [], "final_number")
    assert scores["accuracy"] == pytest.approx(200 / 3)


def test_bioqa_keeps_one_question_per_context():
    from labkit.tasks import t5_qa

    cfg = config.load(config.PARAMS_DIR / "07_t5_model_parallel/bioqa_1worker_fp32.yaml", "smoke",
                      {"data.drop_duplicate_contexts": True, "data.val_fraction": 0.05,
                       "data.train_examples": None, "data.val_examples": None})
    train, val, _ = t5_qa.load_bioqa(cfg)
    contexts = [e["context"] for e in train + val]
    assert len(contexts) == len(set(contexts))
    assert len(val) == math.ceil(0.05 * len(contexts))


# ---- the loop: a test curve every eval_every_steps ---------------------------------------------------------


def test_eval_every_steps_validates_inside_epochs_outside_the_steady_state():
    from torch.utils.data import TensorDataset

    from labkit.tasks import Task
    from labkit.train import fit, make_fabric

    cfg = config.Config.model_validate({"task": "cifar_resnext", "measure": {"warmup_steps": 1}, "train": {
        "epochs": 2, "batch_size": 16, "lr": 0.05, "optimizer": "sgd", "eval_every_steps": 3, "log_every": 1}})
    g = torch.Generator().manual_seed(0)
    data = lambda n: TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 2, (n,), generator=g))  # noqa: E731
    task = Task(model=torch.nn.Linear(8, 2), train_set=data(128), val_set=data(32))
    out = fit(cfg, task, make_fabric(cfg))
    # 8 steps an epoch: every third step counts from the start of training; each epoch's end validates too
    assert [step for step, *_ in out["curves"]["val_loss"]] == [3, 6, 8, 9, 12, 15, 16]
    assert [epoch for _, epoch, _ in out["curves"]["val_loss"]][:2] == [0.375, 0.75]
    assert out["summary"]["steps"] == 16 and out["summary"]["steady_state"]
    assert out["summary"]["val_time_s"] > 0  # validation timed apart from training (the original's tables add them)


def test_keep_best_ends_with_the_best_validation_weights_and_tests_them():
    from torch.utils.data import TensorDataset

    from labkit.tasks import Task
    from labkit.train import fit, make_fabric, validate

    g = torch.Generator().manual_seed(0)
    data = lambda n: TensorDataset(torch.randn(n, 8, generator=g), torch.randint(0, 2, (n,), generator=g))  # noqa: E731
    # a learning rate far too high: validation loss rises after the first epochs, as in the original 5-epoch run
    cfg = config.Config.model_validate({"task": "cifar_resnext", "measure": {"warmup_steps": 1}, "train": {
        "epochs": 6, "batch_size": 16, "lr": 3.0, "optimizer": "sgd", "keep_best": True, "log_every": 4}})
    torch.manual_seed(0)
    task = Task(model=torch.nn.Linear(8, 2), train_set=data(64), val_set=data(32), test_set=data(48))
    fabric = make_fabric(cfg)
    out = fit(cfg, task, fabric)
    s, losses = out["summary"], [loss for *_, loss in out["curves"]["val_loss"]]
    assert s["best_val_loss"] == min(losses) and s["best_step"] == 4 * (losses.index(min(losses)) + 1)
    assert s["best_step"] < s["steps"]  # the run went past its best validation, so restoring it shows
    val_loader = fabric.setup_dataloaders(torch.utils.data.DataLoader(task.val_set, batch_size=16))
    assert validate(cfg, task, task.model, val_loader, fabric)["val_loss"] == pytest.approx(min(losses))  # the best weights
    assert s["test_loss"] > 0
    with pytest.raises(ConfigError, match="keep_best"):
        config.load(config.PARAMS_DIR / "07_t5_model_parallel/gsm8k_fsdp_2gpu.yaml", "smoke", {"train.keep_best": True})


def test_kaiming_uniform_init_draws_the_original_weights():
    from labkit.models import resnext

    torch.manual_seed(0)
    model, info = resnext.build(ModelConfig(preset="tiny", init="kaiming_uniform"))
    conv = model.blocks[0].conv2
    bound = math.sqrt(6 / (conv.in_channels // conv.groups * 9))  # kaiming_uniform_, ReLU gain sqrt(2)
    assert conv.weight.abs().max() <= bound and conv.weight.abs().max() > 0.9 * bound
    default, _ = resnext.build(ModelConfig(preset="tiny"))
    assert default.blocks[0].conv2.weight.abs().max() < 0.6 * bound  # PyTorch's a=sqrt(5): a bound sqrt(3) times smaller
    assert "kaiming_uniform" in info["weights_source"]


# ---- GPT-2: the original lab 06's data and loss ------------------------------------------------------------


def test_dialogue_windows_train_on_every_token_of_the_joined_dialogues(tmp_path):
    import json

    from labkit.tasks import build_task

    dialogues = [f"\n\nHuman: what is {i} plus {i}?\n\nAssistant: {2 * i}." for i in range(60)]
    (tmp_path / "sft_train.json").write_text(json.dumps(dialogues))
    (tmp_path / "sft_test.json").write_text(json.dumps(dialogues[:20]))
    cfg = config.load(config.PARAMS_DIR / "06_lora_optimizer_sweep/r1_sgd.yaml", "smoke", {
        "data": {"source": "local", "path": str(tmp_path / "sft_train.json"), "val_path": str(tmp_path / "sft_test.json"),
                 "sft_format": "dialogue_windows", "max_length": 32, "doc_stride": 0}})
    task = build_task(cfg)
    train, test = task.train_set, task.val_set
    eos = train.tokens[-1]
    assert train.tokens.count(eos) == 60  # each dialogue ended by end-of-text, all joined
    assert len(train) == len(train.tokens) // 32
    batch = task.collate_fn([train[0], train[1]])
    assert batch["input_ids"].shape == (2, 32) and torch.equal(batch["labels"], batch["input_ids"])  # loss on every token
    assert test[5] == test[5] and any(train[0] != train[0] for _ in range(5))  # test windows fixed, training ones drawn
    with pytest.raises(ConfigError, match="applies to task 'gpt2_sft' only"):
        config.load(config.PARAMS_DIR / "02_dataloader_workers/workers_2.yaml", "smoke", {"data.sft_format": "dialogue_windows"})


# ---- GPT-2: the original lab 06's outcome measure ---------------------------------------------------------------


def test_dialogue_quality_counts_ties_for_the_fine_tuned_model():
    from labkit.reward import dialogue_quality

    assert dialogue_quality([1.0, 0.5, 0.2, 0.0], [0.5, 0.5, 0.3, 0.1]) == 0.5  # eval.py: score_a <= score_b


def test_the_reward_path_runs_offline_with_a_random_reward_model():
    from labkit.data.tokenizers import train_bpe
    from labkit.models import gpt2
    from labkit.reward import evaluate

    prompts = ["Sort the numbers: 3, 1, 2", "Add 2 and 5"]
    tokenizer = train_bpe(prompts * 20 + ["Human: Assistant: 1, 2, 3 7"] * 20, vocab_size=300)
    torch.manual_seed(0)
    tuned, _ = gpt2.build(ModelConfig(preset="tiny"), len(tokenizer))
    untuned, _ = gpt2.build(ModelConfig(preset="tiny"), len(tokenizer))
    measure = config.MeasureConfig(reward_model="random")
    summary, rows = evaluate(measure, tuned.eval(), untuned.eval(), tokenizer, prompts)
    assert summary["reward_prompts"] == 2 and summary["dialogue_quality"] in (0.0, 0.5, 1.0)
    assert [r["prompt"] for r in rows] == prompts
    assert all("<|endoftext|>" not in r["tuned"] + r["untuned"] for r in rows)  # cut at end-of-text
    assert summary["reward_tuned_mean"] == pytest.approx(sum(r["tuned_score"] for r in rows) / 2)
    with pytest.raises(ConfigError, match="reward_model_path"):
        config.load(config.PARAMS_DIR / "06_lora_optimizer_sweep/r1_sgd.yaml", "smoke", {"measure.reward_model": "local"})
