"""The GPT-2 (06) and T5 (07) fast paths: bucketed dynamic padding computes the loss full padding does, its shapes
fall on multiples of data.pad_multiple, a compiled model compiles once per shape, and each fast path trains what
its baseline trains."""
import pytest
import torch

from labkit import config
from labkit.data.synthetic.gsm8k import generate_gsm8k
from labkit.data.synthetic.sft import generate_pairs
from labkit.data.tokenizers import load_tokenizer, train_bpe, train_unigram
from labkit.models import gpt2, t5
from labkit.data.packing import padded_width
from labkit.tasks import gpt2_sft, t5_qa
from labkit.train import prepare_model

GPT2_FAST, GPT2_BASE = "params/06_lora_optimizer_sweep/fast_path.yaml", "params/06_lora_optimizer_sweep/r10_adamw.yaml"
T5_FAST, T5_BASE = "params/07_t5_model_parallel/fast_path.yaml", "params/07_t5_model_parallel/gsm8k_bf16.yaml"


def test_padded_width_rounds_up_to_the_multiple_but_not_past_the_cap():
    assert [padded_width(n, 32) for n in (1, 32, 33, 64, 65)] == [32, 32, 64, 64, 96]
    assert padded_width(33, 32, most=50) == 50  # max_length off the multiple: the cap is the last shape
    assert padded_width(50, 32, most=50) == 50 and padded_width(7, 1, most=50) == 7


@pytest.fixture(scope="module")
def sft_batch():
    pairs = generate_pairs(24, seed=0)
    tokenizer = train_bpe([gpt2_sft.TEMPLATE.format(prompt=p["prompt"]) + p["response"] for p in pairs], vocab_size=400)
    features, _ = gpt2_sft.encode(pairs, tokenizer, max_length=96)
    return tokenizer, features[:6]


def test_gpt2_bucketed_padding_gives_the_loss_of_full_padding(sft_batch):
    tokenizer, features = sft_batch
    torch.manual_seed(0)
    model = gpt2.build(config.ModelConfig(preset="tiny"), len(tokenizer))[0].eval()  # eval: no dropout
    longest = max(len(f["input_ids"]) for f in features)
    full = gpt2_sft.Collate(tokenizer.pad_token_id, width=96)(features)
    bucketed = gpt2_sft.Collate(tokenizer.pad_token_id, multiple=16, most=96)(features)
    width = bucketed["input_ids"].shape[1]
    assert width % 16 == 0 and longest <= width < longest + 16 and width < 96
    with torch.no_grad():
        assert model(**bucketed).loss.item() == pytest.approx(model(**full).loss.item(), rel=1e-5)


def test_t5_bucketed_padding_of_sources_and_answers_gives_the_loss_of_full_padding():
    pairs = t5_qa.text_pairs("gsm8k", generate_gsm8k(32, seed=0))
    tokenizer = train_unigram([text for pair in pairs for text in pair], vocab_size=400)
    torch.manual_seed(0)
    model = t5.build(config.ModelConfig(preset="tiny"), len(tokenizer))[0].eval()
    full = t5_qa.TextToText(tokenizer, 160, 96, "max_length")(pairs[:6])
    bucketed = t5_qa.TextToText(tokenizer, 160, 96, "dynamic", multiple=16)(pairs[:6])
    sources, answers = full["attention_mask"].sum(1).max().item(), (full["labels"] != -100).sum(1).max().item()
    (_, source_width), (_, answer_width) = bucketed["input_ids"].shape, bucketed["labels"].shape
    assert source_width % 16 == 0 and sources <= source_width < sources + 16
    assert answer_width % 16 == 0 and answers <= answer_width < answers + 16
    assert (bucketed["attention_mask"].sum(1) == full["attention_mask"].sum(1)).all()
    with torch.no_grad():
        assert model(**bucketed).loss.item() == pytest.approx(model(**full).loss.item(), rel=1e-5)
    capped = t5_qa.TextToText(tokenizer, 40, 24, "dynamic", multiple=32)(pairs[:6])  # lengths off the multiple: capped
    assert capped["input_ids"].shape[1] == 40 and capped["labels"].shape[1] == 24


