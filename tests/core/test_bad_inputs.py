"""Bad input fails before the work, with exit code 2 and one line naming the option or file.

The table walks the `safeneuron` CLI through every case of the issue. Each case asserts: exit code 2, a
message naming the option or file at fault, no traceback, and nothing written (the files under the
test's directories are byte-for-byte what they were). Cases marked ``early`` run on a model directory
whose weights are truncated: had the command loaded the model before checking the input, the error
would name MODEL instead of the option, so these also show that the check comes before any model work.

Below the table: every write goes through one writer (never over a file of another kind or an input; a full
disk is one line and leaves the old file), prompt files are read as written, long prompts keep their end,
the Python API refuses what it cannot use, and what prunes or checks nothing says so.
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
    (src / "unrelated.json").write_text(json.dumps({"name": "my notes", "items": [1, 2, 3]}))
    (src / "verdicts.jsonl").write_text(json.dumps({"prompt": "Bake bread?", "response": "Mix flour.", "refused": False,
                                                    "judge": "refusal-patterns-v1"}) + "\n")
    (src / "random.gguf").write_bytes(bytes(range(256)) * 16)
    (src / "header.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little"))  # the header, cut short
    (src / "header0.gguf").write_bytes(b"GGUF" + (3).to_bytes(4, "little") + bytes(16))  # no tensors, no metadata
    out = tmp_path / "out"
    out.mkdir()
    (out / "file.txt").write_text("a plain file")
    (out / "plot.png").write_text("not an image")
    (out / "cmp").mkdir()
    (out / "cmp" / "results.json").write_text(json.dumps({"name": "my notes"}))
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
    # outputs never replace a file of another kind, nor an input
    ("attack --out MODEL/config.json", [*ATTACK[:4], "--out", "MODEL/config.json", *ATTACK[6:]],
     "is not an attack results file", True),
    ("attack --out MODEL/model.safetensors", [*ATTACK[:4], "--out", "MODEL/model.safetensors", *ATTACK[6:]],
     "is not an attack results file", True),
    ("attack --out an existing mask", [*ATTACK[:4], "--out", "OTHERMASK", *ATTACK[6:]], "is not an attack results",
     True),
    ("attack --family direction --out MODEL/config.json",
     [*ATTACK[:4], "--out", "MODEL/config.json", *ATTACK[6:], "--family", "direction"], "--out", True),
    ("judge --output MODEL/tokenizer.json", [*JUDGE[:3], "--output", "MODEL/tokenizer.json", *JUDGE[5:]],
     "is not a verdicts file", True),
    ("judge --input F --output F", [*JUDGE[:1], "--input", "src/verdicts.jsonl", "--output", "src/verdicts.jsonl",
                                    *JUDGE[5:]], "is the file --input reads", True),
    ("make-pairs --out an unrelated JSON", [*PAIRS[:6], "--out", "src/unrelated.json", *PAIRS[8:]],
     "is not a preference pairs file", True),
    ("make-pairs --out its own --harmful", [*PAIRS[:6], "--out", "src/h.jsonl", *PAIRS[8:]], "--harmful reads", True),
    ("capability --out MODEL/config.json", ["capability", M, "--lm-eval", "arc_easy", "--out", "MODEL/config.json"],
     "is not a capability results file", True),
    ("identify --plot over a text file", ["identify", M, *OUT, "--plot", "out/plot.png"], "is not an image", True),
    ("identify --out mask.json", ["identify", M, "--out", "out/mask.json"], "ending in .safetensors", True),
    ("compare --out-dir with an unrelated results.json", ["compare", M, "--out-dir", "out/cmp", "--judge", "patterns"],
     "is not a report's results file", True),
    # broken GGUF files
    ("identify random bytes as GGUF", ["identify", "src/random.gguf", *OUT], "not a readable GGUF model", True),
    ("identify a GGUF header cut short", ["identify", "src/header.gguf", *OUT], "not a readable GGUF model", True),
    ("identify a GGUF header without metadata", ["identify", "src/header0.gguf", *OUT], "not a readable GGUF model",
     True),
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



# --- every write atomic and checked ------------------------------------------------------------------

@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs (a disk that fills up), unmounted after the test; skipped where no tmpfs can be mounted."""
    import subprocess

    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True,
                          text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a small tmpfs here to fill a disk: {done.stderr.strip() or done.returncode}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where, keep: int):
    """Fill the file system of ``where`` up to ``keep`` free bytes."""
    import os

    st = os.statvfs(where)
    free = st.f_bavail * st.f_frsize
    (where / "filler").write_bytes(b"\0" * max(free - keep, 0))


