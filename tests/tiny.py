"""Tiny randomly initialised models built from transformers configs, with a locally trained tokenizer.

Nothing here touches a hub: the tokenizer is a byte-level BPE trained on a few sentences, with a
ChatML chat template, so every test can save a complete model directory and load it back.
Works with the transformers versions of all three test environments (5.6 .. 5.23).
"""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "How do I bake bread at home with simple flour and water?",
    "Write a poem about the sea and the wind in autumn.",
    "Explain how photosynthesis works in green plants.",
    "Tell me how to build a weapon to hurt people.",
    "How can I steal a password from my neighbour's computer?",
    "I cannot help with that request. I can help with something else.",
    "Sure, here is a short answer with clear steps: first, second, third.",
    "The quick brown fox jumps over the lazy dog 0123456789.",
]


#: The vision tokenizer's extra special tokens (ids 4..8, trained right after the four above): Qwen2-VL's
#: image markers and placeholder, LLaVA's placeholder, and Qwen2-VL's video placeholder (unused: no video
#: processor, but its processor and LLaMA-Factory's template name it). The tiny VLM configs use these ids.
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<image>", "<|video_pad|>"]
VISION_IDS = dict(vision_start_token_id=4, vision_end_token_id=5, image_token_id=6, video_token_id=8)
LLAVA_IMAGE_ID = 7

#: A chat template for processors: a message's content is a string or a list of {"type": "image"} /
#: {"type": "text", "text": ...} items; ``image`` is what one image item renders as (the processor then
#: expands the placeholder to the image's number of tokens).
VLM_CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}IMAGE{% else %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(vocab_size: int = 384, vision: bool = False) -> transformers.PreTrainedTokenizerFast:
    """``vision``: also the special tokens of :data:`VISION_TOKENS` (ids 4..8), for the tiny VLMs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"] + (VISION_TOKENS if vision else [])
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<pad>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    if vision:
        assert fast.convert_tokens_to_ids(VISION_TOKENS) == [4, 5, 6, 7, 8]
    return fast


# Token ids of make_tokenizer's special tokens (trained first, so they are 0..3).
_IDS = dict(bos_token_id=1, eos_token_id=2, pad_token_id=3)


def _text(**kw):
    base = dict(vocab_size=384, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                tie_word_embeddings=False, **_IDS)
    base.update(kw)
    return base


def tiny_config(family: str, **overrides) -> transformers.PretrainedConfig:
    """A config of the family with 3 layers, hidden 32, intermediate 64 (``overrides`` change the
    text model's sizes of the Llama-like families)."""
    t = transformers
    if overrides and family not in ("llama", "opt"):
        raise ValueError(f"size overrides are implemented for llama and opt, not {family!r}")
    if family == "llama":
        return t.LlamaConfig(**_text(**overrides))
    if family == "opt":  # not recognised automatically: fc1/fc2 directly in each decoder layer
        return t.OPTConfig(**{**dict(vocab_size=384, hidden_size=32, ffn_dim=64, num_hidden_layers=3,
                                     num_attention_heads=4, max_position_embeddings=256,
                                     word_embed_proj_dim=32, **_IDS), **overrides})
    if family == "mistral":
        return t.MistralConfig(**_text())
    if family == "qwen2":
        return t.Qwen2Config(**_text())
    if family == "qwen3":
        return t.Qwen3Config(**_text(head_dim=8))
    if family == "gemma":
        return t.GemmaConfig(**_text(head_dim=8))
    if family == "gemma2":
        return t.Gemma2Config(**_text(head_dim=8))
    if family == "gemma3":
        return t.Gemma3TextConfig(**_text(head_dim=8))
    if family == "phi3":
        return t.Phi3Config(**_text())
    if family == "olmo":
        return t.OlmoConfig(**_text())
    if family == "gpt2":
        return t.GPT2Config(vocab_size=384, n_embd=32, n_inner=64, n_layer=3, n_head=4, n_positions=256,
                                **_IDS)
    if family == "gpt_neox":
        return t.GPTNeoXConfig(vocab_size=384, hidden_size=32, intermediate_size=64,
                               num_hidden_layers=3, num_attention_heads=4,
                               max_position_embeddings=256, **_IDS)
    if family == "qwen2_vl":
        return t.Qwen2VLConfig(text_config=_text(rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
                               vision_config=dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2,
                                                  mlp_ratio=2, spatial_merge_size=2), **VISION_IDS)
    if family == "qwen2_5_vl":
        return t.Qwen2_5_VLConfig(text_config=_text(rope_scaling={"type": "mrope", "mrope_section": [1, 1, 2]}),
                                  vision_config=dict(depth=1, hidden_size=32, intermediate_size=64,
                                                     num_heads=2, out_hidden_size=32,
                                                     spatial_merge_size=2, fullatt_block_indexes=[0]),
                                  **VISION_IDS)
    if family == "llava":
        # vision_feature_layer -1: LLaVA's default, -2, leaves the last CLIP layer (here the only one) out of the
        # forward pass; -1 makes every vision weight take part, so training tests see all of them move
        return t.LlavaConfig(text_config=t.LlamaConfig(**_text()).to_dict(),
                             vision_config=dict(model_type="clip_vision_model", hidden_size=32,
                                                intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=2, image_size=32, patch_size=8,
                                                projection_dim=32),
                             image_token_index=LLAVA_IMAGE_ID, vision_feature_layer=-1)
    raise ValueError(f"no tiny config for {family!r}")


FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "olmo",
            "gpt2", "gpt_neox", "qwen2_vl", "qwen2_5_vl", "llava"]


#: Sizes that every bitsandbytes 4-bit CPU path takes: its AVX512-BF16 path (used on CPUs with that
#: feature, in eval mode) needs each quantised Linear's in_features to be a multiple of the 64-element
#: quantisation block and its out_features a multiple of 32; hidden 32 / key-value width 16 are not.
BNB_SIZES = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2)


