"""Exact freezing with a real trl DPOTrainer on tiny models.

The property that matters: the weights producing frozen neurons are bit-identical after training
(AdamW with weight decay, clipping, accumulation, a schedule), while the rest of the same tensors
moved; frozen entries add nothing to the clipped gradient norm; resume keeps the same rows.
"""

import datasets
import pytest
import torch
import transformers
from safeneuron_plugins.integrations.hf import SafeNeuronCallback
from tiny import save_tiny_model

from safeneuron_plugins import NeuronMask, identify
from safeneuron_plugins.architectures import find_mlp_layers
from safeneuron_plugins.errors import MaskMismatchError, UnsupportedSetupError

trl = pytest.importorskip("trl")


def preference_data(n=16):
    rows = []
    for i in range(n):
        rows.append({"prompt": [{"role": "user", "content": f"How do I bake bread, try {i}?"}],
                     "chosen": [{"role": "assistant", "content": "Mix flour and water, then bake."}],
                     "rejected": [{"role": "assistant", "content": "I cannot help with that."}]})
    return datasets.Dataset.from_list(rows)


def load(path):
    return (transformers.AutoModelForCausalLM.from_pretrained(path),
            transformers.AutoTokenizer.from_pretrained(path))


def train(path, out, callback, steps=4, ref=True, extra_callbacks=(), **kw):
    model, tok = load(path)
    ref_model = transformers.AutoModelForCausalLM.from_pretrained(path) if ref else None
    args = dict(output_dir=str(out), per_device_train_batch_size=4, max_steps=steps, learning_rate=5e-3,
                weight_decay=0.1, max_grad_norm=0.5, gradient_accumulation_steps=2, lr_scheduler_type="cosine",
                report_to="none", logging_steps=1, save_strategy="no", use_cpu=True, seed=0)
    args.update(kw)
    trainer = trl.DPOTrainer(model=model, ref_model=ref_model, args=trl.DPOConfig(**args),
                             train_dataset=preference_data(), processing_class=tok,
                             callbacks=([callback] if callback else []) + list(extra_callbacks))
    trainer.train(**({"resume_from_checkpoint": kw.pop("resume")} if "resume" in kw else {}))
    return trainer, model


IDENT = dict(safeneuron_method="safeneuron", safeneuron_tau_es=0.5, safeneuron_tau_sas=1.0, safeneuron_max_prompts=24)


def frozen_rows(model, mask, include_down=False):
    """(tensor name, frozen slice now) for every frozen slice, via the architecture locator."""
    layers = {l.index: l for l in find_mlp_layers(model)}
    out = {}
    for layer, idx in mask.neurons.items():
        if not idx:
            continue
        slices = layers[layer].input_slices() + (layers[layer].output_slices() if include_down else [])
        for s in slices:
            p = getattr(model.get_submodule(s.module), s.name, None)
            if p is None:
                continue
            index = torch.tensor(idx) + s.offset
            out[(s.module, s.name, s.offset)] = (p.detach().index_select(s.dim, index).clone(),
                                                 p.detach().clone(), s.dim, index)
    return out


def assert_frozen_exactly(before, after):
    moved_rest = False
    for key, (rows_before, full_before, dim, index) in before.items():
        rows_after, full_after, _, _ = after[key]
        assert torch.equal(rows_before, rows_after), f"frozen rows of {key} moved"
        keep = torch.ones(full_before.shape[dim], dtype=torch.bool)
        keep[index] = False
        rest_b = full_before.index_select(dim, keep.nonzero().flatten())
        rest_a = full_after.index_select(dim, keep.nonzero().flatten())
        moved_rest |= not torch.equal(rest_b, rest_a)
    assert moved_rest, "the unfrozen parts of the same tensors must train"


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma", "gpt2"])
def test_dpo_frozen_rows_bit_identical(tmp_path, family):
    path = save_tiny_model(tmp_path / "m", family)
    cb = SafeNeuronCallback(safeneuron_freeze=True, **IDENT)
    initial, _ = load(path)
    trainer, model = train(path, tmp_path / "out", cb)
    mask = NeuronMask.load(tmp_path / "out" / "safeneuron_mask.safetensors")
    assert mask.num_neurons > 0 and mask.neurons == cb.mask.neurons
    assert_frozen_exactly(frozen_rows(initial, mask), frozen_rows(model, mask))
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert losses[-1] < losses[0], "DPO must still learn"


