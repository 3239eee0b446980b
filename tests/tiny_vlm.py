"""Tiny vision-language models with a working processor, built locally (no hub, no torchvision).

tests/tiny.py builds the VLM models; training on images also needs a processor: the tiny tokenizer
with the family's image tokens added, a PIL image processor (transformers' torch image processors need
torchvision, which has no build for this CPU torch), and a chat template that renders image parts.
The model's vocabulary and image-token ids are set to match that tokenizer.

Qwen2-VL's processor takes a video processor too, and every transformers video processor needs
torchvision, so the Qwen families use Qwen2-VL's processor without the video modality
(image_only_processing.py; a saved directory loads it with trust_remote_code=True).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from image_only_processing import ImageOnlyQwen2VLProcessor
from tiny import make_tokenizer, tiny_config

#: the special tokens each family's processor and model use for images
_QWEN = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
IMAGE_TOKENS = {"qwen2_vl": _QWEN, "qwen2_5_vl": _QWEN, "llava": ["<image>"]}
_IMAGE_PART = {"qwen2_vl": "<|vision_start|><|image_pad|><|vision_end|>",
               "qwen2_5_vl": "<|vision_start|><|image_pad|><|vision_end|>", "llava": "<image>"}
#: the image side of each family's tiny processor, in pixels
IMAGE_SIZE = {"qwen2_vl": 56, "qwen2_5_vl": 56, "llava": 32}


def chat_template(family: str) -> str:
    """ChatML that also renders a message whose content is a list of image and text parts."""
    return (
        "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
        "{{ message['content'] }}{% else %}{% for part in message['content'] %}{% if part['type'] == 'image' %}"
        + _IMAGE_PART[family] +
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_processor(family: str):
    """The processor of a tiny VLM of ``family`` ('qwen2_vl', 'qwen2_5_vl' or 'llava'; Qwen2.5-VL's processor
    is Qwen2-VL's)."""
    tok = make_tokenizer()
    tok.add_special_tokens({"additional_special_tokens": IMAGE_TOKENS[family]})
    tok.chat_template = chat_template(family)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        # 56x56 pixels: 4x4 patches of 14, merged 2x2 into 4 image tokens
        images = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56)
        return ImageOnlyQwen2VLProcessor(image_processor=images, tokenizer=tok,
                                         chat_template=chat_template(family))
    if family == "llava":
        from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

        # the tiny CLIP tower: 32x32 pixels, patches of 8 -> 16 image tokens (its CLS token is dropped)
        images = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        return transformers.LlavaProcessor(image_processor=images, tokenizer=tok, patch_size=8,
                                           vision_feature_select_strategy="default",
                                           num_additional_image_tokens=1, chat_template=chat_template(family))
    raise ValueError(f"no tiny processor for {family!r}")


def tiny_vlm(family: str, seed: int = 0):
    """(model, processor): a random tiny VLM of ``family`` whose vocabulary and image-token ids match
    the processor's tokenizer."""
    processor = tiny_processor(family)
    tok = processor.tokenizer
    config = tiny_config(family)
    config.text_config.vocab_size = len(tok)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        (config.image_token_id, config.video_token_id, config.vision_start_token_id,
         config.vision_end_token_id) = tok.convert_tokens_to_ids(_QWEN[2:] + _QWEN[:2])
        cls = (transformers.Qwen2VLForConditionalGeneration if family == "qwen2_vl"
               else transformers.Qwen2_5_VLForConditionalGeneration)
    else:
        config.image_token_index = config.image_token_id = tok.convert_tokens_to_ids("<image>")
        # LLaVA's default feature layer, -2, leaves the last CLIP layer (here the only one) out of the forward
        # pass; -1 makes every vision weight take part, so tests can see all of them train
        config.vision_feature_layer = -1
        cls = transformers.LlavaForConditionalGeneration
    for c in (config, config.text_config):
        c.pad_token_id, c.eos_token_id, c.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id
    torch.manual_seed(seed)
    model = cls(config)
    with torch.no_grad():  # as tiny.tiny_model: spread the weights so inputs give different activations
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    return model.eval(), processor


def save_tiny_vlm(path: str | Path, family: str = "qwen2_vl", seed: int = 0) -> Path:
    """Save a tiny VLM with its processor (tokenizer, image processor, chat template) to ``path``; a Qwen
    family's processor loads with ``trust_remote_code=True`` (see image_only_processing.py)."""
    path = Path(path)
    model, processor = tiny_vlm(family, seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def tiny_images(n: int, family: str = "qwen2_vl"):
    """``n`` distinct small RGB images (a colour gradient per image) of the family's processor size."""
    from PIL import Image

    size, images = IMAGE_SIZE[family], []
    for i in range(n):
        image = Image.new("RGB", (size, size))
        image.putdata([((7 * i + x) % 256, (13 * i + y * 4) % 256, (29 * i + x * y) % 256)
                       for y in range(size) for x in range(size)])
        images.append(image)
    return images
