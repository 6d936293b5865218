"""Properties that must hold for every tiny BERT, drawn at random with ``hypothesis``.

Each example draws a configuration (1-3 layers, 1-4 heads of width 2-8, an intermediate size, an
activation among gelu, gelu_new, relu and silu, 1-4 labels), a seed for the parameters, and a
right-padded batch of random lengths. The properties:

- completeness: with biases decomposed, the token contributions sum to every logit;
- fast = exact: without biases, the fast path gives the exact path's contributions;
- batch invariance: an example alone gives the same contributions as inside a padded batch;
- order invariance: permuting the examples of a batch permutes the contributions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.classifiers import FIRST_REAL_TOKEN, assert_close_to_scale, reinit_parameters
from transformers import BertConfig, BertForSequenceClassification

from captum_decompx import DecompX

VOCAB_SIZE = 50
ACTIVATIONS = ("gelu", "gelu_new", "relu", "silu")
RELATIVE_TOLERANCE = 1e-4  # of the largest |logit| (or |contribution|) of the example
EXAMPLES = 25

SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same examples on every run: CI never meets a new random case
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


@dataclass
class Case:
    """A model and a right-padded batch.

    Attributes:
        input_ids: (batch, seq).
        attention_mask: (batch, seq).
    """

    model: BertForSequenceClassification
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    lengths: list[int]

    def example(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        length = self.lengths[index]
        return self.input_ids[index : index + 1, :length], self.attention_mask[index : index + 1, :length]

    @property
    def args(self) -> tuple:
        return (self.attention_mask,)


@st.composite
def cases(draw, min_batch: int = 1) -> Case:
    heads = draw(st.integers(1, 4), label="heads")
    head_dim = draw(st.integers(2, 8), label="head_dim")
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=heads * head_dim,
        num_hidden_layers=draw(st.integers(1, 3), label="layers"),
        num_attention_heads=heads,
        intermediate_size=draw(st.integers(2, 48), label="intermediate_size"),
        hidden_act=draw(st.sampled_from(ACTIVATIONS), label="activation"),
        max_position_embeddings=32,
        num_labels=draw(st.integers(1, 4), label="num_labels"),
    )
    seed = draw(st.integers(0, 2**16), label="seed")
    torch.manual_seed(seed)
    model = reinit_parameters(BertForSequenceClassification(config), seed).eval()
    lengths = draw(st.lists(st.integers(1, 12), min_size=min_batch, max_size=4), label="lengths")
    generator = torch.Generator().manual_seed(seed)
    seq = max(lengths)
    input_ids = torch.zeros(len(lengths), seq, dtype=torch.long)
    attention_mask = torch.zeros(len(lengths), seq, dtype=torch.long)
    for row, length in enumerate(lengths):
        input_ids[row, :length] = torch.randint(FIRST_REAL_TOKEN, VOCAB_SIZE, (length,), generator=generator)
        attention_mask[row, :length] = 1
    return Case(model, input_ids, attention_mask, lengths)


def scale_of(values: torch.Tensor) -> float:
    return max(1.0, float(values.abs().max()))


def rules_for(case: Case) -> dict:
    """The feed-forward rule that is exact for the model's activation (relu for ReLU models)."""
    return dict(ffn_approximation="relu") if case.model.config.hidden_act == "relu" else dict()


@SETTINGS
@given(case=cases(), rule=st.sampled_from(("absdot", "abssim", "norm", "equal", "cls")))
def test_contributions_sum_to_every_logit(case, rule):
    out = DecompX(case.model, bias_decomposition=rule, **rules_for(case)).decompose(case.input_ids, additional_forward_args=case.args)
    assert out.attributions.shape == (*case.input_ids.shape, case.model.config.num_labels)
    padding = case.attention_mask == 0
    assert torch.equal(out.attributions[padding], torch.zeros_like(out.attributions[padding]))
    assert_close_to_scale(out.attributions.sum(1), out.logits, rel=RELATIVE_TOLERANCE, what=f"completeness ({rule})")


@SETTINGS
@given(case=cases(), head_approximation=st.sampled_from(("zo", "la")), ffn_approximation=st.sampled_from(("zo", "la", "relu")))
def test_fast_path_equals_exact_path_without_biases(case, head_approximation, ffn_approximation):
    options = dict(include_biases=False, head_approximation=head_approximation, ffn_approximation=ffn_approximation)
    exact = DecompX(case.model, algorithm="exact", **options).decompose(case.input_ids, additional_forward_args=case.args)
    fast = DecompX(case.model, algorithm="fast", **options).decompose(case.input_ids, additional_forward_args=case.args)
    assert_close_to_scale(fast.attributions, exact.attributions, rel=RELATIVE_TOLERANCE, what="fast vs exact")
    assert_close_to_scale(fast.bias, exact.bias, rel=RELATIVE_TOLERANCE, what="bias share")
    if ffn_approximation != "relu" or case.model.config.hidden_act == "relu":  # a complete rule for this model
        assert_close_to_scale(fast.attributions.sum(1) + fast.bias, fast.logits, rel=RELATIVE_TOLERANCE, what="fast: tokens + bias share")


@SETTINGS
@given(case=cases(min_batch=2), include_biases=st.booleans())
def test_an_example_alone_equals_the_example_in_a_padded_batch(case, include_biases):
    explainer = DecompX(case.model, include_biases=include_biases, **rules_for(case))
    batch = explainer.decompose(case.input_ids, additional_forward_args=case.args)
    for index, length in enumerate(case.lengths):
        ids, mask = case.example(index)
        alone = explainer.decompose(ids, additional_forward_args=(mask,))
        expected = alone.attributions[0]
        assert_close_to_scale(batch.attributions[index, :length], expected, rel=RELATIVE_TOLERANCE, what=f"example {index}")
        assert_close_to_scale(batch.logits[index], alone.logits[0], rel=RELATIVE_TOLERANCE, what=f"logits {index}")


@SETTINGS
@given(case=cases(min_batch=2), data=st.data())
def test_permuting_the_batch_permutes_the_contributions(case, data):
    order = data.draw(st.permutations(range(len(case.lengths))), label="order")
    order = torch.tensor(order)
    targets = data.draw(
        st.lists(st.integers(0, case.model.config.num_labels - 1), min_size=len(case.lengths), max_size=len(case.lengths)),
        label="targets",
    )
    targets = torch.tensor(targets)
    for options in (dict(), dict(include_biases=False)):
        explainer = DecompX(case.model, **options)
        original = explainer.attribute(case.input_ids, target=targets, additional_forward_args=case.args)
        permuted = explainer.attribute(
            case.input_ids[order], target=targets[order], additional_forward_args=(case.attention_mask[order],)
        )
        assert_close_to_scale(permuted, original[order], rel=RELATIVE_TOLERANCE, what=f"order {order.tolist()} {options}")
