"""The SimCLS scorer (notebook 09): a RoBERTa encoder that scores a candidate summary by the cosine
similarity of its ``<s>`` embedding with the source document's."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModel, RobertaConfig

from labkit.config import ModelConfig
from labkit.models import apply_checkpointing, build_hf, presets

# RobertaConfig's defaults are BERT-base's sizes; roberta-base adds its 50,265-token vocabulary, 514 positions
# (512 plus the padding offset) and one token type. tiny is for CPU smoke runs.
ROBERTA = dict(max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0,
               eos_token_id=2)
PRESETS = presets.ROBERTA
ROBERTA_VOCAB = 50265


class Scorer(nn.Module):
    """SimCLS's scorer: one encoder embeds the document, the reference and every candidate (the ``<s>`` token's
    last hidden state); a summary's score is the cosine similarity of its embedding with the document's.

    forward(input_ids (B, S), candidate_ids (B, C, L), reference_ids (B, R) or None)
        -> {"scores": (B, C), "reference_scores": (B,)}; padding (``pad_token_id``) is masked out.
    """

    def __init__(self, encoder: nn.Module, pad_token_id: int):
        super().__init__()
        self.encoder, self.pad_token_id = encoder, pad_token_id

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=ids, attention_mask=ids != self.pad_token_id).last_hidden_state[:, 0]

    def forward(self, input_ids: torch.Tensor, candidate_ids: torch.Tensor,
                reference_ids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        document = self.embed(input_ids)
        batch, candidates, length = candidate_ids.shape
        summaries = self.embed(candidate_ids.view(batch * candidates, length)).view(batch, candidates, -1)
        out = {"scores": F.cosine_similarity(summaries, document.unsqueeze(1), dim=-1)}
        if reference_ids is not None:
            out["reference_scores"] = F.cosine_similarity(self.embed(reference_ids), document, dim=-1)
        return out


def build(cfg: ModelConfig, vocab_size: int, pad_token_id: int) -> tuple[Scorer, dict]:
    """The scorer as ``cfg`` says: hub / local RoBERTa weights, or the preset's architecture with random weights
    and ``vocab_size`` rows (roberta-base's 50,265 for the real sizes, so the embedding costs what it does)."""
    if cfg.preset not in PRESETS:
        raise ValueError(f"model.preset '{cfg.preset}' is not a RoBERTa preset; choose one of {sorted(PRESETS)}")
    hub_name, sizes = PRESETS[cfg.preset]
    rows = vocab_size if cfg.preset == "tiny" else max(vocab_size, ROBERTA_VOCAB)
    # No pooler: SimCLS reads the <s> hidden state itself, and an unused pooler would hold parameters without gradients.
    encoder, info = build_hf(AutoModel, cfg, hub_name, RobertaConfig(vocab_size=rows, **ROBERTA, **sizes))
    encoder.pooler = None
    info["checkpointed_blocks"] = apply_checkpointing(encoder.encoder.layer, cfg.checkpointing, cfg.checkpoint_every)
    c = encoder.config
    info.update(layers=c.num_hidden_layers, hidden=c.hidden_size, vocab_size=c.vocab_size)
    return Scorer(encoder, pad_token_id), info


def non_embedding_params(scorer: Scorer) -> int:
    """Parameters of the encoder's layers (the embeddings are counted apart, as for FLOPs)."""
    return sum(p.numel() for p in scorer.encoder.encoder.parameters())
