"""No work spent on padding: dynamic padding, length-grouped batches and padding-free (packed) batches.

* ``DynamicPadding`` (a collate_fn) cuts each batch of right-padded features to its longest feature.
* ``LengthGroupedSampler`` orders an epoch so that a batch holds features of similar length, which
  leaves dynamic padding little to pad.
* ``TokenBudgetSampler`` orders an epoch so that every batch's real tokens fit a packed row of a fixed
  length (``data.pack_tokens``): one shape, so a compiled model compiles and records one CUDA graph.
* ``Packing`` (a collate_fn) concatenates a batch's features into one row of real tokens, then one
  segment of padding that lengthens the row to a multiple of ``multiple``. Position ids restart at 0 for
  each feature, label positions are moved to where the feature now starts, and ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` (the keyword arguments transformers' flash-attention integration and
  ``DataCollatorWithFlattening`` use) say where each segment begins; ``max_padding`` bounds the padding
  segment. The padding is what lets a compiled model replay CUDA graphs: the row takes one length
  (``row_tokens``, batches from ``TokenBudgetSampler``) or one of a few, ``cu_seq_lens`` always has batch + 2
  entries and ``max_length_q/k`` are a fixed bound, so each row length is one static shape.
  Attention keeps the padding to itself, no loss reads it, and no count includes it.
* ``ATTENTION`` is an attention implementation registered with transformers' ``AttentionInterface`` that
  keeps every token's attention inside its own feature: torch's variable-length flash kernel
  (``torch.nn.attention.varlen``, torch >= 2.10, CUDA, fp16/bf16), else SDPA with a block-diagonal mask
  (any device, any dtype; it computes the whole row's T x T scores, so it is for checking, not speed).
  Batches without ``cu_seq_lens_q`` (padded evaluation batches) take plain SDPA with their padding mask.
  The varlen kernel has no dropout, so packed batches are trained without attention-probability
  dropout on every path (hidden-state dropout stays).
"""
from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.utils.data import Sampler, default_collate

if TYPE_CHECKING:
    from labkit.config import Config

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # torch < 2.10
    varlen_attn = None
# How the varlen kernel is asked for causal attention: is_causal (torch 2.10, 2.11), a window of every earlier
# token and none later (later versions).
_CAUSAL = ({"is_causal": True} if varlen_attn is not None and "is_causal" in inspect.signature(varlen_attn).parameters
           else {"window_size": (-1, 0)})

ATTENTION = "labkit_packed"
IGNORE = -100  # the label cross-entropy skips (PyTorch's and transformers' ignore_index)


# ---------------------------------------------------------------- batches

