"""BERT (post-LN) against the literal spec, in every bias mode: biases decomposed by a rule,
biases left out on the exact path, and the fast path.

The literal version (``literal_spec.py``) recomputes the forward pass from the model's weights in
float64 and decomposes it one input token at a time; the engine is reached through ``DecompX``
only. Padded examples are decomposed in one padded batch by DecompX and alone by the literal
version.
"""

from __future__ import annotations

import literal_spec as spec
import pytest
import torch
from support.literal_models import VOCAB, bert, literal_bert

from captum_decompx import DecompX

LENGTHS = (7, 5, 3)


def assert_decompx_matches_literal(out, literal, lengths, *, biases_left_out: bool, complete: bool = True) -> None:
    scale = float(out.logits.abs().max())
    for b, (trace, decomposition) in enumerate(literal):
        n = lengths[b]
        expected = torch.zeros_like(out.attributions[b])
        expected[:n] = decomposition.contributions
        spec.assert_matches(out.attributions[b], expected, scale, f"example {b}: attributions per token and class")
        token_sum = decomposition.contributions.sum(0)
        if biases_left_out:
            spec.assert_matches(out.bias[b], trace.logits - token_sum, scale, f"example {b}: the biases' share")
        elif complete:  # the literal version itself is complete: its pieces sum to the real logits
            spec.assert_matches(token_sum, trace.logits, scale, f"example {b}: literal completeness", 1e-9)


@pytest.mark.parametrize(
    "rule, ffn_approximation, head_approximation",
    [("absdot", "zo", "zo"), ("absdot", "zo", "la"), ("norm", "la", "zo"), ("absdot", "relu", "la")],
    ids=["absdot-ffn-zo-head-zo", "absdot-ffn-zo-head-la", "norm-ffn-la-head-zo", "absdot-ffn-relu-head-la"],
)
def test_bert_with_biases_decomposed_matches_the_literal_spec(rule, ffn_approximation, head_approximation):
    model = bert(seed=1)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=1)
    options = dict(ffn_approximation=ffn_approximation, head_approximation=head_approximation)
    out = DecompX(model, bias_decomposition=rule, **options).decompose(ids, (mask,))
    literal = literal_bert(model, ids, mask, mode="rule", rule=rule, **options)
    # The ReLU mask is not the real activation, so only ZO and LA are complete.
    assert_decompx_matches_literal(out, literal, LENGTHS, biases_left_out=False, complete=ffn_approximation != "relu")


@pytest.mark.parametrize("method", ["exact", "fast"])
@pytest.mark.parametrize("head_approximation", ["zo", "la"], ids=["head-zo", "head-la"])
def test_bert_without_biases_matches_the_literal_spec(method, head_approximation):
    """Biases left out: only what belongs to a token before any mixing (the embeddings and the
    first layer's value bias) stays with the tokens; the rest is the biases' share."""
    model = bert(seed=2)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=2)
    out = DecompX(model, include_biases=False, algorithm=method, head_approximation=head_approximation).decompose(ids, (mask,))
    assert out.algorithm == method
    literal = literal_bert(model, ids, mask, mode="drop", head_approximation=head_approximation)
    assert_decompx_matches_literal(out, literal, LENGTHS, biases_left_out=True)


def test_bert_fast_attribute_matches_the_literal_spec_for_one_class_per_example():
    model = bert(seed=3)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=3)
    targets = torch.tensor([2, 0, 1])
    scores = DecompX(model, include_biases=False).attribute(ids, target=targets, additional_forward_args=(mask,))
    literal = literal_bert(model, ids, mask, mode="drop")
    for b, (trace, decomposition) in enumerate(literal):
        expected = torch.zeros(ids.shape[1], dtype=spec.DTYPE)
        expected[: LENGTHS[b]] = decomposition.contributions[:, targets[b]]
        spec.assert_matches(scores[b], expected, float(trace.logits.abs().max()), f"example {b}, class {int(targets[b])}")