def test_each_fast_path_trains_what_its_baseline_trains():
    """Only how a step runs may differ (precision, fused optimizer, padding, compilation), so the two runs' loss
    curves compare step for step."""
    for fast, base in ((GPT2_FAST, GPT2_BASE), (T5_FAST, T5_BASE)):
        f, b = config.load(fast, "bench"), config.load(base, "bench")
        assert f.model.lora == b.model.lora and f.model.finetune == b.model.finetune and f.model.preset == b.model.preset
        same = ("optimizer", "lr", "betas", "eps", "weight_decay", "weight_decay_on", "schedule", "warmup_ratio",
                "batch_size", "grad_accum", "max_steps", "epochs", "seed", "grad_clip")
        assert {k: getattr(f.train, k) for k in same} == {k: getattr(b.train, k) for k in same}
        assert (f.data.source, f.data.train_examples, f.data.max_length, f.data.target_length) == \
               (b.data.source, b.data.train_examples, b.data.max_length, b.data.target_length)
        assert (f.model.compile, f.model.compile_mode, f.model.compile_dynamic) == (True, "reduce-overhead", False)
        assert f.data.padding == ("packed" if f.task == "gpt2_sft" else "dynamic") and f.data.pad_multiple > 1 and f.train.fused


def test_the_gpt2_fast_path_trains_rows_of_one_shape():
    """Over an epoch of the bench's data, in the order its sampler draws, every training row of the GPT-2 fast path
    has one shape: one compilation, one CUDA graph."""
    task = gpt2_sft.build_task(config.load(GPT2_FAST, "bench", {"model.compile": False}))
    b, order = 8, list(task.train_sampler)
    assert config.load(GPT2_FAST, "bench").train.batch_size == b
    shapes = {tuple(task.collate_fn([task.train_set[i] for i in order[s: s + b]])["input_ids"].shape)
              for s in range(0, len(order) - b + 1, b)}
    assert shapes == {(1, task.info["packed_row_tokens"])} and task.info["packed_row_tokens"] % 32 == 0


def test_the_t5_bench_data_meets_two_shapes():
    """Over an epoch of the bench's data, in a shuffled order, the T5 fast path's batches take two padded shapes (two
    compilations), both multiples of data.pad_multiple."""
    cfg = config.load(T5_FAST, "bench")
    d = cfg.data
    items = t5_qa.text_pairs("gsm8k", t5_qa.load_gsm8k(cfg)[0])
    tokenizer = load_tokenizer(cfg.model, [text for pair in items for text in pair if text], "unigram", t5.T5_VOCAB, None)
    collate = t5_qa.TextToText(tokenizer, d.max_length, d.target_length, d.padding, d.pad_multiple)
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()
    b = cfg.train.batch_size
    shapes = {tuple(tuple(v.shape) for _, v in sorted(collate([items[i] for i in order[s: s + b]]).items()))
              for s in range(0, len(order) - b + 1, b)}
    assert len(shapes) == 2
    assert all(width % d.pad_multiple == 0 for shape in shapes for (_, width) in shape)