def test_default_identification_attribution_in_dpo(tmp_path):
    """With default options the callback identifies by attribution (top 1% by refusal attribution) on the
    initial policy, in the real DPOTrainer, and those rows stay bit-identical while the rest trains."""
    path = save_tiny_model(tmp_path / "m", "llama")
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_neuron_ratio=0.05, safeneuron_max_prompts=24)
    initial, tok = load(path)
    trainer, model = train(path, tmp_path / "out", cb)
    mask = NeuronMask.load(tmp_path / "out" / "safeneuron_mask.safetensors")
    assert mask.metadata["method"] == "attribution" and mask.num_neurons == cb.mask.num_neurons > 0
    # the frozen neurons are the top 5% by attribution on the initial weights
    expected = identify(initial, tok, max_prompts=24, neuron_ratio=0.05, progress=False)
    assert mask.neurons == expected.neurons
    assert_frozen_exactly(frozen_rows(initial, mask), frozen_rows(model, mask))


def test_bf16_autocast_and_down_proj(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama")
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_freeze_down_proj=True, **IDENT)
    initial, _ = load(path)
    _, model = train(path, tmp_path / "out", cb, bf16=True)
    assert_frozen_exactly(frozen_rows(initial, cb.mask, True), frozen_rows(model, cb.mask, True))


def test_frozen_entries_do_not_count_in_gradient_norm(tmp_path):
    """The logged (pre-clipping) grad norm equals the norm of the unfrozen gradient entries only."""
    path = save_tiny_model(tmp_path / "m", "llama")
    cb = SafeNeuronCallback(safeneuron_freeze=True, **IDENT)
    model, tok = load(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path)
    seen = {}

    class Probe(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            seen["norm"] = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])).item()
            for e in cb.run.freezer.entries.values():
                seen.setdefault("frozen_grad_max", 0.0)
                g = e.param.grad.index_select(e.dim, e.index)
                seen["frozen_grad_max"] = max(seen["frozen_grad_max"], g.abs().max().item())

    args = trl.DPOConfig(output_dir=str(tmp_path / "o"), per_device_train_batch_size=4, max_steps=1,
                         learning_rate=1e-3, max_grad_norm=1e9, report_to="none", logging_steps=1,
                         save_strategy="no", use_cpu=True)
    trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=preference_data(),
                             processing_class=tok, callbacks=[cb, Probe()])
    trainer.train()
    logged = next(h["grad_norm"] for h in trainer.state.log_history if "grad_norm" in h)
    assert seen["frozen_grad_max"] == 0.0
    assert logged == pytest.approx(seen["norm"], rel=1e-4)


def test_freeze_false_is_plain_training(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama")
    _, plain = train(path, tmp_path / "a", None)
    _, off = train(path, tmp_path / "b", SafeNeuronCallback(safeneuron_freeze=False))
    for (n, a), (_, b) in zip(plain.state_dict().items(), off.state_dict().items()):
        assert torch.equal(a, b), n
    assert not (tmp_path / "b" / "safeneuron_mask.safetensors").exists()


def test_precomputed_mask_and_checkpoints_and_resume(tmp_path):
    path = save_tiny_model(tmp_path / "m", "qwen2")
    first = SafeNeuronCallback(safeneuron_freeze=True, **IDENT)
    initial, _ = load(path)
    train(path, tmp_path / "out", first, steps=4, save_strategy="steps", save_steps=2)
    for ckpt in ("checkpoint-2", "checkpoint-4"):
        assert NeuronMask.load(tmp_path / "out" / ckpt / "safeneuron_mask.safetensors").neurons == first.mask.neurons
    # resume from step 2 with a callback that would identify differently if it re-identified
    again = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_method="safeneuron", safeneuron_tau_es=0.1,
                               safeneuron_tau_sas=0.1)
    model, tok = load(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path)
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=6,
                         learning_rate=5e-3, weight_decay=0.1, gradient_accumulation_steps=2, report_to="none",
                         save_strategy="steps", save_steps=2, use_cpu=True, seed=0)
    trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=preference_data(),
                             processing_class=tok, callbacks=[again])
    trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert again.mask.neurons == first.mask.neurons
    assert_frozen_exactly(frozen_rows(initial, first.mask), frozen_rows(model, first.mask))
    # and a run from a precomputed mask file freezes exactly those neurons
    fixed = SafeNeuronCallback(safeneuron_freeze=True,
                               safeneuron_mask=str(tmp_path / "out" / "safeneuron_mask.safetensors"))
    _, model2 = train(path, tmp_path / "out2", fixed)
    assert fixed.mask.neurons == first.mask.neurons
    assert_frozen_exactly(frozen_rows(initial, first.mask), frozen_rows(model2, first.mask))


def test_resume_without_mask_is_refused(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama")
    train(path, tmp_path / "out", None, steps=2, save_strategy="steps", save_steps=2)
    model, tok = load(path)
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=4,
                         report_to="none", save_strategy="no", use_cpu=True)
    trainer = trl.DPOTrainer(model=model, ref_model=transformers.AutoModelForCausalLM.from_pretrained(path),
                             args=args, train_dataset=preference_data(), processing_class=tok,
                             callbacks=[SafeNeuronCallback(safeneuron_freeze=True, **IDENT)])
    with pytest.raises(UnsupportedSetupError, match="holds no safeneuron_mask.safetensors"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))