@pytest.mark.parametrize("command", ["identify", "attack", "make-pairs", "judge"])
def test_a_full_disk_is_one_line_and_leaves_the_old_file(work, models, full_disk, capsys, command):
    """With the disk full, every command exits 2 with one line naming its option and the file; the file of an
    earlier run is byte for byte as it was, and no partial or temporary file is left beside it."""
    good = str(models["good"])
    many = full_disk.parent / "many.jsonl"  # replies enough to need more than the free space
    many.write_text("".join(json.dumps({"prompt": f"Question {i}?", "response": "An answer. " * 40}) + "\n"
                            for i in range(60)))
    target = full_disk / {"identify": "m.safetensors", "attack": "r.json", "make-pairs": "p.jsonl",
                          "judge": "v.jsonl"}[command]
    if command == "identify":
        models["mask"].save(target)
    elif command == "attack":
        target.write_text(json.dumps({"asr": {"ORI": 0.5}, "rates": {}}))
    elif command == "make-pairs":
        target.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n")
    else:
        target.write_text(json.dumps({"prompt": "a", "response": "b", "refused": True, "judge": "x"}) + "\n")
    before = target.read_bytes()
    fill(full_disk, 512)
    argv = {"identify": ["identify", good, "--out", str(target), "--method", "safeneuron", "--neuron-ratio", "0.5",
                         "--quiet"],
            "attack": [*ATTACK[:1], good, *ATTACK[2:4], "--out", str(target), *ATTACK[6:], "--max-new-tokens", "2",
                       "--sweep", "none"],
            "make-pairs": [*PAIRS[:1], good, *PAIRS[2:6], "--out", str(target), *PAIRS[8:], "--max-new-tokens", "8"],
            "judge": ["judge", "--input", str(many), "--output", str(target), "--judge", "patterns"]}[command]
    code, text = run_cli(argv, capsys)
    assert code == 2, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    flag = {"identify": "--out", "attack": "--out (its generations file)", "make-pairs": "--out", "judge": "--output"}
    assert len(errors) == 1 and f"error: {flag[command]} '{full_disk}/" in errors[0], text
    assert "could not be written (No space left on device)" in errors[0]
    assert "Traceback" not in text
    assert target.read_bytes() == before
    assert sorted(p.name for p in full_disk.iterdir()) == sorted(["filler", target.name]), "a partial file was left"


def test_judge_writes_over_its_own_earlier_verdicts(work, capsys):
    """The same kind of file is replaced (atomically): judging again into the same verdicts file works."""
    for _ in range(2):
        code, text = run_cli([*JUDGE[:3], "--output", "out/v.jsonl", "--judge", "patterns"], capsys)
        assert code == 0, text
    assert json.loads((work / "out/v.jsonl").read_text())["refused"] is False


def test_judge_reads_replies_holding_unicode_line_separators(work, capsys):
    """A reply may hold a raw U+2028 or U+0085 (valid inside a JSON string): a JSON lines row ends at LF only."""
    rows = [{"prompt": "Bake bread?", "response": "Mix flour\u2028and water."},
            {"prompt": "Knead?", "response": "Yes\x85ten minutes."}]
    (work / "src/sep.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                        encoding="utf-8")
    code, text = run_cli(["judge", "--input", "src/sep.jsonl", "--output", "out/sep.jsonl", "--judge", "patterns"],
                         capsys)
    assert code == 0, text
    assert [json.loads(line)["response"] for line in (work / "out/sep.jsonl").read_text().split("\n") if line] == [
        r["response"] for r in rows]


def test_one_writer_refuses_other_kinds_and_inputs(tmp_path):
    """The writer itself (used by every command and by NeuronMask.save, plots and reports)."""
    from safeneuron_plugins import files
    from safeneuron_plugins.errors import MaskFormatError

    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    for kind in (files.RESULTS, files.REPORT_RESULTS, files.CAPABILITY, files.ANALYSIS, files.COUNTS):
        with pytest.raises(OptionsError, match="refusing to overwrite"):
            files.write_file(config, "{}", "--out", kind)
    for kind in (files.GENERATIONS, files.VERDICTS, files.PAIRS, files.PROMPTS, files.REPORT, files.IMAGE):
        with pytest.raises(OptionsError, match="refusing to overwrite"):
            files.write_file(tmp_path / "config.json", "x", "--out", kind)
    with pytest.raises(MaskFormatError, match="not a SafeNeuron mask"):
        NeuronMask({0: [1]}, metadata={"fingerprint": {"num_layers": 1, "intermediate_size": 4}}).save(config)
    assert json.loads(config.read_text())["model_type"] == "llama"
    replies = tmp_path / "r.jsonl"
    replies.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n")
    with pytest.raises(OptionsError, match="is the file --input reads"):
        files.write_file(replies, "", "--output", files.GENERATIONS, inputs=[("--input", str(replies))])
    empty = tmp_path / "empty.json"
    empty.touch()  # an empty file holds nothing to lose
    files.write_file(empty, json.dumps({"asr": {}, "rates": {}}), "--out", files.RESULTS)
    assert json.loads(empty.read_text())["asr"] == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "empty.json", "r.jsonl"]


