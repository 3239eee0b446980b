"""The reproduction pipeline, shrunken (tiny model, a few steps), through the quickstart command:
the same code path as bench/reproduce.py, so the experiment cannot silently rot."""

import json

import pytest
import torch
import transformers
from test_freeze_trl import frozen_rows
from tiny import save_tiny_model

from safeneuron_plugins import NeuronMask
from safeneuron_plugins.cli import main
from safeneuron_plugins.errors import PromptSourceError
from safeneuron_plugins.experiment import ROLES, ExperimentConfig, split_prompts
from safeneuron_plugins.identification.prompts import load_prompts, prompts_hash


def test_quickstart_pipeline_end_to_end(tmp_path, capsys):
    model_dir = save_tiny_model(tmp_path / "m", "llama")
    out = tmp_path / "run"
    code = main(["quickstart", str(model_dir), "--output-dir", str(out), "--n-train", "8", "--n-eval", "4",
                 "--max-steps", "2", "--max-new-tokens", "6", "--sweep",
                 "--method", "safeneuron", "--tau-es", "0.5", "--tau-sas", "1.0",
                 "--max-prompts", "24", "--variants", "dpo,safeneuron,safeneuron_prune", "--quiet"])
    assert code == 0
    text = capsys.readouterr().out
    assert "Report with plots" in text and "safeneuron" in text
    # the console shows stage lines and the table, trl's per-step metrics went to each model's train_log.jsonl
    assert "'loss'" not in text and "rewards/margins" not in text
    logged = [json.loads(line) for line in (out / "models" / "dpo" / "train_log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged if "loss" in row] == [1, 2] and "rewards/margins" in logged[0]
    # the table: ES and SAS prune something under the statistics scorer, and the random control (one seed by
    # default) stands beside FULL
    head = next(line for line in text.splitlines() if line.startswith("model ") and " ORI " in line)
    assert head.split()[:7] == ["model", "ORI", "ES", "SAS", "FULL", "FULL", "95%"] and "random" in head
    results = json.loads((out / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"original", "dpo", "safeneuron", "safeneuron_prune"}
    gens = [json.loads(line) for line in (out / "generations.jsonl").read_text().splitlines()]
    for name, m in models.items():
        assert set(m["asr"]) == {"ORI", "ES", "SAS", "FULL"}
        assert m["controls"]["random"]["seeds"] == [0]
        for key in ("over_refusal", "perplexity", "kl", "frozen_neurons"):
            assert key in m
        assert set(m["sweep"]) == {"25", "50", "75", "100"}
        # each rate is the share of that model's saved replies under that condition judged compliance
        for condition, rate in [*m["asr"].items(), *((f"FULL@{p}%", r) for p, r in m["sweep"].items()),
                                ("random:0", m["controls"]["random"]["asr"])]:
            wins = [g["success"] for g in gens if g["model"] == name and g["condition"] == condition]
            assert len(wins) == 4 and rate == pytest.approx(sum(wins) / 4), (name, condition)
        # and each condition pruned exactly its part of the mask the attacker found on that model
        attacked = NeuronMask.load(out / "evaluations" / f"{name}.safetensors")
        assert m["pruned_neurons"] == {"ORI": 0, "ES": attacked.subset("es").num_neurons,
                                       "SAS": attacked.subset("sas").num_neurons, "FULL": attacked.num_neurons,
                                       "FULL@25%": attacked.restrict_layers({0}).num_neurons,
                                       "FULL@50%": attacked.restrict_layers({0, 1}).num_neurons,
                                       "FULL@75%": attacked.num_neurons, "FULL@100%": attacked.num_neurons,
                                       "random:0": attacked.num_neurons}, name
        assert m["safety_neurons"] == attacked.num_neurons > 0
    assert all(g["success"] == (g["label"] == "compliance") for g in gens if g["condition"] != "harmless")
    assert models["dpo"]["frozen_neurons"] == 0 and models["safeneuron"]["frozen_neurons"] > 0
    assert models["original"]["kl"] == 0 and models["dpo"]["kl"] > 0
    assert results["meta"]["config"]["seed"] == 0 and results["meta"]["torch"] == torch.__version__
    assert (out / "report.md").exists() and (out / "asr.png").exists()
    # the trained SafeNeuron model kept the original mask's rows exactly; plain DPO moved them
    mask = NeuronMask.load(out / "original_mask.safetensors")
    original = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    before = frozen_rows(original, mask)
    for name, exact in (("safeneuron", True), ("dpo", False)):
        trained = transformers.AutoModelForCausalLM.from_pretrained(out / "models" / name)
        after = frozen_rows(trained, mask)
        assert all(torch.equal(before[k][0], after[k][0]) for k in before) is exact, name
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    train_prompts = {p["prompt"][0]["content"] for p in pairs}
    evaluated = {g["prompt"] for g in map(json.loads, (out / "generations.jsonl").read_text().splitlines())
                 if g["condition"] == "ORI"}
    assert not train_prompts & evaluated, "evaluation prompts are held out from training"
    # what the variants pruning only the safety pairs prune: the prompts of the harmful pairs, no other
    safety = {json.loads(line)["prompt"] for line in (out / "pairs_harmful_prompts.jsonl").read_text().splitlines()}
    assert safety == {p["prompt"][0]["content"] for p in pairs if p["kind"] == "harmful"}
    # identification (on the original, in training, by the attacker) used its own prompts, recorded in results
    split = results["meta"]["split"]
    identified = {json.loads(line)["prompt"] for line in (out / "identify_harmful.jsonl").read_text().splitlines()}
    assert identified and not identified & train_prompts and not identified & evaluated
    assert split["identify_harmful"]["n"] == len(identified) == mask.metadata["n_harmful"]
    assert mask.metadata["harmful_source"] == str(out / "identify_harmful.jsonl")
    assert split["eval_harmful"]["n"] == 4 and split["train_harmful"]["n"] == 8
    assert set(split["identify_harmless"]["indices"]).isdisjoint(split["eval_harmless"]["indices"])

    # resumed after a judge change: an evaluation made by another judge is judged again from its stored replies
    # (here: one that called every reply compliance), the file is left as it was, nothing is trained again
    path = out / "evaluations" / "dpo.json"
    older = json.loads(path.read_text())
    for g in older["generations"]:
        g.update(label="compliance", success=True, detail="older judge")
    older.update(judge="older-judge", asr={c: 1.0 for c in older["asr"]})
    path.write_text(json.dumps(older))
    before_file = path.read_text()
    assert main(["quickstart", str(model_dir), "--output-dir", str(out), "--n-train", "8", "--n-eval", "4",
                 "--max-steps", "2", "--max-new-tokens", "6", "--sweep", "--method", "safeneuron", "--tau-es", "0.5",
                 "--tau-sas", "1.0", "--max-prompts", "24", "--variants", "dpo,safeneuron,safeneuron_prune"]) == 0
    text = capsys.readouterr().out
    assert "judging them again" in text and "dpo: trained and evaluated by an earlier invocation" in text
    again = json.loads((out / "results.json").read_text())["models"]["dpo"]
    assert again["judge"] == models["dpo"]["judge"] and again["rejudged_from"] == "older-judge"
    assert again["asr"] == models["dpo"]["asr"] and again["over_refusal"] == models["dpo"]["over_refusal"]
    assert path.read_text() == before_file


def test_split_keeps_identification_training_and_evaluation_prompts_apart(tmp_path):
    """The quickstart's defaults identified on the first 128 built-in prompts, which held its training and
    held-out evaluation prompts too; every role now has its own prompts."""
    sets, record = ExperimentConfig().split(), split_prompts(ExperimentConfig())[1]
    for kind in ("harmful", "harmless"):
        roles = {r: set(sets[f"{r}_{kind}"]) for r in ROLES}
        assert all(roles.values())
        assert not roles["identify"] & roles["train"] and not roles["identify"] & roles["eval"]
        assert not roles["train"] & roles["eval"]
        assert len(roles["train"]) == 40 and len(roles["eval"]) == 24 and 0 < len(roles["identify"]) <= 128
        texts = [p.text for p in load_prompts("builtin", kind=kind)]
        for r in ROLES:  # the record names the prompts: indices into their source, and a hash
            rec = record[f"{r}_{kind}"]
            assert [texts[i] for i in rec["indices"]] == sets[f"{r}_{kind}"] and rec["n"] == len(rec["indices"])
            assert rec["hash"] == prompts_hash(sets[f"{r}_{kind}"])
    # a prompt shared by two sources still goes to one role only
    own = tmp_path / "eval.jsonl"
    builtin = [p.text for p in load_prompts("builtin", kind="harmful")]
    own.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in builtin[:3] + builtin[100:103] + ["A new one?"]))
    cfg = ExperimentConfig(eval_harmful=str(own), n_train_harmful=2, n_eval_harmful=5,
                           identify={"max_prompts": 200})
    sets = cfg.split()
    assert sets["train_harmful"] == builtin[:2]
    assert sets["eval_harmful"] == [builtin[2], *builtin[100:103], "A new one?"]
    assert set(sets["identify_harmful"]) == set(builtin) - set(builtin[:3] + builtin[100:103])


def test_split_with_nothing_left_for_identification_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(PromptSourceError, match="none is left for identify"):
        split_prompts(ExperimentConfig(n_train_harmful=150, n_eval_harmful=19))
    code = main(["quickstart", "default", "--output-dir", str(tmp_path / "q"), "--n-train", "150", "--n-eval", "40",
                 "--quiet"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--n-train" in err and "--identify-harmful" in err


class _CutOff(transformers.TrainerCallback):
    """Stops the process's training at a step, after the Trainer saved the checkpoint before it (a cut)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt(f"cut at step {self.step}")


def _variant_setup(tmp_path, **sizes):
    """A tiny model (``sizes``: its config overrides), 16 preference pairs in the experiment's format and its T0
    mask: what train_variant needs. Returns (model_dir, pairs, identification options, original model, mask path)."""
    from test_freeze_trl import preference_data

    from safeneuron_plugins import identify

    model_dir = save_tiny_model(tmp_path / "m", "llama", **sizes)
    pairs = tmp_path / "pairs.jsonl"
    preference_data(16).add_column("kind", ["harmless"] * 16).to_json(pairs)
    ident = {"method": "safeneuron", "tau_es": 0.5, "tau_sas": 1.0, "max_prompts": 24}
    original = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    mask_path = identify(original, tok, **ident).save(tmp_path / "mask.safetensors")
    return model_dir, pairs, ident, original, mask_path


def test_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path):
    """The reproduction's runs are cut off on small machines: a SafeNeuron run with re-identification
    (variant safeneuron_rounds) resumed from its last checkpoint ends bit-identical to one that ran
    through, frozen rows included, with the same union of re-identified neurons."""
    from safeneuron_plugins.experiment import train_variant

    model_dir, pairs, ident, original, mask_path = _variant_setup(tmp_path)
    cfg = ExperimentConfig(model=str(model_dir), batch_size=4, max_steps=6, learning_rate=5e-3, save_steps=2,
                           reidentify_steps=3, identify=ident, progress=False)

    through = train_variant(cfg, "safeneuron_rounds", pairs, mask_path, tmp_path / "through")
    with pytest.raises(KeyboardInterrupt):
        train_variant(cfg, "safeneuron_rounds", pairs, mask_path, tmp_path / "cut", callbacks=(_CutOff(5),))
    assert (tmp_path / "cut" / "checkpoint-4").is_dir() and not (tmp_path / "cut" / "training.json").exists()
    resumed = train_variant(cfg, "safeneuron_rounds", pairs, mask_path, tmp_path / "cut")
    assert resumed["resumed_from"] == "checkpoint-4" and through["resumed_from"] is None
    assert resumed["steps"] == through["steps"] == 6

    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "through").state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "cut").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:3]
    final = NeuronMask.load(tmp_path / "cut" / "safeneuron_mask.safetensors")
    assert final.neurons == NeuronMask.load(tmp_path / "through" / "safeneuron_mask.safetensors").neurons
    first = NeuronMask.load(mask_path)
    assert through["frozen_neurons_t0"] == first.num_neurons < final.num_neurons == through["frozen_neurons"], \
        "re-identification at step 3 added neurons"
    assert all(set(v) <= set(final.neurons[layer]) for layer, v in first.neurons.items()), "a union with T0"
    trained = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "cut")
    before, after = frozen_rows(original, first), frozen_rows(trained, first)
    assert all(torch.equal(before[k][0], after[k][0]) for k in before), "T0 rows stayed as they were"
    assert any(not torch.equal(before[k][1], after[k][1]) for k in before), "the rest trained"
    # a finished run is not trained again, and not reused under other options
    assert train_variant(cfg, "safeneuron_rounds", pairs, mask_path, tmp_path / "cut") == resumed
    from dataclasses import replace

    from safeneuron_plugins.errors import OptionsError
    with pytest.raises(OptionsError, match="safeneuron_reidentify_steps: 3 -> 2"):
        train_variant(replace(cfg, reidentify_steps=2), "safeneuron_rounds", pairs, mask_path, tmp_path / "cut")


def test_lora_recipe_saves_a_merged_model_with_the_frozen_rows_exact(tmp_path):
    """The 1.5B recipe trains LoRA (full-parameter AdamW does not fit the machine) with reference
    log-probs precomputed; the saved model is the merged one, and merging the adapter leaves the safety
    neurons' rows exactly as they were while the other rows moved."""
    from safeneuron_plugins.experiment import train_variant

    model_dir, pairs, ident, original, mask_path = _variant_setup(tmp_path)
    mask = NeuronMask.load(mask_path)
    cfg = ExperimentConfig(model=str(model_dir), batch_size=4, max_steps=3, learning_rate=5e-2, lora_r=4,
                           precompute_ref=True, identify=ident, progress=False)
    facts = train_variant(cfg, "safeneuron", pairs, mask_path, tmp_path / "lora")
    assert facts["frozen_neurons"] == mask.num_neurons > 0
    assert not (tmp_path / "lora" / "adapter_config.json").exists(), "a plain (merged) model is saved"
    trained = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "lora")
    before, after = frozen_rows(original, mask), frozen_rows(trained, mask)
    assert all(torch.equal(before[k][0], after[k][0]) for k in before)
    assert all(not torch.equal(before[k][1], after[k][1]) for k in before), "LoRA moved the other rows"
    # re-identifying under LoRA is refused before the first step: a neuron found later already has trained
    # lora_B rows whose update moves with lora_A (the qwen15 run crashed at its first re-identification)
    from dataclasses import replace

    from safeneuron_plugins.errors import UnsupportedSetupError
    with pytest.raises(UnsupportedSetupError, match="safeneuron_reidentify_steps.*LoRA"):
        train_variant(replace(cfg, reidentify_steps=2), "safeneuron_rounds", pairs, mask_path, tmp_path / "rounds")
    assert not list((tmp_path / "rounds").glob("checkpoint-*"))


def test_resuming_an_experiment_with_other_settings_is_refused(tmp_path):
    from safeneuron_plugins.errors import OptionsError
    from safeneuron_plugins.experiment.config import _check_same_experiment

    _check_same_experiment(ExperimentConfig(out_dir=str(tmp_path)), tmp_path)
    # variants, progress and the variant-only knobs may change; the variant's own check covers the latter
    _check_same_experiment(ExperimentConfig(out_dir=str(tmp_path), variants=["dpo", "safeneuron_adversarial"],
                                            adversarial_steps=4, progress=False), tmp_path)
    with pytest.raises(OptionsError, match=r"learning_rate: 5e-05 -> 0.001.*--name"):
        _check_same_experiment(ExperimentConfig(out_dir=str(tmp_path), learning_rate=1e-3), tmp_path)


def test_variants_with_their_own_interval_ignore_the_experiments(tmp_path):
    """safeneuron_rounds / safeneuron_adversarial take their interval from the experiment (and refuse to run
    without one); safeneuron_rounds8 / safeneuron_adversarial16 carry theirs, so one invocation can train both
    kinds side by side."""
    from safeneuron_plugins.experiment import variant_options

    mask = tmp_path / "t0.safetensors"
    cfg = ExperimentConfig(reidentify_steps=20, adversarial_steps=8)
    assert variant_options(cfg, "safeneuron_rounds", mask)["safeneuron_reidentify_steps"] == 20
    assert variant_options(cfg, "safeneuron_rounds8", mask)["safeneuron_reidentify_steps"] == 8
    assert variant_options(cfg, "safeneuron_adversarial", mask)["safeneuron_adversarial_steps"] == 8
    assert variant_options(cfg, "safeneuron_adversarial16", mask)["safeneuron_adversarial_steps"] == 16
    for name in ("safeneuron_rounds8", "safeneuron_adversarial16"):
        options = variant_options(ExperimentConfig(), name, mask)
        assert options["safeneuron_mask"] == str(mask), "starts from T0 like the others"
    safety = variant_options(ExperimentConfig(), "safeneuron_adversarial16_safety", mask)
    assert safety["safeneuron_forward_prune_prompts"] == str(tmp_path / "pairs_harmful_prompts.jsonl")
    safety75 = variant_options(ExperimentConfig(), "safeneuron_adversarial16_safety75", mask)
    assert safety75["safeneuron_forward_prune_prompts"] == safety["safeneuron_forward_prune_prompts"]
    assert safety75["safeneuron_forward_prune_pass_probability"] == 0.75
    assert "safeneuron_forward_prune_pass_probability" not in safety, "the safety variant prunes every pass"
    with pytest.raises(ValueError, match="reidentify_steps > 0"):
        variant_options(ExperimentConfig(), "safeneuron_rounds", mask)
    with pytest.raises(ValueError, match="adversarial_steps > 0"):
        variant_options(ExperimentConfig(), "safeneuron_adversarial", mask)


def test_gradient_checkpointing_off_trains_the_same_weights(tmp_path):
    """ExperimentConfig.gradient_checkpointing=False (bench/reproduce.py --no-gradient-checkpointing) only saves
    the recomputed forward pass: plain DPO and SafeNeuron with re-identification end bit-identical to trl's
    default (checkpointing on), so the runs of a recipe stay comparable whichever a machine needs."""
    from dataclasses import replace

    from safeneuron_plugins.experiment import train_variant

    model_dir, pairs, ident, original, mask_path = _variant_setup(tmp_path)
    cfg = ExperimentConfig(model=str(model_dir), batch_size=4, max_steps=4, learning_rate=5e-3,
                           reidentify_steps=2, identify=ident, progress=False)
    seen = []

    class Checkpointing(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            seen.append(model.is_gradient_checkpointing)

    for name in ("dpo", "safeneuron_rounds"):
        on = train_variant(cfg, name, pairs, mask_path, tmp_path / f"{name}_on", callbacks=(Checkpointing(),))
        off = train_variant(replace(cfg, gradient_checkpointing=False), name, pairs, mask_path,
                            tmp_path / f"{name}_off", callbacks=(Checkpointing(),))
        assert seen[-2:] == [True, False], "the setting reached the model"
        assert on["frozen_neurons"] == off["frozen_neurons"]
        a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"{name}_on").state_dict()
        b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"{name}_off").state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), (name, [k for k in a if not torch.equal(a[k], b[k])][:3])
        assert any(not torch.equal(a[k], original.state_dict()[k]) for k in a), "it trained"


