"""The one definition of every ``safeneuron_*`` option.

The Trainer callback's keyword arguments, the Axolotl plugin's pydantic args, the LLaMA-Factory
YAML keys, the web UI fields and the ``safeneuron`` CLI flags are all generated from (or checked
against) :class:`SafeNeuronOptions`. Each field's ``metadata["help"]`` is its documentation;
``docs/OPTIONS.md`` is rendered from it by ``safeneuron options --markdown``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, get_args, get_origin, get_type_hints

from .errors import OptionsError
from .option_values import PREFIX, check_value, suggest_key


def _opt(default: Any, help: str, *, low: float | None = None, high: float | None = None,
         low_open: bool = False, identify: bool = False, cli: bool = False) -> Any:
    """A dataclass field with its documentation and range; ``identify`` marks identification options
    (a CLI flag on every command that identifies), ``cli`` the other options that are also a CLI flag
    (on the commands that take a mask)."""
    meta = {"help": help, "low": low, "high": high, "low_open": low_open, "identify": identify, "cli": cli}
    return field(default=default, metadata=meta)


@dataclass
class SafeNeuronOptions:
    """Options of SafeNeuron identification and freezing, shared by every adapter and the CLI."""

    # --- training switches ---------------------------------------------------------------
    safeneuron_freeze: bool = _opt(
        False,
        "Freeze the safety neurons during training: the weights that produce them (rows of the MLP "
        "input projections and their biases) stay bit-identical while everything else trains.")
    safeneuron_mask: str | None = _opt(
        None,
        "Path to a precomputed mask file (from `safeneuron identify`). When unset, the safety neurons "
        "are identified on the initial policy before the first optimizer step.")
    safeneuron_allow_other_weights: bool = _opt(
        False,
        "Apply a mask identified on other weights of the same architecture (e.g. the base model's mask to "
        "a fine-tune of it: safeneuron_mask here, --mask / --prune-mask on the CLI as "
        "--allow-other-weights). Off by default: such a mask is an error, since its neurons need not be "
        "this model's safety neurons; re-identify on the model instead unless that is what you mean. "
        "Resuming training is never refused for this (the weights have trained since the mask was made).",
        cli=True)
    safeneuron_freeze_down_proj: bool = _opt(
        False,
        "Also freeze the safety neurons' columns of the MLP output projection (down_proj). "
        "Off by default: the paper freezes the input side, and no measurement here showed a gain "
        "(docs/research/smollm2.md).")
    safeneuron_forward_prune: bool = _opt(
        False,
        "Algorithm 1's forward pruning: zero the safety neurons' activations in the training forward "
        "pass of the policy (never in the reference model, never after training), forcing the model "
        "to build safety pathways elsewhere. Off by default: on SmolLM2 it left the model refusing only "
        "without those neurons, so it complied with 66% of held-out harmful prompts once they were "
        "active again (docs/research/smollm2.md).")
    safeneuron_forward_prune_probability: float = _opt(
        1.0,
        "Stochastic forward pruning: with safeneuron_forward_prune (or safeneuron_adversarial_steps), "
        "zero each pruned neuron only with this probability, drawn anew in every training forward pass "
        "of the policy, so the model can neither rely on those neurons nor lose their function. "
        "1.0: Algorithm 1's deterministic pruning. Measured on Qwen2.5-Coder-0.5B at 0.5 "
        "(docs/research/under-attack.md): easier to attack than plain DPO (ASR under the pruning attack 0.84 "
        "vs 0.62), not a default.", low=0.0, high=1.0, low_open=True)
    safeneuron_forward_prune_pass_probability: float = _opt(
        1.0,
        "With safeneuron_forward_prune or safeneuron_adversarial_steps: the share of the policy's training "
        "forward passes that prune (all of the set, or nothing, drawn once per pass); the others train the "
        "unpruned network on the same kind of pairs. 1.0: every pass prunes. Meant for training under the "
        "attack, whose every pass is pruned at 1.0, so the unpruned model it ships is never trained as such and "
        "over-refuses (Qwen2.5-Coder-1.5B: 0.27 vs plain DPO's 0.02, docs/research/under-attack.md). Measured there at 0.5 "
        "(N=16): over-refusal 0.03, but the robustness went with it (ASR under the attack 0.84 vs 0.59 at 1.0 and "
        "plain DPO's 0.91; without attack 0.13 vs 0.00 and 0.05), so the default stays 1.0.",
        low=0.0, high=1.0, low_open=True)
    safeneuron_forward_prune_prompts: str | None = _opt(
        None,
        "With safeneuron_forward_prune or safeneuron_adversarial_steps: prune only the training examples whose "
        "prompt is one of these (a prompt file or source in the format of safeneuron_harmful, typically the harmful "
        "prompts of your safety pairs); every other example (the helpfulness pairs) trains the unpruned network "
        "that ships. Unset: every example is pruned. Matched by token ids inside the chat-formatted example; the run "
        "logs how many examples matched and warns when none did. Measured on Qwen2.5-Coder-1.5B with "
        "safeneuron_adversarial_steps 16 (docs/research/under-attack.md): ASR under the attack 0.55 vs plain DPO's 0.91 at equal "
        "over-refusal (0.02), but 0.20 vs 0.05 without attack, so it is off by default. With "
        "safeneuron_forward_prune_pass_probability 0.75 as well: 0.18 without attack, and 0.69 under it, the pruned "
        "network answering in Arabic.")
    safeneuron_adversarial_steps: int | None = _opt(
        None,
        "Adversarial re-identification (training under the attack): every N optimizer steps, identify "
        "the safety neurons of the current policy as an attacker would and zero them in the policy's "
        "training forward passes until the next re-identification (the frozen set does not change). "
        "Costs one identification every N steps. Measured on Qwen2.5-Coder-0.5B (docs/research/under-attack.md): "
        "at N=8 lower ASR without attack than plain DPO (0.09 vs 0.16), the same under the pruning attack, "
        "and far easier to undo by harmful fine-tuning (0.82 vs 0.35 after 20 LoRA steps); at N=16 ASR "
        "0.05 without attack and 0.91 under it (plain DPO 0.62). With a safety pair for every harmful training "
        "prompt (94 instead of 30) N=16 halved it: 0.00 without attack, 0.39 under it vs plain DPO's 0.83 on the "
        "same pairs, at 0.13 over-refusal vs 0.01 (a second seed: 0.46, 0.11); not yet a default (0.5B only).", low=1)
    safeneuron_reidentify_steps: int | None = _opt(
        None,
        "Iterative mode: every N optimizer steps, re-identify on the current model and freeze the "
        "union with the earlier set (already frozen rows keep their original values). Full parameters "
        "only: refused with a LoRA adapter, whose rows of a neuron found later are already trained.", low=1)
    safeneuron_reidentify_on_epoch_end: bool = _opt(
        False, "Iterative mode: re-identify at the end of every epoch (union with the earlier set); full "
        "parameters only, as safeneuron_reidentify_steps.")
    safeneuron_output_name: str = _opt(
        "safeneuron_mask.safetensors",
        "File name of the mask in force, written to output_dir and to every checkpoint: a plain .safetensors file "
        "name, not a path, and none of the model's or the trainer's own files (config.json, model.safetensors, ...).")

    # --- prompt sources ------------------------------------------------------------------
    safeneuron_harmful: str = _opt(
        "builtin",
        "Harmful prompt source: `builtin`, a local .jsonl/.json/.csv/.txt file (`path.jsonl:field` "
        "picks the field) or `hf:DATASET_ID[:split[:field]]`.", identify=True)
    safeneuron_harmless: str = _opt(
        "builtin", "Harmless prompt source, same forms as safeneuron_harmful.", identify=True)
    safeneuron_max_prompts: int | None = _opt(
        None, "Use at most this many prompts of each source (first N; at least 2, statistics need them).",
        low=2, identify=True)
    safeneuron_system_prompt: str | None = _opt(
        None, "System prompt put before every prompt when the chat template is applied. A template that "
        "refuses a system turn (Gemma 1/2) gets it at the start of the user turn instead, with a warning.",
        identify=True)

    # --- scoring and selection -----------------------------------------------------------
    safeneuron_method: Literal["safeneuron", "neurostrike", "attribution"] = _opt(
        "attribution",
        "Scorer. `attribution` (default): causal, activation x gradient of the log-probability of "
        "safeneuron_refusal_text after each harmful prompt, taken on the neurons' activations (the "
        "down_proj input, the quantity pruning and freezing act on); one forward and backward pass over "
        "the harmful prompts; keeps the top safeneuron_neuron_ratio of neurons (default 0.01) with a "
        "positive score. `safeneuron`: the paper's activation statistics (effect size + activation "
        "shift thresholds). `neurostrike`: a logistic-regression probe per layer, z-score of its "
        "weights. Default settled by bench/specificity.py "
        "(docs/research/identification.md): on Qwen2.5-Coder-0.5B-Instruct pruning the attribution top 1% removes "
        "the model's "
        "refusals while as many random neurons per layer remove none; the paper's statistics select "
        "neurons no better than random there (gate signal: worse).", identify=True)
    safeneuron_refusal_text: str = _opt(
        "I'm sorry, but I can't help with that.",
        "safeneuron_method `attribution`: the refusal whose log-probability each neuron's attribution is "
        "taken against (use the model's own refusal opening for the sharpest score).", identify=True)
    safeneuron_tau_es: float = _opt(
        3.0, "safeneuron_method `safeneuron`: Activation Effect Size threshold (the paper's rule; on "
        "Qwen2.5-Coder-0.5B it selects no neuron): neuron j is selected when Cohen's d > tau_es.",
        low=0.0, high=100.0, identify=True)
    safeneuron_tau_sas: float = _opt(
        2.0, "safeneuron_method `safeneuron`: Safety Activation Shift threshold: selected when the layer-wise z-score of "
        "mean_harmful - mean_harmless exceeds tau_sas (and the shift is positive).",
        low=0.0, high=100.0, identify=True)
    safeneuron_selection: Literal["union", "es", "sas"] = _opt(
        "union", "safeneuron_method `safeneuron`: which criterion selects: the union of ES and SAS (the "
        "paper), ES only, or SAS only.",
        identify=True)
    safeneuron_neuron_ratio: float | None = _opt(
        None, "Select the top fraction (0 < r <= 1) of neurons instead of the thresholds or as a cap "
        "on them (see safeneuron_ratio_mode). Ranked by the criterion safeneuron_selection names "
        "(effect size for `union` and `es`, the activation shift's z-score for `sas`); with "
        "safeneuron_method `attribution`, by the attribution score. Measured on Qwen2.5-Coder-0.5B "
        "(docs/research/freezing.md): freezing the top 2%, 5% or 10% instead of 1% did not make safety "
        "harder to prune away (ASR under the pruning attack 0.66 / 0.68 / 0.83 vs 0.59, plain DPO 0.62).",
        low=0.0, high=1.0, low_open=True, identify=True)
    safeneuron_ratio_scope: Literal["global", "layer"] = _opt(
        "global", "Rank neurons for safeneuron_neuron_ratio over the whole model or within each layer.",
        identify=True)
    safeneuron_ratio_mode: Literal["instead", "cap"] = _opt(
        "instead", "safeneuron_method `safeneuron`: `instead`: the ratio replaces the thresholds; `cap`: "
        "threshold selection, then keep "
        "at most the ratio's number of neurons (highest effect size first).", identify=True)
    safeneuron_probe_epochs: int = _opt(
        5000, "NeuroStrike scorer: full-batch Adam epochs of each probe.", low=1, identify=True)
    safeneuron_probe_z: float = _opt(
        3.0, "NeuroStrike scorer: keep neurons whose probe weight has z-score above this and is positive.",
        low=0.0, high=100.0, identify=True)

    # --- activations ---------------------------------------------------------------------
    safeneuron_signal: Literal["gate", "up", "product"] = _opt(
        "product", "safeneuron_method `safeneuron` / `neurostrike`: recorded activation per neuron: the "
        "gated product fed to down_proj (default: the quantity that pruning and freezing act on), the "
        "gate projection's output before the activation function (the reference code's choice; on "
        "Qwen 0.5B its neurons make the model safer when pruned) or the up projection's output. "
        "Non-gated MLPs (GPT-2, GPT-NeoX) have one projection: gate and up both "
        "mean its output, product its activated output.", identify=True)
    safeneuron_pooling: Literal["max", "mean", "last"] = _opt(
        "max", "safeneuron_method `safeneuron` / `neurostrike`: how a prompt's token activations are pooled "
        "into one value per neuron (padding never "
        "counts): max over tokens (the reference code), mean, or the last prompt token.", identify=True)
    safeneuron_batch_size: int = _opt(
        16, "Prompts per forward pass during identification (prompts are batched by length).",
        low=1, identify=True)
    safeneuron_max_length: int = _opt(
        256, "Longest chat-formatted prompt, in tokens, during identification. A longer one is cut from the left, "
        "keeping its end (the request and the assistant turn, where a refusal starts), and a warning says how many "
        "prompts were cut and by how much.", low=1, identify=True)
    safeneuron_mlp_modules: str | None = _opt(
        None, "For architectures not recognised automatically: `LAYERS_PATH:GATE,UP,DOWN` naming the "
        "decoder layer list and the projections inside each layer, e.g. "
        "`model.layers:mlp.gate_proj,mlp.up_proj,mlp.down_proj` (omit GATE for a non-gated MLP: "
        "`transformer.h:,mlp.c_fc,mlp.c_proj`).", identify=True)

    # ------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check types, choices and ranges; raise :class:`OptionsError` naming the key and the fix."""
        hints = get_type_hints(SafeNeuronOptions)
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, check_value(f, hints[f.name], value))
        if self.safeneuron_method == "neurostrike" and self.safeneuron_neuron_ratio is not None:
            raise OptionsError(
                "safeneuron_neuron_ratio ranks neurons by effect size and applies to "
                "safeneuron_method='safeneuron' or 'attribution' only; unset it or use one of those methods.")
        if self.safeneuron_method == "attribution":
            # thresholds and activation settings belong to the statistics scorers: never ignore them silently
            stray = [f.name for f in dataclasses.fields(self) if f.name in _STATISTICS_ONLY
                     and getattr(self, f.name) != f.default]
            if stray:
                raise OptionsError(
                    f"{', '.join(f'`{k}`' for k in stray)} set, but safeneuron_method is `attribution` (the default), "
                    "which ranks neurons by attribution and uses none of them. Add `safeneuron_method: safeneuron` "
                    "to use the paper's thresholds and activation statistics, or drop these options.")
        if self.safeneuron_forward_prune_prompts is not None and not (
                self.safeneuron_forward_prune or self.safeneuron_adversarial_steps):
            raise OptionsError(
                "safeneuron_forward_prune_prompts picks the examples that training-time pruning applies to, but "
                "nothing is pruned in training: set safeneuron_forward_prune: true or safeneuron_adversarial_steps: N, "
                "or drop safeneuron_forward_prune_prompts.")
        _check_output_name(self.safeneuron_output_name)
        if self.safeneuron_method == "attribution" and not self.safeneuron_refusal_text.strip():
            raise OptionsError("safeneuron_refusal_text is empty; safeneuron_method `attribution` needs the refusal "
                               "text whose log-probability it attributes (e.g. \"I'm sorry, but I can't help with that.\").")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, source: str = "config") -> SafeNeuronOptions:
        """Build options from ``safeneuron_*`` keys; unknown keys are an error with a suggestion."""
        known = option_names()
        unknown = [k for k in values if k not in known]
        if unknown:
            key = unknown[0]
            guess = suggest_key(key, known)
            hint = f" Did you mean `{guess}`?" if guess else ""
            raise OptionsError(
                f"Unknown option `{key}` in {source}.{hint} Known SafeNeuron options: "
                f"{', '.join(sorted(known))}.")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def identify_kwargs(self) -> dict[str, Any]:
        """The identification options without their prefix, as :func:`identify` takes them."""
        return {f.name[len(PREFIX):]: getattr(self, f.name)
                for f in dataclasses.fields(self) if f.metadata["identify"]}


