"""bench/reproduce.py writes into every results file the command that made it: that command, run again,
must mean the same settings, flags included, whatever defaults a recipe filled in."""

import shlex

import pytest


@pytest.mark.parametrize("argv", [
    ["--recipe", "qwen05", "--variants", "safeneuron_rounds8", "--no-gradient-checkpointing", "--keep-models"],
    ["--recipe", "qwen15"],  # turns on --pairs-pruned and --precompute-ref through its defaults
    ["--name", "x", "--n-eval", "8", "--sweep"],
])
def test_recorded_command_parses_back_to_the_same_settings(argv, bench_script):
    reproduce = bench_script("reproduce")
    parser = reproduce._parser()
    known, _ = parser.parse_known_args(argv)
    if known.recipe:  # as main() does
        parser.set_defaults(**reproduce.RECIPES[known.recipe])
    args = parser.parse_args(argv)
    command = reproduce._command(parser, args)
    assert command.startswith("python bench/reproduce.py ")
    again = reproduce._parser().parse_args(shlex.split(command)[2:])  # a fresh parser: no recipe defaults
    assert vars(again) == vars(args)
    flags = shlex.split(command)
    assert ("--no-gradient-checkpointing" in flags) == (not args.gradient_checkpointing)
    assert ("--pairs-pruned" in flags) == args.pairs_pruned