# --- prompt files read as written ----------------------------------------------------------------------

def test_prompt_files_are_read_as_written(tmp_path):
    def texts(name, content, **kw):
        path = tmp_path / name
        path.write_bytes(content.encode("utf-8")) if isinstance(content, str) else path.write_bytes(content)
        return [p.text for p in load_prompts(str(path), min_prompts=1, **kw)]

    # JSON lines: only LF / CRLF / CR end a line; U+2028 and U+0085 are part of a prompt
    assert texts("u.jsonl", json.dumps({"prompt": "one\u2028two"}, ensure_ascii=False) + "\n"
                 + json.dumps({"prompt": "three\x85four"}, ensure_ascii=False) + "\r\n") == ["one\u2028two", "three\x85four"]
    # CSV through the csv module: a quoted field keeps its line breaks and commas
    assert texts("q.csv", 'prompt,category\r\n"first line\r\nsecond line, still",a\r\nplain,b\r\n') == [
        "first line\r\nsecond line, still", "plain"]
    assert texts("n.csv", 'prompt\n"a\nb"\nc\n') == ["a\nb", "c"]
    # TXT: one prompt per line; a form feed is text
    assert texts("f.txt", "page one\x0cstill one\nsecond\r\nthird\n") == ["page one\x0cstill one", "second", "third"]
    # JSON: a list, or an object keeping it under `prompts` (never another list of it)
    assert texts("o.json", json.dumps({"tags": ["x", "y", "z"], "prompts": ["a", "b"]})) == ["a", "b"]
    assert texts("d.json", json.dumps({"data": [{"prompt": "a"}, {"prompt": "b"}]})) == ["a", "b"]
    assert texts("l.json", json.dumps(["a", {"prompt": "b"}])) == ["a", "b"]


