"""`safeneuron judge`, `make-pairs`, `analyze`, `compare` and `capability`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..errors import OptionsError, PromptSourceError, SafeNeuronError
from ..files import ANALYSIS, CAPABILITY, IMAGE, PAIRS, VERDICTS, json_lines, write_file
from ..mask import NeuronMask
from .attack import _overlap_warning
from .common import (
    _judge,
    _load,
    _texts,
    check_identification,
    check_mask_on_model,
    check_model_args,
    check_output,
    check_outputs_in,
    input_files,
    read_replies,
)
from .families import _family_settings
from .flags import allow_other_weights, options_from_args


def cmd_judge(args) -> int:
    inputs = input_files(("--input", args.input))
    output = check_output(args.output, "--output", kind=VERDICTS, inputs=inputs)
    rows = read_replies(args.input)
    judge = _judge(args)
    verdicts = judge.judge([r["prompt"] for r in rows], [r["response"] for r in rows])
    write_file(output, json_lines({**row, "refused": v.refused, "label": v.label, "success": v.success,
                                   "partial_refusal": v.partial_refusal, "detail": v.detail, "judge": judge.name}
                                  for row, v in zip(rows, verdicts)), "--output", VERDICTS, inputs=inputs)
    rate = sum(v.refused for v in verdicts) / len(verdicts)
    partial = sum(v.partial_refusal for v in verdicts)
    from ..evaluate.judges import measured

    print(f"judge {judge.name} ({measured(judge.name)}): refusal rate {rate:.3f} "
          f"({sum(v.refused for v in verdicts)}/{len(verdicts)}"
          f"{f'; {partial} partial refusals, counted as compliance' if partial else ''}); wrote {args.output}")
    return 0


def cmd_make_pairs(args) -> int:
    from ..pairs import make_pairs

    inputs = input_files(("--harmful", args.harmful), ("--harmless", args.harmless), ("--prune-mask", args.prune_mask))
    out = check_output(args.out, "--out", kind=PAIRS, inputs=inputs)
    check_model_args(args)
    harmful = _texts(args.harmful, "harmful", args.limit, "--harmful")
    harmless = _texts(args.harmless, "harmless", args.limit, "--harmless")
    judge = _judge(args)
    allow = allow_other_weights(args, "--prune-mask")
    rejected_mask = NeuronMask.load(args.prune_mask) if args.prune_mask else None
    model, tokenizer = _load(args)
    rows, counts = make_pairs(model, tokenizer, harmful, harmless, judge=judge,
                              max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size,
                              include_evasive=args.include_evasive, conversational=args.format == "conversational",
                              seed=args.seed, progress=not args.quiet, rejected_mask=rejected_mask,
                              allow_other_weights=allow, harmless_rejected=args.harmless_rejected)
    write_file(out, json_lines(rows), "--out", PAIRS, inputs=inputs)
    print(f"wrote {len(rows)} preference pairs to {out}: {counts}")
    return 0


def cmd_analyze(args) -> int:
    import json

    from ..evaluate.analysis import category_overlap, plot_depth_heatmap, plot_overlap

    out = check_output(args.out_dir, "--out-dir", directory=True)
    if not args.masks and not args.model:
        raise SafeNeuronError("give mask files to compare layer profiles, and/or --model for the category overlap.")
    check_outputs_in(out, "--out-dir", {"analysis.json": ANALYSIS, **({"depth_heatmap.png": IMAGE} if args.masks else {}),
                                        **({"category_overlap.png": IMAGE} if args.model else {})},
                     input_files(*(("MASK", m) for m in args.masks)))
    masks = {Path(p).stem: NeuronMask.load(p) for p in args.masks}
    by_cat: dict[str, list[str]] = {}
    if args.model:
        from ..identification.prompts import load_prompts

        check_model_args(args)
        opts = options_from_args(args)
        check_identification(opts)
        for p in load_prompts(opts.safeneuron_harmful, kind="harmful", option="--harmful"):
            by_cat.setdefault(p.category or "uncategorised", []).append(p.text)
        by_cat = {c: t for c, t in by_cat.items() if len(t) >= args.min_per_category}
        if len(by_cat) < 2:
            raise PromptSourceError("--by-category needs harmful prompts with a `category` field and at least 2 "
                                    f"categories of >= {args.min_per_category} prompts.")
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    if masks:
        print(f"heatmap: {plot_depth_heatmap(masks, out / 'depth_heatmap.png', flag='--out-dir')}")
        report["masks"] = {n: m.num_neurons for n, m in masks.items()}
    if args.model:
        from ..identification import identify

        model, tokenizer = _load(args)
        masks = {c: identify(model, tokenizer, texts, options=opts, progress=not args.quiet)
                 for c, texts in sorted(by_cat.items())}
        overlap = category_overlap(masks)
        report["overlap"] = overlap
        print(json.dumps(overlap, indent=2))
        print(f"plot: {plot_overlap(overlap, out / 'category_overlap.png', flag='--out-dir')}")
    write_file(out / "analysis.json", json.dumps(report, indent=2), "--out-dir", ANALYSIS)
    print(f"wrote {out / 'analysis.json'}")
    return 0


def cmd_compare(args) -> int:
    from ..evaluate.capability import load_reference_pairs
    from ..evaluate.report import evaluate_model, report_files, write_report
    from ..models import load_model

    out_dir = check_output(args.out_dir, "--out-dir", directory=True)
    check_outputs_in(out_dir, "--out-dir", report_files(args.format),
                     input_files(("--harmful", args.eval_harmful), ("--harmless", args.eval_harmless),
                                 ("--reference-answers", args.reference_answers)))
    check_model_args(args)
    harmful = _texts(args.eval_harmful, "harmful", args.limit, "--harmful")
    harmless = _texts(args.eval_harmless, "harmless", args.limit, "--harmless")
    pairs = load_reference_pairs(args.reference_answers, args.limit)
    opts = options_from_args(args)
    check_identification(opts, "--identify-harmful", "--identify-harmless")
    _overlap_warning(opts, harmful)
    judge = _judge(args)
    lm_tasks = _check_lm_eval_args(args)
    settings = _family_settings(args, opts, harmful)
    reference = original = None
    results = {}
    for spec in args.models:
        model, tokenizer = load_model(spec, dtype=args.dtype, device=args.device)
        if "direction" in settings.families:  # a bad candidate layer fails before any attack runs
            from ..evaluate.attack_direction import resolve_candidates

            resolve_candidates(model, tokenizer, settings.layers, settings.positions,
                               system_prompt=opts.safeneuron_system_prompt, mlp_modules=opts.safeneuron_mlp_modules)
        results[spec] = evaluate_model(model, tokenizer, harmful=harmful, harmless=harmless,
                                       reference_pairs=pairs, reference=reference, options=opts, judge=judge,
                                       max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size,
                                       progress=not args.quiet)
        if lm_tasks:
            results[spec].update(_compare_lm_eval(args, model, tokenizer, lm_tasks, results[spec]["_mask"],
                                                  opts.safeneuron_mlp_modules))
        if len(settings.families) > 1:
            from ..evaluate.families import run_families

            extra = run_families(model, tokenizer, harmful, settings, judge=judge, original=original,
                                 max_new_tokens=args.max_new_tokens, batch_size=args.gen_batch_size,
                                 system_prompt=opts.safeneuron_system_prompt, max_length=opts.safeneuron_max_length,
                                 mlp_modules=opts.safeneuron_mlp_modules, progress=not args.quiet)
            results[spec]["families"] = extra["families"]
            results[spec]["generations"] += extra["generations"]
            if original is None:
                original = extra["_direction"]
            elif "direction" in extra["families"]:
                extra["families"]["direction"]["direction"]["cosine_to_original"]["original"] = args.models[0]
        if reference is None:
            reference = model
    path = write_report(results, args.out_dir, fmt=args.format, flag="--out-dir")
    print(f"report: {path}")
    return 0


def _check_lm_eval_args(args) -> list[str] | None:
    """--lm-eval's task names, checked (lm_eval installed, names known, --lm-eval-include a task directory)
    before any model is loaded; None without --lm-eval (its companion flags are then an error)."""
    if args.lm_eval is None:
        for dest, flag in (("lm_eval_include", "--lm-eval-include"), ("lm_eval_limit", "--lm-eval-limit"),
                           ("lm_eval_pruned", "--lm-eval-pruned")):
            if getattr(args, dest, None):
                raise OptionsError(f"{flag} belongs to --lm-eval TASKS; add --lm-eval or drop {flag}.")
        return None
    from ..evaluate.lm_eval_capability import check_tasks, parse_tasks, require_lm_eval

    require_lm_eval("--lm-eval")
    tasks = parse_tasks(args.lm_eval)
    check_tasks(tasks, args.lm_eval_include)
    return tasks


def _compare_lm_eval(args, model, tokenizer, tasks: list[str], mask: NeuronMask, mlp_modules: str | None) -> dict:
    """compare --lm-eval: the model's lm-evaluation-harness scores, and with --lm-eval-pruned also under the
    attack's FULL(SN-) mask (its safety neurons re-identified on it)."""
    from ..evaluate.lm_eval_capability import lm_eval_scores

    kw = dict(include_path=args.lm_eval_include, limit=args.lm_eval_limit, mlp_modules=mlp_modules,
              progress=not args.quiet)
    scores = {"lm_eval": lm_eval_scores(model, tokenizer, tasks, **kw)}
    if args.lm_eval_pruned:
        scores["lm_eval_full"] = lm_eval_scores(model, tokenizer, tasks, mask=mask.subset("full"), **kw)
    return scores


