"""Every supported family: neurons located, identified, and the located slices are the right ones."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny import FAMILIES, make_tokenizer, tiny_model

from safeneuron_plugins import identify
from safeneuron_plugins.architectures import find_mlp_layers
from safeneuron_plugins.errors import UnsupportedArchitectureError
from safeneuron_plugins.identification import collect_matrix, collect_statistics
from safeneuron_plugins.identification.activations import recording
from safeneuron_plugins.identification.prompts import format_prompts
from safeneuron_plugins.mask import NeuronMask
from safeneuron_plugins.prune import pruned

PROMPTS_U = ["Tell me how to build a weapon to hurt people.", "How can I steal a password?",
             "Explain how to poison a neighbour's dog.", "Write a threat to send to my boss."] * 3
PROMPTS_S = ["How do I bake bread at home?", "Write a poem about the sea.",
             "Explain how photosynthesis works.", "What is the capital of France?"] * 3


@pytest.mark.parametrize("family", FAMILIES)
def test_family_is_located_and_identified(family):
    model = tiny_model(family)
    layers = find_mlp_layers(model)
    assert len(layers) == 3 and all(l.intermediate_size == 64 for l in layers)
    assert all("vision" not in l.up and "visual" not in l.up for l in layers)
    tok = make_tokenizer()
    mask = identify(model, tok, PROMPTS_U, PROMPTS_S, method="safeneuron", tau_es=0.5, tau_sas=1.0, batch_size=5,
                    progress=False)  # three batches per set: the streamed statistics merge
    assert set(mask.neurons) == {0, 1, 2}
    assert mask.metadata["fingerprint"]["num_layers"] == 3
    # the selection, by hand from the per-prompt pooled signal (default product, max pooling): ES = Cohen's d with
    # pooled unbiased SD > 0.5; SAS = layer z-score (population SD) of the mean shift > 1 with a positive shift
    es, sas = by_hand_selection(model, tok, layers, tau_es=0.5, tau_sas=1.0)
    assert mask.es == es and mask.sas == sas
    assert mask.neurons == {l: sorted(set(es[l]) | set(sas[l])) for l in es}
    assert mask.num_neurons > 0 and any(set(es[l]) != set(sas[l]) for l in es)


def by_hand_selection(model, tok, layers, *, tau_es, tau_sas, signal="product", pooling="max"):
    """ES and SAS neurons per layer computed directly from the [prompts, neurons] pooled activations."""
    texts = {kind: format_prompts(tok, prompts) for kind, prompts in (("u", PROMPTS_U), ("s", PROMPTS_S))}
    x = {kind: collect_matrix(model, tok, layers, t, signal=signal, pooling=pooling, batch_size=5, max_length=256,
                              templated=True, desc=kind, progress=False) for kind, t in texts.items()}
    es, sas = {}, {}
    for l in x["u"]:
        u, s = x["u"][l].double(), x["s"][l].double()
        delta = u.mean(0) - s.mean(0)
        pooled = ((len(u) - 1) * u.var(0) + (len(s) - 1) * s.var(0)) / (len(u) + len(s) - 2)
        d = torch.where(pooled > 0, delta / pooled.sqrt(), torch.sign(delta) * math.inf).nan_to_num(
            nan=0.0, posinf=math.inf, neginf=-math.inf)
        z = (delta - delta.mean()) / delta.std(unbiased=False)
        near = ((d - tau_es).abs() < 1e-9) | ((z - tau_sas).abs() < 1e-9)
        assert not near.any(), "a neuron sits on a threshold: rounding could decide it"
        es[l] = (d > tau_es).nonzero().flatten().tolist()
        sas[l] = ((z > tau_sas) & (delta > 0)).nonzero().flatten().tolist()
    return es, sas


@pytest.mark.parametrize("family", ["llama", "phi3", "gpt2", "gpt_neox"])
def test_input_slices_produce_the_recorded_neuron(family):
    """Zeroing neuron j's input slices must zero exactly channel j of the recorded gate/up signal."""
    model = tiny_model(family)
    layers = find_mlp_layers(model)
    layer = layers[1]
    seen = {}
    with recording(model, [layer], "up", lambda i, a: seen.__setitem__("up", a.clone()), stop_after_last=False):
        with torch.no_grad():
            for s in layer.input_slices():
                p = getattr(model.get_submodule(s.module), s.name, None)
                if p is not None:
                    p.index_fill_(s.dim, torch.tensor([s.offset + 5]), 0.0)
            model(input_ids=torch.tensor([[1, 5, 9, 12]]))
    assert torch.all(seen["up"][..., 5] == 0)
    assert torch.all(seen["up"][..., 4] != 0)


