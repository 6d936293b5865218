"""The fast path (one linearized forward and backward pass) equals the exact path without biases."""

from __future__ import annotations

import itertools

import pytest
from support.classifiers import ARCHITECTURE_NAMES, assert_close_to_scale, cached_model, make_padded_batch, padding_id

from captum_decompx import DecompX


def _option_combinations() -> dict[str, dict]:
    """Every distinct (include_ffn, ffn_approximation, include_head, head_approximation)."""
    ffn_choices = [dict(include_ffn=True, ffn_approximation=a) for a in ("zo", "la", "relu")] + [dict(include_ffn=False)]
    head_choices = [dict(include_head=True, head_approximation=a) for a in ("zo", "la")] + [dict(include_head=False)]
    combinations = {}
    for ffn, head in itertools.product(ffn_choices, head_choices):
        ffn_id = f"ffn-{ffn['ffn_approximation']}" if ffn["include_ffn"] else "no-ffn"
        head_id = f"head-{head['head_approximation']}" if head["include_head"] else "no-head"
        combinations[f"{ffn_id}-{head_id}"] = {**ffn, **head}
    return combinations


OPTIONS = _option_combinations()


@pytest.mark.parametrize("options", list(OPTIONS))
@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_fast_equals_exact_without_biases(architecture, options):
    model = cached_model(architecture, seed=0)
    batch = make_padded_batch(pad_token_id=padding_id(model))
    args = (batch.attention_mask,)
    exact = DecompX(model, include_biases=False, algorithm="exact", **OPTIONS[options])
    fast = DecompX(model, include_biases=False, algorithm="fast", **OPTIONS[options])

    exact_out = exact.decompose(batch.input_ids, additional_forward_args=args)
    fast_out = fast.decompose(batch.input_ids, additional_forward_args=args)

    assert exact_out.algorithm == "exact" and fast_out.algorithm == "fast"
    assert fast_out.attributions.shape == exact_out.attributions.shape
    assert_close_to_scale(fast_out.attributions, exact_out.attributions, what="attributions")
    # the fast path may skip the pooled decomposition when the head is included (it costs one
    # backward pass per hidden unit); when it reports it, it must be the exact one
    if fast_out.pooled is not None or not OPTIONS[options]["include_head"]:
        assert_close_to_scale(fast_out.pooled, exact_out.pooled, what="pooled decomposition")
    if OPTIONS[options]["include_head"]:
        assert_close_to_scale(fast_out.bias, exact_out.bias, what="bias share")
        targets = [0, 2, 1]
        assert_close_to_scale(
            fast.attribute(batch.input_ids, target=targets, additional_forward_args=args),
            exact.attribute(batch.input_ids, target=targets, additional_forward_args=args),
            what="attribute(target=[0, 2, 1])",
        )
        # and attribute() is the target column of decompose()
        assert_close_to_scale(
            fast.attribute(batch.input_ids, target=1, additional_forward_args=args),
            exact_out.attributions[..., 1],
            what="attribute(target=1)",
        )
    else:
        assert exact_out.bias is None and fast_out.bias is None
        assert_close_to_scale(
            fast.attribute(batch.input_ids, additional_forward_args=args),
            exact.attribute(batch.input_ids, additional_forward_args=args),
            what="attribute() norms",
        )


@pytest.mark.parametrize("architecture", ARCHITECTURE_NAMES)
def test_fast_path_is_not_trivially_equal_to_the_biased_decomposition(architecture):
    """Guard: without biases the attributions really differ from the default ones."""
    model = cached_model(architecture, seed=0)
    batch = make_padded_batch(pad_token_id=padding_id(model))
    args = (batch.attention_mask,)
    fast = DecompX(model, include_biases=False).decompose(batch.input_ids, additional_forward_args=args)
    full = DecompX(model).decompose(batch.input_ids, additional_forward_args=args)
    assert float((fast.attributions - full.attributions).abs().max()) > 1e-2


def test_auto_picks_fast_exactly_when_biases_are_excluded():
    model = cached_model("bert", seed=0)
    assert DecompX(model).algorithm == "exact"
    assert DecompX(model, algorithm="auto").algorithm == "exact"
    assert DecompX(model, include_biases=True, algorithm="auto").algorithm == "exact"
    assert DecompX(model, include_biases=False).algorithm == "fast"
    assert DecompX(model, include_biases=False, algorithm="auto").algorithm == "fast"
    assert DecompX(model, include_biases=False, algorithm="exact").algorithm == "exact"
    batch = make_padded_batch()
    out = DecompX(model, include_biases=False).decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    assert out.algorithm == "fast"


def test_fast_with_biases_raises():
    model = cached_model("bert", seed=0)
    with pytest.raises(ValueError, match="include_biases=False"):
        DecompX(model, algorithm="fast")
    with pytest.raises(ValueError, match="include_biases=False"):
        DecompX(model, include_biases=True, algorithm="fast")
