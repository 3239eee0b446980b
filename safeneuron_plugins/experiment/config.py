"""What one experiment runs: the training variants, the sizes and hyper-parameters (:class:`ExperimentConfig`),
the prompt split into identification / training / evaluation roles, and the checks that a resumed
invocation computes the same thing as the one it resumes."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..identification.prompts import load_prompts, prompts_hash
from ..options import SafeNeuronOptions

logger = logging.getLogger("safeneuron")

#: a variant's ``safeneuron_forward_prune_prompts``: the harmful prompts of the experiment's own safety pairs, in this
#: file beside them (written once the pairs exist)
SAFETY_PAIR_PROMPTS = "pairs_harmful_prompts.jsonl"

#: SafeNeuron training variants; "dpo" is the plain safety-DPO baseline.
VARIANTS: dict[str, dict[str, Any]] = {
    "dpo": {"safeneuron_freeze": False},
    "safeneuron": {"safeneuron_freeze": True},
    "safeneuron_prune": {"safeneuron_freeze": True, "safeneuron_forward_prune": True},
    "safeneuron_down": {"safeneuron_freeze": True, "safeneuron_freeze_down_proj": True},
    "safeneuron_ratio": {"safeneuron_freeze": True, "safeneuron_neuron_ratio": 0.10},
    # the same at 2% and 5%: the frozen set's size between T0's 1% and 10%
    "safeneuron_ratio2": {"safeneuron_freeze": True, "safeneuron_neuron_ratio": 0.02},
    "safeneuron_ratio5": {"safeneuron_freeze": True, "safeneuron_neuron_ratio": 0.05},
    "safeneuron_iter": {"safeneuron_freeze": True, "safeneuron_reidentify_on_epoch_end": True},
    # the paper's protocol at CPU size: T0 from the original's mask, then re-identify every
    # ExperimentConfig.reidentify_steps optimizer steps (union with the earlier set)
    "safeneuron_rounds": {"safeneuron_freeze": True},
    # the paper's four rounds (T0..T3) in a 32-step run: re-identify every 8 steps, whatever reidentify_steps says
    "safeneuron_rounds8": {"safeneuron_freeze": True, "safeneuron_reidentify_steps": 8},
    # stochastic forward pruning: the frozen neurons zeroed with probability 0.5 in each training pass
    "safeneuron_stochastic": {"safeneuron_freeze": True, "safeneuron_forward_prune": True,
                              "safeneuron_forward_prune_probability": 0.5},
    # training under the attack: the policy's current top neurons pruned, re-identified every
    # ExperimentConfig.adversarial_steps steps (the frozen set stays T0)
    "safeneuron_adversarial": {"safeneuron_freeze": True},
    # the same, re-identified every 16 steps: the last attack set is trained against for half the run, while the
    # cosine schedule's learning rate is still high (every 8 steps left it 8 steps at a low rate)
    "safeneuron_adversarial16": {"safeneuron_freeze": True, "safeneuron_adversarial_steps": 16},
    # the same, with half of the training passes unpruned, so that the unpruned model it ships is trained too (the
    # every-pass variant over-refuses: 0.27 vs 0.02 at 1.5B)
    "safeneuron_adversarial16_half": {"safeneuron_freeze": True, "safeneuron_adversarial_steps": 16,
                                      "safeneuron_forward_prune_pass_probability": 0.5},
    # the same, with only the safety pairs' passes pruned: the helpfulness pairs train the unpruned network that ships
    # (at 0.5 of the passes the robustness went with the over-refusal, 1.5B: FULL(SN-) 0.84 vs 0.59)
    "safeneuron_adversarial16_safety": {"safeneuron_freeze": True, "safeneuron_adversarial_steps": 16,
                                        "safeneuron_forward_prune_prompts": SAFETY_PAIR_PROMPTS},
    # the same, with a quarter of the passes unpruned, so the unpruned network also trains on the safety pairs
    # (pruned in every pass, 1.5B: ORI 0.20 vs plain DPO's 0.05, the attack 0.55 vs 0.91)
    "safeneuron_adversarial16_safety75": {"safeneuron_freeze": True, "safeneuron_adversarial_steps": 16,
                                          "safeneuron_forward_prune_prompts": SAFETY_PAIR_PROMPTS,
                                          "safeneuron_forward_prune_pass_probability": 0.75},
    "safeneuron_product": {"safeneuron_freeze": True, "safeneuron_signal": "product", "safeneuron_neuron_ratio": 0.05},
}


@dataclass
class ExperimentConfig:
    """Sizes and hyper-parameters of one run (defaults: the quickstart)."""

    model: str = "default"
    out_dir: str = "runs/quickstart"
    train_harmful: str = "builtin:harmful"
    train_harmless: str = "builtin:harmless"
    eval_harmful: str = "builtin:harmful"
    eval_harmless: str = "builtin:harmless"
    pairs_model: str | None = None   # the model whose replies make the pairs (default: ``model``)
    pairs_pruned: bool = False       # replies to harmful training prompts with the T0 safety neurons pruned
    #                                  (a model that refuses nearly all of them gives compliant ones so)
    harmless_rejected: str = "refusal"  # what a helpfulness pair rejects: "refusal" (a template), "other_answer"
    #                                  (the model's answer to another harmless prompt) or "model:PATH" (its answer)
    train_offset: int = 0            # skip this many prompts of each training source
    n_train_harmful: int = 40
    n_train_harmless: int = 40
    n_eval_harmful: int = 24
    n_eval_harmless: int = 24
    reference_answers: str | None = None
    variants: list[str] = field(default_factory=lambda: ["dpo", "safeneuron"])
    epochs: float = 1.0
    max_steps: int = -1
    learning_rate: float = 5e-5
    beta: float = 0.1
    sft_weight: float = 1.0
    weight_decay: float = 0.05
    batch_size: int = 8          # preference pairs per optimizer step
    gradient_accumulation: int = 1  # > 1: the batch in this many micro-batches (less activation memory, same mean gradient)
    max_length: int = 160
    seed: int = 0
    max_new_tokens: int = 32
    pairs_max_new_tokens: int | None = None  # of the model's replies that make pairs (default: max_new_tokens)
    gen_batch_size: int = 16
    judge: str = "relevance"
    sweep: bool = False
    control_seeds: list[int] = field(default_factory=list)  # random neurons at FULL(SN-)'s per-layer counts
    save_steps: int = 0          # checkpoint every N steps (0: none); an interrupted run resumes from the last
    reidentify_steps: int = 0    # safeneuron_rounds: re-identify every N optimizer steps
    adversarial_steps: int = 0   # safeneuron_adversarial: re-identify the pruned set every N optimizer steps
    lora_r: int = 0              # > 0: LoRA of this rank on every linear layer instead of full parameters
    precompute_ref: bool = False  # reference log-probs computed once before training (trl)
    gradient_checkpointing: bool = True  # trl's default; False: no recomputed forward in the backward pass, the
    #                                      same weights (tested) for less time per step and more activation memory
    device: str | None = None    # e.g. "cuda": models, training and evaluation there (default: CPU)
    dtype: str = "float32"       # of the evaluated models ("bfloat16" on a GPU); training keeps fp32 master
    #                              weights, in bf16 mixed precision on a GPU
    identify: dict[str, Any] = field(default_factory=lambda: {"max_prompts": 128})
    # the attacker's identification settings (as ``identify``; None: the same as ``identify``)
    attack_identify: dict[str, Any] | None = None
    # more attackers, FULL(SN-) only: name -> identification settings; replies kept as ``attacker:NAME``
    extra_attackers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # human preference pairs for the harmful training prompts (JSON lines: trl's rows or HH-RLHF's dialogues)
    safety_pairs: str | None = None
    safety_pairs_max_words: int = 96
    safety_pairs_chosen: str = "refusal_or_evasive"  # or "refusal": pairs whose chosen reply is a refusal only
    optim: str = "adamw_torch"   # transformers' name, e.g. adamw_bnb_8bit; freeze_embeddings: the (tied) embedding too
    freeze_embeddings: bool = False
    max_train_minutes: float = 0  # > 0: one invocation trains this long at most, checkpoints and stops (resume)
    attack: bool = True  # False: every model's own replies only (ORI), over-refusal, perplexity and KL; no attack
    progress: bool = True

    def split(self) -> dict[str, list[str]]:
        """The prompt lists of every role (see :func:`split_prompts`)."""
        return split_prompts(self)[0]


#: what each prompt role is used for; the roles never share a prompt
ROLES = ("identify", "train", "eval")


def _canonical(source: str, kind: str) -> str:
    return f"builtin:{kind}" if source == "builtin" else source


def split_prompts(cfg: ExperimentConfig) -> tuple[dict[str, list[str]], dict[str, dict[str, Any]]]:
    """The one split of the experiment's prompts into disjoint roles, for each kind (harmful, harmless):

    - ``train_KIND``: ``n_train_KIND`` prompts of ``train_KIND`` from ``train_offset`` on (the preference pairs);
    - ``eval_KIND``: ``n_eval_KIND`` prompts of ``eval_KIND``, after the training ones when it is the same
      source (the attack, over-refusal and KL);
    - ``identify_KIND``: up to ``identify["max_prompts"]`` prompts of the identification source
      (``identify["KIND"]``, default the built-in set) that are neither training nor evaluation prompts
      (identification on the original model, during training, and the attacker's re-identification).

    A prompt text is used by one role only, even when it appears in several sources. Returns the prompt
    lists and a record of the split (per role: source, requested and actual count, the prompts' indices
    in their source and a hash of the list), which ``results.json`` keeps under ``meta.split``."""
    from ..errors import PromptSourceError

    cache: dict[tuple[str, str], list[str]] = {}

    def load(src: str, kind: str) -> list[str]:
        key = (_canonical(src, kind), kind)
        if key not in cache and kind == "harmful" and src == cfg.safety_pairs:
            cache[key] = [p["prompt"] for p in safety_pairs(cfg)]
        if key not in cache:
            cache[key] = [p.text for p in load_prompts(src, kind=kind, option=f"{kind} prompts ({src})")]
        return cache[key]

    default_identify = SafeNeuronOptions()
    sets: dict[str, list[str]] = {}
    record: dict[str, dict[str, Any]] = {}
    for kind in ("harmful", "harmless"):
        train_src, eval_src = getattr(cfg, f"train_{kind}"), getattr(cfg, f"eval_{kind}")
        if kind == "harmful" and cfg.safety_pairs:  # the prompts of the human preference pairs
            train_src = cfg.safety_pairs
        ident_src = cfg.identify.get(kind, getattr(default_identify, f"safeneuron_{kind}"))
        n_train, n_eval = getattr(cfg, f"n_train_{kind}"), getattr(cfg, f"n_eval_{kind}")
        same = _canonical(train_src, kind) == _canonical(eval_src, kind)
        plan = (("train", train_src, cfg.train_offset, n_train),
                ("eval", eval_src, cfg.train_offset + n_train if same else 0, n_eval),
                ("identify", ident_src, 0, cfg.identify.get("max_prompts")))
        used: set[str] = set()
        for role, src, start, n in plan:
            texts = load(src, kind)
            picked: list[int] = []
            for i in range(start, len(texts)):
                if n is not None and len(picked) >= n:
                    break
                if texts[i] not in used:
                    used.add(texts[i])
                    picked.append(i)
            if not picked:
                others = ", ".join(f"{r} {len(sets.get(f'{r}_{kind}', []))}" for r in ROLES if f"{r}_{kind}" in sets)
                raise PromptSourceError(
                    f"{kind} prompts: {src!r} has {len(texts)} prompts and none is left for {role} after the "
                    f"other roles took theirs ({others}); identification, training and evaluation never share a "
                    f"prompt. Lower --n-train / --n-eval, or give the {role} prompts another source"
                    + (f" (--identify-{kind})." if role == "identify" else f" (--{role}-{kind})."))
            if n is not None and len(picked) < n and role != "identify":  # identify's count is a cap
                logger.warning("%s_%s: %d prompts instead of %d (%s has no more that no other role uses)",
                               role, kind, len(picked), n, src)
            chosen = [texts[i] for i in picked]
            sets[f"{role}_{kind}"] = chosen
            record[f"{role}_{kind}"] = {"source": src, "requested": n, "n": len(chosen), "indices": picked,
                                        "hash": prompts_hash(chosen)}
    for kind in ("harmful", "harmless"):  # by construction; a cheap guard against a future edit
        for i, a in enumerate(ROLES):
            for b in ROLES[i + 1:]:
                assert not set(sets[f"{a}_{kind}"]) & set(sets[f"{b}_{kind}"]), (a, b, kind)
    return sets, record


def safety_pairs(cfg: ExperimentConfig) -> list[dict[str, str]]:
    """The pairs of ``cfg.safety_pairs`` that teach refusal (:func:`~safeneuron_plugins.pairs.select_safety_pairs`),
    read and judged once per file version (the split and the pairs both need them)."""
    stat = Path(cfg.safety_pairs).stat() if Path(cfg.safety_pairs).is_file() else None
    key = (cfg.safety_pairs, stat and (stat.st_mtime_ns, stat.st_size), cfg.safety_pairs_max_words,
           cfg.safety_pairs_chosen)
    return [dict(p) for p in _selected_safety_pairs(*key)]


@lru_cache(maxsize=4)
def _selected_safety_pairs(path: str, version, max_words: int, chosen: str) -> tuple[dict[str, str], ...]:
    from ..pairs import read_preference_pairs, select_safety_pairs

    return tuple(select_safety_pairs(read_preference_pairs(path), max_words=max_words, chosen=chosen))


def identification_options(cfg: ExperimentConfig, out: Path, setting: dict[str, Any] | None = None) -> dict[str, Any]:
    """``setting`` (default ``cfg.identify``: T0 and the rounds; attackers pass theirs) reading all the split's
    identification prompts that the run in ``out`` wrote there (``identify_harmful.jsonl``, ``..._harmless``)."""
    return dict(cfg.identify if setting is None else setting, max_prompts=None,
                **{kind: str(out / f"identify_{kind}.jsonl") for kind in ("harmful", "harmless")})


def check_gradient_accumulation(cfg: ExperimentConfig) -> None:
    """A clear error, before anything is loaded, when ``gradient_accumulation`` cannot split the batch."""
    if cfg.gradient_accumulation < 1 or cfg.batch_size % cfg.gradient_accumulation:
        from ..errors import OptionsError
        raise OptionsError(f"gradient_accumulation {cfg.gradient_accumulation} must be >= 1 and divide batch_size "
                           f"{cfg.batch_size} (the pairs of one optimizer step); e.g. --gradient-accumulation 2")


def attackers(cfg: ExperimentConfig) -> dict[str, dict[str, Any]]:
    """Every attacker's settings (``""``: the main one, then the extra ones), checked by the options schema."""
    from ..errors import OptionsError
    from ..options import SafeNeuronOptions

    found = {"": cfg.identify if cfg.attack_identify is None else cfg.attack_identify, **cfg.extra_attackers}
    for name, setting in found.items():
        try:
            SafeNeuronOptions.from_dict({f"safeneuron_{k}": v for k, v in setting.items()},
                                        source=f"attacker {name or 'main'}")
        except OptionsError as e:
            raise OptionsError(f"attacker {name or 'main'}: {e}") from None
    return found


#: the variants whose interval is the experiment's setting (the others carry their own): variant -> (option, field)
_INTERVAL_FROM_EXPERIMENT = {"safeneuron_rounds": ("safeneuron_reidentify_steps", "reidentify_steps"),
                             "safeneuron_adversarial": ("safeneuron_adversarial_steps", "adversarial_steps")}


def variant_options(cfg: ExperimentConfig, name: str, mask_path: Path,
                    identify: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``safeneuron_*`` options variant ``name`` trains with."""
    options = dict(VARIANTS[name])
    if name in _INTERVAL_FROM_EXPERIMENT:
        option, field_ = _INTERVAL_FROM_EXPERIMENT[name]
        if not getattr(cfg, field_):
            raise ValueError(f"variant {name} needs {field_} > 0 (--{field_.replace('_', '-')} N)")
        options[option] = getattr(cfg, field_)
    if options.get("safeneuron_forward_prune_prompts") == SAFETY_PAIR_PROMPTS:
        options["safeneuron_forward_prune_prompts"] = str(mask_path.parent / SAFETY_PAIR_PROMPTS)
    if options.get("safeneuron_freeze"):
        if not {"safeneuron_neuron_ratio", "safeneuron_signal"} & set(options):
            # T0: the mask identified once on the original (re-identifying variants extend it later)
            options["safeneuron_mask"] = str(mask_path)
        options.update({f"safeneuron_{k}": v for k, v in (cfg.identify if identify is None else identify).items()})
    return options


def _check_same_variant(name: str, recorded: dict[str, Any], options: dict[str, Any], where: Path) -> None:
    """A variant trained by an earlier invocation is reused only with the options it was trained with."""
    changed = _differences(recorded, {k: v for k, v in options.items() if k != "safeneuron_mask"})
    if changed:
        from ..errors import OptionsError
        raise OptionsError(
            f"{where}: variant {name} was trained with other options ({changed}). Give another output "
            "directory (--name), or delete that variant's model and evaluation to train it again.")


def _differences(before: dict[str, Any], now: dict[str, Any]) -> str:
    """'' when equal; else the changed keys and the first three changes, ``old -> new``."""
    changed = sorted(k for k in set(now) | set(before) if now.get(k) != before.get(k))
    if not changed:
        return ""
    return (f"{', '.join(changed)}: "
            f"{', '.join(f'{before.get(k)!r} -> {now.get(k)!r}' for k in changed[:3])}")


#: config fields that do not change what an earlier invocation computed
_RESUMABLE = {"variants", "progress", "out_dir", "max_train_minutes", "attack",  # (an ORI-only evaluation is redone)
              "gradient_checkpointing",  # the same weights either way (tests/core/test_reproduce.py)
              "reidentify_steps", "adversarial_steps"}  # one variant's each: checked per variant


def _check_same_experiment(cfg: ExperimentConfig, out: Path) -> None:
    """Resuming reuses the mask, pairs, trained models and evaluations in ``out``; refuse if they were
    made with other settings (nothing is deleted)."""
    path = out / "experiment.json"
    mine = {k: v for k, v in asdict(cfg).items() if k not in _RESUMABLE}
    if path.is_file():
        # settings added to ExperimentConfig since that run was made count as their defaults
        theirs = {k: v for k, v in {**asdict(ExperimentConfig()), **json.loads(path.read_text())}.items()
                  if k not in _RESUMABLE}
        changed = _differences(theirs, mine)
        if changed:
            from ..errors import OptionsError
            raise OptionsError(
                f"{out} holds an earlier run of this experiment made with other settings ({changed}); its mask, pairs, "
                "models and evaluations would not match. Give another output directory (--name), or delete it "
                "to start over.")
    else:
        from ..files import EXPERIMENT, write_file

        write_file(path, json.dumps(mine, indent=2), "--output-dir", EXPERIMENT)