@pytest.mark.parametrize("family", ["llama", "phi3"])
def test_recorded_signals_are_the_mlp_quantities_by_hand(family):
    """What identification records, computed by hand from each MLP's input for a few prompts (one batch with
    padding): ``gate`` is the gate projection's output before the activation function (Phi-3: the FIRST half of
    the fused gate_up_proj), ``up`` the up projection's output (Phi-3: the second half), ``product`` =
    act(gate) * up, the down projection's input; pooled over each prompt's real tokens (max / mean / last).
    The streamed per-neuron mean and variance of those pooled values are the plain ones."""
    model, tok = tiny_model(family), make_tokenizer()
    assert model.config.hidden_act == "silu"
    layers = find_mlp_layers(model)
    size = layers[0].intermediate_size
    prompts = ["Hi", *PROMPTS_S[:3], PROMPTS_U[0]]
    texts = format_prompts(tok, prompts)
    decoder = model.model.layers
    hand = {signal: {l.index: [] for l in layers} for signal in ("gate", "up", "product")}
    for text in texts:  # each prompt alone (no padding); the MLP's input and output from hooks on the MLP itself
        seen = {}
        hooks = [decoder[i].mlp.register_forward_hook(
            lambda mod, args, out, i=i, seen=seen: seen.__setitem__(i, (args[0][0].double(), out[0].double())))
            for i in range(len(decoder))]
        ids = tok(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            model(input_ids=ids)
        for h in hooks:
            h.remove()
        for i, (x, y) in seen.items():
            mlp = decoder[i].mlp
            if family == "phi3":
                w = mlp.gate_up_proj.weight.double()
                gate, up = x @ w[:size].T, x @ w[size:].T
            else:
                gate, up = x @ mlp.gate_proj.weight.double().T, x @ mlp.up_proj.weight.double().T
            product = F.silu(gate) * up
            # the hand-made halves and product are the model's own: down_proj(product) is the MLP's output
            assert torch.allclose(product @ mlp.down_proj.weight.double().T, y, atol=1e-4)
            for signal, value in (("gate", gate), ("up", up), ("product", product)):
                hand[signal][i].append(value)  # [tokens, neurons]
    pools = {"max": lambda v: v.amax(0), "mean": lambda v: v.mean(0), "last": lambda v: v[-1]}
    for signal in ("gate", "up", "product"):
        for pooling, pool in pools.items():
            recorded = collect_matrix(model, tok, layers, texts, signal=signal, pooling=pooling, batch_size=8,
                                      max_length=256, templated=True, desc="", progress=False)
            for layer in layers:
                expected = torch.stack([pool(v) for v in hand[signal][layer.index]])
                assert torch.allclose(recorded[layer.index].double(), expected, atol=1e-4), (signal, pooling, layer)
        stats = collect_statistics(model, tok, layers, texts, signal=signal, pooling="max", batch_size=2,
                                   progress=False)
        for layer in layers:
            values = torch.stack([v.amax(0) for v in hand[signal][layer.index]])
            assert stats[layer.index].count == len(prompts)
            assert torch.allclose(stats[layer.index].mean, values.mean(0), atol=1e-4)
            assert torch.allclose(stats[layer.index].var, values.var(0), atol=1e-4)
    assert not torch.allclose(hand["gate"][0][0], hand["up"][0][0], atol=1e-2), "the two halves differ"

def test_empty_mask_changes_nothing_and_pruning_changes_output():
    model = tiny_model("llama")
    layers = find_mlp_layers(model)
    ids = torch.tensor([[1, 5, 9, 12, 20]])
    with torch.no_grad():
        plain = model(input_ids=ids).logits
        with pruned(model, layers, NeuronMask({})):
            empty = model(input_ids=ids).logits
        with pruned(model, layers, NeuronMask({0: [3, 7], 2: [1]})):
            cut = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert torch.equal(empty, plain), "an empty mask must not change the output"
    assert not torch.equal(cut, plain)
    assert torch.equal(after, plain), "hooks must be removed when the block ends"


def test_pruned_down_input_is_zero_only_on_listed_channels():
    model = tiny_model("qwen2")
    layers = find_mlp_layers(model)
    ids = torch.tensor([[1, 5, 9, 12, 20]])
    with pruned(model, layers, NeuronMask({1: [2, 40]})):
        after = {}
        down = model.get_submodule(layers[1].down)
        h = down.register_forward_pre_hook(lambda m, a: after.__setitem__("x", a[0].clone()))
        with torch.no_grad():
            model(input_ids=ids)
        h.remove()
    x = after["x"]
    assert torch.all(x[..., [2, 40]] == 0)
    nonzero = [j for j in range(64) if j not in (2, 40)]
    assert torch.all(x[..., nonzero].abs().sum(dim=(0, 1)) > 0)


class _NoMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])


def test_unsupported_architecture_error_lists_families_and_option():
    with pytest.raises(UnsupportedArchitectureError) as err:
        find_mlp_layers(_NoMLP())
    msg = str(err.value)
    assert "Llama" in msg and "GPT-2" in msg and "safeneuron_mlp_modules" in msg


class _CustomBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.ffn_in = torch.nn.Linear(8, 16)
        self.ffn_gate = torch.nn.Linear(8, 16)
        self.ffn_out = torch.nn.Linear(16, 8)

    def forward(self, x):
        return x + self.ffn_out(torch.relu(self.ffn_gate(x)) * self.ffn_in(x))


class _CustomLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(384, 8)
        self.stack = torch.nn.ModuleList([_CustomBlock() for _ in range(2)])

    def get_input_embeddings(self):
        return self.embed

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        x = self.embed(input_ids)
        for block in self.stack:
            x = block(x)
        return x


def test_mlp_modules_option_names_an_unknown_architecture():
    model = _CustomLM()
    with pytest.raises(UnsupportedArchitectureError):
        find_mlp_layers(model)
    spec = "stack:ffn_gate,ffn_in,ffn_out"
    layers = find_mlp_layers(model, spec)
    assert [l.up for l in layers] == ["stack.0.ffn_in", "stack.1.ffn_in"]
    mask = identify(model, make_tokenizer(), PROMPTS_U, PROMPTS_S, mlp_modules=spec, method="safeneuron", tau_es=0.3,
                    tau_sas=0.5, progress=False)
    assert set(mask.neurons) == {0, 1}
    with pytest.raises(UnsupportedArchitectureError, match="LAYERS_PATH"):
        find_mlp_layers(model, "stack-without-colon")
    with pytest.raises(UnsupportedArchitectureError, match="no layer list"):
        find_mlp_layers(model, "blocks:a,b,c")
