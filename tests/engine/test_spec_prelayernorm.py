"""Pre-LN models with biases (GPT-2, ViT) against the literal spec.

A pre-LN layer is ``x -> h = x + attn(norm1(x)) -> h + ffn(norm2(h))``. Its first norm acts before
any token mixing, so in the first layer that norm's bias belongs to each token, also when biases
are left out (the spec's "Other architectures"). Every other bias is spread by the rule, or left
out. The literal version (``literal_spec.py``) recomputes each model's forward pass from its
weights in float64; the engine is reached through ``DecompX`` only.
"""

from __future__ import annotations

import literal_spec as spec
import pytest
import torch
import transformers as tf
from support.literal_models import gpt2, gpt2_weights

from captum_decompx import DecompX

VOCAB = 50
LENGTHS = (7, 5, 3)
MODES = [
    pytest.param(True, "exact", id="biases-decomposed"),
    pytest.param(False, "exact", id="biases-left-out-exact"),
    pytest.param(False, "fast", id="biases-left-out-fast"),
]


# ----------------------------------------------------------------------------------------------
# GPT-2


@pytest.mark.parametrize("include_biases, method", MODES)
def test_gpt2_matches_the_literal_spec(include_biases, method):
    model = gpt2(seed=4)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=4)
    out = DecompX(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model, include_biases=include_biases, algorithm=method
    ).decompose(ids, (mask,))
    weights = gpt2_weights(model)
    scale = float(out.logits.abs().max())
    for b, n in enumerate(LENGTHS):
        tokens = ids[b, :n]
        embeddings = (model.transformer.wte.weight[tokens] + model.transformer.wpe.weight[:n]).detach()
        trace = spec.real_forward(weights, embeddings, pooled_row=n - 1)  # the last real token
        spec.assert_matches(trace.logits, out.logits[b], scale, "literal forward vs model logits", 1e-9)
        literal = spec.decompose(weights, embeddings, trace, n - 1, mode="rule" if include_biases else "drop")
        expected = torch.zeros_like(out.attributions[b])
        expected[:n] = literal.contributions
        spec.assert_matches(out.attributions[b], expected, scale, f"example {b}: attributions")
        if not include_biases:
            spec.assert_matches(out.bias[b], trace.logits - literal.contributions.sum(0), scale, f"example {b}: bias share")


# ----------------------------------------------------------------------------------------------
# ViT: its first LayerNorm's bias is the case where giving it to the wrong token went unnoticed


def vit(seed: int) -> torch.nn.Module:
    config = tf.ViTConfig(
        image_size=8,
        patch_size=4,
        num_channels=3,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        num_labels=3,
        # eager attention: the literal forward reproduces its arithmetic (a float32 softmax); the fast
        # path explains the attention the model runs, and sdpa rounds differently (about 1e-7)
        attn_implementation="eager",
    )
    return spec.randomize(tf.ViTForImageClassification(config), seed)


def vit_layer_weights(layer, heads: int) -> spec.LayerWeights:
    """transformers 5.x names the modules q_proj ... fc2; 4.x query ... output.dense."""
    if hasattr(layer.attention, "v_proj"):
        attention = layer.attention
        q, k, v, o = attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj
        ffn_in, ffn_out = layer.mlp.fc1, layer.mlp.fc2
    else:
        attention = layer.attention.attention
        q, k, v, o = attention.query, attention.key, attention.value, layer.attention.output.dense
        ffn_in, ffn_out = layer.intermediate.dense, layer.output.dense
    return spec.LayerWeights(
        query=spec.affine_of(q),
        key=spec.affine_of(k),
        value=spec.affine_of(v),
        output=spec.affine_of(o),
        heads=heads,
        kv_heads=heads,
        norm1=spec.norm_of(layer.layernorm_before),
        norm2=spec.norm_of(layer.layernorm_after),
        ffn_in=spec.affine_of(ffn_in),
        activation=spec.GELU,
        ffn_out=spec.affine_of(ffn_out),
    )


def vit_embeddings(model, pixels: torch.Tensor) -> torch.Tensor:
    """One image (C, H, W): [CLS, patches in row-major order] + position embeddings, (1 + P, d)."""
    embeddings = model.vit.embeddings
    projection = embeddings.patch_embeddings.projection
    size = projection.kernel_size[0]
    kernel = projection.weight.detach().reshape(projection.weight.shape[0], -1)
    rows = [embeddings.cls_token.detach()[0, 0]]
    for top in range(0, pixels.shape[1], size):
        for left in range(0, pixels.shape[2], size):
            patch = pixels[:, top : top + size, left : left + size].reshape(-1)
            rows.append(kernel @ patch + projection.bias.detach())
    return torch.stack(rows) + embeddings.position_embeddings.detach()[0]


@pytest.mark.parametrize("include_biases, method", MODES)
def test_vit_matches_the_literal_spec(include_biases, method):
    model = vit(seed=5)
    layers = model.vit.layers if hasattr(model.vit, "layers") else model.vit.encoder.layer
    weights = spec.ModelWeights(
        layers=[vit_layer_weights(layer, model.config.num_attention_heads) for layer in layers],
        pre_norm=True,
        head=[spec.affine_of(model.classifier)],
        final_norm=spec.norm_of(model.vit.layernorm),
        softmax=spec.float32_softmax,  # as ViT computes it
    )
    pixels = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(5), dtype=spec.DTYPE)
    out = DecompX(model, include_biases=include_biases, algorithm=method).decompose(pixels)
    scale = float(out.logits.abs().max())
    for b in range(pixels.shape[0]):
        embeddings = vit_embeddings(model, pixels[b])
        trace = spec.real_forward(weights, embeddings, pooled_row=0)  # the CLS token
        spec.assert_matches(trace.logits, out.logits[b], scale, "literal forward vs model logits", 1e-9)
        literal = spec.decompose(weights, embeddings, trace, 0, mode="rule" if include_biases else "drop")
        spec.assert_matches(out.attributions[b], literal.contributions, scale, f"image {b}: attributions")
        if not include_biases:
            spec.assert_matches(out.bias[b], trace.logits - literal.contributions.sum(0), scale, f"image {b}: bias share")
