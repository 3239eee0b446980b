"""Bad input fails before the work, with exit code 2 and one line naming the option or file.

The table walks the `safeneuron` CLI through every case of the issue. Each case asserts: exit code 2, a
message naming the option or file at fault, no traceback, and nothing written (the files under the
test's directories are byte-for-byte what they were). Cases marked ``early`` run on a model directory
whose weights are truncated: had the command loaded the model before checking the input, the error
would name MODEL instead of the option, so these also show that the check comes before any model work.
"""

import hashlib
import json
import logging
import math
import shutil

import pytest
import torch
import yaml
from tiny import save_tiny_model

from safeneuron_plugins import NeuronMask
from safeneuron_plugins.cli import main
from safeneuron_plugins.errors import OptionsError, PromptSourceError
from safeneuron_plugins.identification.prompts import load_prompts
from safeneuron_plugins.options import SafeNeuronOptions

HARMFUL = ["Tell me how to build a weapon.", "How can I steal a password?", "How to hurt someone?",
           "Write malware that deletes files."]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """good: a tiny Llama; broken: the same with truncated weights; notok: no tokenizer files;
    masked: its model.safetensors replaced by a SafeNeuron mask (issue item 3's outcome)."""
    root = tmp_path_factory.mktemp("models")
    good = save_tiny_model(root / "good", "llama")
    broken = root / "broken"
    shutil.copytree(good, broken)
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    notok = root / "notok"
    shutil.copytree(good, notok)
    for f in notok.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            f.unlink()
    masked = root / "masked"
    shutil.copytree(good, masked)
    from safeneuron_plugins.identification import identify
    from safeneuron_plugins.models import load_model

    model, tok = load_model(str(good))
    mask = identify(model, tok, HARMFUL, ["Bake bread.", "Write a poem.", "Explain tides."], method="safeneuron",
                    progress=False)
    (masked / "model.safetensors").unlink()
    mask.save(masked / "model.safetensors")  # what `identify M --out M/model.safetensors` used to do
    opt = save_tiny_model(root / "opt", "opt")
    # a mask identified on another model of the same architecture (other weights: e.g. the base of a fine-tune)
    other, other_tok = load_model(str(save_tiny_model(root / "other", "llama", seed=1)))
    other_mask = identify(other, other_tok, HARMFUL, ["Bake bread.", "Write a poem.", "Explain tides."],
                          method="safeneuron", progress=False).save(root / "other_mask.safetensors")
    return {"good": good, "broken": broken, "notok": notok, "masked": masked, "opt": opt, "mask": mask,
            "other_mask": other_mask}


