"""Encoder-decoders: each kind of bad input gets one clear error, and the model is left as it was
found, also after an error."""

from __future__ import annotations

import pytest
import torch
from support.encoder_decoders import forward_of, model_of, pad_id, source_batch, target_batch
from support.snapshots import assert_unchanged, snapshot

from captum_decompx import DecompX


@pytest.fixture(scope="module")
def bart():
    model = model_of("bart", seed=1)
    source, mask = source_batch((5, 3), pad_id(model), seed=1)
    return model, source, mask, target_batch(2, 4, seed=1)


def test_a_call_without_decoder_inputs_says_to_pass_them(bart):
    model, source, mask, _ = bart
    explainer = DecompX(lambda src, m: model(input_ids=src, attention_mask=m).logits, model=model)
    with pytest.raises(ValueError, match=r"needs the decoder's inputs too.*inputs=\(source_ids, target_ids\)"):
        explainer.attribute(source, target=(0, 3), additional_forward_args=(mask,))
    with pytest.raises(ValueError, match="decoder's inputs"):
        explainer.attribute((source,), target=(0, 3), additional_forward_args=(mask,))


def test_mismatched_batch_sizes_are_refused(bart):
    model, source, mask, target = bart
    with pytest.raises(ValueError, match="source_ids has 2 example.*target_ids 1"):
        DecompX(forward_of(model), model=model).attribute((source, target[:1]), target=(0, 3), additional_forward_args=(mask,))


@pytest.mark.parametrize("position", [4, 9, -5])
def test_a_target_position_beyond_the_target_prefix_is_refused(bart, position):
    model, source, mask, target = bart
    with pytest.raises(ValueError, match=f"target position {position} is beyond the target prefix of 4 token"):
        DecompX(forward_of(model), model=model).attribute((source, target), target=(position, 3), additional_forward_args=(mask,))


def test_a_missing_target_is_refused(bart):
    model, source, mask, target = bart
    with pytest.raises(ValueError, match=r"target=\(position, token_id\)"):
        DecompX(forward_of(model), model=model).attribute((source, target), additional_forward_args=(mask,))


@pytest.mark.parametrize("side", ["source", "target"])
def test_embeddings_for_one_side_are_refused(bart, side):
    model, source, mask, target = bart
    embedded = model.get_input_embeddings()(source if side == "source" else target).detach()
    inputs = (embedded, target) if side == "source" else (source, embedded)
    with pytest.raises(TypeError, match=f"{side}_ids is a floating-point tensor.*inputs_embeds"):
        DecompX(forward_of(model), model=model).attribute(inputs, target=(0, 3), additional_forward_args=(mask,))


def test_swapped_inputs_are_caught(bart):
    """A forward function that feeds the target to the encoder explains another model call."""
    model, source, mask, target = bart
    swapped = lambda src, tgt, m: model(input_ids=tgt, decoder_input_ids=src).logits  # noqa: E731
    with pytest.raises(RuntimeError, match="must pass the first input as input_ids"):
        DecompX(swapped, model=model).attribute((source, target), target=(0, 3), additional_forward_args=(mask,))


@pytest.mark.parametrize("algorithm, include_biases", [("exact", True), ("fast", False)])
def test_a_forward_function_that_runs_the_encoder_twice_is_refused(bart, algorithm, include_biases):
    model, source, mask, target = bart

    def twice(src, tgt, m):
        model.get_encoder()(input_ids=src, attention_mask=m)  # a second, separate encoder run
        return model(input_ids=src, attention_mask=m, decoder_input_ids=tgt).logits

    with pytest.raises(RuntimeError, match="ran the encoder 2 times"):
        DecompX(twice, model=model, algorithm=algorithm, include_biases=include_biases).attribute(
            (source, target), target=(0, 3), additional_forward_args=(mask,)
        )


def test_decompose_points_to_decompose_target(bart):
    model, source, mask, target = bart
    with pytest.raises(NotImplementedError, match="decompose_target"):
        DecompX(forward_of(model), model=model).decompose((source, target), (mask,))


@pytest.mark.parametrize("algorithm, include_biases", [("exact", True), ("fast", False)])
def test_the_model_is_left_as_it_was_found_also_after_an_error(bart, algorithm, include_biases):
    model, source, mask, target = bart
    before = snapshot(model)
    explainer = DecompX(forward_of(model), model=model, algorithm=algorithm, include_biases=include_biases)
    explainer.attribute((source, target), target=(1, 3), additional_forward_args=(mask,))
    explainer.decompose_target((source, target), additional_forward_args=(mask,))
    assert_unchanged(model, before)

    def failing(src, tgt, m):
        model(input_ids=src, attention_mask=m, decoder_input_ids=tgt)
        raise RuntimeError("the forward function failed")

    with pytest.raises(RuntimeError, match="the forward function failed"):
        DecompX(failing, model=model, algorithm=algorithm, include_biases=include_biases).attribute(
            (source, target), target=(1, 3), additional_forward_args=(mask,)
        )
    assert_unchanged(model, before)
    assert torch.is_grad_enabled()  # the grad mode is the caller's again


def test_whisper_takes_float_features_first():
    from support.encoder_decoders import whisper, whisper_features

    model = whisper(seed=2)
    target = target_batch(1, 3, seed=2)
    f = lambda x, t: model(input_features=x, decoder_input_ids=t).logits  # noqa: E731
    with pytest.raises(TypeError, match=r"reads features: pass input_features as a float tensor \(batch, mel bins, frames\)"):
        DecompX(f, model=model).attribute((torch.zeros(1, 16, dtype=torch.long), target), target=(0, 3))
    (attr_src, _), delta = DecompX(f, model=model).attribute(
        (whisper_features(1, seed=2), target), target=(0, 3), return_convergence_delta=True
    )
    assert attr_src.shape == (1, 8) and float(delta.abs().max()) < 1e-9


def test_an_adapter_that_misses_a_step_of_the_model_is_refused_not_explained():
    """An adapter that adds a rescale the model does not apply (as T5's adapter would for a model
    class that drops it) gives a decomposition that does not add up to the model's logits: refused."""
    from dataclasses import replace

    from support.encoder_decoders import t5

    from captum_decompx.adapters import ScaledLinear, adapter_for

    model = t5(seed=3)
    adapter = adapter_for(model)
    wrong = replace(adapter, head=(ScaledLinear("lm_head", scale=1.0),))  # the model does rescale
    source, mask = source_batch((4, 3), pad_id(model), seed=3)
    target = target_batch(2, 3, seed=3)
    with pytest.raises(RuntimeError, match="does not add up to its own logits"):
        DecompX(forward_of(model), model=model, adapter=wrong).attribute(
            (source, target), target=(1, 5), additional_forward_args=(mask,)
        )
