"""DecompX leaves the model exactly as it found it: after success and after an error."""

from __future__ import annotations

import pytest
import torch
from support.classifiers import reinit_parameters
from support.snapshots import assert_unchanged, snapshot
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from captum_decompx import DecompX


def tiny_bert_config(attn_implementation: str | None) -> BertConfig:
    config = BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37, num_labels=3
    )
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def build_model(attn_implementation: str | None) -> nn.Module:
    """A tiny BERT as a user would build it: default attention, or ``attn_implementation`` set first."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(attn_implementation))
    return reinit_parameters(model, seed=0).eval()


ATTENTION = {"default": None, "sdpa": "sdpa", "eager": "eager"}
CALLS = {
    "exact": dict(),
    "fast": dict(include_biases=False),
    "no-head": dict(include_head=False),
}


@pytest.fixture
def batch(padded_batch):
    return padded_batch


@pytest.mark.parametrize("options", list(CALLS))
@pytest.mark.parametrize("attention", list(ATTENTION))
def test_model_unchanged_after_success(attention, options, batch):
    model = build_model(ATTENTION[attention])
    if attention == "default":
        assert model.config._attn_implementation == "sdpa"  # what the test is about
    before = snapshot(model)
    with torch.no_grad():
        logits_before = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits

    explainer = DecompX(model, **CALLS[options])
    explainer.decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    explainer.attribute(batch.input_ids, target=1, additional_forward_args=(batch.attention_mask,))

    assert_unchanged(model, before)
    with torch.no_grad():
        logits_after = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    assert torch.equal(logits_after, logits_before)


def test_model_unchanged_after_forward_function_raises(batch):
    model = build_model(None)
    before = snapshot(model)

    def failing_forward(input_ids, attention_mask):
        model(input_ids=input_ids, attention_mask=attention_mask)  # hooks fire, then:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        DecompX(failing_forward, model=model).attribute(
            batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,)
        )
    assert_unchanged(model, before)


def test_model_unchanged_after_failure_inside_a_layer(batch):
    model = build_model(None)

    def explode(module, args, output):
        raise RuntimeError("layer failed")

    handle = model.bert.encoder.layer[1].output.register_forward_hook(explode)
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="layer failed"):
        DecompX(model).decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    assert_unchanged(model, before)
    handle.remove()


@pytest.mark.parametrize("options", list(CALLS))
def test_model_unchanged_after_bad_target(options, batch):
    """The target is checked after the forward pass was captured."""
    model = build_model(None)
    before = snapshot(model)
    with pytest.raises(ValueError):
        DecompX(model, **CALLS[options]).attribute(
            batch.input_ids, target=7, additional_forward_args=(batch.attention_mask,), return_convergence_delta=True
        )
    assert_unchanged(model, before)


def test_model_unchanged_after_training_mode_error(batch):
    model = build_model(None).train()
    before = snapshot(model)
    with pytest.raises(ValueError):
        DecompX(model).attribute(batch.input_ids, target=0, additional_forward_args=(batch.attention_mask,))
    assert_unchanged(model, before)
    assert model.training


def test_users_own_hooks_survive_and_still_fire(batch):
    model = build_model(None)
    calls = {"forward": 0, "pre": 0}
    attention = model.bert.encoder.layer[0].attention.self

    def forward_hook(module, args, output):
        calls["forward"] += 1

    def pre_hook(module, args):
        calls["pre"] += 1

    forward_handle = attention.register_forward_hook(forward_hook)
    pre_handle = model.bert.encoder.layer[1].output.LayerNorm.register_forward_pre_hook(pre_hook)
    before = snapshot(model)

    DecompX(model).decompose(batch.input_ids, additional_forward_args=(batch.attention_mask,))
    assert calls == {"forward": 1, "pre": 1}  # they fired during DecompX's forward pass
    assert_unchanged(model, before)

    with torch.no_grad():
        model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert calls == {"forward": 2, "pre": 2}  # and still fire afterwards

    forward_handle.remove()
    pre_handle.remove()
    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    assert calls == {"forward": 2, "pre": 2}  # the user's handles still control them