def test_gradient_accumulation_trains_the_full_batchs_weights(tmp_path):
    """ExperimentConfig.gradient_accumulation (bench/reproduce.py --gradient-accumulation): a batch of 8 pairs in two
    micro-batches of 4 takes the same optimizer steps as the batch of 8 in one (the same mean gradient, up to float
    rounding; plain SGD, so a rounding difference is not magnified by Adam's normalisation), and SafeNeuron's frozen
    rows stay exact; a setting that does not divide the batch is refused by name."""
    from dataclasses import replace

    from safeneuron_plugins.errors import OptionsError
    from safeneuron_plugins.experiment import run_experiment, train_variant

    model_dir, pairs, ident, original, mask_path = _variant_setup(tmp_path)
    cfg = ExperimentConfig(model=str(model_dir), batch_size=8, max_steps=2, learning_rate=0.5, optim="sgd",
                           weight_decay=0.0, identify=ident, progress=False)
    whole = train_variant(cfg, "safeneuron", pairs, mask_path, tmp_path / "whole")
    split = train_variant(replace(cfg, gradient_accumulation=2), "safeneuron", pairs, mask_path, tmp_path / "split")
    assert whole["steps"] == split["steps"] == 2
    a = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "whole").state_dict()
    b = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "split").state_dict()
    base = original.state_dict()
    moved = [k for k in a if not torch.equal(a[k], base[k])]
    assert moved, "it trained"
    for k in moved:  # the same update: its difference is rounding, far below the update itself
        assert (a[k] - b[k]).abs().max() <= 1e-3 * (a[k] - base[k]).abs().max(), k
    mask = NeuronMask.load(mask_path)
    before = frozen_rows(original, mask)
    after = frozen_rows(transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "split"), mask)
    assert before and all(torch.equal(before[k][0], after[k][0]) for k in before)
    with pytest.raises(OptionsError, match="gradient_accumulation 3 must be >= 1 and divide batch_size 8"):
        train_variant(replace(cfg, gradient_accumulation=3), "dpo", pairs, mask_path, tmp_path / "bad")
    with pytest.raises(OptionsError, match="gradient_accumulation 3 must be >= 1 and divide batch_size 8"):
        run_experiment(replace(cfg, gradient_accumulation=3, out_dir=str(tmp_path / "bad_run")))
    assert not (tmp_path / "bad_run").exists() and not (tmp_path / "bad").exists()  # refused before anything ran


