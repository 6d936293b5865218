"""Setups that used to give a silently wrong answer or a traceback: each gets a result in the
inputs' terms or one clear message.

- a forward function that adds tokens or reorders them (the attributions would be the model's);
- a bare encoder's ``pooler_output`` (not decomposed there: refused by name, not as ``.detach()``);
- the attention mask passed by position into a GPT-2 classifier's cache argument;
- a model whose head transformers initialized at random when loading it (a warning, where the
  loaded parameters are marked: transformers 5).
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
import transformers
from support.classifiers import make_model, reinit_parameters
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    GPT2Config,
    GPT2ForSequenceClassification,
)

from captum_decompx import ALTI, DecompX, GlobEnc
from captum_decompx.core.validation import newly_initialized_parameters

ALGORITHMS = {"exact": dict(), "fast": dict(include_biases=False, algorithm="fast")}
CLS, SEP = 2, 3


def tiny_bert_config(**extra) -> BertConfig:
    return BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, **extra)


@pytest.fixture(scope="module")
def classifier():
    return reinit_parameters(BertForSequenceClassification(tiny_bert_config(num_labels=3)), seed=3).eval()


@pytest.fixture(scope="module")
def words():
    """Two sequences of five word ids each, no special tokens."""
    ids = torch.tensor([[41, 12, 13, 14, 15], [17, 22, 9, 30, 11]])
    return ids, torch.ones_like(ids)


def hook_counts(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


# ------------------------------------------------------------------------------------------------
# The model must receive the inputs' tokens, in the inputs' shape and order


def wrapped_in_special_tokens(model):
    def forward(ids, mask):
        ones = torch.ones(ids.shape[0], 1, dtype=ids.dtype)
        return model(
            input_ids=torch.cat([CLS * ones, ids, SEP * ones], 1), attention_mask=torch.cat([ones, mask, ones], 1)
        ).logits

    return forward


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("call", ["attribute", "decompose"])
def test_a_forward_function_that_adds_tokens_is_refused(classifier, words, algorithm, call):
    ids, mask = words
    explainer = DecompX(wrapped_in_special_tokens(classifier), model=classifier, **ALGORITHMS[algorithm])
    with pytest.raises(ValueError, match=r"token ids of shape \(2, 7\) for inputs of shape \(2, 5\): it adds or drops tokens"):
        if call == "attribute":
            explainer.attribute(ids, target=1, additional_forward_args=(mask,))
        else:
            explainer.decompose(ids, additional_forward_args=(mask,))
    assert hook_counts(classifier) == 0


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_a_forward_function_that_reorders_tokens_is_refused(classifier, words, algorithm):
    ids, mask = words

    def flipped(input_ids, attention_mask):
        return classifier(input_ids=input_ids.flip(1), attention_mask=attention_mask.flip(1)).logits

    with pytest.raises(ValueError, match="in another order"):
        DecompX(flipped, model=classifier, **ALGORITHMS[algorithm]).attribute(ids, target=0, additional_forward_args=(mask,))


def test_the_baselines_refuse_added_tokens_too(classifier, words):
    ids, mask = words
    for method in (GlobEnc, ALTI):
        with pytest.raises(ValueError, match="adds or drops tokens"):
            method(wrapped_in_special_tokens(classifier), model=classifier).attribute(ids, additional_forward_args=(mask,))


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_ids_changed_in_place_keep_their_positions_and_are_explained(classifier, words, algorithm):
    """A forward function that remaps ids keeps each token at its position: the scores are those of
    the remapped ids, in the inputs' shape, and they add up to the forward function's output."""
    ids, mask = words

    def remapped(input_ids, attention_mask):
        return classifier(input_ids=(input_ids + 1) % 60, attention_mask=attention_mask).logits

    options = ALGORITHMS[algorithm]
    scores = DecompX(remapped, model=classifier, **options).attribute(ids, target=2, additional_forward_args=(mask,))
    direct = DecompX(classifier, **options).attribute((ids + 1) % 60, target=2, additional_forward_args=(mask,))
    assert scores.shape == ids.shape
    torch.testing.assert_close(scores, direct)
    if algorithm == "exact":  # complete against what the forward function returns
        with torch.no_grad():
            torch.testing.assert_close(scores.sum(1), remapped(ids, mask)[:, 2], rtol=1e-4, atol=1e-4)


def test_ids_passed_on_unchanged_are_accepted_with_special_tokens(classifier, words):
    ids, mask = words
    ones = torch.ones(ids.shape[0], 1, dtype=ids.dtype)
    full, full_mask = torch.cat([CLS * ones, ids, SEP * ones], 1), torch.cat([ones, mask, ones], 1)
    scores = DecompX(lambda i, m: classifier(input_ids=i, attention_mask=m).logits, model=classifier).attribute(
        full, target=1, additional_forward_args=(full_mask,)
    )
    assert scores.shape == full.shape


# ------------------------------------------------------------------------------------------------
# pooler_output of a bare encoder


@pytest.fixture(scope="module")
def encoder():
    return reinit_parameters(BertModel(tiny_bert_config()), seed=4).eval()


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
@pytest.mark.parametrize("read", ["attribute", "index"])
def test_pooler_output_is_refused_with_the_real_reason(encoder, words, algorithm, read):
    ids, mask = words
    weights = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))

    def pooled(input_ids, attention_mask):
        output = encoder(input_ids=input_ids, attention_mask=attention_mask)
        return (output.pooler_output if read == "attribute" else output[1]) @ weights

    with pytest.raises(NotImplementedError) as raised:
        DecompX(pooled, model=encoder, **ALGORITHMS[algorithm]).attribute(ids, target=1, additional_forward_args=(mask,))
    message = str(raised.value)
    assert "pooler_output" in message and "last_hidden_state[:, 0]" in message and "ForSequenceClassification" in message
    assert ".detach()" not in message and "no_grad" not in message
    assert hook_counts(encoder) == 0


def test_the_first_tokens_hidden_state_is_explained_exactly(encoder, words):
    """What the refusal suggests works, and adds up to the forward function's output."""
    ids, mask = words
    weights = torch.randn(32, 3, generator=torch.Generator().manual_seed(0))

    def first_token(input_ids, attention_mask):
        return encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0] @ weights

    scores = DecompX(first_token, model=encoder).attribute(ids, target=1, additional_forward_args=(mask,))
    with torch.no_grad():
        expected = first_token(ids, mask)[:, 1]
    torch.testing.assert_close(scores.sum(1), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# An attention mask passed by position into GPT-2's cache argument


@pytest.fixture(scope="module")
def gpt2_classifier():
    config = GPT2Config(vocab_size=60, n_embd=32, n_layer=2, n_head=4, n_positions=32, pad_token_id=0, num_labels=2)
    config.bos_token_id = config.eos_token_id = 1
    return GPT2ForSequenceClassification(config).eval()


@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_a_mask_passed_by_position_into_gpt2s_cache_is_one_clear_line(gpt2_classifier, algorithm):
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 10, 11]])
    mask = (ids != 0).long()
    with pytest.raises(ValueError) as raised:
        DecompX(gpt2_classifier, **ALGORITHMS[algorithm]).attribute(ids, target=0, additional_forward_args=(mask,))
    message = str(raised.value)
    assert "\n" not in message
    assert re.search(r"lands in GPT2ForSequenceClassification\.forward's argument '(cache|past_key_values)'", message), message
    assert "attention_mask=mask" in message
    assert hook_counts(gpt2_classifier) == 0
    # What the message says to do works.
    forward = lambda input_ids, attention_mask: gpt2_classifier(input_ids=input_ids, attention_mask=attention_mask).logits  # noqa: E731
    scores = DecompX(forward, model=gpt2_classifier).attribute(ids, target=0, additional_forward_args=(mask,))
    with torch.no_grad():
        torch.testing.assert_close(scores.sum(1), forward(ids, mask)[:, 0], rtol=1e-4, atol=1e-4)