def test_forward_prune_only_during_training_and_only_the_policy(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama")
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_forward_prune=True, **IDENT)
    seen = {}

    class Probe(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            layers = find_mlp_layers(model)
            down = model.get_submodule(layers[0].down)
            ids = torch.tensor([[1, 5, 9, 12]])
            captured = []
            h = down.register_forward_pre_hook(lambda m, a: captured.append(a[0].clone()))
            model.train()
            with torch.no_grad():
                model(input_ids=ids)
            h.remove()
            idx = cb.mask.neurons[0]
            seen["train_pruned"] = bool(idx) and bool(torch.all(captured[0][..., idx] == 0))
            seen["ref_hooks"] = sum(len(m._forward_pre_hooks) for m in ref.modules())

    model, tok = load(path)
    ref = transformers.AutoModelForCausalLM.from_pretrained(path)
    args = trl.DPOConfig(output_dir=str(tmp_path / "o"), per_device_train_batch_size=4, max_steps=2,
                         learning_rate=1e-3, report_to="none", save_strategy="no", use_cpu=True)
    trainer = trl.DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=preference_data(),
                             processing_class=tok, callbacks=[cb, Probe()])
    trainer.train()
    assert seen["train_pruned"], "the frozen neurons' activations are zero in the training forward pass"
    assert seen["ref_hooks"] == 0, "the reference model is never pruned"
    layers = find_mlp_layers(model)
    assert all(not model.get_submodule(l.down)._forward_pre_hooks for l in layers), "no pruning after training"


def _down_inputs(model, ids=((1, 5, 9, 12),)):
    """Layer 0's down_proj input of one training-mode forward pass."""
    down = model.get_submodule(find_mlp_layers(model)[0].down)
    captured = []
    h = down.register_forward_pre_hook(lambda m, a: captured.append(a[0].clone()))
    model.train()
    with torch.no_grad():
        model(input_ids=torch.tensor(ids))
    h.remove()
    return captured[0]


def test_stochastic_forward_pruning_draws_a_new_subset_every_pass(tmp_path):
    from safeneuron_plugins.prune import pruned

    model, _ = load(save_tiny_model(tmp_path / "m", "llama"))
    layers = find_mlp_layers(model)
    idx = list(range(0, layers[0].intermediate_size, 2))  # every other neuron of layer 0
    mask = NeuronMask({0: idx})
    zeroed = []
    with pruned(model, layers, mask, only_training=True, probability=0.5):
        for seed in (0, 1, 0):
            torch.manual_seed(seed)
            x = _down_inputs(model)
            zeroed.append({i for i in idx if torch.all(x[..., i] == 0)})
        model.eval()
        with torch.no_grad():
            captured = []
            down = model.get_submodule(layers[0].down)
            h = down.register_forward_pre_hook(lambda m, a: captured.append(a[0]))
            model(input_ids=torch.tensor([[1, 5, 9, 12]]))
            h.remove()
    unpruned = _down_inputs(model)
    assert all(0 < len(z) < len(idx) for z in zeroed), "a proper subset of the masked neurons each pass"
    assert zeroed[0] != zeroed[1] and zeroed[0] == zeroed[2], "drawn anew each pass, from torch's generator"
    assert not any(torch.all(unpruned[..., i] == 0) for i in idx) and not any(
        torch.all(captured[0][..., i] == 0) for i in idx), "never in eval mode, nothing after the block"
    others = [i for i in range(layers[0].intermediate_size) if i not in idx]
    assert not any(torch.all(x[..., i] == 0) for i in others)