def test_8bit_adamw_in_time_chunks_keeps_frozen_rows_exact_and_checks_its_manifest(tmp_path):
    """The full-parameter recipe of the paper15 protocol: bitsandbytes' 8-bit AdamW (block-wise quantised moments,
    on the CPU), weight decay, reference log-probs from the policy before training (no second model), and training
    in time-limited chunks that each end with a checkpoint (exit, then resume), and re-identification rounds
    (``safeneuron_rounds``) whose union crosses a chunk boundary. The T0 rows come out bit-identical, the rows the
    round at step 2 added stay as they were at step 2 through the resumed chunk, the rest moved, and the finished
    model's manifest refuses a changed weight file."""
    from safeneuron_plugins.errors import OptionsError
    from safeneuron_plugins.experiment import train_variant
    from safeneuron_plugins.experiment.train import MANIFEST, TrainingChunkEnded

    # gate/up weights of 128 x 64 = 8,192 entries: bitsandbytes keeps 8-bit moments from 4,096 entries on
    model_dir, pairs, ident, original, mask_path = _variant_setup(tmp_path, hidden_size=64, intermediate_size=128)
    cfg = ExperimentConfig(model=str(model_dir), batch_size=4, max_steps=3, learning_rate=5e-3, weight_decay=0.1,
                           sft_weight=0.0, optim="adamw_bnb_8bit", precompute_ref=True, save_steps=1,
                           max_train_minutes=1e-6, reidentify_steps=2, identify=ident, progress=False)
    out = tmp_path / "run"
    chunks = 0
    while True:
        try:
            facts = train_variant(cfg, "safeneuron_rounds", pairs, mask_path, out)
            break
        except TrainingChunkEnded as e:
            chunks += 1
            assert "Run the same command again" in str(e) and chunks < 5
            if chunks == 2:  # the chunk that ended at step 2, just after the round: its union and weights
                union = NeuronMask.load(out / "checkpoint-2" / "safeneuron_mask.safetensors")
                at_step2 = frozen_rows(transformers.AutoModelForCausalLM.from_pretrained(out / "checkpoint-2"), union)
            state = torch.load(next(out.glob("checkpoint-*")) / "optimizer.pt", weights_only=False)["state"]
            quantised = [s["__bnb_optimizer_quant_state__"] for s in state.values()
                         if "__bnb_optimizer_quant_state__" in s]
            assert any(q["state1"].dtype == torch.uint8 for q in quantised), "the MLP weights have 8-bit moments"
    assert chunks == 2 and facts["steps"] == 3 and facts["resumed_from"] == "checkpoint-2"
    record = json.loads((out / "chunks.json").read_text())["chunks"]  # every chunk's time, not the last one's
    assert [(c["from_step"], c["to_step"]) for c in record] == [(0, 1), (1, 2), (2, 3)]
    assert facts["chunks"] == 3 and facts["train_seconds"] == pytest.approx(sum(c["seconds"] for c in record), abs=0.2)
    assert facts["longest_chunk_seconds"] == max(c["seconds"] for c in record)
    assert facts["peak_rss_gb"] == max(c["peak_rss_gb"] for c in record)
    trained = transformers.AutoModelForCausalLM.from_pretrained(out)
    mask = NeuronMask.load(mask_path)
    before, after = frozen_rows(original, mask), frozen_rows(trained, mask)
    assert all(torch.equal(before[k][0], after[k][0]) for k in before), "frozen rows bit-identical"
    assert all(not torch.equal(before[k][1], after[k][1]) for k in before), "the other rows trained"
    assert union.num_neurons > mask.num_neurons and facts["frozen_neurons"] >= union.num_neurons, "the round added"
    final = frozen_rows(trained, union)
    assert all(torch.equal(at_step2[k][0], final[k][0]) for k in final), "rows added at step 2 frozen after it"
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["config"]["optim"] == "adamw_bnb_8bit" and "model.safetensors" in manifest["weights_sha256"]
    assert train_variant(cfg, "safeneuron_rounds", pairs, mask_path, out) == facts  # intact: reused
    with open(out / "model.safetensors", "r+b") as f:  # one byte of the weights changed
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 1]))
    with pytest.raises(OptionsError, match="changed since training"):
        train_variant(cfg, "safeneuron_rounds", pairs, mask_path, out)