#: files a model directory or a checkpoint holds: the mask's file name may be none of them
_MODEL_FILES = re.compile(
    r"(config|generation_config|tokenizer|tokenizer_config|special_tokens_map|added_tokens|vocab|merges|"
    r"preprocessor_config|processor_config|chat_template|adapter_config|trainer_state|training_args|optimizer|"
    r"scheduler|scaler|rng_state(_\d+)?|model|pytorch_model|adapter_model|tf_model|flax_model)"
    r"(-\d+-of-\d+)?\.(json|jinja|txt|model|bin|pt|pth|safetensors|h5|msgpack|index\.json|safetensors\.index\.json)",
    re.IGNORECASE)


def _check_output_name(name: str) -> None:
    """safeneuron_output_name is a plain file name written into output_dir and every checkpoint: no path, and
    not a file the model or the trainer writes there (the mask would replace it, or it the mask)."""
    fix = "Give a plain file name such as safeneuron_mask.safetensors."
    if not name.strip():
        raise OptionsError(f"`safeneuron_output_name` is empty. {fix}")
    if "/" in name or "\\" in name or name in (".", "..") or name != name.strip():
        raise OptionsError(f"`safeneuron_output_name` is {name!r}: it names a file inside output_dir and each "
                           f"checkpoint, not a path. {fix}")
    if _MODEL_FILES.fullmatch(name) or name == "safeneuron_attack_mask.safetensors":
        raise OptionsError(f"`safeneuron_output_name` is {name!r}, a file the model, the tokenizer or the trainer "
                           f"writes into output_dir and every checkpoint (or the adversarial mask): the mask would "
                           f"overwrite it or be overwritten. {fix}")
    if not name.lower().endswith(".safetensors"):
        raise OptionsError(f"`safeneuron_output_name` is {name!r}: a mask is a safetensors file; give a name ending "
                           "in .safetensors, such as safeneuron_mask.safetensors.")


