"""Batched greedy generation (left padding, KV cache): the one generation routine of the package.

:func:`generate` gives replies to chat-formatted prompts (attack, over-refusal, make-pairs, checks), also
to prompts with images on a vision-language model (``images`` + the model's ``processor``);
:func:`greedy` is its decoding step, also used by the classifier judge on its own formatted inputs.
"""

from __future__ import annotations

import torch
from torch import nn

from ..identification.batching import input_device, length_batches, pad_batch, pad_id_of, tokenize
from ..identification.prompts import format_prompts
from ..quantization import unpacked_bnb_weights


@torch.inference_mode()
def greedy(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor, *, max_new_tokens: int,
           pad_id: int, extra: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """Greedy continuation of left-padded ``ids``; returns the new tokens only ([batch, <= max_new_tokens]).
    ``extra``: further model inputs (a processor's pixel values, image grid sizes, token types)."""
    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                         use_cache=True, pad_token_id=pad_id, temperature=None, top_p=None, top_k=None,
                         **(extra or {}))
    return out[:, ids.shape[1]:]


def generate(model: nn.Module, tokenizer, prompts: list[str], *, max_new_tokens: int = 64,
             batch_size: int = 16, system_prompt: str | None = None, max_length: int = 512,
             desc: str = "generating", progress: bool = True, images: list | None = None,
             processor=None) -> list[str]:
    """Greedy replies to ``prompts`` (chat-formatted), in the input order.

    ``images``: one image (path or PIL image) or None per prompt, for a vision-language model; ``processor``
    (the model's) then formats every prompt with its chat template and computes the pixel inputs. Image
    prompts are not truncated to ``max_length`` (that would cut the image's tokens)."""
    from tqdm.auto import tqdm

    if not prompts:
        return []
    if images is not None and any(i is not None for i in images):
        from ..identification.images import check_image_prompts, collate, encode_one, format_multimodal
        from ..identification.prompts import Prompt

        check_image_prompts(model, processor, "images", sum(i is not None for i in images))
        texts = format_multimodal(processor, [Prompt(p, image=i) for p, i in zip(prompts, images)], system_prompt)
        seqs = [encode_one(processor, t, i)["input_ids"][0].tolist() for t, i in zip(texts, images)]
    else:
        texts, images = format_prompts(tokenizer, prompts, system_prompt), None
        templated = getattr(tokenizer, "chat_template", None) is not None
        seqs = tokenize(tokenizer, texts, max_length, templated, option="generate(max_length=...)")
    pad = pad_id_of(tokenizer)
    device = input_device(model)
    replies: list[str] = [""] * len(prompts)
    was_training = model.training
    model.eval()
    try:
        with tqdm(total=len(prompts), desc=desc, unit="prompt", disable=not progress, dynamic_ncols=True) as bar:
            for group in length_batches([len(s) for s in seqs], batch_size):
                # left padding: the reply starts at the same column
                if images is None:
                    ids, mask = pad_batch([seqs[i] for i in group], pad, device, side="left")
                    extra = None
                else:  # processed again per batch: one batch of pixel inputs in memory at a time
                    ids, mask, extra = collate([encode_one(processor, texts[i], images[i]) for i in group], pad,
                                               "left", device, next(model.parameters()).dtype)
                with torch.inference_mode(), unpacked_bnb_weights(model):
                    out = greedy(model, ids, mask, max_new_tokens=max_new_tokens, pad_id=pad, extra=extra)
                for row, i in enumerate(group):
                    replies[i] = tokenizer.decode(out[row], skip_special_tokens=True).strip()
                bar.update(len(group))
    finally:
        model.train(was_training)
    return replies
