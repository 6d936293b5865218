"""ALBERT with more than one layer group against the literal spec.

ALBERT shares its layers: layer ``i`` of ``L`` runs the group ``int(i / (L / G))`` of ``G`` groups,
all inner layers of that group in order. The literal version (``literal_spec.py``) builds that
execution order itself, recomputes the forward pass from the weights in float64 and decomposes
it; the engine is reached through ``DecompX`` only.
"""

from __future__ import annotations

import literal_spec as spec
import pytest
import torch
import transformers as tf

from captum_decompx import DecompX

VOCAB = 50
LENGTHS = (6, 4)


def albert(seed: int, layers: int, groups: int, inner: int) -> torch.nn.Module:
    config = tf.AlbertConfig(
        vocab_size=VOCAB,
        embedding_size=8,
        hidden_size=16,
        num_hidden_layers=layers,
        num_hidden_groups=groups,
        inner_group_num=inner,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        num_labels=3,
        hidden_act="gelu_new",
    )
    return spec.randomize(tf.AlbertForSequenceClassification(config), seed)


def albert_weights(model) -> spec.ModelWeights:
    config = model.config
    groups = model.albert.encoder.albert_layer_groups
    layers = []
    for index in range(config.num_hidden_layers):
        group = groups[int(index / (config.num_hidden_layers / config.num_hidden_groups))]
        for layer in group.albert_layers:
            layers.append(
                spec.LayerWeights(
                    query=spec.affine_of(layer.attention.query),
                    key=spec.affine_of(layer.attention.key),
                    value=spec.affine_of(layer.attention.value),
                    output=spec.affine_of(layer.attention.dense),
                    heads=config.num_attention_heads,
                    kv_heads=config.num_attention_heads,
                    norm1=spec.norm_of(layer.attention.LayerNorm),
                    norm2=spec.norm_of(layer.full_layer_layer_norm),
                    ffn_in=spec.affine_of(layer.ffn),
                    activation=spec.GELU_TANH,
                    ffn_out=spec.affine_of(layer.ffn_output),
                )
            )
    head = [spec.affine_of(model.albert.pooler), spec.TANH, spec.affine_of(model.classifier)]
    return spec.ModelWeights(layers=layers, pre_norm=False, head=head)


def albert_embeddings(model, ids: torch.Tensor) -> torch.Tensor:
    """word + position + segment-0 embeddings, LayerNorm, then the projection to the hidden size:
    all of it belongs to each token."""
    embeddings = model.albert.embeddings
    summed = (
        embeddings.word_embeddings.weight[ids]
        + embeddings.position_embeddings.weight[: ids.shape[0]]
        + embeddings.token_type_embeddings.weight[0]
    ).detach()
    return spec.affine_of(model.albert.encoder.embedding_hidden_mapping_in)(spec.norm_of(embeddings.LayerNorm)(summed))


@pytest.mark.parametrize(
    "layers, groups, inner",
    [(3, 2, 1), (4, 2, 2)],  # groups 0, 0, 1 and 0, 0, 1, 1
    ids=["3-layers-2-groups", "4-layers-2-groups-2-inner-layers"],
)
@pytest.mark.parametrize("include_biases", [True, False], ids=["biases-decomposed", "biases-left-out-fast"])
def test_albert_layer_groups_match_the_literal_spec(layers, groups, inner, include_biases):
    model = albert(seed=7, layers=layers, groups=groups, inner=inner)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=7)
    out = DecompX(model, include_biases=include_biases).decompose(ids, (mask,))
    weights = albert_weights(model)
    assert len(weights.layers) == layers * inner
    scale = float(out.logits.abs().max())
    for b, n in enumerate(LENGTHS):
        embeddings = albert_embeddings(model, ids[b, :n])
        trace = spec.real_forward(weights, embeddings, pooled_row=0)
        spec.assert_matches(trace.logits, out.logits[b], scale, "literal forward vs model logits", 1e-9)
        literal = spec.decompose(weights, embeddings, trace, 0, mode="rule" if include_biases else "drop")
        expected = torch.zeros_like(out.attributions[b])
        expected[:n] = literal.contributions
        spec.assert_matches(out.attributions[b], expected, scale, f"example {b}: attributions")
        if not include_biases:
            spec.assert_matches(out.bias[b], trace.logits - literal.contributions.sum(0), scale, f"example {b}: bias share")