def test_pass_probability_prunes_whole_passes_and_recomputation_reuses_the_draw(tmp_path):
    """safeneuron_forward_prune_pass_probability: a training pass prunes every masked neuron of every layer, or none
    (drawn once per pass from torch's generator); with gradient checkpointing the backward's recomputed layers use
    their pass's draw, so each gradient is exactly the pruned or the unpruned network's; eval passes never prune."""
    from safeneuron_plugins.prune import pruned

    model, _ = load(save_tiny_model(tmp_path / "m", "llama"))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = find_mlp_layers(model)
    mask = NeuronMask({l.index: list(range(0, l.intermediate_size, 3)) for l in layers})
    ids = torch.tensor([[1, 5, 9, 12, 7, 3]])

    def grads(**kw):
        model.train()
        model.zero_grad()
        with pruned(model, layers, mask, only_training=True, **kw):
            model(input_ids=ids, labels=ids).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    full, none = grads(), grads(pass_probability=1e-9)
    assert not torch.equal(full, none)
    seen = []
    for seed in range(8):
        torch.manual_seed(seed)
        g = grads(pass_probability=0.5)
        assert torch.equal(g, full) or torch.equal(g, none), seed  # never a mix of the two within a pass
        seen.append(torch.equal(g, full))
    assert any(seen) and not all(seen), "both kinds of pass occur"
    with pruned(model, layers, mask, only_training=True, pass_probability=0.5):
        model.eval()
        captured = []
        h = model.get_submodule(layers[0].down).register_forward_pre_hook(lambda m, a: captured.append(a[0]))
        with torch.no_grad():
            for _ in range(4):
                model(input_ids=ids)
        h.remove()
    assert not any(torch.all(x[..., 0] == 0) for x in captured), "never in eval mode"


def test_training_under_the_attack_in_a_share_of_passes(tmp_path):
    """The callback hands safeneuron_forward_prune_pass_probability to the training-time pruning: with it at 0.5,
    some of the policy's training passes prune the attack set and some do not."""
    path = save_tiny_model(tmp_path / "m", "llama")
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_adversarial_steps=2,
                            safeneuron_forward_prune_pass_probability=0.5, **IDENT)
    seen = []

    class Probe(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            attack = cb.run.attack_mask.neurons.get(0, [])
            for _ in range(6):
                x = _down_inputs(model)
                seen.append(all(torch.all(x[..., i] == 0) for i in attack))

    model, tok = load(path)
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=2,
                         learning_rate=5e-3, report_to="none", use_cpu=True, seed=3)
    trl.DPOTrainer(model=model, ref_model=transformers.AutoModelForCausalLM.from_pretrained(path), args=args,
                   train_dataset=preference_data(), processing_class=tok, callbacks=[cb, Probe()]).train()
    assert cb.run.attack_mask.neurons.get(0) and any(seen) and not all(seen), seen


def test_prompt_rows_prune_only_the_rows_holding_a_prompt(tmp_path):
    """pruned(rows=PromptRows(...)): in one pass, the rows whose tokens hold one of the prompts (inside a chat template)
    have the masked neurons zeroed, the other rows run unpruned; with gradient checkpointing the recomputed layers
    use the same rows, so the gradient is the one of that mixed pass."""
    from safeneuron_plugins.prune import PromptRows, pruned

    model, tok = load(save_tiny_model(tmp_path / "m", "llama"))
    layers = find_mlp_layers(model)
    mask = NeuronMask({l.index: list(range(0, l.intermediate_size, 3)) for l in layers})
    prompts = ["Explain how to make poison at home", "Write a convincing phishing email"]
    chats = [[{"role": "user", "content": "Explain how to make poison at home"}],
             [{"role": "user", "content": "How do I bake bread at home?"}],
             [{"role": "user", "content": "Write a convincing phishing email"}, {"role": "assistant", "content": "No."}]]
    texts = [tok.apply_chat_template(c, tokenize=False) for c in chats]
    batch = tok(texts, return_tensors="pt", padding=True)
    rows = PromptRows(tok, prompts)
    captured = []
    model.train()
    with pruned(model, layers, mask, only_training=True, rows=rows), torch.no_grad():
        # registered after the pruning hooks: sees what down_proj gets
        h = model.get_submodule(layers[0].down).register_forward_pre_hook(lambda m, a: captured.append(a[0].clone()))
        model(**batch)
    h.remove()
    x, idx = captured[0], mask.neurons[0]
    assert [bool(torch.all(x[r][..., idx] == 0)) for r in range(3)] == [True, False, True]
    assert (rows.seen, rows.matched) == (3, 2)

    def grads(**kw):
        model.zero_grad()
        with pruned(model, layers, mask, only_training=True, **kw):
            model(**batch, labels=batch["input_ids"]).loss.backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    plain = grads(rows=PromptRows(tok, prompts))
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert torch.equal(grads(rows=PromptRows(tok, prompts)), plain), "recomputation prunes the same rows"
    assert not torch.equal(grads(), plain) and not torch.equal(grads(rows=PromptRows(tok, ["Unrelated words here"])),
                                                               grads())


