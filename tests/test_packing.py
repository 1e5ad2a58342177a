"""Padding-free BERT: a packed row trains exactly what the padded batch trains."""
import itertools

import pytest
import torch
from torch.utils.data import default_collate
from transformers import AutoModelForQuestionAnswering, BertConfig

import labkit
from labkit import results
from labkit.data import packing
from labkit.data.synthetic.squad import generate_squad
from labkit.tasks.bert_squad import qa_loss
from labkit.tasks import batch_size_of, real_tokens_of

WIDTH = 48


def features(lengths: list[int], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Right-padded QA features; the padding holds random ids, so only masking can hide it."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        start = int(torch.randint(0, n, (), generator=g))
        out.append({"input_ids": torch.randint(5, 200, (WIDTH,), generator=g),
                    "attention_mask": (torch.arange(WIDTH) < n).long(),
                    "token_type_ids": (torch.arange(WIDTH) >= n // 2).long(),
                    "start_positions": torch.tensor(start),
                    "end_positions": torch.tensor(min(n - 1, start + int(torch.randint(0, 4, (), generator=g))))})
    return out


def tiny_bert(attn: str = "sdpa") -> torch.nn.Module:
    """No dropout; weights 10x BERT's initial scale, so attention is peaked and what it reads matters."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        initializer_range=0.2)
    return AutoModelForQuestionAnswering.from_config(config, attn_implementation=attn)


def train_rows(run: torch.nn.Module, model: torch.nn.Module, rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step per packed row through ``run`` (``model``, or ``model`` compiled): the losses, and the QA head's
    weight afterwards."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for row in rows:
        loss = qa_loss(run, {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in row.items()})
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.detach())
    return torch.stack(losses), model.qa_outputs.weight.detach()


def loss_and_grads(model: torch.nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = qa_loss(model, batch)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_packed_loss_and_gradients_equal_padded(attn):
    batch = features([7, 31, 48, 12, 3, 26])
    model = tiny_bert(attn)
    padded_loss, padded_grads = loss_and_grads(model, default_collate(batch))
    dynamic_loss, _ = loss_and_grads(model, packing.DynamicPadding()(batch))
    model.set_attn_implementation(packing.register())
    packed_loss, packed_grads = loss_and_grads(model, packing.Packing()(batch))
    again, _ = loss_and_grads(model, default_collate(batch))  # padded batches still work in packed mode
    assert torch.allclose(packed_loss, padded_loss, atol=1e-5) and torch.allclose(dynamic_loss, padded_loss, atol=1e-5)
    assert torch.allclose(again, padded_loss, atol=1e-5)
    assert packed_grads.keys() == padded_grads.keys()
    for name, grad in padded_grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-5, rtol=1e-4), name
    # The equality comes from confining attention to each feature: plain SDPA over the packed row differs.
    with torch.no_grad():
        assert abs(qa_loss(tiny_bert("sdpa"), packing.Packing()(batch)) - padded_loss) > 0.05


def test_packed_row_positions_labels_and_counts():
    lengths = [5, 9, 2, 7]
    batch = features(lengths, seed=1)
    row = packing.Packing(multiple=8, max_length=WIDTH)(batch)
    assert row["input_ids"].shape == (1, 24) and "attention_mask" not in row  # 23 real tokens, 1 of padding
    assert row["position_ids"][0].tolist() == [i for n in lengths for i in range(n)] + [0]
    assert row["cu_seq_lens_q"].tolist() == [0, 5, 14, 16, 23, 24] and row["cu_seq_lens_q"].dtype == torch.int32
    assert row["max_length_q"] == row["max_length_k"] == WIDTH  # a fixed bound, not this batch's longest feature
    for b, f in enumerate(batch):
        start = int(row["cu_seq_lens_q"][b])
        assert torch.equal(row["input_ids"][0, start: start + lengths[b]], f["input_ids"][: lengths[b]])
        assert torch.equal(row["token_type_ids"][0, start: start + lengths[b]], f["token_type_ids"][: lengths[b]])
        for key in ("start_positions", "end_positions"):  # the same token, found where the feature now lies
            assert row["input_ids"][0, row[key][b]] == f["input_ids"][f[key]]
            assert start <= row[key][b] < start + lengths[b]
    assert batch_size_of(row) == 4 and int(real_tokens_of(row)) == sum(lengths)
    padded = default_collate(batch)
    assert batch_size_of(padded) == 4 and int(real_tokens_of(padded)) == sum(lengths)


@pytest.mark.parametrize("multiple", [1, 16, 23, 64])
def test_padding_segment_fixes_the_rows_shape_and_changes_nothing_trained(multiple):
    """The row is padded to a multiple by one segment of its own: always one, never empty, never counted, never in
    the loss. 64 is longer than any feature: attention cuts that padding into pieces of the features' bound."""
    model = tiny_bert()
    model.set_attn_implementation(packing.register())
    pack = packing.Packing(multiple=multiple, max_length=WIDTH)
    for lengths in ([7, 31, 48, 12, 3, 15], [5, 9, 2, 7, 23, 1]):  # 116 and 47 real tokens
        batch = features(lengths)
        row = pack(batch)
        width, cu = row["input_ids"].shape[1], row["cu_seq_lens_q"]
        assert width % multiple == 0 and width - multiple <= sum(lengths) < width
        assert cu.tolist()[:-1] == [0, *itertools.accumulate(lengths)] and int(cu[-1]) == width
        assert (row["input_ids"][0, sum(lengths):] == 0).all() and row["max_length_q"] == WIDTH
        assert batch_size_of(row) == len(lengths) and int(real_tokens_of(row)) == sum(lengths)
        loss, grads = loss_and_grads(model, row)
        padded_loss, padded_grads = loss_and_grads(model, default_collate(batch))
        assert torch.allclose(loss, padded_loss, atol=1e-5)
        for name, grad in padded_grads.items():
            assert torch.allclose(grads[name], grad, atol=1e-5, rtol=1e-4), name
    # A row whose features fill a whole multiple still gets its padding segment: a whole multiple of it.
    assert packing.Packing(multiple=8, max_length=WIDTH)(features([5, 3]))["cu_seq_lens_q"].tolist() == [0, 5, 8, 16]


def test_attention_cuts_the_padding_into_pieces_no_longer_than_the_bound():
    """Features of 5, 3 and 9 tokens, then 23 of padding, bound 8, padding of at most 40: the kernel gets the
    features' segments, then the padding as 8 + 8 + 7 tokens and two empty pieces (40 tokens would need five)."""
    cu = torch.tensor([0, 5, 8, 17, 40], dtype=torch.int32)
    assert packing.attention_segments(cu, 8, 40).tolist() == [0, 5, 8, 17, 25, 33, 40, 40, 40]
    assert packing.attention_segments(torch.tensor([0, 39, 40]), 8, 40).tolist() == [0, 39, 40, 40, 40, 40, 40]
    assert packing.attention_segments(torch.tensor([0, 39, 40]), 8, 3).tolist() == [0, 39, 40]


@pytest.mark.skipif(not (torch.cuda.is_available() and packing.varlen_attn is not None), reason="the varlen kernel needs CUDA")
def test_varlen_kernel_with_the_padding_in_pieces_equals_a_block_mask():
    """On the GPU: the flash kernel, given the padding in pieces (empty ones too), attends as SDPA with a block-diagonal
    mask over the features' segments, and every gradient is finite (the padding's own too)."""
    torch.manual_seed(0)
    lengths, bound, tokens, heads, dim = [300, 17, 384, 120], 384, 2048, 4, 64
    cu = torch.tensor([0, *itertools.accumulate(lengths), tokens], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(1, heads, tokens, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    out, _ = packing.packed_attention(torch.nn.Module(), q, k, v, None, cu_seq_lens_q=cu, max_length_q=bound,
                                      max_padding=tokens)
    segments = packing.segment_ids(cu, tokens)
    mask = segments[:, None] == segments[None, :]
    want = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask).transpose(1, 2)
    real = sum(lengths)
    assert torch.allclose(out[0, :real].float(), want[0, :real], atol=2e-2)
    out[0, :real].float().pow(2).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))
    assert (q.grad[0, :, real:] == 0).all()  # the padding's outputs were not read


def test_segments_and_segment_logsumexp():
    cu = torch.tensor([0, 3, 4, 8], dtype=torch.int32)
    segments = packing.segment_ids(cu, 8)
    assert segments.tolist() == [0, 0, 0, 1, 2, 2, 2, 2]
    x = torch.randn(8)
    expected = torch.stack([x[0:3].logsumexp(0), x[3:4].logsumexp(0), x[4:8].logsumexp(0)])
    assert torch.allclose(packing.segment_logsumexp(x, segments, 3), expected, atol=1e-6)


def test_dynamic_padding_cuts_to_longest_rounded_to_8():
    batch = packing.DynamicPadding()(features([5, 17, 9]))
    assert batch["input_ids"].shape == (3, 24) and batch["input_ids"].is_contiguous()
    assert int(batch["attention_mask"].sum()) == 31
    assert packing.DynamicPadding()(features([47, 48]))["input_ids"].shape == (2, WIDTH)  # never wider than the features


def test_packed_attention_compiles():
    """torch.compile traces the packed path (aot_eager: no C++ compiler needed) and gives the same loss."""
    model = tiny_bert()
    model.set_attn_implementation(packing.register())
    compiled = torch.compile(model, backend="aot_eager")
    for lengths in ([7, 31, 48], [12, 3, 26, 40]):  # a new shape, as every packed batch has
        row = packing.Packing()(features(lengths))
        assert torch.allclose(qa_loss(compiled, row), qa_loss(model, row), atol=1e-5)


def test_packed_fast_path_trains_compiled_with_one_graph_for_every_row_length(monkeypatch):
    """The packed fast path's compile settings (its params file, through prepare_model): three training steps over
    two row lengths train as the eager model does, and the second length reuses the first's compilation (only the
    row's length is symbolic). On a CPU the graphs run through AOT autograd without code generation (inductor's
    C++ build takes minutes on a small machine; CUDA graphs are a GPU's)."""
    from labkit import config
    from labkit.train import prepare_model

    cfg = config.load("params/01_baseline_bert_squad/fast_path_packed.yaml", "smoke", {"data.pad_multiple": 16})
    pack = packing.Packing(multiple=cfg.data.pad_multiple, max_length=WIDTH)
    rows = [pack(features(lengths, seed)) for seed, lengths in enumerate(([7, 31, 48], [12, 3, 26], [30, 31, 30]))]
    assert [r["input_ids"].shape[1] for r in rows] == [96, 48, 96]  # two row lengths, then the first again
    graphs, asked, real_compile = [], {}, torch.compile

    def counting(gm, inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)

    def compile_on_cpu(model, mode=None, dynamic=None):
        asked.update(mode=mode, dynamic=dynamic)
        return real_compile(model, backend=counting, dynamic=dynamic)

    monkeypatch.setattr(torch, "compile", compile_on_cpu)
    trained = []
    try:
        for compile_it in (True, False):
            model = tiny_bert()
            model.set_attn_implementation(packing.register())
            torch._dynamo.reset()
            run = prepare_model(cfg, model) if compile_it else model
            trained.append(train_rows(run, model, rows))
    finally:
        torch._dynamo.reset()
    (compiled_losses, compiled_weight), (eager_losses, eager_weight) = trained
    assert asked == {"mode": "reduce-overhead", "dynamic": False} and len(graphs) == 1
    assert torch.allclose(compiled_losses, eager_losses, atol=1e-5)
    assert torch.allclose(compiled_weight, eager_weight, atol=1e-6) and not torch.allclose(compiled_weight, tiny_bert().qa_outputs.weight)


def test_packed_training_run_counts_samples_and_real_tokens(tmp_path):
    record = labkit.run("params/01_baseline_bert_squad/baseline.yaml", "smoke",
                        {"data.padding": "packed", "train.max_steps": 6, "train.log_every": 2,
                         "data.train_examples": 160, "data.val_examples": 16}, tmp_path)
    s, info = record["summary"], record["info"]
    assert record["status"] == "ok" and s["steps"] == 6
    assert info["attention"].startswith("SDPA with a block-diagonal mask")  # the CPU path
    assert info["flops_counted"].startswith("real tokens only")
    tokens_per_sample = s["tokens_per_s"] / s["samples_per_s"]  # real tokens of the batches trained on
    assert 10 < tokens_per_sample < record["params"]["data"]["max_length"]
    assert abs(tokens_per_sample - info["mean_real_tokens"]) < 0.5 * info["mean_real_tokens"]
    assert results.read(tmp_path / "smoke" / "01_baseline_bert_squad" / "baseline")["status"] == "ok"


def test_packed_with_dataparallel_is_refused():
    from labkit import config, preflight

    cfg = config.load("params/01_baseline_bert_squad/baseline.yaml", "smoke", {"data.padding": "packed"})
    cfg.train.strategy = "dp"
    with pytest.raises(config.ConfigError, match="DataParallel"):
        preflight.check_settings(cfg)


def test_squad_length_contexts_keep_questions_and_answers():
    """The generator's SQuAD-length option lengthens paragraphs only: same questions, answers still at their spans."""
    from labkit.data import squad

    short, long = (squad.flatten_squad(generate_squad(30, seed=2, context_length=c), c) for c in ("short", "squad"))
    assert [e["question"] for e in short] == [e["question"] for e in long]
    for e in long:
        for text, start in zip(e["answers"]["text"], e["answers"]["answer_start"]):
            assert e["context"][start:start + len(text)] == text
    words = lambda examples: sum(len(e["context"].split()) for e in examples) / len(examples)  # noqa: E731
    assert words(long) > 2.5 * words(short)
    assert generate_squad(5, seed=2) == generate_squad(5, seed=2, context_length="short")
    with pytest.raises(ValueError, match="context_length"):
        generate_squad(1, context_length="long")


def _fitted_batches(order: list[int], lengths: torch.Tensor, batch: int, ranks: int) -> list[torch.Tensor]:
    """Each rank's batches, as Lightning's DistributedSamplerWrapper deals the order out (rank r: every r-th index)."""
    steps = len(lengths) // (batch * ranks)
    whole = torch.tensor(order[: steps * batch * ranks])
    return [whole[r::ranks].view(steps, batch) for r in range(ranks)]


@pytest.mark.parametrize("ranks", [1, 2])
def test_token_budget_batches_fit_their_row_and_use_every_feature(ranks):
    g = torch.Generator().manual_seed(0)
    lengths = (torch.randn(1000, generator=g) * 90 + 171).clamp(10, 384).long()
    budget = packing.row_budget(lengths.tolist(), 16, 128)
    assert budget % 128 == 0 and budget > 16 * float(lengths.double().mean()) * 1.1
    sampler = packing.TokenBudgetSampler(lengths.tolist(), 16, budget, ranks=ranks, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(1000))  # every feature once an epoch
    for mine in _fitted_batches(order, lengths, 16, ranks):
        assert int(lengths[mine].sum(1).max()) < budget  # room for the padding segment in every batch
    random_batches = torch.randperm(1000, generator=g)[: 1000 // 16 * 16].view(-1, 16)
    assert int(lengths[random_batches].sum(1).max()) >= budget  # what the sampler had to rearrange
    sampler.set_epoch(1)
    assert list(sampler) != order  # a new epoch, new batches


def test_a_token_budget_too_small_is_refused_with_the_setting_to_change():
    lengths = [200] * 64
    with pytest.raises(ValueError, match="raise data.pack_tokens"):
        packing.TokenBudgetSampler(lengths, 16, 3000)  # 3,200 real tokens in every batch
    with pytest.raises(ValueError, match="does not fit a packed row of 150"):
        packing.TokenBudgetSampler(lengths, 1, 150)


def test_rows_of_a_fixed_length_train_as_the_padded_batch():
    model = tiny_bert()
    model.set_attn_implementation(packing.register())
    pack = packing.Packing(multiple=16, max_length=WIDTH, row_tokens=160)
    for lengths in ([7, 31, 48, 12, 3, 15], [5, 9, 2, 7, 23, 1]):
        batch = features(lengths)
        row = pack(batch)
        assert row["input_ids"].shape == (1, 160) and row["cu_seq_lens_q"].tolist()[-2:] == [sum(lengths), 160]
        # The kernel's bound holds every feature, and every piece of the padding as attention cuts it.
        pieces = packing.attention_segments(row["cu_seq_lens_q"], row["max_length_q"], row["max_padding"])
        assert row["max_length_q"] == WIDTH >= int(pieces.diff().max())  # the second row pads 113 tokens
        assert batch_size_of(row) == 6 and int(real_tokens_of(row)) == sum(lengths)
        loss, grads = loss_and_grads(model, row)
        padded_loss, padded_grads = loss_and_grads(model, default_collate(batch))
        assert torch.allclose(loss, padded_loss, atol=1e-5)
        for name, grad in padded_grads.items():
            assert torch.allclose(grads[name], grad, atol=1e-5, rtol=1e-4), name
    over = pack(features([48] * 4))  # 192 real tokens: more than the row holds, so padded to a multiple instead
    assert over["input_ids"].shape == (1, 208)


def test_packed_rows_of_one_length_train_through_the_kit(tmp_path):
    record = labkit.run("params/01_baseline_bert_squad/baseline.yaml", "smoke",
                        {"data.padding": "packed", "data.pack_tokens": "auto", "data.pad_multiple": 64,
                         "train.max_steps": 4, "train.log_every": 2, "data.train_examples": 160, "data.val_examples": 16}, tmp_path)
    s, info = record["summary"], record["info"]
    assert record["status"] == "ok" and s["steps"] == 4, record.get("error")
    row = info["packed_row_tokens"]
    assert row % 64 == 0 and row > record["params"]["train"]["batch_size"] * info["mean_real_tokens"]
    assert s["tokens_per_s"] / s["samples_per_s"] < row / record["params"]["train"]["batch_size"]


@pytest.mark.parametrize("overrides, words", [
    ({"data.pack_tokens": "auto"}, "set data.padding: packed, or remove data.pack_tokens"),
    ({"data.padding": "packed", "data.pack_tokens": "auto", "data.group_by_length": True}, "set one of them"),
    ({"data.padding": "packed", "data.pack_tokens": 100}, "set it above max_length"),
])
def test_pack_tokens_settings_that_cannot_work_are_refused(overrides, words):
    from labkit import config

    with pytest.raises(config.ConfigError, match=words):
        config.load("params/01_baseline_bert_squad/baseline.yaml", "smoke", overrides)


@pytest.mark.parametrize("scope", ["blocks", "regions"])
def test_each_layer_compiled_once_for_all_and_trained_as_eager(monkeypatch, scope):
    """model.compile_scope blocks and regions (through prepare_model): the model keeps its type and parameter names,
    the two encoder layers share one compilation (blocks: one graph for both; regions: one graph of the whole
    model in which both layers call one subgraph), and three steps train as the eager model does (aot_eager on a
    CPU, as above)."""
    from labkit import config
    from labkit.train import prepare_model

    cfg = config.load("params/01_baseline_bert_squad/fast_path_packed.yaml", "smoke",
                      {"data.pad_multiple": 16, "model.compile_scope": scope})
    pack = packing.Packing(multiple=cfg.data.pad_multiple, max_length=WIDTH)
    rows = [pack(features(lengths, seed)) for seed, lengths in enumerate(([7, 31, 48], [30, 31, 30], [12, 40, 33]))]
    assert {r["input_ids"].shape[1] for r in rows} == {96}
    graphs, real_compile = [], torch.compile

    def counting(gm, inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)

    monkeypatch.setattr(torch, "compile", lambda fn, mode=None, dynamic=None: real_compile(fn, backend=counting, dynamic=dynamic))
    trained = []
    try:
        for compile_it in (True, False):
            model = tiny_bert()
            model.set_attn_implementation(packing.register())
            names = [n for n, _ in model.named_parameters()]
            torch._dynamo.reset()
            run = prepare_model(cfg, model) if compile_it else model
            assert (run is model) == (scope == "blocks" or not compile_it) and [n for n, _ in model.named_parameters()] == names
            trained.append(train_rows(run, model, rows))
    finally:
        torch._dynamo.reset()
    (compiled_losses, compiled_weight), (eager_losses, eager_weight) = trained
    assert len(model.bert.encoder.layer) == 2 and len(graphs) == 1
    if scope == "regions":
        calls = [n for n in graphs[0].graph.nodes if n.target is torch.ops.higher_order.invoke_subgraph]
        assert len(calls) == 2 and len({n.args[0].target for n in calls}) == 1  # two layers, one subgraph
    assert torch.allclose(compiled_losses, eager_losses, atol=1e-5)
    assert torch.allclose(compiled_weight, eager_weight, atol=1e-6)


def test_compiled_blocks_hand_on_copies_where_no_backward_is_pending():
    """With CUDA graphs and no backward pending, the next call of a compiled block reuses the memory of the last
    one's outputs: each block's output is then copied out of it; in training it is passed on as it is."""
    from labkit.train import _outputs_out_of_graph_memory

    out = (torch.ones(3, requires_grad=True), None)
    assert _outputs_out_of_graph_memory(None, (), out) is out
    with torch.no_grad():
        copied = _outputs_out_of_graph_memory(None, (), out)
    assert copied[0] is not out[0] and copied[0].data_ptr() != out[0].data_ptr() and copied[1] is None
    assert torch.equal(copied[0], out[0])


def test_compile_scope_without_compile_is_refused():
    from labkit import config

    with pytest.raises(config.ConfigError, match="model.compile true"):
        config.load("params/01_baseline_bert_squad/baseline_bf16.yaml", "smoke", {"model.compile_scope": "blocks"})


def test_regions_on_a_torch_without_them_compile_the_whole_model(monkeypatch):
    """torch < 2.8 has no nested compile regions: compile_scope regions then compiles the whole model, unmarked."""
    from labkit import config
    from labkit.train import prepare_model

    monkeypatch.delattr(torch.compiler, "nested_compile_region", raising=False)
    monkeypatch.setattr(torch, "compile", lambda model, mode=None, dynamic=None: ("compiled", model))
    cfg = config.load("params/01_baseline_bert_squad/fast_path_padded.yaml", "smoke")
    assert cfg.model.compile_scope == "regions"
    model = tiny_bert()
    assert prepare_model(cfg, model) == ("compiled", model)
    assert all("forward" not in vars(block) for block in model.bert.encoder.layer)


@pytest.mark.skipif(not hasattr(torch.compiler, "nested_compile_region"), reason="nested compile regions need torch >= 2.8")
def test_regions_hand_on_an_input_a_block_returns_as_a_copy():
    """T5's blocks return the position bias they were given, and a nested region may not return an input as it is
    (torch raises "Encountered aliasing during higher order op tracing"), so the region returns a copy of it. A
    tiny T5 then compiles as one graph (aot_eager on a CPU) and its loss and gradients equal the eager model's.
    (transformers' output hooks mutate state inside T5's blocks, so torch inlines these regions into the graph.)"""
    from transformers import T5Config, T5ForConditionalGeneration

    from labkit.train import mark_repeated_blocks

    config = T5Config(vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4, dropout_rate=0.0,
                      decoder_start_token_id=0, pad_token_id=0)
    ids, labels = torch.randint(0, 64, (2, 10)), torch.randint(1, 64, (2, 5))
    graphs, grads = [], []

    def counting(gm, inputs):
        graphs.append(gm)
        return torch._dynamo.lookup_backend("aot_eager")(gm, inputs)

    try:
        for regions in (True, False):
            torch.manual_seed(0)
            model = T5ForConditionalGeneration(config)
            if regions:
                mark_repeated_blocks(model)
                torch._dynamo.reset()
            run = torch.compile(model, backend=counting) if regions else model
            loss = run(input_ids=ids, labels=labels).loss
            loss.backward()
            grads.append((loss.detach(), [p.grad for p in model.parameters()]))
    finally:
        torch._dynamo.reset()
    assert len(graphs) == 1
    (compiled_loss, compiled_grads), (eager_loss, eager_grads) = grads
    assert torch.allclose(compiled_loss, eager_loss, atol=1e-6)
    assert all((a is None and b is None) or torch.allclose(a, b, atol=1e-6) for a, b in zip(compiled_grads, eager_grads))
