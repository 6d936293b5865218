"""Completeness and padding invariance on tiny random models of every supported architecture.

With biases included, for every class ``sum_k attribution[k, c] == logit_c``, the logit of a
forward pass of the model's own. With biases left out (exact path), the bias share is carried by a separate bias
piece, so the same identity checks that the token pieces and the bias piece together are the
whole logit. Each example gives the same attributions alone as inside a right-padded batch.
"""

from __future__ import annotations

import pytest
import torch
from support.classifiers import (
    ARCHITECTURE_NAMES,
    assert_close_to_scale,
    cached_model,
    make_padded_batch,
    padding_id,
)

from captum_decompx import DecompX

SEEDS = (0, 1)
TOLERANCE = dict(rtol=1e-5, atol=1e-5)

# option sets under which the decomposition is complete for a GELU model
COMPLETE_OPTIONS = {
    "absdot": dict(bias_decomposition="absdot"),
    "abssim": dict(bias_decomposition="abssim"),
    "norm": dict(bias_decomposition="norm"),
    "equal": dict(bias_decomposition="equal"),
    "cls": dict(bias_decomposition="cls"),
    "ffn-la": dict(ffn_approximation="la"),
    "head-la": dict(head_approximation="la"),
    "ffn-la-head-la-norm": dict(ffn_approximation="la", head_approximation="la", bias_decomposition="norm"),
}


def decompose(model, batch, **options):
    return DecompX(model, **options).decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))


def model_and_batch(architecture: str, seed: int, hidden_act: str = "gelu"):
    model = cached_model(architecture, seed, hidden_act=hidden_act)
    return model, make_padded_batch(seed=seed, pad_token_id=padding_id(model))


@pytest.mark.parametrize("options", list(COMPLETE_OPTIONS))
@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_with_biases_attributions_sum_to_every_logit(architecture, seed, options):
    model, batch = model_and_batch(architecture, seed)
    out = decompose(model, batch, **COMPLETE_OPTIONS[options])
    assert out.attributions.shape == (3, max(batch.lengths), 3)
    with torch.no_grad():
        own_logits = model(batch.input_ids, batch.attention_mask).logits  # a forward pass of its own
    torch.testing.assert_close(out.attributions.sum(1), own_logits, **TOLERANCE)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_relu_approximation_is_complete_on_relu_models(architecture, seed):
    """``ffn_approximation="relu"`` is the exact rule of a ReLU feed-forward network."""
    model, batch = model_and_batch(architecture, seed, hidden_act="relu")
    for rule in ("absdot", "norm"):
        out = decompose(model, batch, ffn_approximation="relu", bias_decomposition=rule)
        torch.testing.assert_close(out.attributions.sum(1) + out.bias, out.logits, **TOLERANCE)
    # and on a ReLU model it equals the zero-origin rule
    zero_origin = decompose(model, batch, ffn_approximation="zo")
    relu = decompose(model, batch, ffn_approximation="relu")
    torch.testing.assert_close(relu.attributions, zero_origin.attributions, **TOLERANCE)


@pytest.mark.parametrize("options", ["default", "ffn-la", "head-la"])
@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_without_biases_tokens_plus_bias_piece_sum_to_every_logit(architecture, seed, options):
    model, batch = model_and_batch(architecture, seed)
    extra = {
        "default": {},
        "ffn-la": dict(ffn_approximation="la"),
        "head-la": dict(head_approximation="la"),
    }[options]
    out = decompose(model, batch, include_biases=False, algorithm="exact", **extra)
    assert out.algorithm == "exact"
    assert out.bias.shape == out.logits.shape
    # the biases carry a real part of the logits in these models
    assert float(out.bias.abs().max()) > 1e-2
    torch.testing.assert_close(out.attributions.sum(1) + out.bias, out.logits, **TOLERANCE)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_without_ffn_the_total_does_not_depend_on_how_biases_are_shared(architecture, seed):
    """Leaving the FFNs out explains another (frozen) network than the model, so the pieces do not
    sum to the logits; but every bias rule and the separate bias piece must give the same total."""
    model, batch = model_and_batch(architecture, seed)
    no_bias = decompose(model, batch, include_ffn=False, include_biases=False, algorithm="exact")
    total = no_bias.attributions.sum(1) + no_bias.bias
    for rule in ("absdot", "abssim", "norm", "equal", "cls"):
        out = decompose(model, batch, include_ffn=False, bias_decomposition=rule)
        torch.testing.assert_close(out.attributions.sum(1) + out.bias, total, **TOLERANCE)
    with_ffn = decompose(model, batch)
    assert float((with_ffn.attributions.sum(1) - total).abs().max()) > 1e-3  # the FFNs do matter


@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_logits_are_the_models_own(architecture):
    model, batch = model_and_batch(architecture, 0)
    with torch.no_grad():
        own = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    for options in (dict(), dict(include_biases=False)):
        out = decompose(model, batch, **options)
        torch.testing.assert_close(out.logits, own, **TOLERANCE)


@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_bias_rules_matter_in_these_models(architecture):
    """Guard for the fixtures: the random biases are large enough that the rules disagree."""
    model, batch = model_and_batch(architecture, 0)
    absdot = decompose(model, batch, bias_decomposition="absdot").attributions
    for rule in ("abssim", "norm", "equal", "cls"):
        other = decompose(model, batch, bias_decomposition=rule).attributions
        assert float((other - absdot).abs().max()) > 1e-2, rule


PADDING_OPTIONS = {
    "full": dict(),
    "cls-rule-head-la": dict(bias_decomposition="cls", head_approximation="la"),
    "no_bias-exact": dict(include_biases=False, algorithm="exact"),
    "no_bias-fast": dict(include_biases=False, algorithm="fast"),
    "no_head": dict(include_head=False),
    "no_head-fast": dict(include_head=False, include_biases=False),
}


@pytest.mark.parametrize("options", list(PADDING_OPTIONS))
@pytest.mark.parametrize("seed", SEEDS, ids=lambda seed: f"seed{seed}")
@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_padding_invariance(architecture, seed, options):
    model, batch = model_and_batch(architecture, seed)
    explainer = DecompX(model, **PADDING_OPTIONS[options])
    batched = explainer.decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    for index, length in enumerate(batch.lengths):
        input_ids, attention_mask = batch.example(index)
        alone = explainer.decompose(input_ids, additional_forward_args=(attention_mask,))
        assert_close_to_scale(batched.logits[index], alone.logits[0], what=f"logits of example {index}")
        assert_close_to_scale(
            batched.attributions[index, :length], alone.attributions[0], what=f"attributions of example {index}"
        )
        if batched.bias is not None:
            assert_close_to_scale(batched.bias[index], alone.bias[0], what=f"bias share of example {index}")
        padding = batched.attributions[index, length:]
        assert torch.equal(padding, torch.zeros_like(padding)), f"padding of example {index} is not exactly 0"