# Options only the activation-statistics scorers (safeneuron, neurostrike) read.
_STATISTICS_ONLY = ("safeneuron_tau_es", "safeneuron_tau_sas", "safeneuron_selection", "safeneuron_ratio_mode",
                    "safeneuron_signal", "safeneuron_pooling", "safeneuron_probe_epochs", "safeneuron_probe_z")


def statistics_defaults() -> dict[str, Any]:
    """The statistics scorers' options at their defaults, without prefix (to switch a set of options to
    safeneuron_method `attribution`)."""
    return {f.name[len(PREFIX):]: f.default for f in dataclasses.fields(SafeNeuronOptions) if f.name in _STATISTICS_ONLY}


def option_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(SafeNeuronOptions))


def option_names() -> list[str]:
    return [f.name for f in option_fields()]


def option_choices(name: str) -> tuple[Any, ...] | None:
    """The allowed values of a Literal option, else None."""
    hint = get_type_hints(SafeNeuronOptions)[name]
    for arg in (hint, *get_args(hint)):
        if get_origin(arg) is Literal:
            return get_args(arg)
    return None


def option_type(name: str) -> type:
    """The plain Python type of an option (bool, int, float or str)."""
    hint = get_type_hints(SafeNeuronOptions)[name]
    for arg in (hint, *get_args(hint)):
        if arg in (bool, int, float, str):
            return arg
        if get_origin(arg) is Literal:
            return type(get_args(arg)[0])
    raise TypeError(name)


def split_options(config: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a host framework's config into (``safeneuron_*`` keys, the rest)."""
    ours = {k: v for k, v in config.items() if k.startswith(PREFIX)}
    rest = {k: v for k, v in config.items() if not k.startswith(PREFIX)}
    return ours, rest


def options_markdown() -> str:
    """Render every option as a Markdown table (docs/OPTIONS.md)."""
    lines = ["| option | CLI flag | default | meaning |", "|---|---|---|---|"]
    for f in option_fields():
        flag = "--" + f.name[len(PREFIX):].replace("_", "-") if f.metadata["identify"] or f.metadata["cli"] else ""
        choices = option_choices(f.name)
        extra = f" One of: {', '.join(f'`{c}`' for c in choices)}." if choices else ""
        lines.append(f"| `{f.name}` | `{flag}` | `{f.default!r}` | {f.metadata['help']}{extra} |"
                     .replace("``", ""))
    return "\n".join(lines) + "\n"
