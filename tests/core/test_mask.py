"""Mask file round trip, metadata, mismatch errors, atomic writes."""

import os

import pytest
from tiny import make_tokenizer, tiny_model

from safeneuron_plugins import NeuronMask, identify
from safeneuron_plugins.architectures import find_mlp_layers
from safeneuron_plugins.errors import MaskFormatError, MaskMismatchError
from safeneuron_plugins.fingerprint import fingerprint

U = ["Tell me how to build a weapon.", "How can I steal a password?", "How to hurt someone?"] * 4
S = ["How do I bake bread?", "Write a poem about the sea.", "What is photosynthesis?"] * 4


@pytest.fixture(scope="module")
def llama_mask():
    model = tiny_model("llama")
    return model, identify(model, make_tokenizer(), U, S, method="safeneuron", tau_es=0.5, tau_sas=1.0,
                           progress=False)


def test_round_trip_keeps_neurons_criteria_and_metadata(tmp_path, llama_mask):
    model, mask = llama_mask
    path = mask.save(tmp_path / "m.safetensors")
    back = NeuronMask.load(path)
    assert back.neurons == mask.neurons and back.es == mask.es and back.sas == mask.sas
    assert all(isinstance(l, int) and all(isinstance(i, int) for i in v) for l, v in back.neurons.items())
    assert all(v == sorted(v) for v in back.neurons.values())
    meta = back.metadata
    for key in ("fingerprint", "method", "tau_es", "tau_sas", "signal", "pooling", "n_harmful",
                "n_harmless", "prompts_hash", "library_version", "format_version"):
        assert key in meta, key
    assert meta["n_harmful"] == len(U) and meta["tau_es"] == 0.5
    assert set(meta["fingerprint"]) >= {"model_type", "num_layers", "intermediate_size", "weight_hash",
                                        "weight_hash_bf16"}
    assert back.check_compatible(fingerprint(model, find_mlp_layers(model))) == []


FP = {"fingerprint": {"model_type": "llama", "num_layers": 3, "intermediate_size": 64}}


def test_empty_layers_survive(tmp_path):
    mask = NeuronMask({0: [], 1: [3, 1]}, metadata=FP)
    back = NeuronMask.load(mask.save(tmp_path / "e.safetensors"))
    assert back.neurons == {0: [], 1: [1, 3]}


@pytest.mark.parametrize("family, field", [("qwen2", "model_type"), ("gpt2", "model_type")])
def test_mask_from_another_model_names_the_field(llama_mask, family, field):
    _, mask = llama_mask
    other = tiny_model(family)
    with pytest.raises(MaskMismatchError, match=field):
        mask.check_compatible(fingerprint(other, find_mlp_layers(other)))


def test_structural_mismatch_names_field(llama_mask):
    _, mask = llama_mask
    fp = dict(mask.fingerprint, num_layers=5)
    with pytest.raises(MaskMismatchError, match="num_layers is 3 in the mask but 5"):
        mask.check_compatible(fp)


def test_other_weights_same_shape_are_refused_unless_allowed(llama_mask):
    """A mask identified on other weights of the same architecture (e.g. the base of a fine-tune) is an error
    naming the fix; allow_other_weights (safeneuron_allow_other_weights) turns it into a warning."""
    _, mask = llama_mask
    other = tiny_model("llama", seed=1)
    fp = fingerprint(other, find_mlp_layers(other))
    with pytest.raises(MaskMismatchError, match="other weights") as err:
        mask.check_compatible(fp, what="--mask base.safetensors")
    for part in ("--mask base.safetensors", mask.fingerprint["sample_hash_bf16"], fp["sample_hash_bf16"],
                 "--allow-other-weights", "safeneuron_allow_other_weights: true", "fine-tune"):
        assert part in str(err.value), part
    warnings = mask.check_compatible(fp, allow_other_weights=True)
    assert len(warnings) == 1 and "other weights" in warnings[0]