def cmd_capability(args) -> int:
    """lm-evaluation-harness scores of a model, optionally with a mask's neurons pruned while it runs."""
    import json

    from ..evaluate.lm_eval_capability import lm_eval_scores
    from ..evaluate.lm_eval_report import format_scores

    inputs = input_files(("--mask", args.mask))
    out = check_output(args.out, "--out", kind=CAPABILITY, inputs=inputs)
    check_model_args(args)
    tasks = _check_lm_eval_args(args)
    if args.mlp_modules:
        from ..architectures import parse_mlp_modules

        parse_mlp_modules(args.mlp_modules)
    allow = allow_other_weights(args)
    mask = NeuronMask.load(args.mask) if args.mask else None
    model, tokenizer = _load(args)
    if mask is not None:
        check_mask_on_model(mask, model, args.mlp_modules, allow)
    start = time.perf_counter()
    scores = lm_eval_scores(model, tokenizer, tasks, mask=mask, allow_other_weights=allow,
                            include_path=args.lm_eval_include,
                            limit=args.limit, batch_size=args.batch_size, num_fewshot=args.num_fewshot,
                            apply_chat_template=args.chat_template, mlp_modules=args.mlp_modules,
                            progress=not args.quiet)
    result = {"model": args.model, "mask": args.mask, **scores, "seconds": round(time.perf_counter() - start, 1)}
    write_file(out, json.dumps(result, indent=2), "--out", CAPABILITY, inputs=inputs)
    pruned = f", {scores['pruned_neurons']} neurons of {args.mask} pruned" if mask is not None else ""
    print(format_scores(scores, f"{args.model}{pruned} (lm-evaluation-harness {scores['lm_eval_version']}):"))
    print(f"wrote {out}")
    return 0


def add_lm_eval_flags(parser: argparse.ArgumentParser, *, required: bool = False) -> None:
    g = parser.add_argument_group("capability through lm-evaluation-harness (pip install 'safeneuron-plugins[lm-eval]')")
    g.add_argument("--lm-eval", default=None, required=required, metavar="TASKS",
                   help="comma-separated lm-evaluation-harness tasks, e.g. arc_easy,truthfulqa_mc2,gsm8k (their data "
                        "come from the Hugging Face hub or its cache), or tasks of --lm-eval-include")
    g.add_argument("--lm-eval-include", default=None, metavar="DIR",
                   help="a directory of lm-evaluation-harness task YAML files (local tasks, e.g. tests/data/lm_eval_tasks)")

