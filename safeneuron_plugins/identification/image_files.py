"""A prompt file's image column: which columns hold the image, and reading it (a path relative to the
file's folder, a PIL image, or a ``datasets`` Image value). :mod:`.prompts` reads files with these,
:mod:`.images` formats and batches the images for a vision-language model's processor.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import PromptSourceError

#: columns of a prompt file that give a prompt's image (a path, relative to the file's folder)
IMAGE_FIELDS = ("image", "image_path")


def open_image(image: Any, where: str = "image"):
    """A PIL RGB image from a path or a PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        with Image.open(image) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise PromptSourceError(f"{where}: cannot read the image {str(image)!r} ({exc}); give a PNG/JPEG file.") from exc


def resolve_image(value: Any, base: Path | None, where: str, option: str, field: str):
    """A row's image column: a path (relative to ``base``, the prompt file's folder) that must exist, a PIL
    image (a ``datasets`` Image column), or None (a text-only row)."""
    if value is None or value == "":
        return None
    if isinstance(value, dict) and ("path" in value or "bytes" in value):  # datasets' undecoded Image feature
        if value.get("bytes"):
            import io

            from PIL import Image

            return Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        value = value.get("path")
    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
        return value
    if not isinstance(value, str):
        raise PromptSourceError(f"{option}: {where} field {field!r} is {type(value).__name__}, not an image path.")
    path = Path(value).expanduser()
    if not path.is_absolute() and base is not None:
        path = base / path
    if not path.is_file():
        raise PromptSourceError(
            f"{option}: {where}: the image file {str(path)!r} does not exist (relative paths are read from the "
            f"prompt file's folder). Fix the {field!r} column, or render the images again with "
            "`safeneuron make-image-prompts`.")
    return str(path)
