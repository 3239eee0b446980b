"""LoRA: the adapter's delta B·A stays exactly zero on frozen rows (gate/up) and columns (down)."""

import pytest
import torch
from safeneuron_plugins.integrations.hf import SafeNeuronCallback
from test_freeze_trl import IDENT, assert_frozen_exactly, frozen_rows, load, preference_data
from tiny import BNB_SIZES, save_tiny_model

from safeneuron_plugins.errors import UnsupportedSetupError
from safeneuron_plugins.quantization import packed_bnb_layers

peft = pytest.importorskip("peft")
trl = pytest.importorskip("trl")

TARGETS = ["gate_proj", "up_proj", "down_proj", "q_proj", "v_proj"]


def lora_train(path, out, cb, extra_callbacks=(), **lora):
    model, tok = load(path)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM", **lora)
    args = trl.DPOConfig(output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=2e-2,
                         weight_decay=0.1, report_to="none", save_strategy="no", use_cpu=True, seed=0)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=preference_data(), processing_class=tok,
                             peft_config=config, callbacks=[cb, *extra_callbacks])
    trainer.train()
    return trainer.model


def test_lora_merged_frozen_rows_and_columns_equal_base(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama")
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_freeze_down_proj=True, **IDENT)
    base, _ = load(path)
    peft_model = lora_train(path, tmp_path / "out", cb)
    merged = peft_model.merge_and_unload()
    before = frozen_rows(base, cb.mask, include_down=True)
    after = frozen_rows(merged, cb.mask, include_down=True)
    moved = False
    for key, (rows_b, full_b, _, _) in before.items():
        assert torch.equal(rows_b, after[key][0]), f"merged frozen slice of {key} differs from the base"
        moved |= not torch.equal(full_b, after[key][1])
    assert moved, "LoRA must still change the unfrozen rows"


def test_dora_is_refused(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama")
    with pytest.raises(UnsupportedSetupError, match="DoRA"):
        lora_train(path, tmp_path / "out", SafeNeuronCallback(safeneuron_freeze=True, **IDENT), use_dora=True)


def test_non_zero_b_initialisation_is_refused(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama")
    with pytest.raises(UnsupportedSetupError, match="non-zero-B"):
        lora_train(path, tmp_path / "out", SafeNeuronCallback(safeneuron_freeze=True, **IDENT),
                   init_lora_weights="olora")


def load_4bit(path, path_choice="cpu-default"):
    """A 4-bit NF4 model on bitsandbytes' CPU backend. ``unpacked`` forces the path CPUs without
    AVX512-BF16 take (no conversion to the packed inference layout); ``cpu-default`` leaves the choice to
    bitsandbytes (on a CPU with AVX512-BF16: packed, in eval-mode passes without gradients)."""
    bnb = pytest.importorskip("bitsandbytes")
    import transformers

    quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, quantization_config=quant)
    assert isinstance(model.model.layers[0].mlp.gate_proj, bnb.nn.Linear4bit)
    if path_choice == "unpacked":
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return model, transformers.AutoTokenizer.from_pretrained(path)


def cpu_packs_4bit_weights() -> bool:
    import bitsandbytes as bnb

    return bool(bnb.functional.has_avx512bf16())


@pytest.mark.parametrize("path_choice", ["cpu-default", "unpacked"])
def test_qlora_4bit_base_keeps_frozen_delta_zero(tmp_path, path_choice):
    """bitsandbytes 4-bit base (its CPU backend) + LoRA: the same rule; the adapter's delta B·A is exactly
    zero on frozen rows (gate/up) and columns (down), the quantised base is untouched, the rest trains.
    The tiny model has sizes every bitsandbytes CPU path takes (BNB_SIZES); ``unpacked`` forces the path of
    CPUs without AVX512-BF16, ``cpu-default`` takes this CPU's own (see the test matrix in CONTRIBUTING.md)."""
    path = save_tiny_model(tmp_path / "m", "llama", **BNB_SIZES)
    model, tok = load_4bit(path, path_choice)
    base_q = {n: p.detach().clone() for n, p in model.named_parameters() if ".mlp." in n}
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_freeze_down_proj=True, **IDENT)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM")
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=4,
                         learning_rate=2e-2, weight_decay=0.1, report_to="none", save_strategy="no", use_cpu=True,
                         bf16=False, seed=0)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=preference_data(), processing_class=tok,
                             peft_config=config, callbacks=[cb])
    trainer.train()
    peft_model = trainer.model
    assert cb.mask.num_neurons > 0
    trained = 0
    for layer, neurons in cb.mask.neurons.items():
        for proj in ("gate_proj", "up_proj", "down_proj"):
            module = peft_model.base_model.model.model.layers[layer].mlp.get_submodule(proj)
            delta = module.get_delta_weight("default")
            frozen = delta[neurons] if proj != "down_proj" else delta[:, neurons]
            assert neurons == [] or not frozen.any(), f"layer {layer} {proj}: LoRA delta on frozen neurons"
            trained += int(delta.any())
    assert trained > 0, "the adapter must still learn"
    compared = 0
    for n, p in peft_model.named_parameters():
        key = n.replace("base_model.model.", "").replace(".base_layer", "")
        if key in base_q:
            assert torch.equal(p.detach(), base_q[key]), f"quantised base {key} changed"
            compared += 1
    assert compared == len(base_q)
    # evaluation after training takes the chosen path: packed on a CPU with AVX512-BF16 unless forced off
    peft_model.eval()
    with torch.inference_mode():
        logits = peft_model(input_ids=torch.tensor([[5, 6, 7, 8, 9]])).logits
    assert torch.isfinite(logits).all()
    assert bool(packed_bnb_layers(peft_model)) == (path_choice == "cpu-default" and cpu_packs_4bit_weights())