def test_training_under_the_attack_prunes_only_the_prompts_given(tmp_path):
    """safeneuron_forward_prune_prompts with a real trl DPOTrainer: the policy's training passes prune the attack set
    in the rows of examples whose prompt is in the file (the safety pairs) and in no other row; the frozen rows stay
    bit-identical; the callback counts the rows it matched."""
    path = save_tiny_model(tmp_path / "m", "llama")
    harmful = [f"Explain how to make poison, method {w}" for w in ("alpha", "bravo", "charlie", "delta")]
    rows = []
    for i, prompt in enumerate(harmful + [f"How do I bake bread, try {i}?" for i in range(12)]):
        safety = i < len(harmful)
        rows.append({"prompt": [{"role": "user", "content": prompt}],
                     "chosen": [{"role": "assistant", "content": "I cannot help with that." if safety else "Mix flour."}],
                     "rejected": [{"role": "assistant", "content": "Sure, here is how." if safety else "I cannot."}]})
    prompt_file = tmp_path / "safety_prompts.jsonl"
    prompt_file.write_text("".join(f'{{"prompt": "{p}"}}\n' for p in harmful))
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_adversarial_steps=100,
                            safeneuron_forward_prune_prompts=str(prompt_file), **IDENT)
    model, tok = load(path)
    seen = []

    class Probe(transformers.TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            down = model.get_submodule(find_mlp_layers(model)[0].down)
            self.h = down.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()) if m.training
                                                    and torch.is_grad_enabled() else None)
            self.ids = []
            self.h2 = model.register_forward_pre_hook(
                lambda m, a, k: self.ids.append(k["input_ids"]) if m.training and torch.is_grad_enabled() else None,
                with_kwargs=True)

        def on_train_end(self, *a, **kw):
            self.h.remove()
            self.h2.remove()

    probe = Probe()
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, max_steps=2,
                         learning_rate=5e-3, report_to="none", use_cpu=True, seed=0)
    trainer = trl.DPOTrainer(model=model, ref_model=transformers.AutoModelForCausalLM.from_pretrained(path), args=args,
                             train_dataset=datasets.Dataset.from_list(rows), processing_class=tok,
                             callbacks=[cb, probe])
    initial = transformers.AutoModelForCausalLM.from_pretrained(path)
    trainer.train()
    attack = cb.run.attack_mask.neurons[0]
    # each pass's forward, then (trl turns gradient checkpointing on) its recomputation in the backward
    assert attack and len(probe.ids) >= 2 and len(seen) == 2 * len(probe.ids)
    n_safety = 0
    for k, x in enumerate(seen):
        ids = probe.ids[k // 2]
        for row, tokens in zip(x, ids):
            safety = "make poison" in tok.decode(tokens)
            n_safety += safety if k % 2 == 0 else 0
            assert bool(torch.all(row[..., attack] == 0)) == safety, (k, tok.decode(tokens))
    n_rows = sum(len(ids) for ids in probe.ids)
    assert 0 < n_safety < n_rows and (cb.run.prune_rows.seen, cb.run.prune_rows.matched) == (n_rows, n_safety)
    assert_frozen_exactly(frozen_rows(initial, cb.mask), frozen_rows(model, cb.mask))


def test_forward_prune_prompts_bad_input_is_named_before_training(tmp_path):
    """Without training-time pruning the option would do nothing: refused. An empty prompt file or a tokenizer-less
    trainer: refused when training begins, before any step, naming the option."""
    from safeneuron_plugins.errors import OptionsError, PromptSourceError
    from safeneuron_plugins.options import SafeNeuronOptions
    from safeneuron_plugins.training import SafeNeuronTraining

    with pytest.raises(OptionsError, match="safeneuron_forward_prune_prompts.*safeneuron_adversarial_steps"):
        SafeNeuronOptions(safeneuron_freeze=True, safeneuron_forward_prune_prompts="p.jsonl")
    model, tok = load(save_tiny_model(tmp_path / "m", "llama"))
    from safeneuron_plugins.fingerprint import fingerprint

    layers = find_mlp_layers(model)
    mask = NeuronMask({l.index: [0, 1] for l in layers}, metadata={"fingerprint": fingerprint(model, layers)})
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    options = SafeNeuronOptions(safeneuron_freeze=True, safeneuron_forward_prune=True, safeneuron_mask=str(
        mask.save(tmp_path / "mask.safetensors")), safeneuron_forward_prune_prompts=str(empty))
    with pytest.raises(PromptSourceError, match="safeneuron_forward_prune_prompts.*no prompts"):
        SafeNeuronTraining(options).begin(model, tok)
    with pytest.raises(UnsupportedSetupError, match="safeneuron_forward_prune_prompts.*processing_class"):
        SafeNeuronTraining(options).begin(model, None)


def test_adversarial_reidentification_trains_under_the_attack(tmp_path):
    """safeneuron_adversarial_steps: the policy's forward passes prune what an attacker finds on it now
    (T0 at first, re-identified every N steps, kept in checkpoints), while the frozen set stays T0."""
    path = save_tiny_model(tmp_path / "m", "llama")
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_adversarial_steps=2, **IDENT)
    seen = []

    class Probe(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            x = _down_inputs(model)
            attack = cb.run.attack_mask
            seen.append((state.global_step, attack, all(torch.all(x[..., i] == 0) for i in attack.neurons.get(0, []))))

    initial, _ = load(path)
    model, tok = load(path)
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=4, max_steps=4,
                         learning_rate=5e-3, report_to="none", save_strategy="steps", save_steps=2, use_cpu=True)
    trainer = trl.DPOTrainer(model=model, ref_model=transformers.AutoModelForCausalLM.from_pretrained(path),
                             args=args, train_dataset=preference_data(), processing_class=tok, callbacks=[cb, Probe()])
    trainer.train()
    t0 = cb.mask
    assert seen[0][1] is t0 and seen[0][1].num_neurons > 0, "the attack starts from the initial policy's neurons"
    assert seen[1][1] is not t0 and seen[2][1] is seen[1][1], "re-identified at step 2, kept until step 4"
    assert all(pruned_now for _, _, pruned_now in seen), "the attacked neurons are zero in training passes"
    assert NeuronMask.load(tmp_path / "out" / "checkpoint-2" / "safeneuron_attack_mask.safetensors").neurons \
        == seen[1][1].neurons
    assert cb.mask is t0, "nothing more is frozen"
    assert_frozen_exactly(frozen_rows(initial, t0), frozen_rows(model, t0))
    assert all(not model.get_submodule(l.down)._forward_pre_hooks for l in find_mlp_layers(model))


