"""Where the MLP neurons live, for every supported architecture.

A neuron is one channel j of a decoder layer's MLP intermediate space. This module finds, for each
decoder layer of the language model, the modules that produce the neuron (gate/up projections, or
the single input projection of a non-gated MLP, or a fused gate_up projection) and the module that
consumes it (down projection), and says which slice of which parameter belongs to neuron j.
Everything else (recording, freezing, pruning) works from :class:`MLPLayer` only.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .errors import UnsupportedArchitectureError

#: Families with a test on a tiny model built from their transformers config.
SUPPORTED_FAMILIES = (
    "Llama", "Mistral", "Qwen2/2.5", "Qwen3", "Gemma 1/2/3", "Phi-3 (fused gate_up_proj)", "OLMo",
    "GPT-2 (Conv1D)", "GPT-NeoX", "Qwen2-VL / Qwen2.5-VL and LLaVA (their language model)",
)

# (gate, up, down) attribute paths inside one decoder layer; gate None means a non-gated MLP, and
# gate == up means a fused gate_up projection (gate = first half of its output).
_MLP_PATTERNS: tuple[tuple[str | None, str, str], ...] = (
    ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"),   # Llama, Mistral, Qwen, Gemma, OLMo, ...
    ("mlp.gate_up_proj", "mlp.gate_up_proj", "mlp.down_proj"),  # Phi-3
    (None, "mlp.c_fc", "mlp.c_proj"),                      # GPT-2 (Conv1D)
    (None, "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"),      # GPT-NeoX
)
_NON_LANGUAGE = ("visual", "vision", "audio", "image", "encoder", "mm_projector", "multi_modal")


@dataclass(frozen=True)
class ParamSlice:
    """Neuron j of a layer is ``param.select(dim, offset + j)``; ``param`` is ``module.<name>``."""

    module: str
    name: str
    dim: int
    offset: int = 0


@dataclass
class MLPLayer:
    """One decoder layer's MLP, located in a model."""

    index: int
    gate: str | None
    up: str
    down: str
    intermediate_size: int
    fused: bool
    conv1d: bool
    block: str = ""  # the decoder layer holding the MLP (its output is the residual stream after the layer)

    def modules(self, model: nn.Module) -> tuple[nn.Module | None, nn.Module, nn.Module]:
        get = model.get_submodule
        return (get(self.gate) if self.gate else None), get(self.up), get(self.down)

    def input_slices(self) -> list[ParamSlice]:
        """Parameters whose slices produce the neurons (rows of gate/up, biases)."""
        size = self.intermediate_size
        if self.fused:
            return [ParamSlice(self.up, "weight", 0, 0), ParamSlice(self.up, "weight", 0, size),
                    ParamSlice(self.up, "bias", 0, 0), ParamSlice(self.up, "bias", 0, size)]
        dim = 1 if self.conv1d else 0
        slices = []
        for mod in (self.gate, self.up):
            if mod:
                slices += [ParamSlice(mod, "weight", dim, 0), ParamSlice(mod, "bias", 0, 0)]
        return slices

    def output_slices(self) -> list[ParamSlice]:
        """The down projection's input columns for the neurons."""
        return [ParamSlice(self.down, "weight", 0 if self.conv1d else 1, 0)]


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D"


def _out_features(module: nn.Module) -> int:
    base = getattr(module, "base_layer", module)  # PEFT wraps projections
    if _is_conv1d(base):
        return base.weight.shape[1]
    if hasattr(base, "out_features"):
        return int(base.out_features)
    return int(base.weight.shape[0])


def _has(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
        return True
    except AttributeError:
        return False


def _layer_lists(model: nn.Module):
    for name, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) > 0:
            if any(part in name.lower() for part in _NON_LANGUAGE):
                continue
            yield name, mod


def parse_mlp_modules(spec: str) -> tuple[str, tuple[str | None, str, str]]:
    """Parse ``LAYERS_PATH:GATE,UP,DOWN`` (GATE may be empty for a non-gated MLP)."""
    try:
        layers_path, names = spec.split(":", 1)
        gate, up, down = (n.strip() for n in names.split(","))
    except ValueError:
        raise UnsupportedArchitectureError(
            f"safeneuron_mlp_modules={spec!r} is not of the form LAYERS_PATH:GATE,UP,DOWN, e.g. "
            "'model.layers:mlp.gate_proj,mlp.up_proj,mlp.down_proj' (or "
            "'transformer.h:,mlp.c_fc,mlp.c_proj' for a non-gated MLP).") from None
    if not layers_path or not up or not down:
        raise UnsupportedArchitectureError(
            f"safeneuron_mlp_modules={spec!r}: LAYERS_PATH, UP and DOWN must be named.")
    return layers_path.strip(), (gate or None, up, down)


def find_mlp_layers(model: nn.Module, mlp_modules: str | None = None) -> list[MLPLayer]:
    """Locate every decoder layer's MLP of the (language) model.

    ``mlp_modules`` names them by hand for architectures not recognised automatically.
    Raises :class:`UnsupportedArchitectureError` with the list of supported families otherwise.
    """
    if mlp_modules:
        layers_path, pattern = parse_mlp_modules(mlp_modules)
        candidates = [(n, m) for n, m in model.named_modules()
                      if isinstance(m, nn.ModuleList) and (n == layers_path or n.endswith("." + layers_path))]
        if not candidates:
            raise UnsupportedArchitectureError(
                f"safeneuron_mlp_modules: no layer list {layers_path!r} in {type(model).__name__}. "
                f"Module lists found: {[n for n, _ in _layer_lists(model)][:10]}.")
        patterns: tuple = (pattern,)
    else:
        candidates = list(_layer_lists(model))
        patterns = _MLP_PATTERNS
    for list_name, layers in candidates:
        for gate, up, down in patterns:
            if all(_has(layer, up) and _has(layer, down) and (gate is None or _has(layer, gate))
                   for layer in layers):
                return _build(list_name, layers, gate, up, down)
        if mlp_modules:
            raise UnsupportedArchitectureError(
                f"safeneuron_mlp_modules={mlp_modules!r}: the layers of {list_name!r} do not all have "
                f"{[p for p in patterns[0] if p]}. Modules of layer 0: "
                f"{[n for n, _ in layers[0].named_modules() if n][:20]}.")
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    raise UnsupportedArchitectureError(
        f"Cannot locate the MLP neurons of this model ({model_type}, {type(model).__name__}). "
        f"Supported: {', '.join(SUPPORTED_FAMILIES)}, and models laid out like them. For another "
        "architecture, name the modules with safeneuron_mlp_modules (CLI --mlp-modules) as "
        "LAYERS_PATH:GATE,UP,DOWN, e.g. 'model.layers:mlp.gate_proj,mlp.up_proj,mlp.down_proj'.")


def _build(list_name: str, layers: nn.ModuleList, gate: str | None, up: str, down: str) -> list[MLPLayer]:
    found = []
    for i, layer in enumerate(layers):
        up_mod = layer.get_submodule(up)
        fused = gate == up
        conv1d = _is_conv1d(getattr(up_mod, "base_layer", up_mod))
        size = _out_features(up_mod) // (2 if fused else 1)
        prefix = f"{list_name}.{i}."
        found.append(MLPLayer(index=i, gate=None if fused or gate is None else prefix + gate,
                              up=prefix + up, down=prefix + down, intermediate_size=size,
                              fused=fused, conv1d=conv1d, block=prefix[:-1]))
    return found