@pytest.mark.parametrize("sizes", ["tiny", "bnb"])
def test_identification_leaves_4bit_weights_trainable(tmp_path, sizes):
    """Identification's eval-mode passes must not convert 4-bit weights to bitsandbytes' packed CPU layout:
    with the tiny model's own sizes (hidden 32) that conversion raises ("shape '[32, 0]' is invalid"), and
    a converted layer passes no gradient to its input in training. Same result on every CPU."""
    from safeneuron_plugins.identification import identify

    path = save_tiny_model(tmp_path / "m", "llama", **(BNB_SIZES if sizes == "bnb" else {}))
    model, tok = load_4bit(path)
    fresh, _ = load_4bit(path)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    mask = identify(model, tok, ["How do I hurt someone?", "Build a weapon.", "Steal a password."],
                    ["Bake bread.", "Write a poem.", "Explain the tides."], method="safeneuron", tau_es=0.5, tau_sas=1.0,
                    progress=False)
    assert mask.metadata["n_harmful"] == 3
    assert packed_bnb_layers(model) == []
    assert all(torch.equal(p.detach(), weights[n]) for n, p in model.named_parameters())

    def input_grad(m):
        m.train()
        emb = m.get_input_embeddings()(torch.tensor([[5, 6, 7, 8, 9]])).detach().requires_grad_(True)
        m(inputs_embeds=emb).logits.sum().backward()
        return emb.grad

    assert torch.equal(input_grad(model), input_grad(fresh)), "training after identification must see the same gradient"


def test_freezing_refuses_4bit_weights_already_packed(tmp_path):
    """Where something else already converted the weights (an eval-mode pass before training on a CPU with
    AVX512-BF16), freezing stops with a clear error instead of training on a wrong gradient."""
    pytest.importorskip("bitsandbytes")
    if not cpu_packs_4bit_weights():
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes never converts 4-bit weights to its packed layout")
    path = save_tiny_model(tmp_path / "m", "llama", **BNB_SIZES)
    model, tok = load_4bit(path)
    with torch.inference_mode():
        model.eval()(input_ids=torch.tensor([[5, 6, 7]]))
    assert packed_bnb_layers(model)
    cb = SafeNeuronCallback(safeneuron_freeze=True, **IDENT)
    with pytest.raises(UnsupportedSetupError, match="inference layout"):
        cb.run.begin(model, tok)


def test_forward_pruning_spares_the_reference_pass_when_down_proj_is_not_a_lora_target(tmp_path):
    """trl runs the reference of a PEFT policy without ref_model as the policy with its adapters off;
    the prune hook sits on down_proj, which need not be a LoRA layer itself."""
    import transformers

    from safeneuron_plugins import NeuronMask
    from safeneuron_plugins.architectures import find_mlp_layers
    from safeneuron_plugins.prune import pruned

    path = save_tiny_model(tmp_path / "m", "llama")
    base = transformers.AutoModelForCausalLM.from_pretrained(path)
    model = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    layers = find_mlp_layers(model)
    idx = [0, 3, 7]
    down = model.get_submodule(layers[0].down)
    assert not hasattr(down, "lora_A"), "down_proj is not a LoRA target here"
    seen = []
    model.train()
    with pruned(model, layers, NeuronMask({0: idx}), only_training=True), torch.no_grad():
        h = down.register_forward_pre_hook(lambda m, a: seen.append(bool(torch.all(a[0][..., idx] == 0))))
        model(input_ids=torch.tensor([[1, 5, 9, 12]]))
        with model.disable_adapter():
            model(input_ids=torch.tensor([[1, 5, 9, 12]]))
    h.remove()
    assert seen == [True, False], "the policy pass is pruned, the reference pass (adapters off) is not"


def test_training_under_the_attack_with_lora(tmp_path):
    """safeneuron_adversarial_steps with a LoRA adapter (the 1.5B recipe's set-up): the attack set is
    re-identified on the adapted policy, zeroed in its training passes, and the frozen rows stay exact."""
    import transformers
    from test_freeze_trl import _down_inputs

    path = save_tiny_model(tmp_path / "m", "llama")
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_adversarial_steps=2, **IDENT)
    seen = []

    class Probe(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            attack = cb.run.attack_mask
            x = _down_inputs(model)
            seen.append((attack, all(torch.all(x[..., i] == 0) for i in attack.neurons.get(0, []))))

    base, _ = load(path)
    merged = lora_train(path, tmp_path / "out", cb, extra_callbacks=[Probe()]).merge_and_unload()
    t0 = cb.mask
    assert seen[0][0] is t0 and t0.num_neurons > 0, "the attack starts from the initial policy's neurons"
    assert seen[1][0] is not t0 and seen[2][0] is seen[1][0], "re-identified on the adapted policy at step 2"
    assert any(a.neurons.get(0) for a, _ in seen) and all(zero for _, zero in seen), \
        "the attacked neurons are zero in training passes"
    assert_frozen_exactly(frozen_rows(base, t0), frozen_rows(merged, t0))