def test_the_compiled_fast_path_compiles_once_per_shape_and_computes_the_eager_loss(monkeypatch):
    """prepare_model compiles the GPT-2 fast path for static shapes; three training steps over its packed rows of
    one length compile once and give the eager model's losses. On a CPU the graphs run through AOT autograd without
    code generation (no CUDA graphs here: they are a GPU's)."""
    cfg = config.load(GPT2_FAST, "smoke", {"data.train_examples": 64, "data.pad_multiple": 8})
    task = gpt2_sft.build_task(cfg)
    compiled_shapes, asked = [], {}
    real_compile = torch.compile

    def counting(gm, inputs):
        compiled_shapes.append(tuple(tuple(x.shape) for x in inputs if isinstance(x, torch.Tensor) and x.dim() == 2))
        return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)

    def compile_on_cpu(model, mode=None, dynamic=None):
        asked.update(mode=mode, dynamic=dynamic)
        return real_compile(model, backend=counting, dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", compile_on_cpu)
    torch._dynamo.reset()
    eager = task.model
    model = prepare_model(cfg, eager)
    assert asked == {"mode": "reduce-overhead", "dynamic": False}
    order, size = list(task.train_sampler), cfg.train.batch_size
    batches = [task.collate_fn([task.train_set[i] for i in order[s: s + size]]) for s in (0, size, 2 * size)]
    assert len({b["input_ids"].shape for b in batches}) == 1 and len({int(b["cu_seq_lens_q"][-2]) for b in batches}) > 1
    eager.eval()  # dropout off, so compiled and eager compute the same function
    optimizer = torch.optim.AdamW([p for p in eager.parameters() if p.requires_grad], lr=1e-3)
    compilations = []
    try:
        for batch in batches:
            with torch.no_grad():
                expected = eager(**batch).loss.item()
            loss = model(**batch).loss
            assert loss.item() == pytest.approx(expected, rel=1e-4)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            compilations.append(len(compiled_shapes))
    finally:
        torch._dynamo.reset()
    assert 0 < compilations[0] == compilations[1] == compilations[2]


def test_gpt2_evaluates_a_compiled_model_inside_fabric():
    """Fabric refuses generate() on the wrapper of a compiled model (it would bypass the compiled forward), so the
    evaluation generates, and computes its test loss, with the model inside the wrapper."""
    from lightning.fabric import Fabric

    task = gpt2_sft.build_task(config.load(GPT2_FAST, "smoke", {"data.train_examples": 64, "data.val_examples": 8}))
    fabric = Fabric(accelerator="cpu", devices=1)
    wrapped = fabric.setup_module(torch.compile(task.model, backend="eager", dynamic=False))
    with pytest.raises(RuntimeError, match="mark_forward_method"):  # what the evaluation must not do
        wrapped.generate(input_ids=torch.tensor([[1, 2]]), max_new_tokens=1)
    wrapped.eval()
    metrics = task.evaluate(wrapped, 8, None)
    assert metrics["test_loss"] > 0 and len(task.info["generations"]) == gpt2_sft.GENERATIONS


def test_compile_options_reach_torch_compile_over_the_mode(monkeypatch):
    """torch.compile takes a mode or options, not both: with model.compile_options, the mode's own options (CUDA
    graphs for reduce-overhead) and the given ones go to torch.compile together, and torch accepts them."""
    from labkit import train

    options = train.compile_settings("reduce-overhead", {"conv_1x1_as_mm": True})["options"]
    assert options == {"triton.cudagraphs": True, "conv_1x1_as_mm": True}
    assert train.compile_settings("reduce-overhead", {}) == {"mode": "reduce-overhead"}
    torch.compile(torch.nn.Linear(2, 2), options=options)  # an unknown option would raise here, before any compilation
    asked = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: asked.append(kwargs) or model)
    cfg = config.load("params/03_mixed_precision/fast_path.yaml", "smoke", {"model.compile_options.conv_1x1_as_mm": True})
    train.prepare_model(cfg, torch.nn.Conv2d(3, 4, 1))
    assert asked == [{"dynamic": None, "options": {"triton.cudagraphs": True, "max_autotune_pointwise": True,
                                                   "conv_1x1_as_mm": True}}]  # the file's option and the one given
    with pytest.raises(config.ConfigError, match="model.compile is false"):
        config.load("params/03_mixed_precision/fast_path.yaml", "smoke",
                    {"model.compile": False, "model.compile_options.conv_1x1_as_mm": True})
    # whether CUDA graphs replay (the blocks' output hooks and the steady state's memory peak follow it): the mode's
    # choice, unless the options say otherwise
    graphs = {(mode, flag): config.load("params/03_mixed_precision/fast_path.yaml", "smoke", {
        "model.compile_mode": mode, **({"model.compile_options.triton.cudagraphs": flag} if flag is not None else {})}).model.cuda_graphs
        for mode in ("reduce-overhead", "default") for flag in (None, True, False)}
    assert graphs == {("reduce-overhead", None): True, ("reduce-overhead", True): True, ("reduce-overhead", False): False,
                      ("default", None): False, ("default", True): True, ("default", False): False}