def test_bert_takes_the_mask_second_and_is_not_refused(classifier, words):
    ids, mask = words
    DecompX(classifier).attribute(ids, target=0, additional_forward_args=(mask,))


# ------------------------------------------------------------------------------------------------
# A head initialized at random when the model was loaded


TRANSFORMERS_MARKS_LOADED_PARAMETERS = int(transformers.__version__.split(".")[0]) >= 5


def test_a_model_built_from_a_config_is_not_reported():
    model = make_model("bert")
    assert newly_initialized_parameters(model) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DecompX(model)


@pytest.mark.skipif(not TRANSFORMERS_MARKS_LOADED_PARAMETERS, reason="transformers 4 does not mark the parameters it loads")
def test_a_head_missing_from_the_checkpoint_is_warned_about(tmp_path):
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    BertModel(tiny_bert_config()).save_pretrained(tmp_path / "encoder")
    BertForSequenceClassification(tiny_bert_config(num_labels=2)).save_pretrained(tmp_path / "classifier")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        random_head = AutoModelForSequenceClassification.from_pretrained(tmp_path / "encoder").eval()
        complete = AutoModelForSequenceClassification.from_pretrained(tmp_path / "classifier").eval()
    finally:
        hf_logging.set_verbosity(verbosity)
    assert newly_initialized_parameters(random_head) == ["classifier.weight", "classifier.bias"]
    with pytest.warns(UserWarning, match=r"classifier\.weight, classifier\.bias were not in the checkpoint.*random"):
        DecompX(random_head)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        DecompX(complete)
