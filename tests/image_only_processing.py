"""Qwen2-VL's processor without its video processor, for environments without torchvision.

Every transformers video processor needs torchvision, which has no build for the CPU torch of the test
environments, and Qwen2VLProcessor cannot be built or loaded without one. This subclass drops only the
video modality; images and text go through Qwen2VLProcessor's own code. It is registered for
AutoProcessor, so a saved model directory carries this file and an ``auto_map`` entry and loads with
``AutoProcessor.from_pretrained(path, trust_remote_code=True)`` in any process (LLaMA-Factory's loader
included). With torchvision installed, the stock Qwen2VLProcessor does the same job.
"""

from transformers import ProcessorMixin, Qwen2VLProcessor


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor with image_processor and tokenizer only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


ImageOnlyQwen2VLProcessor.register_for_auto_class("AutoProcessor")