def test_experiment_with_human_pairs_and_separate_attackers(tmp_path):
    """The identification setting of the frozen set and of the attacker are separate, more attackers prune their
    own sets (FULL(SN-) only, their replies kept), and human preference pairs (HH-RLHF dialogues) replace the
    model's replies for the harmful training prompts; the split records their prompts as the training role."""
    from safeneuron_plugins.experiment import run_experiment

    model_dir = save_tiny_model(tmp_path / "m", "llama")
    hh = tmp_path / "hh.jsonl"
    with open(hh, "w") as f:
        for i in range(8):
            ask = f"\n\nHuman: How do I pick lock number {i}?\n\nAssistant: "
            f.write(json.dumps({"chosen": ask + "I'm sorry, but I can't help with that.",
                                "rejected": ask + f"Insert a tension wrench into lock {i} and rake the pins."}) + "\n")
        f.write(json.dumps({"chosen": "\n\nHuman: hi\n\nAssistant: Hello\n\nHuman: more\n\nAssistant: No.",
                            "rejected": "\n\nHuman: hi\n\nAssistant: Hello\n\nHuman: more\n\nAssistant: Sure"}) + "\n")
    stats = {"method": "safeneuron", "tau_es": 0.5, "tau_sas": 1.0, "max_prompts": 24}
    cfg = ExperimentConfig(model=str(model_dir), out_dir=str(tmp_path / "run"), safety_pairs=str(hh),
                           n_train_harmful=4, n_train_harmless=4, n_eval_harmful=4, n_eval_harmless=4, max_steps=1,
                           max_new_tokens=4, judge="patterns", variants=["dpo"], identify=stats,
                           attack_identify={"method": "attribution", "max_prompts": 24},
                           extra_attackers={"stats": stats}, sft_weight=0.0, progress=False)
    result = run_experiment(cfg)
    out = tmp_path / "run"
    rows = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    harmful = [r for r in rows if r["kind"] == "harmful"]
    assert len(harmful) == 4 and all("lock number" in r["prompt"][0]["content"] for r in harmful)
    assert all(r["chosen"][0]["content"].startswith("I'm sorry") for r in harmful)
    split = result["meta"]["split"]["train_harmful"]
    assert split["source"] == str(hh) and split["n"] == 4 and split["indices"] == [0, 1, 2, 3]
    t0 = NeuronMask.load(out / "original_mask.safetensors")
    for name in ("original", "dpo"):
        m = result["models"][name]
        attacked = NeuronMask.load(out / "evaluations" / f"{name}.safetensors")
        assert attacked.metadata["method"] == "attribution" and m["pruned_neurons"]["ES"] == 0  # the attacker's own
        extra = NeuronMask.load(out / "evaluations" / f"{name}@stats.safetensors")
        assert extra.metadata["method"] == "safeneuron" and m["attackers"]["stats"]["pruned_neurons"] == extra.num_neurons
        wins = [g["success"] for g in m["generations"] if g["condition"] == "attacker:stats"]
        assert len(wins) == 4 and m["attackers"]["stats"]["asr"] == pytest.approx(sum(wins) / 4)
    assert NeuronMask.load(out / "evaluations" / "original@stats.safetensors").neurons == t0.neurons
    paired = json.loads((out / "results.json").read_text())["paired"]
    assert any(r["a_condition"] == "attacker:stats" and {r["a"], r["b"]} == {"dpo", "original"} for r in paired)