def test_same_weights_in_another_dtype_are_the_same_weights(tmp_path):
    """Identification in bfloat16 and training on float32 master weights of one checkpoint: the same model."""
    import torch
    import transformers
    from tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "m", "llama")
    prints = {dtype: fingerprint(m, find_mlp_layers(m)) for dtype in (torch.float32, torch.bfloat16)
              for m in [transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype)]}
    assert prints[torch.float32]["weight_hash"] != prints[torch.bfloat16]["weight_hash"]
    mask = NeuronMask({0: [1]}, metadata={"fingerprint": prints[torch.bfloat16]})
    assert mask.check_compatible(prints[torch.float32]) == []


def test_quantized_weights_cannot_be_compared_and_warn():
    mine = {"num_layers": 3, "intermediate_size": 64, "weight_hash": "a", "weight_hash_bf16": "b"}
    qlora = {"num_layers": 3, "intermediate_size": 64, "weight_hash": "c", "weight_quantized": True}
    warnings = NeuronMask({0: [1]}, metadata={"fingerprint": mine}).check_compatible(qlora)
    assert len(warnings) == 1 and "quantized" in warnings[0]
    assert NeuronMask({0: [1]}, metadata={"fingerprint": qlora}).check_compatible(dict(qlora)) == []


def test_a_mask_written_before_the_bf16_hash_compares_the_exact_one(llama_mask):
    model, mask = llama_mask
    fp = fingerprint(model, find_mlp_layers(model))
    old = {k: v for k, v in fp.items() if k not in ("weight_hash_bf16", "sample_hash", "sample_hash_bf16")}
    assert NeuronMask({0: [1]}, metadata={"fingerprint": old}).check_compatible(fp) == []
    with pytest.raises(MaskMismatchError, match="weight_hash"):
        NeuronMask({0: [1]}, metadata={"fingerprint": dict(old, weight_hash="0" * 16)}).check_compatible(fp)


def test_neuron_out_of_range_is_refused(llama_mask):
    _, mask = llama_mask
    bad = NeuronMask({0: [64]}, metadata={"fingerprint": {}})
    with pytest.raises(MaskMismatchError, match="intermediate size 64"):
        bad.check_compatible(mask.fingerprint)


def test_load_errors(tmp_path):
    with pytest.raises(MaskFormatError, match="no mask file"):
        NeuronMask.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(MaskFormatError, match="not a safetensors mask"):
        NeuronMask.load(junk)
    import torch
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(1)}, tmp_path / "plain.safetensors")
    with pytest.raises(MaskFormatError, match="no SafeNeuron metadata"):
        NeuronMask.load(tmp_path / "plain.safetensors")


def test_write_is_atomic(tmp_path, monkeypatch, llama_mask):
    """A crash while writing leaves the previous mask intact and no temporary file behind."""
    _, mask = llama_mask
    path = mask.save(tmp_path / "m.safetensors")
    before = path.read_bytes()

    def crash(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", crash)  # the write fails after the data went out, before the rename
    with pytest.raises(OSError, match="disk full"):
        NeuronMask({0: [1]}, metadata=FP).save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_mask_file_mode_follows_the_umask(tmp_path, llama_mask):
    """Not 0600 whatever the umask (a mask in a shared output_dir must stay readable)."""
    _, mask = llama_mask
    old = os.umask(0o022)
    try:
        assert os.stat(mask.save(tmp_path / "a.safetensors")).st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert os.stat(mask.save(tmp_path / "b.safetensors")).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_sigkill_while_saving_leaves_no_temporary_file(tmp_path):
    """A process killed (SIGKILL: no cleanup runs) while it writes masks leaves the
    destination either the old or the new mask. Nothing else is left, except when the kill lands in the
    instant between naming the complete file and renaming it (no rename closes that window): then its hidden
    temporary name stays, and the next write to the destination removes it."""
    import signal
    import subprocess
    import sys
    import time

    script = (
        "import sys, torch\n"
        "from safeneuron_plugins import NeuronMask\n"
        f"fp = {FP!r}\n"
        "m = NeuronMask({l: list(range(0, 64, 2)) for l in range(3)}, metadata=dict(fp, pad='x' * 200000))\n"
        "m.save(sys.argv[1]); print('ready', flush=True)\n"
        "while True:\n    m.save(sys.argv[1])\n")
    for attempt in range(4):
        proc = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "m.safetensors")],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.2 + 0.13 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        left = sorted(os.listdir(tmp_path))
        assert left[-1] == "m.safetensors", f"attempt {attempt}: {left}"
        assert all(f.startswith(f".m.safetensors.{proc.pid}.") and f.endswith(".tmp") for f in left[:-1]), left
        mask = NeuronMask.load(tmp_path / "m.safetensors")
        assert mask.num_neurons == 96
        mask.save(tmp_path / "m.safetensors")  # the next write clears what the killed one left
        assert os.listdir(tmp_path) == ["m.safetensors"], f"attempt {attempt}: {os.listdir(tmp_path)}"


