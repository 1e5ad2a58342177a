"""Random weights without torch's wasted first draw: the same distribution of weights, drawn once."""
import pytest
import torch
from torch import nn
from transformers import (AutoModel, AutoModelForCausalLM, AutoModelForQuestionAnswering, AutoModelForSeq2SeqLM, BertConfig,
                          GPT2Config, RobertaConfig, T5Config)

from labkit.models import without_default_init

SMALL = {"bert": (AutoModelForQuestionAnswering, BertConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=1024)),
         "t5": (AutoModelForSeq2SeqLM, T5Config(vocab_size=4096, d_model=256, d_ff=1024, num_layers=2, num_heads=4, decoder_start_token_id=0)),
         "gpt2": (AutoModelForCausalLM, GPT2Config(vocab_size=4096, n_embd=256, n_layer=2, n_head=4)),
         "roberta": (AutoModel, RobertaConfig(vocab_size=4096, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                                              intermediate_size=1024))}


@pytest.mark.parametrize("family", sorted(SMALL))
def test_each_weight_is_drawn_from_the_same_distribution(family):
    auto, config = SMALL[family]
    torch.manual_seed(0)
    usual = dict(auto.from_config(config).named_parameters())
    with without_default_init():
        torch.manual_seed(1)
        model = auto.from_config(config)
    once = dict(model.named_parameters())
    assert usual.keys() == once.keys()
    padded = [m for m in model.modules() if isinstance(m, nn.Embedding) and m.padding_idx is not None]
    assert all(torch.count_nonzero(m.weight[m.padding_idx]) == 0 for m in padded)  # the padding row stays zero
    for name, weight in once.items():
        assert torch.isfinite(weight).all(), name
        before = usual[name].detach().float()
        if before.numel() == 1 or before.std() == 0:  # constants: zero biases, norms' unit scales
            assert torch.equal(weight, usual[name]), name
            continue
        if before.numel() < 512:  # too few values to compare a spread (a table of two token types)
            continue
        assert weight.float().std().item() == pytest.approx(before.std().item(), rel=0.1), name
        assert abs(weight.float().mean().item() - before.mean().item()) < 0.1 * before.std().item(), name


def test_layers_draw_again_after_the_context_even_when_it_failed():
    with pytest.raises(RuntimeError), without_default_init():
        assert torch.count_nonzero(nn.Linear(64, 64, bias=False).weight) >= 0  # not drawn: whatever memory held
        raise RuntimeError("construction failed")
    torch.manual_seed(0)
    drawn = nn.Linear(64, 64).weight
    assert drawn.abs().max() <= 1 / 8 and drawn.std() > 0.03  # torch's kaiming uniform bound, 1/sqrt(64)