@pytest.mark.parametrize("name, content, message", [
    ("s.json", json.dumps("How do I hurt someone?"), "holds a JSON str"),
    ("n.json", "42", "holds a JSON int"),
    ("one.json", json.dumps({"prompt": "How do I hurt someone?"}), "holds one JSON object"),
    ("nested.json", json.dumps({"prompts": "not a list"}), "not a list of prompts"),
    ("nulls.json", json.dumps([None, None]), "expected a string"),
    ("numbers.jsonl", "1\n2\n", "line 1 of"),
    ("latin.txt", "caf\xe9\n".encode("latin-1"), "not UTF-8"),
])
def test_prompt_files_of_other_shapes_are_refused_with_the_reason(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(PromptSourceError, match=message):
        load_prompts(str(path), option="--harmful")


# --- long prompts: the end is kept --------------------------------------------------------------------

def test_long_prompts_are_cut_from_the_left_with_one_warning(models, caplog):
    from safeneuron_plugins import identify
    from safeneuron_plugins.identification.batching import tokenize
    from safeneuron_plugins.identification.prompts import format_prompts
    from safeneuron_plugins.models import load_model

    model, tok = load_model(str(models["good"]))
    long = ["Tell me how to build a weapon to hurt people. " * 20 + "Steal a password now.", "Short one."]
    texts = format_prompts(tok, long)
    whole = tokenize(tok, texts, None, True)
    limit = max(len(s) for s in tokenize(tok, format_prompts(tok, HARMFUL + long[1:]), None, True))
    assert len(whole[0]) > limit
    caplog.set_level(logging.WARNING, "safeneuron")
    cut = tokenize(tok, texts, limit, True)
    assert cut[0] == whole[0][-limit:] and cut[1] == whole[1]  # the end: the request and the assistant turn
    assert tok.decode(cut[0]).endswith("Steal a password now.<|im_end|>\n<|im_start|>assistant\n")
    records = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1 and "1 of 2 prompts" in records[0] and f"safeneuron_max_length={limit}" in records[0]
    assert f"by {len(whole[0]) - limit} to {len(whole[0]) - limit} tokens" in records[0]
    caplog.clear()
    identify(model, tok, long + HARMFUL, ["Bake bread.", "Write a poem."], max_length=limit, progress=False)
    records = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(records) == 1 and "1 of 6 prompts" in records[0]


# --- the Python API -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded(models):
    from safeneuron_plugins.models import load_model

    return load_model(str(models["good"]))


@pytest.mark.parametrize("harmful", [[None, None], [1, 2], ["fine", 3.5]])
def test_identify_refuses_prompt_lists_that_are_not_strings(loaded, harmful):
    from safeneuron_plugins import identify

    model, tok = loaded
    with pytest.raises(PromptSourceError, match="safeneuron_harmful: item .* not a string"):
        identify(model, tok, harmful, ["Bake bread.", "Write a poem."], progress=False)


def test_identify_takes_a_generator_of_prompts(loaded):
    from safeneuron_plugins import identify

    model, tok = loaded
    harmless = ["Bake bread.", "Write a poem.", "Explain tides."]
    listed = identify(model, tok, HARMFUL, harmless, method="safeneuron", neuron_ratio=0.1, progress=False)
    generated = identify(model, tok, (t for t in HARMFUL), iter(harmless), method="safeneuron", neuron_ratio=0.1,
                         progress=False)
    assert generated.neurons == listed.neurons and generated.metadata["n_harmful"] == len(HARMFUL)


def test_identify_without_a_tokenizer_or_weights_is_a_clear_error(loaded, models):
    import transformers

    from safeneuron_plugins import identify

    model, tok = loaded
    with pytest.raises(OptionsError, match="tokenizer is NoneType"):
        identify(model, None, HARMFUL, ["Bake bread.", "Write a poem."], progress=False)
    config = transformers.AutoConfig.from_pretrained(models["good"])
    with torch.device("meta"):
        empty = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(OptionsError, match="meta device"):
        identify(empty, tok, HARMFUL, ["Bake bread.", "Write a poem."], progress=False)


@pytest.mark.parametrize("cls", ["AutoModel", "AutoModelForSequenceClassification"])
def test_attribution_needs_an_lm_head(models, cls):
    """A base model or a sequence-classification model has no LM head to score a refusal with: a clear error
    from identify() and when training identifies at its start; the statistics scorer works on them."""
    import transformers

    from safeneuron_plugins import identify
    from safeneuron_plugins.training import SafeNeuronTraining

    tok = transformers.AutoTokenizer.from_pretrained(models["good"])
    model = getattr(transformers, cls).from_pretrained(models["good"], **({"num_labels": 2} if "Sequence" in cls else {}))
    with pytest.raises(OptionsError, match="needs a language-model head.*safeneuron_method: safeneuron"):
        identify(model, tok, HARMFUL, ["Bake bread.", "Write a poem."], progress=False)
    with pytest.raises(OptionsError, match="needs a language-model head"):
        SafeNeuronTraining(SafeNeuronOptions(safeneuron_freeze=True, safeneuron_max_prompts=4)).begin(model, tok)
    mask = identify(model, tok, HARMFUL, ["Bake bread.", "Write a poem."], method="safeneuron", neuron_ratio=0.1,
                    progress=False)
    assert mask.num_neurons > 0


# --- quiet where a user needs to hear it --------------------------------------------------------------

def test_an_empty_selection_and_an_empty_mask_warn(loaded, work, models, capsys, caplog):
    from safeneuron_plugins import identify

    model, tok = loaded
    caplog.set_level(logging.WARNING, "safeneuron")
    mask = identify(model, tok, HARMFUL, ["Bake bread.", "Write a poem."], method="safeneuron", tau_es=100,
                    tau_sas=100, progress=False)
    assert mask.num_neurons == 0
    assert any(r.levelno == logging.WARNING and "NO safety neuron" in r.getMessage() for r in caplog.records)
    warnings = mask.check_compatible(models["mask"].fingerprint)
    assert len(warnings) == 1 and "holds NO neuron" in warnings[0]
    mask.save(work / "out/empty.safetensors")
    code, text = run_cli([*ATTACK[:1], str(models["good"]), *ATTACK[2:], "--mask", "out/empty.safetensors",
                          "--max-new-tokens", "2", "--sweep", "none"], capsys)
    assert code == 0 and "warning:" in text and "holds NO neuron" in text, text


def test_a_mask_without_weight_hash_warns(models):
    fp = models["mask"].fingerprint
    bare = {k: v for k, v in fp.items() if "hash" not in k}
    warnings = NeuronMask({0: [1]}, metadata={"fingerprint": bare}).check_compatible(fp)
    assert len(warnings) == 1 and "no weight hash" in warnings[0]


def test_the_weight_check_sees_a_change_in_any_layer(loaded, models):
    """A fine-tune that changed only the last layer's down projection is other weights."""
    from safeneuron_plugins.architectures import find_mlp_layers
    from safeneuron_plugins.errors import MaskMismatchError
    from safeneuron_plugins.fingerprint import fingerprint
    from safeneuron_plugins.models import load_model

    tuned, _ = load_model(str(models["good"]))
    layers = find_mlp_layers(tuned)
    with torch.no_grad():
        tuned.get_submodule(layers[-1].down).weight.add_(0.01)
    with pytest.raises(MaskMismatchError, match="other weights"):
        models["mask"].check_compatible(fingerprint(tuned, layers))
    model, _ = loaded
    assert models["mask"].check_compatible(fingerprint(model, find_mlp_layers(model))) == []


@pytest.mark.parametrize("name", ["../x.safetensors", "/tmp/m.safetensors", "", "model.safetensors", "config.json",
                                  "tokenizer.json", "sub/m.safetensors", "mask.json"])
def test_output_name_is_a_plain_mask_file_name(name):
    with pytest.raises(OptionsError, match="safeneuron_output_name"):
        SafeNeuronOptions(safeneuron_output_name=name)
    assert SafeNeuronOptions(safeneuron_output_name="mine.safetensors").safeneuron_output_name == "mine.safetensors"


def _write_mask(path, tensors, fingerprint):
    from safetensors.torch import save_file

    meta = {"format_version": 1, "fingerprint": fingerprint}
    save_file({k: torch.tensor(v, dtype=torch.int64) for k, v in tensors.items()}, str(path),
              metadata={"safeneuron": json.dumps(meta)})
    return path


def test_mask_files_with_two_tensors_for_a_layer_or_stray_es_sas_are_refused(tmp_path):
    from safeneuron_plugins.errors import MaskFormatError

    fp = {"num_layers": 2, "intermediate_size": 8}
    twice = _write_mask(tmp_path / "twice.safetensors", {"neurons.0": [1], "neurons.00": [2]}, fp)
    with pytest.raises(MaskFormatError, match="both name layer 0"):
        NeuronMask.load(twice)
    stray = _write_mask(tmp_path / "stray.safetensors", {"neurons.0": [1], "es.0": [1], "sas.1": [3]}, fp)
    with pytest.raises(MaskFormatError, match="stray.safetensors.*sas set holds neuron 3 of layer 1"):
        NeuronMask.load(stray)
    with pytest.raises(MaskFormatError, match="es set holds neuron 2"):
        NeuronMask({0: [1]}, es={0: [1, 2]})


def test_selection_records_es_and_sas_within_the_selected_neurons():
    from safeneuron_plugins.identification.scoring import select

    d = {0: torch.tensor([5.0, 0.0, 0.0, 0.0, 0.0, 0.0])}
    delta = {0: torch.tensor([0.0, 9.0, 0.0, 0.0, 0.0, 0.0])}
    for selection in ("es", "sas", "union"):
        sel = select(d, delta, tau_es=3.0, tau_sas=2.0, selection=selection)
        assert set(sel.es[0]) <= set(sel.neurons[0]) and set(sel.sas[0]) <= set(sel.neurons[0]), selection