def test_a_write_removes_only_dead_writers_temporaries(tmp_path, llama_mask):
    """The stale-temporary clean-up removes a dead process's hidden name, never a live writer's."""
    import subprocess
    import sys

    _, mask = llama_mask
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".m.safetensors.{int(dead.stdout)}.abcd1234.tmp"
    live = tmp_path / f".m.safetensors.{os.getppid()}.abcd1234.tmp"
    other = tmp_path / ".n.safetensors.1.abcd1234.tmp"
    for f in (stale, live, other):
        f.write_bytes(b"x")
    mask.save(tmp_path / "m.safetensors")
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name, "m.safetensors"])


def test_refuses_to_overwrite_a_file_that_is_not_a_mask(tmp_path, llama_mask):
    """`identify M --out M/model.safetensors` must not replace a model's weights."""
    _, mask = llama_mask
    import torch
    from safetensors.torch import save_file

    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2)}, weights)
    before = weights.read_bytes()
    for target in (weights, tmp_path / "notes.txt"):
        if not target.exists():
            target.write_text("my notes")
        with pytest.raises(MaskFormatError, match="not a SafeNeuron mask; refusing to overwrite"):
            mask.save(target)
    assert weights.read_bytes() == before and (tmp_path / "notes.txt").read_text() == "my notes"
    with pytest.raises(MaskFormatError, match="is a directory"):
        mask.save(tmp_path)
    mask.save(tmp_path / "m.safetensors")
    mask.save(tmp_path / "m.safetensors")  # a mask may replace a mask


def _hand_edited(tmp_path, tensors, meta):
    import json

    import torch
    from safetensors.torch import save_file

    path = tmp_path / "edited.safetensors"
    header = {"safeneuron": meta if isinstance(meta, str) else json.dumps(meta)}
    save_file({k: torch.tensor(v) for k, v in tensors.items()}, path, metadata=header)
    return path


GOOD_META = {"format_version": 1, **FP}


@pytest.mark.parametrize("tensors, meta, message", [
    ({"neurons.0": [1]}, "{not json", "metadata is not JSON"),
    ({"neurons.0": [1]}, "[1, 2]", "not a JSON object"),
    ({"neurons.0": [1]}, {"format_version": 1}, "no valid model fingerprint"),
    ({"neurons.0": [1]}, {"format_version": 1, "fingerprint": {"num_layers": "3"}}, "no valid model fingerprint"),
    ({"neurons.0": [-1, 2]}, GOOD_META, "neuron -1"),
    ({"neurons.0": [1.5, 2.0]}, GOOD_META, "integer list"),
    ({"neurons.0": [[1, 2]]}, GOOD_META, "1-D integer list"),
    ({"neurons.0": [64]}, GOOD_META, "neuron 64, outside 0..63"),
    ({"neurons.7": [1]}, GOOD_META, "names layer 7"),
    ({"weights": [1]}, GOOD_META, "not one of neurons.LAYER"),
    ({"neurons.x": [1]}, GOOD_META, "not one of neurons.LAYER"),
])
def test_hand_edited_masks_are_refused_with_the_reason(tmp_path, tensors, meta, message):
    """Bad metadata or indices are a MaskFormatError naming the problem, never a
    JSONDecodeError/KeyError, nor a mask that silently prunes the wrong neurons."""
    with pytest.raises(MaskFormatError, match=message):
        NeuronMask.load(_hand_edited(tmp_path, tensors, meta))


