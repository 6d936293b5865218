"""GlobEnc and ALTI: their defining properties, checked against a literal re-implementation.

The reference here follows the papers' formulas token pair by token pair, from the hidden states
and attention probabilities that Hugging Face returns (``output_hidden_states``,
``output_attentions`` with eager attention), never from the package's captured internals.
"""

from __future__ import annotations

import pytest
import torch
from support.classifiers import make_model, make_padded_batch
from torch import Tensor, nn

from captum_decompx import ALTI, GlobEnc
from captum_decompx.baselines import attention_rollout

METHODS = {"globenc": GlobEnc, "alti": ALTI}


@pytest.fixture(scope="module")
def bert64() -> nn.Module:
    """A tiny float64 BERT classifier with eager attention (so it returns its probabilities)."""
    model = make_model("bert", seed=3).double()
    model.config._attn_implementation = "eager"
    return model


def _layer_norm_linear(piece: Tensor, real_input: Tensor, norm: nn.LayerNorm) -> Tensor:
    """gamma * (piece - mean(piece)) / sqrt(var(real_input) + eps), for one vector."""
    scale = torch.sqrt(real_input.var(unbiased=False) + norm.eps)
    return norm.weight * (piece - piece.mean()) / scale


@torch.no_grad()
def literal_layer_matrices(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> dict[str, list[Tensor]]:
    """Per layer, GlobEnc's and ALTI's (batch, seq, seq) matrices, one token pair at a time."""
    out = model(input_ids, attention_mask=attention_mask, output_hidden_states=True, output_attentions=True)
    heads = model.config.num_attention_heads
    result: dict[str, list[Tensor]] = {"globenc": [], "alti": []}
    batch, seq = input_ids.shape
    for index, layer in enumerate(model.bert.encoder.layer):
        x = out.hidden_states[index]
        alpha = out.attentions[index]
        w_v, b_v = layer.attention.self.value.weight, layer.attention.self.value.bias
        w_o, b_o = layer.attention.output.dense.weight, layer.attention.output.dense.bias
        ln1, ln2 = layer.attention.output.LayerNorm, layer.output.LayerNorm
        head_dim = w_o.shape[1] // heads
        globenc = torch.zeros(batch, seq, seq, dtype=x.dtype)
        alti = torch.zeros(batch, seq, seq, dtype=x.dtype)
        for b in range(batch):
            for i in range(seq):
                pieces = []
                for j in range(seq):
                    value = x[b, j] @ w_v.T + b_v
                    z = torch.zeros_like(x[b, j])
                    for h in range(heads):
                        block = slice(h * head_dim, (h + 1) * head_dim)
                        z = z + alpha[b, h, i, j] * (value[block] @ w_o[:, block].T)
                    if i == j:
                        z = z + x[b, i]
                    pieces.append(z)
                ln1_input = sum(pieces) + b_o
                ln1_output = ln1(ln1_input)
                ln2_input = ln1_output + layer.output.dense(layer.intermediate(ln1_output))
                torch.testing.assert_close(ln2(ln2_input), out.hidden_states[index + 1][b, i])
                transformed = [_layer_norm_linear(z, ln1_input, ln1) for z in pieces]
                for j in range(seq):
                    globenc[b, i, j] = torch.linalg.vector_norm(_layer_norm_linear(transformed[j], ln2_input, ln2))
                    alti[b, i, j] = max(
                        0.0,
                        float(ln1_output.abs().sum() - (ln1_output - transformed[j]).abs().sum()),
                    )
        result["globenc"].append(globenc / globenc.sum(-1, keepdim=True))
        result["alti"].append(alti / alti.sum(-1, keepdim=True))
    return result


@pytest.fixture(scope="module")
def literal(bert64):
    batch = make_padded_batch(lengths=(6, 4))
    return batch, literal_layer_matrices(bert64, batch.input_ids, batch.attention_mask)


@pytest.mark.parametrize("name", METHODS)
def test_layer_matrices_follow_the_papers_formulas(name, bert64, literal):
    batch, expected = literal
    matrices = METHODS[name](bert64).layer_matrices(batch.input_ids, (batch.attention_mask,))
    assert len(matrices) == len(expected[name])
    for layer, (actual, reference) in enumerate(zip(matrices, expected[name])):
        torch.testing.assert_close(actual, reference, rtol=1e-9, atol=1e-10, msg=f"{name} layer {layer}")


@pytest.mark.parametrize("name", METHODS)
def test_every_layer_matrix_is_row_stochastic(name, bert64):
    batch = make_padded_batch(lengths=(9, 6, 4), seed=1)
    for matrix in METHODS[name](bert64).layer_matrices(batch.input_ids, (batch.attention_mask,)):
        assert bool((matrix >= 0).all())
        torch.testing.assert_close(matrix.sum(-1), torch.ones(matrix.shape[:2], dtype=matrix.dtype))


@pytest.mark.parametrize("name", METHODS)
def test_scores_are_the_cls_row_of_the_product_of_the_layer_matrices(name, bert64, literal):
    batch, expected = literal
    product = expected[name][0]
    for matrix in expected[name][1:]:
        product = torch.bmm(matrix, product)
    scores = METHODS[name](bert64).attribute(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    real = batch.attention_mask.to(product.dtype)
    torch.testing.assert_close(scores, product[:, 0, :] * real, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(scores.sum(-1), torch.ones(2, dtype=scores.dtype))


def test_attention_rollout_multiplies_later_layers_on_the_left():
    first = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    second = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    # Token 0 of the output reads all of token 1 of layer 1, which is half of each input token.
    torch.testing.assert_close(attention_rollout([first, second]), torch.tensor([[[0.5, 0.5], [1.0, 0.0]]]))


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("architecture", ["bert", "roberta", "electra", "distilbert"])
def test_padding_gets_zero_and_does_not_change_the_real_tokens(name, architecture):
    model = make_model(architecture, seed=2)
    pad = 1 if architecture == "roberta" else 0
    batch = make_padded_batch(lengths=(9, 6, 4), seed=2, pad_token_id=pad)
    method = METHODS[name](model)
    scores = method.attribute(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    assert scores.shape == batch.input_ids.shape
    assert bool((scores[batch.attention_mask == 0] == 0).all())
    for row, length in enumerate(batch.lengths):
        alone_ids, alone_mask = batch.example(row)
        alone = method.attribute(alone_ids, additional_forward_args=(alone_mask,))
        torch.testing.assert_close(scores[row, :length], alone[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", METHODS)
def test_captum_style_call_with_a_forward_function_and_tuple_inputs(name):
    model = make_model("bert", seed=4)
    batch = make_padded_batch(lengths=(5, 3), seed=4)

    def forward(input_ids, attention_mask):
        return model(input_ids=input_ids, attention_mask=attention_mask).logits

    method = METHODS[name](forward, model=model)
    (scores,) = method.attribute((batch.input_ids,), target=1, additional_forward_args=(batch.attention_mask,))
    assert scores.shape == (2, 5)
    direct = METHODS[name](model).attribute(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    torch.testing.assert_close(scores, direct)
    assert not method.has_convergence_delta()
    assert method.get_name() == {"globenc": "GlobEnc", "alti": "ALTI"}[name]
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks


def test_a_forward_function_without_model_is_refused():
    with pytest.raises(ValueError, match="model="):
        GlobEnc(lambda ids: ids)


@pytest.mark.parametrize("name", METHODS)
def test_the_baselines_run_the_same_checks_as_decompx(name):
    """GlobEnc and ALTI share DecompX's constructor, argument handling and checks."""
    from captum_decompx import DecompX
    from captum_decompx.core.hooked_attribution import HookedModelAttribution

    model = make_model("bert", seed=4)
    batch = make_padded_batch(lengths=(5, 3), seed=4)
    method = METHODS[name](model)
    assert isinstance(method, HookedModelAttribution) and isinstance(DecompX(model), HookedModelAttribution)
    empty_row = batch.attention_mask.clone()
    empty_row[1] = 0
    with pytest.raises(ValueError, match=r"Example\(s\) \[1\].*zeros only"):
        method.attribute(batch.input_ids, additional_forward_args=(empty_row,))
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        method.attribute(batch.input_ids + 1000, additional_forward_args=(batch.attention_mask,))
    with pytest.raises(ValueError, match=r"1-D tensor.*unsqueeze\(0\)"):
        method.attribute(batch.input_ids[0], additional_forward_args=(batch.attention_mask[0],))
    model.train()
    with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
        method.attribute(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    model.eval()
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"
    getattr(model, f"{prefix}_checkpointing_enable")()
    with pytest.raises(ValueError, match="checkpointing"):
        method.attribute(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    getattr(model, f"{prefix}_checkpointing_disable")()
    with torch.inference_mode():
        scores = method.attribute(batch.input_ids.clone(), additional_forward_args=(batch.attention_mask.clone(),))
    torch.testing.assert_close(scores, method.attribute(batch.input_ids, additional_forward_args=(batch.attention_mask,)))


def test_noise_tunnel_over_a_baseline_with_an_embeddings_forward():
    from captum.attr import NoiseTunnel

    model = make_model("bert", seed=4)
    batch = make_padded_batch(lengths=(5, 3), seed=4)
    embeds = model.get_input_embeddings()(batch.input_ids).detach()
    method = GlobEnc(lambda e, mask: model(inputs_embeds=e, attention_mask=mask).logits, model=model)
    direct = GlobEnc(model).attribute(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    smoothed = NoiseTunnel(method).attribute(embeds, nt_samples=2, stdevs=0.0, additional_forward_args=(batch.attention_mask,))
    torch.testing.assert_close(smoothed, direct)
