"""The ``safeneuron`` command line.

    safeneuron identify MODEL --out mask.safetensors [--harmful SRC] [--harmless SRC] [...]
    safeneuron attack MODEL [--mask FILE] --harmful SRC --out results.json [--control random] [--attacker best]
    safeneuron attack MODEL --family direction|finetune --harmful SRC --out results.json [...]
    safeneuron judge --input replies.jsonl --output verdicts.jsonl
    safeneuron attack MODEL --harmful SRC --image-prompts FILE --out results.json   # a VLM: text vs image ASR
    safeneuron make-image-prompts --out-dir DIR [--harmful SRC] [--harmless SRC]     # typographic images
    safeneuron make-pairs MODEL --out pairs.jsonl
    safeneuron analyze MASK [MASK ...] | --model MODEL --by-category
    safeneuron compare ORIGINAL BASELINE SAFENEURON ... --out-dir report/ [--families pruning,direction,finetune]
        [--lm-eval TASKS]
    safeneuron capability MODEL --lm-eval TASKS [--lm-eval-include DIR] [--mask M] --out results.json
    safeneuron quickstart            # the README's main job on the default model
    safeneuron options [--markdown]  # every safeneuron_* option with its documentation

Identification flags are generated from :class:`SafeNeuronOptions` (``--tau-es`` sets
``safeneuron_tau_es``), so they can never disagree with the adapters' option names.
"""

from .parser import build_parser, main

__all__ = ["build_parser", "main"]