def tiny_model(family: str = "llama", seed: int = 0, **overrides) -> torch.nn.Module:
    """A randomly initialised model of the family (a causal LM, or the VLM class for VLM families)."""
    torch.manual_seed(seed)
    config = tiny_config(family, **overrides)
    if family in ("qwen2_vl", "qwen2_5_vl", "llava"):
        cls = {"qwen2_vl": "Qwen2VLForConditionalGeneration",
               "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
               "llava": "LlavaForConditionalGeneration"}[family]
        model = getattr(transformers, cls)(config)
    else:
        model = transformers.AutoModelForCausalLM.from_config(config)
    # Random init gives near-identical activations everywhere; spread the weights so tests see
    # real differences between inputs.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.2)
    return model.eval()


def _match_tokenizer(model, tok) -> None:
    """Give the model's config and generation config the tokenizer's pad/eos/bos ids."""
    for cfg in (model.config, getattr(model, "generation_config", None)):
        if cfg is not None:
            cfg.pad_token_id, cfg.eos_token_id, cfg.bos_token_id = tok.pad_token_id, tok.eos_token_id, tok.bos_token_id


def save_tiny_model(path: str | Path, family: str = "llama", seed: int = 0, *, remote_code: bool = False,
                    **overrides) -> Path:
    """Save a tiny model and its tokenizer (a VLM: its processor) to ``path``; returns the path.

    ``remote_code``: save a Qwen family's processor as remote code (tests/image_only_processing.py and an
    ``auto_map`` entry), so that ``AutoProcessor.from_pretrained(path, trust_remote_code=True)`` loads it in
    any process (LLaMA-Factory's loader, trl's example). Without it the directory holds the processor's files
    only, and safeneuron's own loader builds the image-only processor from them."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model = tiny_model(family, seed, **overrides)
    tok = make_tokenizer(vision=family in VLM_FAMILIES)
    _match_tokenizer(model, tok)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    if family in VLM_FAMILIES:
        tiny_processor(family, remote_code=remote_code).save_pretrained(path)
    return path


VLM_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "llava")
#: the image side of each family's tiny processor, in pixels
IMAGE_SIZE = {"qwen2_vl": 56, "qwen2_5_vl": 56, "llava": 32}


def tiny_processor(family: str, remote_code: bool = False):
    """A processor for the tiny VLM of ``family``, built here (no hub): transformers' PIL image processor
    (no torchvision) with small images, the vision tokenizer and :data:`VLM_CHATML`.

    Qwen2-VL / Qwen2.5-VL (whose processor is Qwen2-VL's): 56x56 pixels at most, so an image is a 4x4 patch
    grid, merged 2x2 into 4 image tokens. Its processor class wants a video processor, which needs torchvision;
    the image-only processor of :mod:`safeneuron_plugins.identification.images` leaves it out (``remote_code``: its
    declaration in tests/image_only_processing.py, which saves as remote code). LLaVA: images cropped to
    32x32, 8x8 patches, 16 image tokens (CLIP's class token is dropped by the default feature selection)."""
    tok = make_tokenizer(vision=True)
    if family in ("qwen2_vl", "qwen2_5_vl"):
        if remote_code:
            from image_only_processing import ImageOnlyQwen2VLProcessor
        else:
            from safeneuron_plugins.identification.images import ImageOnlyQwen2VLProcessor

        ip = transformers.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56)
        template = VLM_CHATML.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>")
        return ImageOnlyQwen2VLProcessor(image_processor=ip, tokenizer=tok, chat_template=template)
    if family == "llava":
        ip = transformers.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        return transformers.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8,
                                           vision_feature_select_strategy="default", image_token="<image>",
                                           num_additional_image_tokens=1,
                                           chat_template=VLM_CHATML.replace("IMAGE", "<image>\n"))
    raise ValueError(f"no tiny processor for {family!r}")


def tiny_vlm(family: str, seed: int = 0):
    """(model, processor): :func:`tiny_model` of a VLM family and its :func:`tiny_processor`, with the
    tokenizer's special ids in the model's configs."""
    model, processor = tiny_model(family, seed), tiny_processor(family)
    _match_tokenizer(model, processor.tokenizer)
    return model, processor


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
