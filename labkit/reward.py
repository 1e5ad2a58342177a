"""Dialogue quality as the original lab 06 measured it (its ``src/eval.py``).

For each test prompt, the fine-tuned and the untuned model each sample an answer after
``Human: <prompt>\\n\\nAssistant: `` (100 new tokens, temperature 0.9, top-k 200, cut at end-of-text); a reward
model scores every (prompt, answer) pair, and the quality is the share of prompts whose fine-tuned answer scores
at least as high as the untuned one's. The reward model is OpenAssistant/reward-model-deberta-v3-large-v2 from the
hub or a local folder (``measure.reward_model``); ``random`` builds a tiny DeBERTa-v2 from its config with random
weights and an offline tokenizer, so the same path runs without a download (its scores mean nothing).
"""
from __future__ import annotations

import torch
from torch import nn

from labkit.config import MeasureConfig

REWARD_HUB = "OpenAssistant/reward-model-deberta-v3-large-v2"
PROMPT = "Human: {prompt}\n\nAssistant: "
NEW_TOKENS, TEMPERATURE, TOP_K = 100, 0.9, 200  # the original's generate_gpt2


def load_reward_model(cfg: MeasureConfig, texts: list[str]) -> tuple[nn.Module, object]:
    """The reward model and its tokenizer; ``texts`` train the offline tokenizer of the random one."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DebertaV2Config

    if cfg.reward_model == "random":
        from labkit.data.tokenizers import train_wordpiece

        tokenizer = train_wordpiece(texts, vocab_size=2000)
        config = DebertaV2Config(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=128, num_labels=1, max_position_embeddings=512)
        return AutoModelForSequenceClassification.from_config(config).eval(), tokenizer
    source = cfg.reward_model_path if cfg.reward_model == "local" else REWARD_HUB
    try:
        return AutoModelForSequenceClassification.from_pretrained(source).eval(), AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise OSError(f"could not load the reward model from '{source}' ({err}). Without internet, download it once "
                      "elsewhere and set measure.reward_model: local with measure.reward_model_path") from None


@torch.no_grad()
def answers(model: nn.Module, tokenizer, prompts: list[str], seed: int = 0) -> list[str]:
    """Sampled answers, one prompt at a time, stopped at the tokenizer's end-of-text."""
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    out = []
    for prompt in prompts:
        ids = tokenizer(PROMPT.format(prompt=prompt), return_tensors="pt")["input_ids"].to(device)
        generated = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS,
                                   do_sample=True, temperature=TEMPERATURE, top_k=TOP_K,
                                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        out.append(tokenizer.decode(generated[0, ids.shape[1]:], skip_special_tokens=True))
    return out


@torch.no_grad()
def scores(reward: nn.Module, tokenizer, prompts: list[str], replies: list[str]) -> list[float]:
    """The reward model's score of each (prompt, answer) pair."""
    device = next(reward.parameters()).device
    return [reward(**tokenizer(q, a, return_tensors="pt", truncation=True, max_length=512).to(device)).logits[0, 0].item()
            for q, a in zip(prompts, replies)]


def dialogue_quality(tuned: list[float], untuned: list[float]) -> float:
    """Share of prompts whose fine-tuned answer scores at least as high as the untuned one's (the original's
    ``score_a <= score_b``)."""
    return sum(t >= u for t, u in zip(tuned, untuned)) / len(tuned)


def evaluate(cfg: MeasureConfig, tuned: nn.Module, untuned: nn.Module, tokenizer, prompts: list[str]) -> tuple[dict, list]:
    """The summary figures and, per prompt, both answers with their scores."""
    replies = {"tuned": answers(tuned, tokenizer, prompts), "untuned": answers(untuned, tokenizer, prompts)}
    reward, reward_tokenizer = load_reward_model(cfg, prompts + replies["tuned"] + replies["untuned"])
    reward.to(next(tuned.parameters()).device)
    scored = {k: scores(reward, reward_tokenizer, prompts, v) for k, v in replies.items()}
    rows = [{"prompt": p, **{k: replies[k][i] for k in replies}, **{f"{k}_score": scored[k][i] for k in scored}}
            for i, p in enumerate(prompts)]
    summary = {"dialogue_quality": dialogue_quality(scored["tuned"], scored["untuned"]), "reward_prompts": len(prompts),
               "reward_tuned_mean": sum(scored["tuned"]) / len(prompts),
               "reward_untuned_mean": sum(scored["untuned"]) / len(prompts)}
    return summary, rows
