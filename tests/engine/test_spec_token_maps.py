"""Token maps against the literal spec: ``decompose(..., return_token_maps=True).token_maps`` holds,
per layer ``l``, the (batch, seq, seq) norms ``||X_l[i, k]||`` of input token ``k``'s piece in the
representation of token ``i`` after layer ``l``.

The literal decompositions after each layer come from ``literal_spec.py``; with biases left out
they are the token pieces without any bias (except what belongs to a token before any mixing).
"""

from __future__ import annotations

import literal_spec as spec
import pytest
import torch
from support.literal_models import VOCAB, bert, bert_embeddings, bert_weights, gpt2, gpt2_weights

from captum_decompx import DecompX

LENGTHS = (6, 4)


def bert_case(seed: int):
    model = bert(seed)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=seed)
    examples = [bert_embeddings(model, ids[b, :n]) for b, n in enumerate(LENGTHS)]
    return model, model, ids, mask, bert_weights(model), examples, lambda n: 0


def gpt2_case(seed: int):
    model = gpt2(seed)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=seed)
    wte, wpe = model.transformer.wte.weight, model.transformer.wpe.weight
    examples = [(wte[ids[b, :n]] + wpe[:n]).detach() for b, n in enumerate(LENGTHS)]
    forward = lambda i, m: model(input_ids=i, attention_mask=m).logits  # noqa: E731
    return model, forward, ids, mask, gpt2_weights(model), examples, lambda n: n - 1


@pytest.mark.parametrize("case", [bert_case, gpt2_case], ids=["bert-post-ln", "gpt2-pre-ln"])
@pytest.mark.parametrize("include_biases", [True, False], ids=["biases-decomposed", "biases-left-out"])
def test_token_maps_are_the_norms_of_the_literal_decomposition_after_each_layer(case, include_biases):
    model, forward, ids, mask, weights, examples, pooled_row = case(seed=8)
    out = DecompX(forward, model=model, include_biases=include_biases).decompose(ids, (mask,), return_token_maps=True)
    assert len(out.token_maps) == len(weights.layers)
    seq = ids.shape[1]
    for b, (n, embeddings) in enumerate(zip(LENGTHS, examples)):
        trace = spec.real_forward(weights, embeddings, pooled_row(n))
        literal = spec.decompose(weights, embeddings, trace, pooled_row(n), mode="rule" if include_biases else "drop")
        for layer, (token_map, pieces) in enumerate(zip(out.token_maps, literal.layer_outputs)):
            assert token_map.shape == (ids.shape[0], seq, seq)
            expected = torch.zeros(n, seq, dtype=spec.DTYPE)  # padding tokens have no piece in real rows
            for i in range(n):
                for k in range(n):
                    expected[i, k] = pieces[i, k].norm()
            scale = float(expected.abs().max())
            spec.assert_matches(token_map[b, :n], expected, scale, f"example {b}, layer {layer}: ||X_l[i, k]||")