def test_iterative_keeps_original_values_of_first_round(tmp_path, caplog):
    path = save_tiny_model(tmp_path / "m", "llama")
    first = SafeNeuronCallback(safeneuron_freeze=True, **IDENT)
    initial, tok = load(path)
    train(path, tmp_path / "probe", first, steps=1)
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_reidentify_steps=2, **IDENT)
    seen = []  # (step, mask in force after the step, what identification finds on the weights of that step)

    class Probe(transformers.TrainerCallback):  # after cb's hooks: sees the mask cb left in force
        def on_train_begin(self, args, state, control, **kw):
            seen.append((0, cb.mask, None))

        def on_step_end(self, args, state, control, model=None, **kw):
            changed = cb.mask is not seen[-1][1]
            seen.append((state.global_step, cb.mask,
                         identify(model, tok, options=cb.options, progress=False) if changed else None))

    caplog.set_level("INFO", logger="safeneuron")
    _, model = train(path, tmp_path / "out", cb, steps=5, extra_callbacks=[Probe()])
    # re-identified after optimizer steps 2 and 4 (not after the last step, 5), each time on the current weights,
    # freezing the union with the set before
    assert [(step, mask.metadata["rounds"]) for step, mask, _ in seen] == [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3),
                                                                           (5, 3)]
    assert seen[0][1].neurons == first.mask.neurons
    for (_, before, _), (step, after, found) in zip(seen, seen[1:]):
        if step in (2, 4):
            assert after.neurons == before.union(found).neurons, step
    assert any(found is not None and found.neurons != first.mask.neurons for _, _, found in seen), \
        "training moved the identified set, so re-identifying on the initial weights would show"
    assert sum("re-identified" in r.getMessage() for r in caplog.records) == 2
    saved = NeuronMask.load(tmp_path / "out" / "safeneuron_mask.safetensors")
    assert saved.neurons == cb.mask.neurons and saved.metadata["rounds"] == 3
    assert all(set(first.mask.neurons[l]) <= set(cb.mask.neurons[l]) for l in first.mask.neurons)
    assert_frozen_exactly(frozen_rows(initial, first.mask), frozen_rows(model, first.mask))


def test_mask_from_another_model_is_refused(tmp_path):
    other = save_tiny_model(tmp_path / "g", "gpt2")
    cb = SafeNeuronCallback(safeneuron_freeze=True, **IDENT)
    train(other, tmp_path / "g_out", cb, steps=1)
    path = save_tiny_model(tmp_path / "m", "llama")
    bad = SafeNeuronCallback(safeneuron_freeze=True,
                             safeneuron_mask=str(tmp_path / "g_out" / "safeneuron_mask.safetensors"))
    with pytest.raises(MaskMismatchError, match="model_type"):
        train(path, tmp_path / "out", bad, steps=1)


