"""Prompts with images, for vision-language models (Qwen2-VL / Qwen2.5-VL, LLaVA, ...).

A prompt may carry one image (:attr:`Prompt.image`: a file path or a PIL image). The model's processor
formats it: its chat template puts an image item before the text in the user turn, and the processor
expands the image placeholder into the image's tokens and computes the pixel inputs.

Which tokens pooling sees: the real (non-padding) tokens of the chat-formatted prompt EXCEPT the image
placeholder tokens (the ids equal to the model's ``image_token_id`` / ``image_token_index``, one per
image patch group); the template's own tokens around them (e.g. Qwen's ``<|vision_start|>`` /
``<|vision_end|>``) are ordinary text tokens and are pooled. The image still shapes every pooled
activation through attention: the text after the image reads it. Excluding the placeholders keeps
max/mean pooling from being dominated by hundreds of visual positions, and makes the statistics of
image prompts comparable with those of text prompts. ``pool_image_tokens=True`` pools them as well.

Batches are built one prompt at a time by the processor (no truncation: cutting a prompt would split
its image tokens) and then padded with the package's one padding routine; each prompt is processed
twice (once for its length, to batch by length, once in its batch), so only one batch of pixel
inputs is ever in memory.
"""

from __future__ import annotations

import torch

from ..errors import PromptSourceError
from .batching import length_batches, pad_batch
from .image_files import open_image
from .prompts import system_turn_refused

#: pool the image placeholder tokens too (default: no, see the module docstring)
POOL_IMAGE_TOKENS = False


def is_vision_model(model) -> bool:
    """Does ``model`` take images (a config with a ``vision_config``)?"""
    return getattr(getattr(model, "config", None), "vision_config", None) is not None


def image_token_id(model) -> int | None:
    config = getattr(model, "config", None)
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    return None


def has_images(prompts) -> bool:
    return any(getattr(p, "image", None) is not None for p in prompts)


def check_image_prompts(model, processor, option: str, n_images: int, *, need_processor: bool = True) -> None:
    """Image prompts need a vision-language model and its processor; raise PromptSourceError naming ``option``.
    ``need_processor`` False: check the model only (the CLI loads the processor next)."""
    if not n_images:
        return
    if not is_vision_model(model):
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise PromptSourceError(
            f"{option}: {n_images} prompt(s) carry an image, but the model ({kind}) is a text-only model. Give a "
            "vision-language model (Qwen2-VL, Qwen2.5-VL, LLaVA), or a prompt source without an image column.")
    if processor is None and need_processor:
        raise PromptSourceError(
            f"{option}: {n_images} prompt(s) carry an image, but no processor was given to format them. Pass the "
            "model's processor (transformers.AutoProcessor.from_pretrained(MODEL), processor=...); the CLI loads "
            "it from the model directory.")


def format_multimodal(processor, prompts, system_prompt: str | None = None) -> list[str]:
    """Chat-format prompts with the processor's template: the user turn is [image item,] text item."""
    if getattr(processor, "chat_template", None) is None:
        raise PromptSourceError("the model's processor has no chat template, so image prompts cannot be formatted; "
                                "save a processor with a chat template in the model directory.")
    def render(messages):
        return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def text(t: str) -> list[dict[str, str]]:
        return [{"type": "text", "text": t}]

    fold = system_turn_refused(render, system_prompt, processor, lambda t: [{"role": "user", "content": text(t)}],
                               lambda t: {"role": "system", "content": text(t)})
    out = []
    for p in prompts:
        words = f"{system_prompt}\n\n{p.text}" if fold else p.text
        content = ([{"type": "image"}] if p.image is not None else []) + text(words)
        messages = ([{"role": "system", "content": text(system_prompt)}] if system_prompt and not fold
                    else []) + [{"role": "user", "content": content}]
        out.append(render(messages))
    return out


def encode_one(processor, text: str, image) -> dict[str, torch.Tensor]:
    """The processor's tensors for one formatted prompt (``input_ids`` 1-D; no padding, no truncation)."""
    images = [open_image(image)] if image is not None else None
    enc = processor(text=[text], images=images, return_tensors="pt", add_special_tokens=False)
    return dict(enc)


def _per_token(key: str) -> bool:
    return key == "attention_mask" or key.endswith("token_type_ids")


def collate(encoded: list[dict[str, torch.Tensor]], pad_id: int, side: str, device=None, dtype=None):
    """Pad a batch of :func:`encode_one` outputs: ids and per-token tensors (``*token_type_ids``) with the
    package's padding routine, per-image tensors (pixel values, grid sizes) concatenated in prompt order.
    Floating tensors (pixel values) take ``dtype`` (the model's) when given. Returns (input_ids,
    attention_mask, extra inputs)."""
    ids, mask = pad_batch([e["input_ids"][0].tolist() for e in encoded], pad_id, device, side=side)
    extra: dict[str, torch.Tensor] = {}
    keys = {k for e in encoded for k in e if k not in ("input_ids", "attention_mask")}
    for key in sorted(keys):
        if _per_token(key):
            extra[key] = pad_batch([e[key][0].tolist() if key in e else [0] * e["input_ids"].shape[1]
                                    for e in encoded], 0, device, side=side)[0]
        else:
            value = torch.cat([e[key] for e in encoded if key in e])
            extra[key] = value.to(device=device, dtype=dtype if dtype is not None and value.is_floating_point()
                                  else value.dtype)
    return ids, mask, extra


def pooling_mask(ids: torch.Tensor, mask: torch.Tensor, image_token: int | None,
                 pool_image_tokens: bool = POOL_IMAGE_TOKENS) -> torch.Tensor:
    """The positions pooling sees: real tokens, without the image placeholders unless ``pool_image_tokens``."""
    if pool_image_tokens or image_token is None:
        return mask
    return mask * (ids != image_token).to(mask.dtype)


def multimodal_batches(processor, texts: list[str], images: list, batch_size: int, device, shard: tuple[int, int],
                       pad_id: int, image_token: int | None, pool_image_tokens: bool = POOL_IMAGE_TOKENS,
                       dtype=None):
    """Right-padded batches of similar length for identification: (indices, ids, mask, extra, pool mask)."""
    rank, world = shard
    mine = list(range(rank, len(texts), world))
    lengths = [encode_one(processor, texts[i], images[i])["input_ids"].shape[1] for i in mine]
    for group in length_batches(lengths, batch_size):
        idx = [mine[i] for i in group]
        ids, mask, extra = collate([encode_one(processor, texts[i], images[i]) for i in idx], pad_id, "right", device,
                                   dtype)
        yield idx, ids, mask, extra, pooling_mask(ids, mask, image_token, pool_image_tokens)


def _image_only_processor_class():
    from transformers import Qwen2VLProcessor

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        """Qwen2-VL's processor for images only: no video processor, which transformers builds only with
        torchvision installed. Images, image tokens and the chat template are handled as by the original."""

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    return ImageOnlyQwen2VLProcessor


def __getattr__(name: str):
    if name == "ImageOnlyQwen2VLProcessor":  # built lazily: importing transformers' processors is slow
        cls = _image_only_processor_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
