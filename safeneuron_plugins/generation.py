"""Batched greedy generation (left padding, KV cache) used by the attack, make-pairs and checks."""

from __future__ import annotations

import torch
from torch import nn

from .activations import input_device, length_batches
from .prompts import format_prompts
from .quantization import unpacked_bnb_weights


def generate(model: nn.Module, tokenizer, prompts: list[str], *, max_new_tokens: int = 64,
             batch_size: int = 16, system_prompt: str | None = None, max_length: int = 512,
             desc: str = "generating", progress: bool = True) -> list[str]:
    """Greedy replies to ``prompts`` (chat-formatted), in the input order."""
    from tqdm.auto import tqdm

    texts = format_prompts(tokenizer, prompts, system_prompt)
    templated = getattr(tokenizer, "chat_template", None) is not None
    enc = tokenizer(texts, add_special_tokens=not templated, truncation=True, max_length=max_length)
    seqs = [list(ids) for ids in enc["input_ids"]]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = input_device(model)
    replies: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress, dynamic_ncols=True) as bar:
            for group in length_batches([len(s) for s in seqs], batch_size):
                width = max(len(seqs[i]) for i in group)
                ids = torch.full((len(group), width), pad, dtype=torch.long)
                mask = torch.zeros((len(group), width), dtype=torch.long)
                for row, i in enumerate(group):  # left padding: the reply starts at the same column
                    ids[row, width - len(seqs[i]):] = torch.tensor(seqs[i])
                    mask[row, width - len(seqs[i]):] = 1
                with torch.inference_mode(), unpacked_bnb_weights(model):
                    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                         max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                         pad_token_id=pad, temperature=None, top_p=None, top_k=None)
                for row, i in enumerate(group):
                    replies[i] = tokenizer.decode(out[row, width:], skip_special_tokens=True).strip()
                bar.update(len(group))
    finally:
        model.train(was_training)
    return replies
