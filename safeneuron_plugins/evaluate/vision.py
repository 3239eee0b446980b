"""The pruning attack through images next to the text-only one (``safeneuron attack --image-prompts``).

Both runs prune the same mask under the same conditions (ORI, ES, SAS, FULL, the layer sweep, the random
control); the text run's results stay where they always are, the image run's go under ``image``, and
``asr_by_input`` puts each condition's two ASRs (with n and 95% Wilson intervals) side by side.
"""

from __future__ import annotations

from typing import Any


def side_by_side(results: dict[str, Any], through_images: dict[str, Any], source: str) -> dict[str, Any]:
    """Merge the image run into ``results`` (in place): ``image``, ``asr_by_input`` and the generations,
    each marked with its ``input`` (text or image)."""
    for g in results["generations"]:
        g["input"] = "text"
    image_generations = [dict(g, input="image") for g in through_images.pop("generations")]
    results["generations"] += image_generations
    results["image"] = {**through_images, "source": source}
    results["asr_by_input"] = {
        name: {kind: {"asr": run["rates"][name]["compliance"], "n": run["rates"][name]["n"],
                      "ci95": run["rates"][name]["ci95"]["compliance"]}
               for kind, run in (("text", results), ("image", through_images)) if name in run["rates"]}
        for name in results["rates"]}
    return results


def format_side_by_side(results: dict[str, Any]) -> str:
    """The console table: each condition's text-only and image ASR with their 95% Wilson intervals."""
    def cell(entry):
        if entry is None:
            return f"{'-':>24}"
        lo, hi = entry["ci95"]
        return f"{entry['asr']:>6.2f} [{lo:.2f},{hi:.2f}] n={entry['n']:<4}"

    lines = [f"ASR by input (text: --harmful, image: {results['image']['source']})",
             f"{'condition':<11} {'text-only':<24} {'through images':<24}"]
    for name, by in results["asr_by_input"].items():
        lines.append(f"{name:<11} {cell(by.get('text'))} {cell(by.get('image'))}")
    return "\n".join(lines)
