"""Framework-agnostic training-time SafeNeuron: mask in force, exact freezing, forward pruning,
iterative re-identification, saving and resuming. Adapters call these methods from their hooks."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from .architectures import find_mlp_layers
from .distributed import is_main_process, reset_zero3_trace
from .errors import UnsupportedSetupError
from .fingerprint import fingerprint
from .freeze import NeuronFreezer
from .freeze.lora import is_lora
from .mask import NeuronMask
from .options import SafeNeuronOptions, option_names
from .prune import PassCount, PromptRows, pruned
from .quantization import check_no_packed_bnb_weights

logger = logging.getLogger("safeneuron")


def warn_if_freezing_off(options: SafeNeuronOptions, given: Iterable[str] | None = None, *,
                         where: str = "the configuration") -> str | None:
    """Log (WARNING, logger ``safeneuron``) and return a warning when SafeNeuron options are set but
    ``safeneuron_freeze`` is not true: then nothing is frozen and a mask is never even checked against
    the model. ``given``: the option names the user set (default: those that differ from the default).
    Every host adapter (Trainer callback, Axolotl, LLaMA-Factory) calls this; None when all is well."""
    if options.safeneuron_freeze:
        return None
    defaults = SafeNeuronOptions()
    if given is None:
        names = [n for n in option_names() if getattr(options, n) != getattr(defaults, n)]
    else:
        names = [n for n in option_names() if n in set(given)]
    names = [n for n in names if n != "safeneuron_freeze"]
    if not names:
        return None
    state = "false" if given is not None and "safeneuron_freeze" in set(given) else "not set"
    message = (f"SafeNeuron: {', '.join(names)} {'is' if len(names) == 1 else 'are'} set in {where}, but "
               f"safeneuron_freeze is {state}: NOTHING will be frozen and no mask is checked against the model. "
               "Set safeneuron_freeze: true to freeze the safety neurons, or remove the safeneuron_* options.")
    logger.warning(message)
    return message


def _tokenizer_of(processing_class):
    return getattr(processing_class, "tokenizer", None) or processing_class


class SafeNeuronTraining:
    """The SafeNeuron state of one training run of one policy model."""

    def __init__(self, options: SafeNeuronOptions) -> None:
        self.options = options
        self.freezer: NeuronFreezer | None = None
        self.model: nn.Module | None = None
        self.tokenizer = None
        self._prune: contextlib.ExitStack | None = None
        self.attack_mask: NeuronMask | None = None  # safeneuron_adversarial_steps: the policy's current top neurons
        self.prune_rows: PromptRows | None = None  # safeneuron_forward_prune_prompts: the examples pruned
        self.passes = PassCount()  # the policy's training passes since the last dashboard(), and those pruned
        self.reidentifications = 0
        self.reidentified_neurons = 0  # neurons the re-identifications added to the frozen set

    @property
    def mask(self) -> NeuronMask | None:
        return self.freezer.mask if self.freezer else None

    # ------------------------------------------------------------------------------------
    def begin(self, model: nn.Module, processing_class=None, *, output_dir: str | None = None,
              resume_dir: str | None = None, optimizer=None) -> NeuronMask:
        """Load, restore or identify the mask; start freezing (and pruning). Before any backward."""
        if self.freezer is not None:
            raise UnsupportedSetupError("SafeNeuron freezing is already attached to a model in this "
                                        "run; attach one SafeNeuronCallback per trainer.")
        o = self.options
        self.model = model
        self.tokenizer = _tokenizer_of(processing_class)
        layers = find_mlp_layers(model, o.safeneuron_mlp_modules)
        check_no_packed_bnb_weights(model)
        if (o.safeneuron_reidentify_steps or o.safeneuron_reidentify_on_epoch_end) and any(
                is_lora(m) for m in model.modules()):
            # a neuron found in a later round already has non-zero lora_B rows; B[i] @ A moves with lora_A, which
            # keeps training for the other neurons, so its weights could not be held exactly
            raise UnsupportedSetupError(
                "safeneuron_reidentify_steps / safeneuron_reidentify_on_epoch_end with a LoRA adapter: a neuron "
                "found after training started has adapter rows the training already changed, and their update "
                "keeps moving with lora_A, so it cannot be frozen exactly. Freeze the initial mask only (unset "
                "the re-identification options), or train full parameters to re-identify.")
        if o.safeneuron_forward_prune_prompts is not None:  # a bad file is refused before an identification
            self.prune_rows = self._prompt_rows()
        fp = fingerprint(model, layers)
        mask = self._resumed_mask(resume_dir) if resume_dir else None
        if mask is None and o.safeneuron_mask:
            mask = NeuronMask.load(o.safeneuron_mask)
            source = f"mask file {o.safeneuron_mask}"
        elif mask is None:
            mask = self._identify()
            source = "identified on the initial policy"
        else:
            source = f"restored from checkpoint {resume_dir}"
        if resume_dir:
            # the mask was identified on the weights training started from, which have trained since: compare
            # the structure only (strict on the weights, every resumed run would fail)
            mask.check_compatible(fp, what="safeneuron_mask", allow_other_weights=True)
        else:
            # identified here: the same weights; a file: refused when made on other weights unless the option
            for warning in mask.check_compatible(fp, what="safeneuron_mask",
                                                 allow_other_weights=o.safeneuron_allow_other_weights):
                logger.warning(warning)
        self.freezer = NeuronFreezer(model, layers, mask,
                                     include_down_proj=o.safeneuron_freeze_down_proj).attach()
        if resume_dir and (Path(resume_dir) / self.ATTACK_NAME).is_file():
            self.attack_mask = NeuronMask.load(Path(resume_dir) / self.ATTACK_NAME)
        elif o.safeneuron_adversarial_steps and self.attack_mask is None:
            self.attack_mask = mask  # what an attacker finds on the initial policy, until the first re-identification
        if optimizer is not None and resume_dir is None:
            self.freezer.zero_optimizer_state(optimizer)
        self._start_pruning()
        self._log_start(source)
        if output_dir:
            self.save(output_dir)
        return mask

    def _identify(self) -> NeuronMask:
        from .identification import identify

        if self.tokenizer is None:
            raise UnsupportedSetupError(
                "safeneuron_freeze needs the safety neurons: give safeneuron_mask (a file from "
                "`safeneuron identify`), or pass the tokenizer to the trainer (processing_class) so the "
                "callback can identify them on the initial policy.")
        mask = identify(self.model, self.tokenizer, options=self.options)
        reset_zero3_trace(self.model)
        return mask

    def _prompt_rows(self) -> PromptRows:
        from .identification.prompts import load_prompts

        if self.tokenizer is None:
            raise UnsupportedSetupError(
                "safeneuron_forward_prune_prompts finds its prompts in the training examples by their tokens: pass "
                "the tokenizer to the trainer (processing_class), or unset the option to prune every example.")
        prompts = load_prompts(self.options.safeneuron_forward_prune_prompts,
                               option="safeneuron_forward_prune_prompts", min_prompts=1)
        logger.info("SafeNeuron: training-time pruning applies to the examples holding one of %d prompts (%s).",
                    len(prompts), self.options.safeneuron_forward_prune_prompts)
        return PromptRows(self.tokenizer, [p.text for p in prompts])

    def _resumed_mask(self, resume_dir: str) -> NeuronMask:
        path = Path(resume_dir) / self.options.safeneuron_output_name
        if path.is_file():
            return NeuronMask.load(path)
        if self.options.safeneuron_mask:
            logger.warning("resuming from %s, which holds no SafeNeuron mask; using safeneuron_mask=%s",
                           resume_dir, self.options.safeneuron_mask)
            return NeuronMask.load(self.options.safeneuron_mask)
        raise UnsupportedSetupError(
            f"Resuming from {resume_dir}, but it holds no {self.options.safeneuron_output_name}: the "
            "neurons frozen before cannot be known, and re-identifying on trained weights would freeze "
            "different ones. Pass safeneuron_mask=<the mask of the original run (its output_dir)>.")

    def _start_pruning(self) -> None:
        """(Re)attach the training-time pruning hooks: the frozen set (safeneuron_forward_prune) and the
        adversarial set (safeneuron_adversarial_steps), each neuron with safeneuron_forward_prune_probability."""
        if self._prune is not None:
            self._prune.close()
            self._prune = None
        if self.freezer is None:
            return
        target = self.freezer.mask if self.options.safeneuron_forward_prune else None
        if self.attack_mask is not None:
            target = self.attack_mask if target is None else target.union(self.attack_mask)
        if target is not None:
            self._prune = contextlib.ExitStack()
            self._prune.enter_context(pruned(self.model, list(self.freezer.layers.values()), target,
                                             only_training=True,
                                             probability=self.options.safeneuron_forward_prune_probability,
                                             pass_probability=self.options.safeneuron_forward_prune_pass_probability,
                                             rows=self.prune_rows, passes=self.passes))

    def _log_start(self, source: str) -> None:
        f = self.freezer
        rows = f.per_layer_report()
        total = f.mask.num_neurons
        of = f.mask.total_neurons_in_model()
        share = f" of {of} ({100 * total / of:.2f}%)" if of else ""
        logger.info("SafeNeuron: freezing %d safety neurons%s, %d parameters (%s)%s.", total, share,
                    f.num_frozen_parameters, source,
                    "; forward pruning on" if self.options.safeneuron_forward_prune else "")
        logger.info("SafeNeuron per layer (layer:neurons/parameters): %s",
                    " ".join(f"{r['layer']}:{r['neurons']}/{r['parameters']}" for r in rows))

    # ------------------------------------------------------------------------------------
    def after_optimizer_step(self) -> None:
        if self.freezer is not None:
            self.freezer.restore()

    def reidentify(self, optimizer=None, output_dir: str | None = None) -> NeuronMask:
        """Iterative mode: identify on the current model, freeze the union."""
        new = self._identify()
        before = self.freezer.mask.num_neurons
        mask = self.freezer.extend(new)
        self.freezer.zero_optimizer_state(optimizer)
        self._start_pruning()
        self.reidentifications += 1
        self.reidentified_neurons += mask.num_neurons - before
        logger.info("SafeNeuron: re-identified %d neurons; %d frozen now (was %d).", new.num_neurons,
                    mask.num_neurons, before)
        if output_dir:
            self.save(output_dir)
        return mask

    def attack(self, output_dir: str | None = None) -> NeuronMask:
        """Adversarial re-identification: identify on the current policy as an attacker would and prune
        those neurons in the training forward passes from now on (nothing more is frozen)."""
        self.attack_mask = self._identify()
        self._start_pruning()
        logger.info("SafeNeuron: training under the attack: %d neurons of the current policy pruned in its "
                    "forward passes%s.", self.attack_mask.num_neurons,
                    f" (each with probability {self.options.safeneuron_forward_prune_probability})"
                    if self.options.safeneuron_forward_prune_probability < 1 else "")
        if output_dir:
            self.save(output_dir)
        return self.attack_mask

    def dashboard(self) -> dict[str, float]:
        """What a training dashboard shows under ``safeneuron/`` (the Trainer callback adds it to every log):
        the neurons and parameters frozen, the largest change of a frozen entry since it was frozen (0 while
        freezing holds), the re-identifications so far and the neurons they added, and the share of the
        policy's training passes since the previous call that ran under pruning (0 when training-time pruning
        is off). Empty before freezing starts."""
        if self.freezer is None:
            return {}
        seen, pruned_passes = self.passes.seen, self.passes.pruned
        self.passes.seen = self.passes.pruned = 0
        return {"safeneuron/frozen_neurons": self.freezer.mask.num_neurons,
                "safeneuron/frozen_parameters": self.freezer.num_frozen_parameters,
                "safeneuron/max_frozen_drift": self.freezer.max_drift(),
                "safeneuron/reidentifications": self.reidentifications,
                "safeneuron/reidentified_neurons": self.reidentified_neurons,
                "safeneuron/pruned_pass_share": pruned_passes / seen if seen else 0.0}

    #: where the adversarial set is kept beside the mask (restored on resume)
    ATTACK_NAME = "safeneuron_attack_mask.safetensors"

    def save(self, directory: str) -> Path | None:
        if self.freezer is None or not is_main_process():
            return None
        if self.attack_mask is not None:
            self.attack_mask.save(Path(directory) / self.ATTACK_NAME)
        return self.freezer.mask.save(Path(directory) / self.options.safeneuron_output_name)

    def end(self, output_dir: str | None = None) -> None:
        if self.freezer is None:
            return
        if self._prune is not None:
            self._prune.close()
            self._prune = None
        drift = self.freezer.check()
        if self.prune_rows is not None:
            r = self.prune_rows
            logger.info("SafeNeuron: %d of %d training rows held a safeneuron_forward_prune_prompts prompt and were "
                        "pruned.", r.matched, r.seen)
            if r.seen and not r.matched:
                logger.warning("SafeNeuron: NO training example held a prompt of safeneuron_forward_prune_prompts=%s, "
                               "so nothing was pruned in training. Give the prompts exactly as they appear in the "
                               "training data.", self.options.safeneuron_forward_prune_prompts)
        if output_dir:
            self.save(output_dir)
        self.freezer.detach()
        if drift:
            raise UnsupportedSetupError(f"SafeNeuron: frozen entries changed in {drift[:3]}; the "
                                        "training set-up bypassed the freezing hooks.")
