"""The attribution score against an independent computation on tiny models.

score_j = mean over prompts of sum_t a_j(t) * d log p(refusal | prompt) / d a_j(t). An independent
route to the same number: scale neuron j's activation by s_j (a multiplicative gate on down_proj's
input) and differentiate the summed refusal log-probability with respect to s at s = 1; d/ds_j equals
sum_t a_j(t) g_j(t). The reference runs each prompt alone (no padding), so batching and padding are
checked too.
"""

import pytest
import torch

from safeneuron_plugins.architectures import find_mlp_layers
from safeneuron_plugins.identification.attribution import attribution_scores
from safeneuron_plugins.identification.prompts import format_prompts
from tests.tiny import make_tokenizer, tiny_model

PROMPTS = ["Tell me how to build a weapon to hurt people.", "How can I steal a password?",
           "Write a poem about the sea and the wind in autumn, with three long stanzas please."]
REFUSAL = "I cannot help with that request."


def _reference(model, tok, layers, texts):
    total = {l.index: torch.zeros(l.intermediate_size, dtype=torch.float64) for l in layers}
    target = tok(REFUSAL, add_special_tokens=False)["input_ids"]
    for text in texts:
        prompt = tok(text, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt + target])
        scales = {l.index: torch.ones(l.intermediate_size, dtype=torch.float32, requires_grad=True) for l in layers}
        handles = [model.get_submodule(l.down).register_forward_pre_hook(
            lambda m, args, s=scales[l.index]: (args[0] * s,)) for l in layers]
        try:
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            n = len(prompt)
            loss = sum(logp[n - 1 + i, t] for i, t in enumerate(target))
            grads = torch.autograd.grad(loss, [scales[l.index] for l in layers])
        finally:
            for h in handles:
                h.remove()
        for l, g in zip(layers, grads):
            total[l.index] += g.double()
    return {k: v / len(texts) for k, v in total.items()}


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3", "gpt2"])
@pytest.mark.parametrize("frozen", [False, True])
def test_attribution_equals_gradient_of_neuron_scale(family, frozen):
    torch.manual_seed(0)
    model = tiny_model(family).float().eval()
    if frozen:  # identification may run on a model whose parameters are all frozen
        model.requires_grad_(False)
    tok = make_tokenizer()
    layers = find_mlp_layers(model)
    texts = format_prompts(tok, PROMPTS)
    got = attribution_scores(model, tok, layers, texts, refusal=REFUSAL, batch_size=2)
    want = _reference(model, tok, layers, texts)
    for l in layers:
        assert got[l.index].abs().max() > 0
        torch.testing.assert_close(got[l.index], want[l.index], rtol=1e-3, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())  # no parameter gradients are left behind


def test_identify_method_attribution_keeps_the_top_positive_scores(tmp_path):
    """identify(method="attribution") selects exactly the top ratio of neurons by the score above,
    only positive ones, and records how; the CLI writes the same mask."""
    from safeneuron_plugins import NeuronMask, identify
    from safeneuron_plugins.cli import main
    from tests.tiny import save_tiny_model

    torch.manual_seed(0)
    model = tiny_model("llama").float().eval()
    tok = make_tokenizer()
    layers = find_mlp_layers(model)
    mask = identify(model, tok, harmful=PROMPTS, harmless=["How do I bake bread?", "Plan a picnic."],
                    method="attribution", refusal_text=REFUSAL, neuron_ratio=0.05, progress=False)
    scores = attribution_scores(model, tok, layers, format_prompts(tok, PROMPTS), refusal=REFUSAL)
    flat = torch.cat([scores[l.index] for l in layers])
    k = int(torch.ceil(torch.tensor(0.05 * flat.numel())))
    top = flat.topk(k).values
    assert mask.num_neurons == int((top > 0).sum()) > 0
    picked = torch.cat([scores[l][torch.tensor(v, dtype=torch.long)] for l, v in mask.neurons.items() if v])
    assert picked.min() >= top[top > 0].min() - 1e-12  # no neuron outside the top k was chosen
    assert mask.metadata["method"] == "attribution" and mask.metadata["signal"] == "product"
    assert mask.metadata["neuron_ratio"] == 0.05 and mask.metadata["refusal_text"] == REFUSAL

    model_dir = save_tiny_model(tmp_path / "m")
    (tmp_path / "u.txt").write_text("\n".join(PROMPTS))
    (tmp_path / "s.txt").write_text("How do I bake bread?\nPlan a picnic.\n")
    out = tmp_path / "mask.safetensors"
    assert main(["identify", str(model_dir), "--out", str(out), "--harmful", str(tmp_path / "u.txt"),
                 "--harmless", str(tmp_path / "s.txt"), "--method", "attribution", "--neuron-ratio", "0.02",
                 "--quiet"]) == 0
    saved = NeuronMask.load(out)
    assert saved.metadata["method"] == "attribution" and 0 < saved.num_neurons <= 0.02 * 3 * 64 + 1


def test_attribution_refuses_an_empty_refusal_text():
    from safeneuron_plugins.errors import OptionsError
    from safeneuron_plugins.options import SafeNeuronOptions

    with pytest.raises(OptionsError, match="safeneuron_refusal_text"):
        SafeNeuronOptions(safeneuron_method="attribution", safeneuron_refusal_text="  ")
