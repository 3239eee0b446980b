"""LoRA: the adapter's delta B·A stays exactly zero on frozen rows (gate/up) and columns (down)."""

import pytest
import torch
from safeneuron_plugins.integrations.hf import SafeNeuronCallback
from test_freeze_trl import IDENT, frozen_rows, load, preference_data
from tiny import save_tiny_model

from safeneuron_plugins.errors import UnsupportedSetupError

peft = pytest.importorskip("peft")
trl = pytest.importorskip("trl")

TARGETS = ["gate_proj", "up_proj", "down_proj", "q_proj", "v_proj"]


def lora_train(path, out, cb, **lora):
    model, tok = load(path)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, task_type="CAUSAL_LM", **lora)
    args = trl.DPOConfig(output_dir=str(out), per_device_train_batch_size=4, max_steps=4, learning_rate=2e-2,
                         weight_decay=0.1, report_to="none", save_strategy="no", use_cpu=True, seed=0)
    trainer = trl.DPOTrainer(model=model, args=args, train_dataset=preference_data(), processing_class=tok,
                             peft_config=config, callbacks=[cb])
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


def test_qlora_4bit_base_keeps_frozen_delta_zero(tmp_path):
    """bitsandbytes 4-bit base (its CPU backend) + LoRA: the same rule; the adapter's delta B·A is exactly
    zero on frozen rows (gate/up) and columns (down), the quantised base is untouched, the rest trains."""
    bnb = pytest.importorskip("bitsandbytes")
    import transformers

    path = save_tiny_model(tmp_path / "m", "llama")
    quant = transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float32)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, quantization_config=quant)
    tok = transformers.AutoTokenizer.from_pretrained(path)
    assert isinstance(model.model.layers[0].mlp.gate_proj, bnb.nn.Linear4bit)
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