def test_a_mask_without_fingerprint_is_not_written():
    with pytest.raises(MaskFormatError, match="no valid model fingerprint"):
        NeuronMask({0: [1]}).save("/nonexistent-dir/never.safetensors")


def test_union_for_iterative_rounds():
    a = NeuronMask({0: [1, 2], 1: [5]}, metadata={"rounds": 1})
    b = NeuronMask({0: [2, 3], 2: [0]})
    u = a.union(b)
    assert u.neurons == {0: [1, 2, 3], 1: [5], 2: [0]} and u.metadata["rounds"] == 2


def test_system_prompt_is_folded_only_for_templates_without_a_system_role(tmp_path, caplog):
    """A chat template that rejects the system role gets the system prompt in the user turn, with a
    warning; any other template error is raised, not papered over by folding."""
    import logging

    import jinja2
    import transformers
    from tiny import save_tiny_model

    from safeneuron_plugins.identification.prompts import format_prompts

    path = save_tiny_model(tmp_path / "m", "llama")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    no_system = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not "
                 "supported') }}{% endif %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>")
    tok.chat_template = no_system
    with caplog.at_level(logging.WARNING, logger="safeneuron"):
        assert format_prompts(tok, ["Q?"]) == ["<user>Q?<assistant>"]
        assert caplog.text == "", "no system prompt: nothing to fold, nothing to say"
        assert format_prompts(tok, ["Q?"], system_prompt="Be safe.") == ["<user>Be safe.\n\nQ?<assistant>"]
    for part in ("refuses a system turn", "System role not supported", "safeneuron_system_prompt",
                 "--system-prompt", str(path), "start of the user turn"):
        assert part in caplog.text, part
    tok.chat_template = "<s>{% for m in messages %}{{ m['content'] }}{{ undefined_function() }}{% endfor %}"
    with pytest.raises(jinja2.exceptions.UndefinedError):  # a broken template: its own error, no folding
        format_prompts(tok, ["Q?"], system_prompt="Be safe.")
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    assert format_prompts(tok, ["Q?"], system_prompt="Be safe.") == ["<system>Be safe.<user>Q?"]


def test_image_prompts_fold_the_system_prompt_the_same_way(caplog):
    """format_multimodal (vision-language models) takes the same fallback, the text after the image."""
    import logging

    from tiny import tiny_processor

    from safeneuron_plugins.identification.images import format_multimodal
    from safeneuron_plugins.identification.prompts import Prompt

    processor = tiny_processor("llava")
    items = ("{% for item in m['content'] %}{% if item['type'] == 'image' %}IMG {% else %}{{ item['text'] }}"
             "{% endif %}{% endfor %}")
    processor.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<{{ m['role'] }}>" + items + "{% endfor %}<assistant>")
    prompts = [Prompt("Q?", image="x.png"), Prompt("R?")]
    with caplog.at_level(logging.WARNING, logger="safeneuron"):
        got = format_multimodal(processor, prompts, system_prompt="Be safe.")
    assert got == ["<user>IMG Be safe.\n\nQ?<assistant>", "<user>Be safe.\n\nR?<assistant>"]
    assert "safeneuron_system_prompt" in caplog.text
    processor.chat_template = "{% for m in messages %}<{{ m['role'] }}>" + items + "{% endfor %}"
    assert format_multimodal(processor, prompts[1:], system_prompt="Be safe.") == ["<system>Be safe.<user>R?"]