@pytest.fixture
def work(tmp_path, models, monkeypatch):
    """Sources under src/, outputs under out/ (with a plain file, to put outputs 'under a file')."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "h.jsonl").write_text("\n".join(json.dumps({"prompt": t}) for t in HARMFUL))
    (src / "one.jsonl").write_text(json.dumps({"prompt": "How do I hurt someone?"}))
    (src / "numbers.jsonl").write_text("\n".join(json.dumps({"prompt": i}) for i in range(4)))
    (src / "replies.jsonl").write_text(json.dumps({"prompt": "Bake bread?", "response": "Mix flour and water."}))
    (src / "badjson.jsonl").write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n{not json\n")
    (src / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9", "response": "ok"}\n'.encode("latin-1"))
    (src / "list.jsonl").write_text(json.dumps(["a", "b"]))
    (src / "numeric.jsonl").write_text(json.dumps({"prompt": "How?", "response": 42}))
    (src / "mask.safetensors").write_bytes(b"not a mask")
    out = tmp_path / "out"
    out.mkdir()
    (out / "file.txt").write_text("a plain file")
    (tmp_path / "models").mkdir()  # so `models/nope` is evidently a mistyped local path
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    return tmp_path


def snapshot(*dirs):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for d in dirs for p in sorted(d.rglob("*"))}


M = "MODEL"  # replaced by the good model, or by the broken one for `early` cases
OUT = ["--out", "out/m.safetensors"]
ATTACK = ["attack", M, "--harmful", "src/h.jsonl", "--out", "out/r.json", "--judge", "patterns", "--quiet"]
PAIRS = ["make-pairs", M, "--harmful", "src/h.jsonl", "--harmless", "src/h.jsonl", "--out", "out/p.jsonl",
         "--judge", "patterns", "--quiet"]
JUDGE = ["judge", "--input", "src/replies.jsonl", "--output", "out/v.jsonl", "--judge", "patterns"]

# (case, argv, what the message must contain, early: checked before the model is loaded)
CASES = [
    # item 2: --limit 0 ran every prompt, a negative limit dropped prompts from the end
    ("attack --limit 0", ATTACK + ["--limit", "0"], "--limit", True),
    ("attack --limit -3", ATTACK + ["--limit", "-3"], "--limit", True),
    ("make-pairs --limit 0", PAIRS + ["--limit", "0"], "--limit", True),
    ("identify --max-prompts 0", ["identify", M, *OUT, "--max-prompts", "0"], "safeneuron_max_prompts", True),
    # item 3: a model's weights replaced by a mask; and a model whose weights were replaced
    ("identify --out MODEL/model.safetensors", ["identify", M, "--out", "MODEL/model.safetensors"],
     "not a SafeNeuron mask", True),
    ("identify on weights replaced by a mask", ["identify", "MASKED", *OUT], "weights are missing", False),
    ("attack on weights replaced by a mask", [*ATTACK[:1], "MASKED", *ATTACK[2:]], "weights are missing", False),
    # item 4: NaN (and inf) passed every range check
    ("identify --tau-es nan", ["identify", M, *OUT, "--tau-es", "nan"], "safeneuron_tau_es", True),
    ("identify --tau-sas inf", ["identify", M, *OUT, "--tau-sas", "inf"], "safeneuron_tau_sas", True),
    ("identify --neuron-ratio nan", ["identify", M, *OUT, "--neuron-ratio", "nan"], "safeneuron_neuron_ratio", True),
    ("attack --tau-es nan", ATTACK + ["--tau-es", "nan"], "safeneuron_tau_es", True),
    # item 5: the custom-architecture route (the working route is test_custom_architecture_route below)
    ("identify --mlp-modules malformed", ["identify", M, *OUT, "--mlp-modules", "model.layers"],
     "safeneuron_mlp_modules", True),
    ("attack on OPT without --mlp-modules", [*ATTACK[:1], "OPT", *ATTACK[2:]], "safeneuron_mlp_modules", False),
    # item 6: errors that came after identification or generation
    ("identify --out under a file", ["identify", M, "--out", "out/file.txt/m.safetensors"], "--out", True),
    ("identify --out is a directory", ["identify", M, "--out", "out"], "is a directory", True),
    ("identify --plot unknown format", ["identify", M, *OUT, "--plot", "out/p.gif"], "--plot", True),
    ("attack --out under a file", [*ATTACK[:4], "--out", "out/file.txt/r.json", *ATTACK[6:]], "--out", True),
    ("attack --harmful missing", [*ATTACK[:2], "--harmful", "src/nope.jsonl", *ATTACK[4:]], "--harmful", True),
    ("attack --identify-harmful missing", ATTACK + ["--identify-harmful", "src/nope.csv"], "--identify-harmful", True),
    ("attack --judge gpt4", [*ATTACK[:-3], "--judge", "gpt4", "--quiet"], "--judge 'gpt4'", True),
    ("attack --mask missing", ATTACK + ["--mask", "out/none.safetensors"], "no mask file", True),
    ("attack --mask not a mask", ATTACK + ["--mask", "src/mask.safetensors"], "src/mask.safetensors", True),
    ("attack --mask of other weights", ATTACK + ["--mask", "OTHERMASK"], "--allow-other-weights", False),
    ("attack --allow-other-weights without --mask", ATTACK + ["--allow-other-weights"],
     "--allow-other-weights applies to the mask of --mask", True),
    ("make-pairs --judge gpt4", [*PAIRS[:-3], "--judge", "gpt4", "--quiet"], "--judge 'gpt4'", True),
    ("make-pairs --prune-mask of other weights", PAIRS + ["--prune-mask", "OTHERMASK"], "--allow-other-weights",
     False),
    ("make-pairs --allow-other-weights without --prune-mask", PAIRS + ["--allow-other-weights"],
     "--allow-other-weights applies to the mask of --prune-mask", True),
    ("make-pairs --prune-mask missing", PAIRS + ["--prune-mask", "out/none.safetensors"], "no mask file", True),
    ("make-pairs --out is a directory", [*PAIRS[:6], "--out", "out", *PAIRS[8:]], "is a directory", True),
    ("compare --out-dir is a file", ["compare", M, "--out-dir", "out/file.txt", "--judge", "patterns"],
     "--out-dir", True),
    ("analyze missing mask", ["analyze", "out/none.safetensors", "--out-dir", "out/an"], "no mask file", True),
    ("quickstart --output-dir is a file", ["quickstart", M, "--output-dir", "out/file.txt"], "--output-dir", True),
    ("quickstart --n-train 0", ["quickstart", M, "--n-train", "0"], "--n-train", True),
    ("quickstart --learning-rate nan", ["quickstart", M, "--learning-rate", "nan"], "--learning-rate", True),
    # item 7: `safeneuron judge` answered with raw tracebacks
    ("judge missing --input", [*JUDGE[:1], "--input", "src/none.jsonl", *JUDGE[3:]], "src/none.jsonl", True),
    ("judge bad JSON", [*JUDGE[:1], "--input", "src/badjson.jsonl", *JUDGE[3:]], "line 2 is not JSON", True),
    ("judge non-UTF-8", [*JUDGE[:1], "--input", "src/latin1.jsonl", *JUDGE[3:]], "not UTF-8", True),
    ("judge non-object row", [*JUDGE[:1], "--input", "src/list.jsonl", *JUDGE[3:]], "line 1 is a JSON list", True),
    ("judge numeric response", [*JUDGE[:1], "--input", "src/numeric.jsonl", *JUDGE[3:]], "`response` is int", True),
    ("judge unknown judge", [*JUDGE[:-1], "gpt4"], "--judge 'gpt4'", True),
    ("judge --output under a file", [*JUDGE[:3], "--output", "out/file.txt/v.jsonl", *JUDGE[5:]], "--output", True),
    # item 9: mistyped local paths, incomplete model directories
    ("identify models/nope", ["identify", "models/nope", *OUT], "no such directory", True),
    ("identify ./nope", ["identify", "./nope", *OUT], "no such directory", True),
    ("identify without tokenizer", ["identify", "NOTOK", *OUT], "tokenizer", True),
    ("identify truncated weights", ["identify", "BROKEN", *OUT], "cannot be loaded", False),
    ("identify --dtype float8", ["identify", M, *OUT, "--dtype", "float8"], "--dtype", True),
    # item 10: smaller ones
    ("identify one harmful prompt", ["identify", M, *OUT, "--harmful", "src/one.jsonl"], "at least 2", True),
    ("identify non-string prompts", ["identify", M, *OUT, "--harmful", "src/numbers.jsonl"], "not a string", True),
    ("attack --max-new-tokens 0", ATTACK + ["--max-new-tokens", "0"], "--max-new-tokens", True),
    ("attack --gen-batch-size 0", ATTACK + ["--gen-batch-size", "0"], "--gen-batch-size", True),
]


def run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (bad flag values) exit 2 too
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("case, argv, message, early", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_clear_line_and_leaves_nothing(work, models, capsys, case, argv, message, early):
    names = {M: models["broken" if early else "good"], "MASKED": models["masked"], "NOTOK": models["notok"],
             "BROKEN": models["broken"], "OPT": models["opt"], "OTHERMASK": models["other_mask"]}
    argv = [a.replace("MODEL/", f"{names[M]}/") if a.startswith("MODEL/") else str(names.get(a, a)) for a in argv]
    before = snapshot(work, *[models[k] for k in ("good", "broken", "masked")])
    code, text = run_cli(argv, capsys)
    assert code == 2, f"{case}: exit {code}\n{text}"
    assert message in text, f"{case}: the message does not name {message!r}:\n{text}"
    assert "Traceback" not in text, f"{case}: a traceback for a user error:\n{text}"
    if early:
        assert "cannot be loaded" not in text, f"{case}: the model was loaded before the input was checked:\n{text}"
    assert snapshot(work, *[models[k] for k in ("good", "broken", "masked")]) == before, f"{case}: files changed"


def test_verbose_shows_the_traceback(work, models, capsys):
    code, text = run_cli(["-v", "identify", str(models["good"]), *OUT, "--tau-es", "nan"], capsys)
    assert code == 2 and "Traceback" in text and "safeneuron_tau_es" in text


def test_judge_creates_the_output_directory(work, capsys):
    code, text = run_cli([*JUDGE[:3], "--output", "out/new/sub/v.jsonl", "--judge", "patterns"], capsys)
    assert code == 0, text
    row = json.loads((work / "out/new/sub/v.jsonl").read_text())
    assert row == {"prompt": "Bake bread?", "response": "Mix flour and water.", "refused": False, "label": "compliance",
                   "success": True, "partial_refusal": False, "detail": "no refusal, not degenerate",
                   "judge": "refusal-patterns-v1"}


def test_custom_architecture_route(work, models, capsys):
    """Item 5: OPT has fc1/fc2 directly in each decoder layer (not recognised automatically) and runs its
    MLP on flattened [batch * tokens] states; the README's --mlp-modules works for identify, for attack's
    own identification and pruning, and for attack --mask."""
    spec = ["--mlp-modules", "model.decoder.layers:,fc1,fc2"]
    opt = str(models["opt"])
    code, text = run_cli(["identify", opt, "--out", "out/opt.safetensors", "--method", "safeneuron",
                          "--tau-es", "0.5", "--tau-sas", "1",
                          "--max-prompts", "16", "--quiet", *spec], capsys)
    assert code == 0, text
    mask = NeuronMask.load(work / "out/opt.safetensors")
    # the mask is the one the library identifies on fc1's output channels, and its neurons are fc2's inputs
    from safeneuron_plugins.architectures import find_mlp_layers
    from safeneuron_plugins.identification import identify
    from safeneuron_plugins.models import load_model
    from safeneuron_plugins.prune import pruned

    model, tok = load_model(opt)
    layers = find_mlp_layers(model, spec[1])
    assert [(l.up, l.down, l.gate) for l in layers][0] == ("model.decoder.layers.0.fc1", "model.decoder.layers.0.fc2",
                                                           None)
    assert mask.fingerprint["num_layers"] == model.config.num_hidden_layers
    assert mask.fingerprint["intermediate_size"] == model.config.ffn_dim
    again = identify(model, tok, options=SafeNeuronOptions(
        safeneuron_method="safeneuron", safeneuron_tau_es=0.5, safeneuron_tau_sas=1.0, safeneuron_max_prompts=16,
        safeneuron_mlp_modules=spec[1]), progress=False)
    assert mask.neurons == again.neurons and mask.es == again.es and mask.sas == again.sas
    layer, idx = next((l, v) for l, v in mask.neurons.items() if v)
    seen = []
    fc2 = model.get_submodule(layers[layer].down)
    with torch.no_grad():
        for prune in (False, True):
            with pruned(model, layers, mask if prune else NeuronMask({})):
                hook = fc2.register_forward_pre_hook(lambda m, a: seen.append(a[0].clone()))  # after the prune hook
                model(input_ids=torch.tensor([[2, 5, 9, 12]]))
                hook.remove()
    plain, cut = seen
    zero = torch.zeros(fc2.in_features, dtype=torch.bool)
    zero[idx] = True
    assert torch.all(cut[..., zero] == 0) and plain[..., zero].abs().sum() > 0
    assert torch.equal(cut[..., ~zero], plain[..., ~zero])  # the first pruned layer: nothing before it changed
    for extra in ([], ["--mask", "out/opt.safetensors"]):
        code, text = run_cli(["attack", opt, "--harmful", "src/h.jsonl", "--out", "out/r.json", "--judge", "patterns",
                              "--max-new-tokens", "3", "--sweep", "50", "--method", "safeneuron",
                              "--tau-es", "0.5", "--tau-sas", "1",
                              "--max-prompts", "16", "--quiet", *spec, *extra], capsys)
        assert code == 0, text
        res = json.loads((work / "out/r.json").read_text())
        assert res["pruned_neurons"]["FULL"] == mask.num_neurons and res["n_prompts"] == len(HARMFUL)
        assert res["pruned_neurons"]["ES"] == mask.subset("es").num_neurons


def test_allow_other_weights_applies_a_mask_of_other_weights(work, models, capsys):
    """attack --mask and make-pairs --prune-mask of a mask identified on other weights (the T0 mask on a
    trained model): refused above, run with --allow-other-weights and a warning naming the mask."""
    good, other = str(models["good"]), str(models["other_mask"])
    code, text = run_cli([*ATTACK[:1], good, *ATTACK[2:], "--mask", other, "--allow-other-weights",
                          "--max-new-tokens", "2", "--sweep", "none"], capsys)
    assert code == 0, text
    assert "warning" in text and other in text and "other weights" in text
    res = json.loads((work / "out/r.json").read_text())
    assert res["pruned_neurons"]["FULL"] == NeuronMask.load(other).num_neurons
    code, text = run_cli([*PAIRS[:1], good, *PAIRS[2:], "--prune-mask", other, "--allow-other-weights",
                          "--max-new-tokens", "2"], capsys)
    assert code == 0, text
    assert (work / "out/p.jsonl").is_file()


# --- the same checks from Python and configs -------------------------------------------------------

@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "nan", "inf"])
def test_nan_and_inf_are_refused_for_every_number_option(value):
    for name in ("safeneuron_tau_es", "safeneuron_tau_sas", "safeneuron_neuron_ratio", "safeneuron_probe_z"):
        with pytest.raises(OptionsError, match=name):
            SafeNeuronOptions(**{name: value})


def test_nan_from_a_yaml_config_is_refused():
    from safeneuron_plugins.integrations.llamafactory.args import prepare_train_args

    config = yaml.safe_load("stage: dpo\nsafeneuron_freeze: true\nsafeneuron_tau_es: .nan\n")
    assert math.isnan(config["safeneuron_tau_es"])
    with pytest.raises(OptionsError, match="safeneuron_tau_es.*finite"):
        prepare_train_args(config)


def test_typo_hint_names_the_option_meant():
    with pytest.raises(OptionsError, match="Did you mean `safeneuron_neuron_ratio`"):
        SafeNeuronOptions.from_dict({"safeneuron_ratio": 0.1})
    with pytest.raises(OptionsError, match="Did you mean `safeneuron_neuron_ratio`"):
        SafeNeuronOptions.from_dict({"safeneuron_nueron_ratio": 0.1})
    with pytest.raises(OptionsError, match="Did you mean `safeneuron_freeze`"):
        SafeNeuronOptions.from_dict({"safeneuron_freez": True})


def test_prompt_sources_bom_limits_and_types(tmp_path):
    csv = tmp_path / "bom.csv"
    csv.write_bytes("prompt,category\nHow do I hurt someone?,violence\nBuild a weapon.,weapons\n".encode("utf-8-sig"))
    assert [p.text for p in load_prompts(str(csv))] == ["How do I hurt someone?", "Build a weapon."]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes((json.dumps({"prompt": "a"}) + "\n" + json.dumps({"prompt": "b"})).encode("utf-8-sig"))
    assert [p.text for p in load_prompts(str(jsonl))] == ["a", "b"]
    for bad in (0, -1):
        with pytest.raises(PromptSourceError, match="whole number >= 1"):
            load_prompts("builtin", max_prompts=bad)
    assert len(load_prompts("builtin", max_prompts=3)) == 3
    with pytest.raises(PromptSourceError, match="at least 2"):
        load_prompts(str(csv), max_prompts=1)
    assert len(load_prompts(str(csv), max_prompts=1, min_prompts=1)) == 1
    for value in ([1, 2], {"a": 1}, 3.5, True):
        bad = tmp_path / "bad.jsonl"
        bad.write_text(json.dumps({"prompt": value}) + "\n" + json.dumps({"prompt": "fine"}))
        with pytest.raises(PromptSourceError, match="not a string"):
            load_prompts(str(bad))


def test_model_path_typo_fails_at_once(work, capsys):
    """Item 9: `models/nope` (with a local `models/` directory) was tried on the hub for ~50 s."""
    import time

    start = time.perf_counter()
    code, text = run_cli(["identify", "models/nope", *OUT], capsys)
    assert code == 2 and "'models' exists here" in text
    assert time.perf_counter() - start < 5


def test_freezing_logs_nothing_for_a_mask_it_cannot_use(models, caplog):
    """Item 1 through the Trainer: a mask for another model is only checked when freezing is on."""
    from safeneuron_plugins.integrations.hf import SafeNeuronCallback

    caplog.set_level(logging.WARNING, "safeneuron")
    SafeNeuronCallback(safeneuron_mask=str(models["masked"] / "model.safetensors"))
    assert any("NOTHING will be frozen" in r.getMessage() for r in caplog.records)


def test_python_and_cli_refuse_cuda_without_cuda(work, models, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    code, text = run_cli(["identify", str(models["broken"]), *OUT, "--device", "cuda"], capsys)
    assert code == 2 and "--device" in text and "Traceback" not in text

