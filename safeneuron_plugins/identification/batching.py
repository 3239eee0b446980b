"""Token batches: tokenizing, grouping prompts of similar length, padding, the model's input device.

The one padding routine of the package: identification pads on the right (pooling skips the
padding), generation on the left (every reply starts at the same column).
"""

from __future__ import annotations

import logging

import torch
from torch import nn


def tokenize(tokenizer, texts: list[str], max_length: int | None, templated: bool, *,
             option: str = "safeneuron_max_length") -> list[list[int]]:
    """Token ids of each text; no special tokens when a chat template already added them.

    A text longer than ``max_length`` tokens is cut from the LEFT: its end, which holds the request and the
    assistant turn of a chat-formatted prompt (where a refusal starts), is kept. One WARNING says how many
    texts were cut and by how much, naming ``option`` (the limit). ``max_length`` None: no truncation."""
    enc = tokenizer(texts, add_special_tokens=not templated)
    seqs = [list(ids) for ids in enc["input_ids"]]
    if max_length is None:
        return seqs
    cut = [len(s) - max_length for s in seqs if len(s) > max_length]
    if cut:
        logging.getLogger("safeneuron").warning(
            "%d of %d prompts are longer than %s=%d tokens and were cut from the left (by %d to %d tokens, %d in "
            "all), keeping their end with the request and the assistant turn; raise %s to keep them whole.",
            len(cut), len(seqs), option, max_length, min(cut), max(cut), sum(cut), option)
    return [s[-max_length:] if len(s) > max_length else s for s in seqs]


def length_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, to fail fast on memory)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def pad_batch(seqs: list[list[int]], pad_id: int, device=None, *,
              side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Pad token id lists into input_ids and attention_mask tensors (on ``device`` when given);
    ``side`` "right" (identification) or "left" (generation)."""
    if side not in ("left", "right"):
        raise ValueError(f"side must be left or right, got {side!r}")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        cols = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def pad_id_of(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if tid is not None:
            return int(tid)
    return 0


def input_device(model: nn.Module) -> torch.device:
    emb = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        return emb.weight.device
    return next(model.parameters()).device
