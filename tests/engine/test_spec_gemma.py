"""Gemma 2 and Gemma 3 decoders against the literal spec: sandwich norms, Gemma's RMSNorm gain
``1 + weight``, the embedding scale, a GeGLU feed-forward unit, grouped-query attention, with and
without attention biases, on the exact and the fast path.

Sandwich layer: ``h = x + norm1o(attn(norm1(x)))``, then ``h + norm2o(ffn(norm2(h)))``; every
norm is frozen at the real statistics of its own captured input, and the attention bias is
spread over the attention's own pieces before its output norm. The literal version
(``literal_spec.py``) writes ``1 + weight`` itself and recomputes the forward pass in float64
from the weights; it takes from the model, through Hugging Face's public outputs only, the
attention probabilities (Gemma's soft-capping, query scaling and query/key norms only shape them)
and the first layer's input (the embeddings times ``sqrt(hidden)``). The engine is reached
through ``DecompX`` only.
"""

from __future__ import annotations

import math

import literal_spec as spec
import pytest
import torch
import transformers as tf

from captum_decompx import DecompX

VOCAB = 50
LENGTHS = (7, 4)
HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 16, 4, 2, 4


def gemma(model_type: str, seed: int, biases: bool) -> torch.nn.Module:
    common = dict(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        head_dim=HEAD_DIM,
        intermediate_size=24,
        max_position_embeddings=32,
        num_labels=3,
        pad_token_id=0,
        attention_bias=biases,
        sliding_window=4,
        attn_implementation="eager",
    )
    if model_type == "gemma2":
        model = tf.Gemma2ForSequenceClassification(tf.Gemma2Config(**common, attn_logit_softcapping=5.0))
    else:
        model = tf.Gemma3TextForSequenceClassification(tf.Gemma3TextConfig(**common))
    return spec.randomize(model, seed)


def gemma_norm(module) -> spec.NormWeights:
    norm = spec.norm_of(module, kind="rms")
    norm.gain_is_one_plus_weight = True  # Gemma's RMSNorm: x / s * (1 + weight)
    return norm


def gemma_weights(model) -> spec.ModelWeights:
    layers = []
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        layers.append(
            spec.LayerWeights(
                query=spec.affine_of(attention.q_proj),
                key=spec.affine_of(attention.k_proj),
                value=spec.affine_of(attention.v_proj),
                output=spec.affine_of(attention.o_proj),
                heads=HEADS,
                kv_heads=KV_HEADS,
                norm1=gemma_norm(layer.input_layernorm),
                norm1_output=gemma_norm(layer.post_attention_layernorm),
                norm2=gemma_norm(layer.pre_feedforward_layernorm),
                norm2_output=gemma_norm(layer.post_feedforward_layernorm),
                ffn_in=spec.affine_of(mlp.up_proj),
                ffn_gate=spec.affine_of(mlp.gate_proj),
                activation=spec.GELU_TANH,
                ffn_out=spec.affine_of(mlp.down_proj),
            )
        )
    return spec.ModelWeights(
        layers=layers, pre_norm=True, head=[spec.affine_of(model.score)], final_norm=gemma_norm(model.model.norm), causal=True
    )


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3_text"])
@pytest.mark.parametrize("biases", [False, True], ids=["no-biases", "attention-biases"])
@pytest.mark.parametrize(
    "include_biases, method",
    [(True, "exact"), (False, "exact"), (False, "fast")],
    ids=["biases-decomposed", "biases-left-out-exact", "biases-left-out-fast"],
)
def test_gemma_sandwich_norms_match_the_literal_spec(model_type, biases, include_biases, method):
    model = gemma(model_type, seed=8, biases=biases)
    assert model.config.model_type == model_type
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=8)
    out = DecompX(
        lambda i, m: model(input_ids=i, attention_mask=m).logits, model=model, include_biases=include_biases, algorithm=method
    ).decompose(ids, (mask,))
    with torch.no_grad():
        real = model(input_ids=ids, attention_mask=mask, output_attentions=True, output_hidden_states=True)
    weights = gemma_weights(model)
    scale = float(out.logits.abs().max())
    for b, n in enumerate(LENGTHS):
        embeddings = real.hidden_states[0][b, :n].detach()
        # the first layer's input is the embedding scaled by sqrt(hidden) (up to the float32
        # rounding of the scale that transformers 5.x keeps in a buffer)
        scaled = model.model.embed_tokens.weight[ids[b, :n]].detach() * math.sqrt(HIDDEN)
        spec.assert_matches(embeddings, scaled, float(scaled.abs().max()), "embedding scale", 1e-6)
        alphas = [attention[b, :, :n, :n].detach() for attention in real.attentions]
        trace = spec.real_forward(weights, embeddings, pooled_row=n - 1, alphas=alphas)
        spec.assert_matches(trace.logits, out.logits[b], scale, "literal forward vs model logits", 1e-9)
        literal = spec.decompose(weights, embeddings, trace, n - 1, mode="rule" if include_biases else "drop")
        expected = torch.zeros_like(out.attributions[b])
        expected[:n] = literal.contributions
        spec.assert_matches(out.attributions[b], expected, scale, f"example {b}: attributions")
        if include_biases:
            spec.assert_matches(literal.contributions.sum(0), trace.logits, scale, "literal completeness", 1e-6)
        else:
            spec.assert_matches(out.bias[b], trace.logits - literal.contributions.sum(0), scale, f"example {b}: bias share")