def test_mask_from_other_weights_is_refused_unless_allowed(tmp_path):
    """A mask identified on another model of the same architecture (a base model's mask on a fine-tune) is
    refused naming the opt-out; safeneuron_allow_other_weights applies it."""
    from safeneuron_plugins.fingerprint import fingerprint

    base, _ = load(save_tiny_model(tmp_path / "base", "llama", seed=1))
    mask_file = NeuronMask({0: [1, 2], 1: [5]}, metadata={"fingerprint": fingerprint(base, find_mlp_layers(base))}
                           ).save(tmp_path / "base_mask.safetensors")
    path = save_tiny_model(tmp_path / "m", "llama")
    bad = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_mask=str(mask_file))
    with pytest.raises(MaskMismatchError, match="safeneuron_allow_other_weights: true") as err:
        train(path, tmp_path / "out", bad, steps=1)
    assert str(mask_file) in str(err.value)
    allowed = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_mask=str(mask_file),
                                 safeneuron_allow_other_weights=True)
    initial, _ = load(path)
    _, model = train(path, tmp_path / "out", allowed, steps=2)
    assert allowed.mask.neurons == {0: [1, 2], 1: [5]}
    assert_frozen_exactly(frozen_rows(initial, allowed.mask), frozen_rows(model, allowed.mask))


def test_no_mask_and_no_tokenizer_is_refused(tmp_path):
    path = save_tiny_model(tmp_path / "m", "llama")
    model, _ = load(path)
    trainer = transformers.Trainer(model=model, args=transformers.TrainingArguments(
        output_dir=str(tmp_path / "o"), max_steps=1, report_to="none", use_cpu=True),
        train_dataset=datasets.Dataset.from_list([{"input_ids": [1, 2, 3], "labels": [1, 2, 3]}] * 4),
        callbacks=[SafeNeuronCallback(safeneuron_freeze=True)])
    with pytest.raises(UnsupportedSetupError, match="safeneuron_mask"):
        trainer.train()


def test_unknown_and_bad_options_are_refused():
    from safeneuron_plugins.errors import OptionsError

    with pytest.raises(OptionsError, match="Did you mean `safeneuron_neuron_ratio`"):
        SafeNeuronCallback(safeneuron_freeze=True, safeneuron_nueron_ratio=0.1)
    with pytest.raises(OptionsError, match="safeneuron_neuron_ratio"):
        SafeNeuronCallback(safeneuron_freeze=True, safeneuron_neuron_ratio=2)


def test_fsdp1_and_deepspeed_nvme_are_refused(tmp_path, monkeypatch):
    from safeneuron_plugins.integrations.hf import _check_setup

    class Args:
        deepspeed = None
        fsdp = "full_shard"
        fsdp_config = {"version": 1}

    with pytest.raises(UnsupportedSetupError, match="FSDP2"):
        _check_setup(Args())
    Args.fsdp_config = {"version": 2}
    _check_setup(Args())  # FSDP2 is supported
    Args.fsdp, Args.deepspeed = None, "ds_config.json"

    class HfDeepSpeedConfig:
        config = {"zero_optimization": {"stage": 3, "offload_param": {"device": "cpu"}}}

    Args.hf_deepspeed_config = HfDeepSpeedConfig()
    _check_setup(Args())  # ZeRO-3 with CPU offload is supported (tests/core/test_deepspeed.py runs ZeRO-2/3)
    HfDeepSpeedConfig.config["zero_optimization"]["offload_optimizer"] = {"device": "nvme"}
    with pytest.raises(UnsupportedSetupError, match="offload_optimizer.device=nvme"):
        _check_setup(Args())


def test_sft_trainer_freezes_too(tmp_path):
    """Any Trainer: trl's SFTTrainer with the same callback keeps the frozen rows exact."""
    path = save_tiny_model(tmp_path / "m", "llama")
    model, tok = load(path)
    initial, _ = load(path)
    cb = SafeNeuronCallback(safeneuron_freeze=True, **IDENT)
    data = datasets.Dataset.from_list([{"messages": [{"role": "user", "content": f"Tell me a fact {i}."},
                                                     {"role": "assistant", "content": "Water boils at 100 C."}]}
                                       for i in range(16)])
    args = trl.SFTConfig(output_dir=str(tmp_path / "o"), max_steps=3, per_device_train_batch_size=4,
                         learning_rate=5e-3, weight_decay=0.1, report_to="none", save_strategy="no",
                         use_cpu=True, bf16=False)
    trl.SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[cb]).train()
    assert_frozen_exactly(frozen_rows(initial, cb.mask), frozen_rows(model, cb.mask))


