"""No work spent on padding: dynamic padding, length-grouped batches and padding-free (packed) batches.

* ``DynamicPadding`` (a collate_fn) cuts each batch of right-padded features to its longest feature.
* ``LengthGroupedSampler`` orders an epoch so that a batch holds features of similar length, which
  leaves dynamic padding little to pad.
* ``Packing`` (a collate_fn) concatenates a batch's features into one row of real tokens only. Position
  ids restart at 0 for each feature, label positions are moved to where the feature now starts, and
  ``cu_seq_lens_q/k`` and ``max_length_q/k`` (the keyword arguments transformers' flash-attention
  integration and ``DataCollatorWithFlattening`` use) say where each feature begins.
* ``ATTENTION`` is an attention implementation registered with transformers' ``AttentionInterface`` that
  keeps every token's attention inside its own feature: torch's variable-length flash kernel
  (``torch.nn.attention.varlen``, torch >= 2.10, CUDA, fp16/bf16), else SDPA with a block-diagonal mask
  (any device, any dtype; it computes the whole row's T x T scores, so it is for checking, not speed).
  Batches without ``cu_seq_lens_q`` (padded evaluation batches) take plain SDPA with their padding mask.
  The varlen kernel has no dropout, so packed batches are trained without attention-probability
  dropout on every path (hidden-state dropout stays).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler, default_collate

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10
    varlen_attn = None

ATTENTION = "labkit_packed"


# ---------------------------------------------------------------- batches

class DynamicPadding:
    """collate_fn: stack right-padded features, then cut the batch to its longest feature rounded up to a
    multiple of ``multiple`` (8: whole tensor-core tiles)."""

    def __init__(self, multiple: int = 8):
        self.multiple = multiple

    def __call__(self, features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = default_collate(features)
        full = batch["attention_mask"].shape[1]
        width = min(-(-int(batch["attention_mask"].sum(1).max()) // self.multiple) * self.multiple, full)
        return {k: v[:, :width].contiguous() if v.dim() == 2 else v for k, v in batch.items()}


class Packing:
    """collate_fn: a batch of right-padded features -> one row (batch dimension 1) of their real tokens.

    Per-token keys are concatenated without their padding (``attention_mask`` is dropped: nothing is
    padded); ``position_ids`` count 0, 1, ... within each feature; the per-feature keys named in
    ``position_keys`` (token indices into the feature, e.g. QA start/end labels) are offset to the
    feature's start in the row; other per-feature keys are stacked.
    """

    def __init__(self, position_keys: Sequence[str] = ("start_positions", "end_positions")):
        self.position_keys = tuple(position_keys)

    def __call__(self, features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor | int]:
        lengths = [int(f["attention_mask"].sum()) for f in features]
        starts = torch.tensor([0, *itertools.accumulate(lengths)], dtype=torch.int32)
        row: dict[str, torch.Tensor | int] = {}
        for key, value in features[0].items():
            if key == "attention_mask":
                continue
            if value.dim() == 1:
                row[key] = torch.cat([f[key][:n] for f, n in zip(features, lengths)])[None]
            else:
                row[key] = torch.stack([f[key] for f in features])
                if key in self.position_keys:
                    row[key] = row[key] + starts[:-1].to(row[key].dtype)
        row["position_ids"] = torch.cat([torch.arange(n) for n in lengths])[None]
        row.update(cu_seq_lens_q=starts, cu_seq_lens_k=starts, max_length_q=max(lengths), max_length_k=max(lengths))
        return row


def segment_ids(cu_seq_lens: torch.Tensor, total: int) -> torch.Tensor:
    """Which packed sequence each of the row's ``total`` tokens belongs to (0, 0, 0, 1, 1, 2, ...)."""
    positions = torch.arange(total, device=cu_seq_lens.device, dtype=cu_seq_lens.dtype)
    return torch.searchsorted(cu_seq_lens[1:], positions, right=True)


