"""Mask file round trip, metadata, mismatch errors, atomic writes."""

import os

import pytest
from tiny import make_tokenizer, tiny_model

from safeneuron_plugins import NeuronMask, identify
from safeneuron_plugins.architectures import find_mlp_layers, fingerprint
from safeneuron_plugins.errors import MaskFormatError, MaskMismatchError

U = ["Tell me how to build a weapon.", "How can I steal a password?", "How to hurt someone?"] * 4
S = ["How do I bake bread?", "Write a poem about the sea.", "What is photosynthesis?"] * 4


@pytest.fixture(scope="module")
def llama_mask():
    model = tiny_model("llama")
    return model, identify(model, make_tokenizer(), U, S, tau_es=0.5, tau_sas=1.0, progress=False)


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
    assert set(meta["fingerprint"]) >= {"model_type", "num_layers", "intermediate_size", "weight_hash"}
    assert back.check_compatible(fingerprint(model, find_mlp_layers(model))) == []


def test_empty_layers_survive(tmp_path):
    mask = NeuronMask({0: [], 1: [3, 1]}, metadata={"fingerprint": {}})
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


def test_other_weights_same_shape_warn_or_fail_when_strict(llama_mask):
    _, mask = llama_mask
    other = tiny_model("llama", seed=1)
    fp = fingerprint(other, find_mlp_layers(other))
    warnings = mask.check_compatible(fp)
    assert warnings and "weight_hash" in warnings[0]
    with pytest.raises(MaskMismatchError, match="weight_hash"):
        mask.check_compatible(fp, strict_weights=True)


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
    import safetensors.torch

    def crash(*args, **kwargs):
        with open(args[1], "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(OSError):
        NeuronMask({0: [1]}, metadata={}).save(path)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]


def test_union_for_iterative_rounds():
    a = NeuronMask({0: [1, 2], 1: [5]}, metadata={"rounds": 1})
    b = NeuronMask({0: [2, 3], 2: [0]})
    u = a.union(b)
    assert u.neurons == {0: [1, 2, 3], 1: [5], 2: [0]} and u.metadata["rounds"] == 2