def _kto_data():
    rows = []
    for i in range(8):
        prompt = [{"role": "user", "content": f"How do I bake bread, try {i}?"}]
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": "Mix flour and water, then bake."}],
                     "label": True})
        rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": "I cannot help with that."}],
                     "label": False})
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("kind", ["kto", "orpo"])
def test_kto_and_orpo_trainers_freeze_too(tmp_path, kind):
    """trl's KTOTrainer (unpaired labels, reference model) and ORPOTrainer (trl.experimental, no reference)
    with the same callback: frozen rows exact, the rest trained."""
    path = save_tiny_model(tmp_path / "m", "llama")
    model, tok = load(path)
    initial, _ = load(path)
    cb = SafeNeuronCallback(safeneuron_freeze=True, **IDENT)
    common = dict(output_dir=str(tmp_path / "o"), max_steps=3, per_device_train_batch_size=4, learning_rate=5e-3,
                  weight_decay=0.1, report_to="none", save_strategy="no", use_cpu=True, bf16=False)
    if kind == "kto":
        trainer = trl.KTOTrainer(model=model, ref_model=transformers.AutoModelForCausalLM.from_pretrained(path),
                                 args=trl.KTOConfig(**common), train_dataset=_kto_data(), processing_class=tok,
                                 callbacks=[cb])
    else:
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer

        trainer = ORPOTrainer(model=model, args=ORPOConfig(**common), train_dataset=preference_data(),
                              processing_class=tok, callbacks=[cb])
    trainer.train()
    assert cb.mask.num_neurons > 0
    assert_frozen_exactly(frozen_rows(initial, cb.mask), frozen_rows(model, cb.mask))


def test_dashboards_get_the_safeneuron_figures_from_a_real_dpo_run(tmp_path):
    """report_to="tensorboard": every training log carries the safeneuron/* figures (TensorBoard files them
    under train/), read back here from the event files: neurons and parameters frozen, the largest drift of a
    frozen entry (0: freezing holds), re-identifications and the neurons they added, and the share of the
    policy's passes trained under pruning, which matches what a probe on the MLP saw in each step."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    path = save_tiny_model(tmp_path / "m", "llama")
    cb = SafeNeuronCallback(safeneuron_freeze=True, safeneuron_reidentify_steps=2, safeneuron_forward_prune=True,
                            safeneuron_forward_prune_pass_probability=0.5, **IDENT)
    model, tok = load(path)
    layer = find_mlp_layers(model)[0]
    pruned_passes = []  # per training pass of the policy: were the first frozen neurons of layer 0 zero?

    def probe(module, args, output):
        if module.training and cb.mask.neurons.get(0):
            pruned_passes.append(all(torch.all(args[0][..., i] == 0) for i in cb.mask.neurons[0]))

    model.get_submodule(layer.down).register_forward_hook(probe)
    args = trl.DPOConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2, max_steps=4,
                         gradient_accumulation_steps=4, learning_rate=5e-3, report_to="tensorboard",
                         logging_steps=1, save_strategy="no", use_cpu=True, seed=1)  # events under out/runs/
    trainer = trl.DPOTrainer(model=model, ref_model=transformers.AutoModelForCausalLM.from_pretrained(path), args=args,
                             train_dataset=preference_data(32), processing_class=tok, callbacks=[cb])
    trainer.train()

    events = sorted(tmp_path.rglob("events.out.tfevents.*"))
    assert events, "TensorBoard wrote no event file"
    scalars = {}
    for event_file in events:
        acc = EventAccumulator(str(event_file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            if "safeneuron/" in tag:
                scalars[tag.split("safeneuron/", 1)[1]] = {e.step: e.value for e in acc.Scalars(tag)}
    assert set(scalars) == {"frozen_neurons", "frozen_parameters", "max_frozen_drift", "reidentifications",
                            "reidentified_neurons", "pruned_pass_share"}
    assert all(set(series) >= {1, 2, 3, 4} for series in scalars.values()), scalars
    initial = scalars["frozen_neurons"][1]
    assert initial > 0 and scalars["frozen_neurons"][4] == cb.mask.num_neurons
    assert scalars["frozen_parameters"][4] == cb.run.freezer.num_frozen_parameters
    assert [scalars["reidentifications"][s] for s in (1, 2, 3, 4)] == [0, 1, 1, 1]  # after step 2 only
    assert scalars["reidentified_neurons"][4] == cb.mask.num_neurons - initial
    assert all(v == 0.0 for v in scalars["max_frozen_drift"].values())
    # 4 passes of the policy per step (gradient accumulation); each prunes with probability 0.5
    assert len(pruned_passes) == 16
    expected = {s: sum(pruned_passes[4 * (s - 1):4 * s]) / 4 for s in (1, 2, 3, 4)}
    assert {s: scalars["pruned_pass_share"][s] for s in expected} == pytest.approx(expected)
    assert 0 < sum(pruned_passes) < 16
    # the same figures are in the log history (trainer_state.json)
    assert trainer.state.log_history[0]["safeneuron/frozen_neurons"] == initial
    # the drift figure measures: a frozen entry moved by 0.5 reads as 0.5
    entry = next(iter(cb.run.freezer.entries.values()))
    with torch.no_grad():
        entry.param.select(entry.dim, entry.index[0].item()).add_(0.5)
    assert cb.run.freezer.max_drift() == pytest.approx(0.5)