def segment_logsumexp(values: torch.Tensor, segments: torch.Tensor, count: int) -> torch.Tensor:
    """logsumexp of ``values`` (1-D) within each of ``count`` segments: a softmax's normaliser per packed
    sequence, so a packed row's per-sequence cross-entropy equals the padded batch's (padding masked)."""
    top = torch.full((count,), float("-inf"), device=values.device, dtype=values.dtype)
    top = top.scatter_reduce(0, segments, values, "amax").detach()  # for stability only: the gradient cancels
    total = torch.zeros_like(top).index_add(0, segments, (values - top[segments]).exp())
    return top + total.log()


class LengthGroupedSampler(Sampler[int]):
    """Every index exactly once per epoch, in groups of ``group_size`` indices of similar length.

    A random permutation is cut into megabatches of ``megabatch_groups`` groups, each megabatch is sorted
    by length and cut into groups, and the groups are shuffled (the one holding the longest feature goes
    first, so an out-of-memory batch shows at once; a short remainder goes last). Batches stay random in
    content and order while a batch's features are alike in length. Under several ranks make
    ``group_size`` the batch per rank x ranks: Lightning's ``DistributedSamplerWrapper`` gives rank r
    every r-th index, so each rank's batch comes from the same group. ``set_epoch`` reshuffles.
    """

    def __init__(self, lengths: Sequence[int], group_size: int, seed: int = 0, megabatch_groups: int = 50):
        if group_size < 1:
            raise ValueError(f"group_size must be at least 1, got {group_size}")
        self.lengths = torch.as_tensor(lengths)
        self.group_size, self.seed, self.megabatch_groups, self.epoch = group_size, seed, megabatch_groups, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=g)
        mega = self.group_size * self.megabatch_groups
        groups = []
        for chunk in order.split(mega):
            chunk = chunk[torch.argsort(self.lengths[chunk], descending=True, stable=True)]
            groups += list(chunk.split(self.group_size))
        full = [groups[i] for i in torch.randperm(len(groups), generator=g).tolist() if len(groups[i]) == self.group_size]
        short = [grp for grp in groups if len(grp) < self.group_size]
        if full:
            longest = max(range(len(full)), key=lambda i: int(self.lengths[full[i][0]]))
            full[0], full[longest] = full[longest], full[0]
        return iter(torch.cat(full + short).tolist() if groups else [])


# ---------------------------------------------------------------- attention

def uses_varlen(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether packed attention runs torch's variable-length flash kernel here (else SDPA with a mask)."""
    return varlen_attn is not None and device.type == "cuda" and dtype in (torch.float16, torch.bfloat16)


def kernel_name(cuda: bool, half: bool) -> str:
    if uses_varlen(torch.device("cuda" if cuda else "cpu"), torch.bfloat16 if half else torch.float32):
        return "torch varlen flash attention (torch.nn.attention.varlen)"
    why = "torch < 2.10" if varlen_attn is None else "CPU" if not cuda else "fp32 (flash needs fp16/bf16)"
    return f"SDPA with a block-diagonal mask ({why}: attention over the whole packed row, masked)"


def packed_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs) -> tuple[torch.Tensor, None]:
    """transformers attention function: q, k, v are (batch, heads, tokens, head_dim); returns
    (batch, tokens, heads, head_dim)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    cu = kwargs.get("cu_seq_lens_q")
    if cu is None:  # a padded batch: SDPA with its padding mask
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if query.shape[0] != 1:
        raise ValueError(f"a packed batch is one row; got {query.shape[0]} rows with cu_seq_lens_q")
    default_scale = scaling is None or abs(scaling - query.shape[-1] ** -0.5) < 1e-12  # the varlen kernel's scale
    if uses_varlen(query.device, query.dtype) and default_scale:
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (tokens, heads, head_dim)
        out = varlen_attn(q, k, v, cu, kwargs.get("cu_seq_lens_k", cu), kwargs["max_length_q"], kwargs["max_length_k"])
        return out[None], None
    segments = segment_ids(cu, query.shape[2])
    mask = segments[:, None] == segments[None, :]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2), None


def register() -> str:
    """Register ``ATTENTION`` with transformers (idempotent); returns its name for ``set_attn_implementation``.
    Its mask function is SDPA's: packed batches carry no attention mask and get none, padded batches get
    their padding mask."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(ATTENTION, packed_attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)
    return ATTENTION
