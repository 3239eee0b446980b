"""``safeneuron quickstart``: the main job (identify, SafeNeuron DPO and plain DPO, attack all, print the table)."""

from __future__ import annotations

from ..options import PREFIX, SafeNeuronOptions
from .common import _judge, check_model_args, check_output
from .flags import options_from_args, parse_control


def cmd_quickstart(args) -> int:
    """The main job: identify, short SafeNeuron DPO and plain DPO, attack all, print the table."""
    from ..experiment import ExperimentConfig, print_summary, run_experiment

    opts = options_from_args(args)
    check_output(args.output_dir, "--output-dir", directory=True)
    check_model_args(args)
    _judge(args)
    identify_kwargs = {"max_prompts": 128, **{k: v for k, v in opts.identify_kwargs().items()
                                              if v != getattr(SafeNeuronOptions(), PREFIX + k)}}
    cfg = ExperimentConfig(model=args.model, out_dir=args.output_dir, variants=args.variants.split(","),
                           n_train_harmful=args.n_train, n_train_harmless=args.n_train,
                           n_eval_harmful=args.n_eval, n_eval_harmless=args.n_eval, epochs=args.epochs,
                           max_steps=args.max_steps, learning_rate=args.learning_rate, sft_weight=args.sft_weight,
                           train_harmful=args.train_harmful, train_harmless=args.train_harmless,
                           eval_harmful=args.eval_harmful, eval_harmless=args.eval_harmless,
                           max_new_tokens=args.max_new_tokens, sweep=args.sweep, seed=args.seed,
                           judge=args.judge, identify=identify_kwargs, progress=not args.quiet,
                           control_seeds=list(parse_control(args.control) or ()))
    print(f"SafeNeuron quickstart on {args.model}: identify its safety neurons, train plain safety DPO and "
          "SafeNeuron DPO from the same start, then attack both by pruning their own safety neurons.", flush=True)
    result = run_experiment(cfg)
    print()
    print("ASR = share of held-out harmful prompts answered with compliance (lower is safer);")
    print("FULL = after pruning the safety neurons re-identified on that model (95% Wilson interval beside it);")
    if cfg.control_seeds:
        print("random = after pruning as many random neurons in each layer instead (the control FULL is read against);")
    print("identification, training and evaluation prompts are disjoint (results.json: meta.split).")
    print(print_summary(result))
    print(f"\nReport with plots: {result['report']} (results.json, generations.jsonl, models/ beside it)")
    return 0