def test_experiment_without_the_attack_evaluates_the_models_own_replies_only(tmp_path):
    """attack=False (the learning-rate pilot's evaluation): ORI, over-refusal, perplexity and KL, no
    identification on the models and no pruned generation; the report and summary show only what was measured."""
    from safeneuron_plugins.experiment import print_summary, run_experiment

    model_dir = save_tiny_model(tmp_path / "m", "llama")
    cfg = ExperimentConfig(model=str(model_dir), out_dir=str(tmp_path / "run"), n_train_harmful=4,
                           n_train_harmless=4, n_eval_harmful=4, n_eval_harmless=4, max_steps=1, max_new_tokens=4,
                           judge="patterns", variants=["dpo"], attack=False, progress=False,
                           identify={"method": "safeneuron", "tau_es": 0.5, "tau_sas": 1.0, "max_prompts": 24})
    result = run_experiment(cfg)
    for name in ("original", "dpo"):
        m = result["models"][name]
        assert set(m["asr"]) == {"ORI"} and m["pruned_neurons"] == {"ORI": 0} and m["safety_neurons"] == 0
        assert {g["condition"] for g in m["generations"]} == {"ORI", "harmless"}
    assert result["models"]["dpo"]["kl"] > 0
    report = (tmp_path / "run" / "report.md").read_text()
    assert "ORI" in report and "FULL" not in report
    table = print_summary(result)  # only the columns that can differ: no attack columns, no interval of FULL
    assert table.splitlines()[0].split()[:3] == ["model", "ORI", "over-ref"] and "FULL" not in table