def padded_width(longest: int, multiple: int, most: int | None = None) -> int:
    """Dynamic padding's width: a batch's ``longest`` rounded up to a multiple of ``multiple`` (data.pad_multiple),
    but not past ``most`` (max_length) where it is set. Batches then come in a few shapes, not one per length: a
    compiled model compiles (and records a CUDA graph of) each shape it meets, so a few shapes cost a few compilations."""
    rounded = -(-longest // multiple) * multiple
    return rounded if most is None else max(longest, min(rounded, most))


class DynamicPadding:
    """collate_fn: stack right-padded features, then cut the batch to its longest feature rounded up to a
    multiple of ``multiple`` (8: whole tensor-core tiles)."""

    def __init__(self, multiple: int = 8):
        self.multiple = multiple

    def __call__(self, features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        batch = default_collate(features)
        width = padded_width(int(batch["attention_mask"].sum(1).max()), self.multiple, batch["attention_mask"].shape[1])
        return {k: v[:, :width].contiguous() if v.dim() == 2 else v for k, v in batch.items()}


class Packing:
    """collate_fn: a batch of right-padded features -> one row (batch dimension 1) of their real tokens,
    followed by one padding segment of 1 to ``multiple`` tokens that makes the row's length a multiple of
    ``multiple``.

    Per-token keys are concatenated without the features' own padding (``attention_mask`` is dropped:
    attention is confined to each segment instead), then the padding segment is appended (zeros, position
    0); ``position_ids`` count 0, 1, ... within each feature; the per-feature keys named in
    ``position_keys`` (token indices into the feature, e.g. QA start/end labels) are offset to the
    feature's start in the row; other per-feature keys are stacked. ``max_length_q/k`` are ``max_length``, a
    fixed upper bound on every feature (the varlen kernel accepts a bound) rather than the batch's longest, so
    that they do not change from batch to batch. The padding segment may be longer: the attention function cuts
    it into pieces no longer than the bound (``attention_segments``).

    ``causal_labels`` names a causal language model's per-token labels (GPT-2's ``labels``, which the model shifts
    by one): the padding and each feature's first token are labelled ``IGNORE``, so that no token learns to predict
    the first token of the next feature, as no token of a padded batch predicts the first token of its row.

    With ``row_tokens`` every row is that long (the padding segment fills it), unless a batch's features do not
    fit, which ``TokenBudgetSampler`` rules out for training batches; such a batch (a validation batch) is padded
    to a multiple of ``multiple`` instead.

    The padding segment is never empty, so the row always has len(features) + 1 segments: the last
    is padding (``batch_size_of`` and ``real_tokens_of`` in labkit.tasks skip it). A segment of its own
    rather than tokens past the last feature: the flash kernel leaves tokens outside every segment
    unwritten, and garbage there would reach the weight gradients (0 x NaN is NaN).
    """

    def __init__(self, position_keys: Sequence[str] = ("start_positions", "end_positions"), multiple: int = 8,
                 max_length: int = 512, row_tokens: int | None = None, causal_labels: str | None = None):
        self.position_keys, self.multiple, self.max_length = tuple(position_keys), multiple, max_length
        self.row_tokens, self.causal_labels = row_tokens, causal_labels

    def __call__(self, features: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor | int]:
        lengths = [int(f["attention_mask"].sum()) for f in features]
        if max(lengths) > self.max_length:
            raise ValueError(f"a feature of {max(lengths)} tokens is longer than max_length={self.max_length}")
        total = sum(lengths)
        if self.row_tokens is not None and total < self.row_tokens:
            padding = self.row_tokens - total
        else:
            padding = -(-(total + 1) // self.multiple) * self.multiple - total  # at least one token
        starts = torch.tensor([0, *itertools.accumulate(lengths), total + padding], dtype=torch.int32)
        row: dict[str, torch.Tensor | int] = {}
        for key, value in features[0].items():
            if key == "attention_mask":
                continue
            if value.dim() == 1:
                row[key] = torch.cat([*(f[key][:n] for f, n in zip(features, lengths)), value.new_zeros(padding)])[None]
            else:
                row[key] = torch.stack([f[key] for f in features])
                if key in self.position_keys:
                    row[key] = row[key] + starts[:-2].to(row[key].dtype)
        if self.causal_labels is not None:
            labels = row[self.causal_labels]
            labels[0, starts[:-1].long()] = IGNORE  # each feature's first token and the padding's
            labels[0, total:] = IGNORE
        row["position_ids"] = torch.cat([*(torch.arange(n) for n in lengths), torch.zeros(padding, dtype=torch.long)])[None]
        row.update(cu_seq_lens_q=starts, cu_seq_lens_k=starts, max_length_q=self.max_length, max_length_k=self.max_length,
                   max_padding=max(self.multiple, self.row_tokens or 0))  # a fixed bound: how many pieces it may need
        return row


def attention_segments(cu_seq_lens: torch.Tensor, bound: int, max_padding: int) -> torch.Tensor:
    """The row's segments as the attention kernel gets them: the features', then the padding segment cut into
    pieces of at most ``bound`` tokens, as many as padding of ``max_padding`` tokens would need (the last ones
    empty).

    The varlen kernel sizes its grid by the bound: blocks of 128 tokens up to it, for every segment and head,
    most of which find their segment shorter and stop. A bound as long as the padding can be (a 6,144-token row
    of SQuAD features) launches some 16 times the blocks that one of the longest feature (384) does. A fixed
    number of pieces, whatever the row's length, keeps one compiled graph for every row length."""
    pieces = -(-max_padding // bound)
    ends = torch.arange(1, pieces + 1, device=cu_seq_lens.device, dtype=cu_seq_lens.dtype) * bound + cu_seq_lens[-2]
    return torch.cat([cu_seq_lens[:-1], torch.minimum(ends, cu_seq_lens[-1])])


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


def fixed_rows(cfg: "Config", lengths: Sequence[int]) -> tuple[int | None, "TokenBudgetSampler | None"]:
    """data.pack_tokens: the length of every packed training row, and the sampler whose batches fit it (per rank,
    over train.devices x num_nodes ranks); (None, None) where rows are padded to a multiple instead."""
    d, t = cfg.data, cfg.train
    if d.pack_tokens is None:
        return None, None
    row = row_budget(lengths, t.batch_size, d.pad_multiple) if d.pack_tokens == "auto" else d.pack_tokens
    return row, TokenBudgetSampler(lengths, t.batch_size, row, t.devices * t.num_nodes, seed=t.seed)


def row_budget(lengths: Sequence[int], batch_size: int, multiple: int) -> int:
    """data.pack_tokens 'auto': a batch's mean real tokens plus a tenth (room to balance batches without many swaps)
    and the padding segment's token, rounded up to a multiple of ``multiple``."""
    need = float(torch.as_tensor(lengths, dtype=torch.float64).mean()) * batch_size * 1.1 + 1
    return int(-(-need // multiple) * multiple)


class TokenBudgetSampler(Sampler[int]):
    """Every index once per epoch, ordered so that each rank's batch of ``batch_size`` features has fewer than
    ``row_tokens`` real tokens: it fits a packed row of ``row_tokens`` with its padding segment.

    A random permutation is cut into batches (``ranks`` of them for each optimizer step); while a batch holds too
    many tokens, its longest feature changes places with the shortest feature of the batch with the fewest tokens.
    Batches stay random in content, and every epoch (``set_epoch``) draws new ones. A remainder that fills no whole
    step goes last, where the training loader's drop_last leaves it out. Under several ranks Lightning's
    ``DistributedSamplerWrapper`` gives rank r every r-th index, so the indices of one step are interleaved: rank r's
    batch is one of them, whole.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, row_tokens: int, ranks: int = 1, seed: int = 0):
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size, self.row_tokens, self.ranks, self.seed, self.epoch = batch_size, row_tokens, ranks, seed, 0
        if int(self.lengths.max()) >= row_tokens:
            raise ValueError(f"a feature of {int(self.lengths.max())} tokens does not fit a packed row of {row_tokens}: "
                             "raise data.pack_tokens")
        self._batches(0)  # a budget too small fails here, before training

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def _batches(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(steps x ranks x batch_size indices whose batches fit, the remainder)."""
        g = torch.Generator().manual_seed(self.seed + epoch)
        order = torch.randperm(len(self.lengths), generator=g)
        per_step = self.batch_size * self.ranks
        steps = len(order) // per_step
        batches, rest = order[: steps * per_step].view(steps * self.ranks, self.batch_size).clone(), order[steps * per_step:]
        sizes = self.lengths[batches]  # tokens of each feature, batch by batch
        for _ in range(4 * len(batches) + 1):  # each exchange lowers the fullest batch; a budget it cannot meet stops it
            sums = sizes.sum(1)
            if not len(batches) or int(sums.max()) < self.row_tokens:
                return batches.view(steps, self.ranks, self.batch_size), rest
            full, light = int(sums.argmax()), int(sums.argmin())
            a, b = int(sizes[full].argmax()), int(sizes[light].argmin())
            if sizes[full, a] <= sizes[light, b]:
                break
            batches[full, a], batches[light, b] = int(batches[light, b]), int(batches[full, a])
            sizes[full, a], sizes[light, b] = int(sizes[light, b]), int(sizes[full, a])
        mean = float(self.lengths.double().mean()) * self.batch_size
        raise ValueError(f"batches of {self.batch_size} features average {mean:.0f} real tokens, and they cannot all be "
                         f"made to fit packed rows of {self.row_tokens}: raise data.pack_tokens (or set it to 'auto')")

    def __iter__(self):
        batches, rest = self._batches(self.epoch)
        # step by step, position by position, rank by rank: rank r's share of the order is its batch of each step
        return iter(torch.cat([batches.transpose(1, 2).flatten(), rest]).tolist())


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
    causal = bool(getattr(module, "is_causal", False))  # a decoder's self-attention (GPT-2) sees only earlier tokens
    bound = kwargs["max_length_q"]
    cu = attention_segments(cu, bound, kwargs["max_padding"])  # self-attention: the same segments for q and k
    if uses_varlen(query.device, query.dtype) and default_scale:
        q, k, v = (x[0].transpose(0, 1) for x in (query, key, value))  # (tokens, heads, head_dim)
        out = varlen_attn(q, k, v, cu, cu, bound, bound, **(_CAUSAL if causal else {}))
        return out[None], None
    segments = segment_ids(cu, query.shape[2])
    mask = segments[:, None] == segments[None, :]
    if causal:
        mask = mask.tril()
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
