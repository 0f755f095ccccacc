"""What the forward passes read: texts cut to what the selected rows need, packed into padded batches, and the
keyword arguments of one pass (shared by every capture backend)."""

from __future__ import annotations

import dataclasses

import torch

from .models import Model
from .select import TokenizedText

__all__ = ["TOKENS_PER_BATCH", "forward_kwargs", "forward_prefixes"]

#: Default token budget per forward pass (batch size x padded length) when ``batch_size`` is None.
TOKENS_PER_BATCH = 4096


def forward_prefixes(model: Model, tokenized: list[TokenizedText], chosen: list) -> list[TokenizedText]:
    """What the forward passes read: for a causal LM each text only up to its last selected token (a causal
    model's states there do not depend on later tokens, so the rows are the same and the passes shorter: e.g.
    punctuation-clusters' 10 tokens after each mark); a masked LM reads every text whole. A text with no
    selected token keeps one token."""
    if model.is_masked_lm:
        return tokenized
    out = []
    for t, pos in zip(tokenized, chosen):
        keep = max(int(max(pos)) + 1 if len(pos) else 1, 1)
        if keep >= len(t.ids):
            out.append(t)
        else:
            out.append(dataclasses.replace(t, ids=t.ids[:keep], special=t.special[:keep],
                                           offsets=t.offsets[:keep] if t.offsets is not None else None))
    return out


def forward_kwargs(model: Model, ids: torch.Tensor, mask: torch.Tensor) -> dict:
    """Keyword arguments of one forward pass over a padded batch (shared by every capture backend)."""
    kwargs = {"input_ids": ids, "attention_mask": mask}
    if model.adapter.position_ids:  # else the model derives positions from the mask or ids itself (ALiBi, RoBERTa)
        kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    if not model.is_masked_lm:
        kwargs["use_cache"] = False
    return kwargs


def _batches(lengths: list[int], batch_size: int | None) -> list[range]:
    """Consecutive runs of texts so each batch's rows form one contiguous range of the output."""
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, not {batch_size}")
    out, start = [], 0
    while start < len(lengths):
        end, longest = start + 1, lengths[start]  # every batch takes at least one text: the loop always ends
        while end < len(lengths):
            longest_next = max(longest, lengths[end])
            size = end - start + 1
            if batch_size is not None:
                if size > batch_size:
                    break
            elif size * longest_next > TOKENS_PER_BATCH:
                break
            longest, end = longest_next, end + 1
        out.append(range(start, end))
        start = end
    return out


def _pad_batch(model: Model, items: list[TokenizedText], side: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    pad_id = model.tokenizer.pad_token_id
    if pad_id is None:
        pad_id = model.tokenizer.eos_token_id if model.tokenizer.eos_token_id is not None else 0
    longest = max(len(t.ids) for t in items)
    ids = torch.full((len(items), longest), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(items), longest), dtype=torch.long)
    for b, t in enumerate(items):
        n = len(t.ids)
        cols = slice(longest - n, longest) if side == "left" else slice(0, n)
        ids[b, cols] = torch.tensor(t.ids)
        mask[b, cols] = 1
    return ids.to(device), mask.to(device)
