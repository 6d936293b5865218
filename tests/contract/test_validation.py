"""Bad input gets a clear error before any work, and no call, failed or not, changes the model.

Each error test checks the exception type, that the message names what was wrong and what to do,
and, where the error is due before the forward pass, that the forward function never ran.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import numpy as np
import pytest
import torch
from support.classifiers import NUM_LABELS, VOCAB_SIZE, cached_model, make_model, make_padded_batch
from support.snapshots import assert_same_snapshot, model_snapshot
from torch import nn
from transformers import PreTrainedModel

import captum_decompx
from captum_decompx import DecompX
from captum_decompx.core.validation import check_targets

TOLERANCE = dict(rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Helpers


class CountingForward:
    """``model(input_ids, attention_mask)`` that counts its calls."""

    def __init__(self, model: nn.Module, transform: Callable[[torch.Tensor], torch.Tensor] = lambda x: x) -> None:
        self.model = model
        self.transform = transform
        self.calls = 0

    def __call__(self, input_ids, attention_mask=None):
        self.calls += 1
        return self.transform(self.model(input_ids, attention_mask=attention_mask).logits)


@pytest.fixture(scope="module")
def bert() -> nn.Module:
    return cached_model("bert")


@pytest.fixture(scope="module")
def batch():
    return make_padded_batch()


# --------------------------------------------------------------------------------------------
# Token ids


def test_float_ids_are_refused_before_the_forward_pass(bert, batch):
    forward = CountingForward(bert)
    with pytest.raises(TypeError, match=r"integer token ids.*float32.*inputs\.long\(\)"):
        DecompX(forward, model=bert).attribute(batch.input_ids.float(), target=0, additional_forward_args=(batch.attention_mask,))
    assert forward.calls == 0


@pytest.mark.parametrize("dtype", [torch.bool, torch.complex64])
def test_bool_and_complex_ids_are_refused(bert, batch, dtype):
    with pytest.raises(TypeError, match="integer token ids"):
        DecompX(bert).attribute(batch.input_ids.to(dtype), target=0)


def test_one_dimensional_ids_are_refused_with_the_fix(bert, batch):
    forward = CountingForward(bert)
    with pytest.raises(ValueError, match=r"1-D tensor of shape \(9,\).*unsqueeze\(0\)"):
        DecompX(forward, model=bert).attribute(batch.input_ids[0], target=0)
    assert forward.calls == 0


def test_one_sequence_as_a_batch_of_one_works(bert, batch):
    ids, mask = batch.example(0)
    attributions = DecompX(bert).attribute(ids, target=1, additional_forward_args=(mask,))
    assert attributions.shape == ids.shape


@pytest.mark.parametrize("shape", [(1, 2, 3), (2, 2, 2, 2)], ids=["3d", "4d"])
def test_ids_of_other_ranks_are_refused(bert, shape):
    with pytest.raises(ValueError, match=r"\(batch, seq\)"):
        DecompX(bert).attribute(torch.full(shape, 5, dtype=torch.long), target=0)


@pytest.mark.parametrize("shape, message", [((0, 5), "empty batch"), ((2, 0), "empty sequences")])
def test_empty_inputs_are_refused(bert, shape, message):
    forward = CountingForward(bert)
    with pytest.raises(ValueError, match=message):
        DecompX(forward, model=bert).attribute(torch.zeros(shape, dtype=torch.long), target=0)
    assert forward.calls == 0


def test_an_all_zero_attention_mask_row_is_an_empty_sequence(bert, batch):
    mask = batch.attention_mask.clone()
    mask[1] = 0
    with pytest.raises(ValueError, match=r"Example\(s\) \[1\].*zeros only"):
        DecompX(bert).attribute(batch.input_ids, target=0, additional_forward_args=(mask,))


@pytest.mark.parametrize("bad_id", [VOCAB_SIZE, VOCAB_SIZE + 7, -1])
def test_ids_outside_the_vocabulary_are_refused(bert, batch, bad_id):
    ids = batch.input_ids.clone()
    ids[2, 3] = bad_id
    forward = CountingForward(bert)
    with pytest.raises(ValueError, match=rf"outside the model's vocabulary of {VOCAB_SIZE}.*{bad_id} at \[2, 3\].*tokenizer"):
        DecompX(forward, model=bert).attribute(ids, target=0, additional_forward_args=(batch.attention_mask,))
    assert forward.calls == 0


def test_the_largest_vocabulary_id_is_accepted(bert, batch):
    ids = batch.input_ids.clone()
    ids[0, 1] = VOCAB_SIZE - 1
    DecompX(bert).attribute(ids, target=0, additional_forward_args=(batch.attention_mask,))


def test_inputs_must_be_a_tensor_or_one_tensor_in_a_tuple(bert, batch):
    with pytest.raises(TypeError, match="tensor of token ids"):
        DecompX(bert).attribute(batch.input_ids.tolist(), target=0)
    with pytest.raises(ValueError, match="additional_forward_args"):
        DecompX(bert).attribute((batch.input_ids, batch.attention_mask), target=0)


# --------------------------------------------------------------------------------------------
# inputs_embeds


def test_embeddings_passed_to_the_model_itself_get_the_wrapper_to_use(bert, batch):
    embeds = bert.get_input_embeddings()(batch.input_ids).detach()
    for explainer in (DecompX(bert), DecompX(bert.forward, model=bert)):
        with pytest.raises(TypeError, match=r"input embeddings.*inputs_embeds=embeds"):
            explainer.attribute(embeds, target=0, additional_forward_args=(batch.attention_mask,))


@pytest.mark.parametrize("options", [dict(), dict(include_biases=False, algorithm="fast")], ids=["exact", "fast"])
def test_embeddings_through_a_forward_function_give_the_ids_attributions(bert, batch, options):
    embeds = bert.get_input_embeddings()(batch.input_ids).detach()

    def forward_embeds(inputs_embeds, attention_mask):
        return bert(inputs_embeds=inputs_embeds, attention_mask=attention_mask).logits

    from_ids = DecompX(bert, **options).attribute(batch.input_ids, target=[0, 1, 2], additional_forward_args=(batch.attention_mask,))
    from_embeds = DecompX(forward_embeds, model=bert, **options).attribute(
        embeds, target=[0, 1, 2], additional_forward_args=(batch.attention_mask,)
    )
    assert from_embeds.shape == batch.input_ids.shape
    torch.testing.assert_close(from_embeds, from_ids, **TOLERANCE)


def test_embeddings_of_the_wrong_width_are_refused(bert, batch):
    forward = CountingForward(bert)
    with pytest.raises(TypeError, match=r"\(batch, seq, 32\)"):
        DecompX(forward, model=bert).attribute(torch.randn(2, 5, 7), target=0)
    assert forward.calls == 0


# --------------------------------------------------------------------------------------------
# Targets


def test_target_out_of_range_names_the_labels(bert, batch):
    with pytest.raises(ValueError, match=r"target\[1\]=3 is out of range.*3 output\(s\).*0 \(LABEL_0\), 1 \(LABEL_1\), 2 \(LABEL_2\)"):
        DecompX(bert).attribute(batch.input_ids, target=[0, 3, 1], additional_forward_args=(batch.attention_mask,))


@pytest.mark.parametrize("negative, positive", [(-1, 2), (-3, 0), ([-1, 0, -2], [2, 0, 1])], ids=["last", "first", "per-example"])
def test_negative_targets_count_from_the_last_class_as_in_captum(bert, batch, negative, positive):
    explainer = DecompX(bert)
    args = (batch.attention_mask,)
    scores = explainer.attribute(batch.input_ids, target=negative, additional_forward_args=args)
    torch.testing.assert_close(scores, explainer.attribute(batch.input_ids, target=positive, additional_forward_args=args))
    # The logit that indexing with the negative target selects (Captum's output[:, target]) is the one explained.
    with torch.no_grad():
        logits = bert(batch.input_ids, attention_mask=batch.attention_mask).logits
    selected = logits[torch.arange(logits.shape[0]), torch.as_tensor(negative).expand(logits.shape[0])]
    torch.testing.assert_close(scores.sum(1), selected, rtol=1e-4, atol=1e-4)


def test_target_beyond_the_negative_range_is_refused(bert, batch):
    with pytest.raises(ValueError, match=r"target=-4 is out of range.*-3 to -1"):
        DecompX(bert).attribute(batch.input_ids, target=-4, additional_forward_args=(batch.attention_mask,))


@pytest.mark.parametrize("target", [[0, 1], torch.tensor([0, 1, 2, 0]), torch.zeros(3, 1, dtype=torch.long)], ids=["short-list", "long-tensor", "2d"])
def test_target_of_the_wrong_batch_length(bert, batch, target):
    with pytest.raises(ValueError, match=r"one class per example: 3 value\(s\) for a batch of 3"):
        DecompX(bert).attribute(batch.input_ids, target=target, additional_forward_args=(batch.attention_mask,))


@pytest.mark.parametrize("target", [1.0, [0.0, 1.0, 2.0], True, "1", {0: 1}], ids=["float", "float-list", "bool", "str", "dict"])
def test_non_integer_targets_are_refused(bert, batch, target):
    with pytest.raises(ValueError, match="target"):
        DecompX(bert).attribute(batch.input_ids, target=target, additional_forward_args=(batch.attention_mask,))


def test_missing_target_with_several_classes(bert, batch):
    with pytest.raises(ValueError, match=r"has 3 outputs: pass target="):
        DecompX(bert).attribute(batch.input_ids, additional_forward_args=(batch.attention_mask,))


@pytest.mark.parametrize(
    "target",
    [2, np.int64(2), [2, 2, 2], (2, 2, 2), torch.tensor(2), torch.tensor([2, 2, 2]), np.array([2, 2, 2])],
    ids=["int", "numpy-int", "list", "tuple", "0d-tensor", "tensor", "numpy-array"],
)
def test_every_integer_target_form_gives_the_same_result(bert, batch, target):
    expected = DecompX(bert).attribute(batch.input_ids, target=2, additional_forward_args=(batch.attention_mask,))
    actual = DecompX(bert).attribute(batch.input_ids, target=target, additional_forward_args=(batch.attention_mask,))
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_check_targets_returns_one_long_per_example():
    targets = check_targets([2, 0], batch=2, classes=3, device=torch.device("cpu"))
    assert targets.dtype == torch.long and targets.tolist() == [2, 0]
    assert check_targets(None, batch=2, classes=1, device=torch.device("cpu")).tolist() == [0, 0]


# --------------------------------------------------------------------------------------------
# The model


def test_training_mode_is_refused(batch):
    model = make_model("bert").train()
    with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
        DecompX(model).attribute(batch.input_ids, target=0)


def test_gradient_checkpointing_is_refused_with_the_fix(batch):
    model = make_model("bert")
    prefix = "activation" if hasattr(model, "activation_checkpointing_enable") else "gradient"  # transformers 5 : 4
    getattr(model, f"{prefix}_checkpointing_enable")()
    forward = CountingForward(model)
    with pytest.raises(ValueError, match=rf"checkpointing.*model\.{prefix}_checkpointing_disable\(\)"):
        DecompX(forward, model=model).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))
    assert forward.calls == 0
    getattr(model, f"{prefix}_checkpointing_disable")()
    DecompX(forward, model=model).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))
    assert forward.calls == 1


@pytest.mark.skipif(not hasattr(PreTrainedModel, "prune_heads"), reason="transformers 5 has no head pruning")
def test_pruned_heads_are_supported(batch):
    """transformers 4.x can prune heads; every layer then has its own number of heads."""
    model = make_model("bert")
    model.prune_heads({0: [1, 2], 1: [0]})
    assert model.bert.encoder.layer[0].attention.self.value.weight.shape[0] == 16
    args = (batch.attention_mask,)
    full = DecompX(model).decompose(batch.input_ids, additional_forward_args=args)
    torch.testing.assert_close(full.attributions.sum(1), full.logits, **TOLERANCE)
    exact = DecompX(model, include_biases=False, algorithm="exact").decompose(batch.input_ids, additional_forward_args=args)
    fast = DecompX(model, include_biases=False, algorithm="fast").decompose(batch.input_ids, additional_forward_args=args)
    torch.testing.assert_close(fast.attributions, exact.attributions, **TOLERANCE)


def test_a_forward_function_that_never_runs_the_model_is_a_clear_error(batch):
    hooked = make_model("bert", seed=0)
    other = make_model("bert", seed=1)  # the forward function runs this one
    before_hooked, before_other = model_snapshot(hooked), model_snapshot(other)
    with pytest.raises(RuntimeError, match=r"never ran .*Check that `model` is the module the forward function actually calls"):
        DecompX(CountingForward(other), model=hooked).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))
    assert_same_snapshot(before_hooked, model_snapshot(hooked))
    assert_same_snapshot(before_other, model_snapshot(other))


def test_a_forward_function_with_the_wrong_number_of_rows(bert, batch):
    forward = CountingForward(bert, transform=lambda logits: logits[:1])
    with pytest.raises(ValueError, match=r"1 rows of logits for 3 inputs"):
        DecompX(forward, model=bert).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))


@pytest.mark.parametrize("value", [0, -5, 1.5, "4GB", True, float("inf")])
def test_max_memory_must_be_a_positive_number_of_bytes(bert, value):
    with pytest.raises(ValueError, match="max_memory"):
        DecompX(bert, max_memory=value)


def test_max_memory_accepts_a_whole_float(bert):
    assert DecompX(bert, max_memory=2e9).max_memory == 2_000_000_000


# --------------------------------------------------------------------------------------------
# Probabilities instead of logits


@pytest.mark.parametrize("transform", [lambda x: x.softmax(-1), lambda x: x.log_softmax(-1)], ids=["softmax", "log_softmax"])
def test_probabilities_instead_of_logits_warn(bert, batch, transform):
    forward = CountingForward(bert, transform=transform)
    with pytest.warns(UserWarning, match=r"probabilities.*not logits.*Return the logits"):
        DecompX(forward, model=bert).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))


def test_logits_do_not_warn(bert, batch):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DecompX(CountingForward(bert), model=bert).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))


# --------------------------------------------------------------------------------------------
# Nothing changes, whatever the call does


def _failing_calls(model, batch) -> dict[str, Callable[[], Any]]:
    args = (batch.attention_mask,)

    def forward_that_raises(input_ids, attention_mask):
        model(input_ids, attention_mask=attention_mask)  # the hooks have run
        raise ZeroDivisionError("boom")

    class Interrupt(BaseException):
        pass

    def forward_interrupted(input_ids, attention_mask):
        model(input_ids, attention_mask=attention_mask)
        raise Interrupt()

    return {
        "float-ids": lambda: DecompX(model).attribute(batch.input_ids.float(), target=0),
        "out-of-vocabulary": lambda: DecompX(model).attribute(batch.input_ids + VOCAB_SIZE, target=0),
        "target-out-of-range": lambda: DecompX(model).attribute(batch.input_ids, target=NUM_LABELS, additional_forward_args=args),
        "forward-raises": lambda: DecompX(forward_that_raises, model=model).attribute(batch.input_ids, target=0, additional_forward_args=args),
        "forward-interrupted": lambda: DecompX(forward_interrupted, model=model).attribute(batch.input_ids, target=0, additional_forward_args=args),
        "memory": lambda: DecompX(model, max_memory=1024).attribute(batch.input_ids, target=0, additional_forward_args=args),
        "bad-extra-argument": lambda: DecompX(model).attribute(batch.input_ids, target=0, additional_forward_args=("not a mask",)),
    }


FAILING_CALLS = ("float-ids", "out-of-vocabulary", "target-out-of-range", "forward-raises", "forward-interrupted", "memory", "bad-extra-argument")


@pytest.mark.parametrize("call", FAILING_CALLS)
def test_a_failed_call_leaves_the_model_as_it_was(batch, call):
    model = make_model("bert")
    assert model.config._attn_implementation == "sdpa"  # so the temporary switch to eager is exercised
    before = model_snapshot(model)
    with pytest.raises(BaseException) as raised:
        _failing_calls(model, batch)[call]()
    assert not isinstance(raised.value, AssertionError)
    assert_same_snapshot(before, model_snapshot(model))
    # and the model still works as before
    after = DecompX(model).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))
    fresh = DecompX(make_model("bert")).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))
    torch.testing.assert_close(after, fresh, rtol=0, atol=0)


def test_the_memory_error_is_exported_and_suggests_the_fast_path(bert, batch):
    with pytest.raises(captum_decompx.DecompXMemoryError, match=r"algorithm='fast'") as raised:
        DecompX(bert, max_memory=1024).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))
    assert isinstance(raised.value, MemoryError)


@pytest.mark.parametrize(
    "options",
    [dict(), dict(include_biases=False), dict(include_biases=False, algorithm="exact"), dict(include_head=False)],
    ids=["exact", "fast", "exact-no-bias", "no-head"],
)
def test_a_successful_call_leaves_the_model_as_it_was(batch, options):
    model = make_model("distilbert")
    before = model_snapshot(model)
    dx = DecompX(model, **options)
    dx.decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,), return_token_maps=True)
    if dx.include_head:
        dx.attribute(batch.input_ids, target=1, additional_forward_args=(batch.attention_mask,), return_convergence_delta=True)
    assert_same_snapshot(before, model_snapshot(model))


def test_the_snapshot_sees_a_change():
    """The comparison above can fail: a hook, a flag or a weight change is caught."""
    model = make_model("bert")
    before = model_snapshot(model)
    handle = model.bert.encoder.layer[0].register_forward_hook(lambda *args: None)
    with pytest.raises(AssertionError):
        assert_same_snapshot(before, model_snapshot(model))
    handle.remove()
    assert_same_snapshot(before, model_snapshot(model))
    model.config._attn_implementation_internal = "eager"
    with pytest.raises(AssertionError):
        assert_same_snapshot(before, model_snapshot(model))
    model.config._attn_implementation_internal = "sdpa"
    with torch.no_grad():
        model.classifier.bias[0] += 1e-6
    with pytest.raises(AssertionError):
        assert_same_snapshot(before, model_snapshot(model))
