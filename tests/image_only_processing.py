"""Remote-code entry point for the tiny Qwen VLMs' processor: safeneuron_plugins' ImageOnlyQwen2VLProcessor.

A saved model directory carries this file and an ``auto_map`` entry, so ``AutoProcessor.from_pretrained(path,
trust_remote_code=True)`` loads the package's image-only processor in any process where safeneuron_plugins is
installed (LLaMA-Factory's loader, trl's example), without torchvision. The class is declared here, not only
re-exported: transformers registers a remote-code class for auto-saving and, when the processor is saved again
(LLaMA-Factory's SaveProcessorCallback), copies the file that defines the class with its relative imports -
this file; the package module's relative imports cannot be copied that way.
"""

from safeneuron_plugins.identification.images import ImageOnlyQwen2VLProcessor as _PackageProcessor


class ImageOnlyQwen2VLProcessor(_PackageProcessor):
    """The package's processor, unchanged (see safeneuron_plugins/identification/images.py)."""


ImageOnlyQwen2VLProcessor.register_for_auto_class("AutoProcessor")
