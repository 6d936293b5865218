"""Every task head of the supported encoders: question answering, token classification, masked
LM, multiple choice, bare encoders (sentence embeddings), regression and multi-label classifiers.

Values are checked against independent computations: the literal spec (``literal_spec.py``, which
never imports the engine) decomposing the output row of one position through the task's head, and
for multiple choice (BERT, ALBERT, ELECTRA) the sequence classifier with the same weights, for
ModernBERT's masked LM its token classifier with the same weights. The battery checks completeness
against what the forward function returns, padding invariance and that the model is left as found.
"""

from __future__ import annotations

import literal_spec as spec
import pytest
import torch
import transformers as tf
from support.classifiers import reinit_parameters
from support.literal_models import bert_embeddings_of, bert_layers
from support.snapshots import assert_unchanged, snapshot

from captum_decompx import DecompX, UnsupportedTaskError, cosine_similarity_frozen_norm

VOCAB = 50
LENGTHS = (7, 5)


def _bert_config(layers: int = 1, **extra) -> tf.BertConfig:
    return tf.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        hidden_act="gelu",
        **extra,
    )


def literal_bert_weights(encoder, head: list) -> spec.ModelWeights:
    """A BertModel's layers, read by module name, with ``head`` after the selected row."""
    return spec.ModelWeights(layers=bert_layers(encoder), pre_norm=False, head=head)


def literal_rows(encoder, head: list, ids, mask, expected_outputs, **options) -> list[list[spec.Decomposition]]:
    """Per example (alone, without its padding) and per real position ``p``: the literal
    decomposition of the output at row ``p`` through ``head``, (n, classes) each. The literal
    forward pass of every row is checked against ``expected_outputs`` (batch, seq, classes)."""
    weights = literal_bert_weights(encoder, head)
    embeddings_module = encoder.embeddings
    results = []
    for b in range(ids.shape[0]):
        real = ids[b][mask[b].bool()]
        n = real.shape[0]
        embeddings = bert_embeddings_of(embeddings_module, real)
        rows = []
        for p in range(n):
            trace = spec.real_forward(weights, embeddings, pooled_row=p)
            scale = float(expected_outputs.abs().max())
            spec.assert_matches(trace.logits, expected_outputs[b, p], scale, f"literal forward, example {b} row {p}", 1e-9)
            rows.append(spec.decompose(weights, embeddings, trace, p, **options))
        results.append(rows)
    return results


def _qa_model(seed: int = 3) -> torch.nn.Module:
    return spec.randomize(tf.BertForQuestionAnswering(_bert_config(num_labels=2)), seed)


# --------------------------------------------------------------------------------------------
# Question answering: Captum's SQuAD tutorial, with LayerIntegratedGradients swapped for DecompX


def test_squad_tutorial_forward_is_exact_for_start_and_end_and_matches_the_literal_spec():
    model = _qa_model()
    ids, attention_mask = spec.padded_tokens(LENGTHS, VOCAB, seed=3)
    token_type_ids = torch.zeros_like(ids)
    position_ids = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)

    # The tutorial's code, unchanged.
    def predict(inputs, token_type_ids=None, position_ids=None, attention_mask=None):
        return model(inputs, token_type_ids=token_type_ids, position_ids=position_ids, attention_mask=attention_mask)

    def squad_pos_forward_func(inputs, token_type_ids=None, position_ids=None, attention_mask=None, position=0):
        pred = predict(inputs, token_type_ids=token_type_ids, position_ids=position_ids, attention_mask=attention_mask)
        pred = pred[position]
        return pred.max(1).values

    before = snapshot(model)
    dx = DecompX(squad_pos_forward_func, model=model)
    with torch.no_grad():
        output = model(ids, attention_mask=attention_mask)
    logits = torch.stack([output.start_logits, output.end_logits], dim=-1)  # (batch, seq, 2)
    literal = literal_rows(model.bert, [spec.affine_of(model.qa_outputs)], ids, attention_mask, logits)
    ref_input_ids = torch.zeros_like(ids)  # the tutorial's reference ids, for LayerIntegratedGradients
    for position in (0, 1):
        with pytest.warns(UserWarning, match="takes no baselines"):  # the tutorial's call, unchanged
            attributions, delta = dx.attribute(
                inputs=ids,
                baselines=ref_input_ids,
                additional_forward_args=(token_type_ids, position_ids, attention_mask, position),
                return_convergence_delta=True,
            )
        with torch.no_grad():
            value = squad_pos_forward_func(ids, token_type_ids, position_ids, attention_mask, position)
        assert attributions.shape == ids.shape
        torch.testing.assert_close(attributions.sum(-1), value.detach(), rtol=0, atol=1e-9)
        assert float(delta.abs().max()) < 1e-9
        chosen = logits[..., position].argmax(dim=1)
        for b, n in enumerate(LENGTHS):
            p = int(chosen[b])
            if p >= n:
                continue  # the tutorial's max may pick a padding position; checked for completeness above
            expected = literal[b][p].contributions[:, position]
            spec.assert_matches(
                attributions[b, :n], expected, float(value.abs().max()), f"{('start', 'end')[position]} example {b}"
            )
            assert float(attributions[b, n:].abs().sum()) == 0.0
    assert_unchanged(model, before)


def test_qa_every_position_of_start_and_end_matches_the_literal_spec():
    """``decompose`` gives every position's start and end decomposition; a bias given to the wrong
    token, the end explained with the start head or the wrong row all fail here."""
    model = _qa_model(seed=4)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=4)
    out = DecompX(model).decompose(ids, (mask,))
    assert out.attributions.shape == (2, ids.shape[1], ids.shape[1], 2)
    literal = literal_rows(model.bert, [spec.affine_of(model.qa_outputs)], ids, mask, out.logits)
    for b, n in enumerate(LENGTHS):
        for p in range(n):
            expected = literal[b][p].contributions  # (n, 2)
            spec.assert_matches(out.attributions[b, p, :n], expected, float(out.logits.abs().max()), f"example {b} row {p}")
            assert float(out.attributions[b, p, n:].abs().sum()) == 0.0
    torch.testing.assert_close(out.attributions.sum(2) + out.bias, out.logits, rtol=0, atol=1e-9)


def test_qa_with_biases_left_out_reports_their_share_per_position():
    model = _qa_model(seed=5)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=5)
    out = DecompX(model, include_biases=False, algorithm="exact").decompose(ids, (mask,))
    literal = literal_rows(model.bert, [spec.affine_of(model.qa_outputs)], ids, mask, out.logits, mode="drop")
    for b, n in enumerate(LENGTHS):
        for p in range(n):
            expected = literal[b][p].contributions
            spec.assert_matches(out.attributions[b, p, :n], expected, float(out.logits.abs().max()), f"example {b} row {p}")
    # Without biases the contributions plus the biases' share still give every position's logits.
    torch.testing.assert_close(out.attributions.sum(2) + out.bias, out.logits, rtol=0, atol=1e-9)
    assert float(out.bias.abs().max()) > 1e-3


# --------------------------------------------------------------------------------------------
# Token classification and masked LM: target=(position, label)


def test_token_classification_target_position_label_matches_the_literal_spec():
    model = spec.randomize(tf.BertForTokenClassification(_bert_config(num_labels=4)), 6)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=6)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    literal = literal_rows(model.bert, [spec.affine_of(model.classifier)], ids, mask, logits)
    dx = DecompX(model)
    for position, label in ((2, 3), (4, 0)):
        scores, delta = dx.attribute(
            ids, target=(position, label), additional_forward_args=(mask,), return_convergence_delta=True
        )
        assert float(delta.abs().max()) < 1e-9
        for b, n in enumerate(LENGTHS):
            expected = literal[b][position].contributions[:, label]
            spec.assert_matches(scores[b, :n], expected, float(logits.abs().max()), f"example {b} ({position}, {label})")


def test_masked_lm_vocabulary_logit_at_the_mask_matches_the_literal_spec():
    model = spec.randomize(tf.BertForMaskedLM(_bert_config()), 7)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=7)
    ids[:, 2] = 3  # the "[MASK]" position
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    transform = model.cls.predictions.transform
    head = [
        spec.affine_of(transform.dense),
        spec.GELU,
        spec.norm_of(transform.LayerNorm),
        spec.affine_of(model.cls.predictions.decoder),
    ]
    literal = literal_rows(model.bert, head, ids, mask, logits)
    dx = DecompX(lambda i, m: model(i, attention_mask=m).logits, model=model)
    for word in (5, 17):
        scores, delta = dx.attribute(ids, target=(2, word), additional_forward_args=(mask,), return_convergence_delta=True)
        assert float(delta.abs().max()) < 1e-9
        for b, n in enumerate(LENGTHS):
            spec.assert_matches(
                scores[b, :n], literal[b][2].contributions[:, word], float(logits.abs().max()), f"example {b} word {word}"
            )


def test_modernbert_masked_lm_equals_the_token_classifier_with_the_same_weights():
    """ModernBERT's MLM head (dense, act, norm, decoder) is its token classifier's head with the
    decoder as classifier: the same weights must give the same attributions per (position, word)."""
    config = tf.ModernBertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        pad_token_id=0,
        num_labels=VOCAB,
    )
    torch.manual_seed(0)
    masked_lm = reinit_parameters(tf.ModernBertForMaskedLM(config), seed=20).eval()
    classifier = tf.ModernBertForTokenClassification(config).eval()
    renamed = {k.replace("decoder.", "classifier.", 1): v for k, v in masked_lm.state_dict().items()}
    missing, unexpected = classifier.load_state_dict(renamed, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=20)
    with torch.no_grad():
        logits = masked_lm(ids, attention_mask=mask).logits
        torch.testing.assert_close(classifier(ids, attention_mask=mask).logits, logits, rtol=1e-5, atol=1e-6)
    before = snapshot(masked_lm)
    dx = DecompX(lambda i, m: masked_lm(i, attention_mask=m).logits, model=masked_lm)
    by_hand = DecompX(lambda i, m: classifier(i, attention_mask=m).logits, model=classifier)
    for target in ((2, 5), (4, 17)):
        scores, delta = dx.attribute(ids, target=target, additional_forward_args=(mask,), return_convergence_delta=True)
        assert float(delta.abs().max()) < 1e-5
        torch.testing.assert_close(scores.sum(-1), logits[:, target[0], target[1]], rtol=1e-5, atol=1e-5)
        expected = by_hand.attribute(ids, target=target, additional_forward_args=(mask,))
        torch.testing.assert_close(scores, expected, rtol=1e-5, atol=1e-6)
    assert_unchanged(masked_lm, before)


# --------------------------------------------------------------------------------------------
# Bare encoders and sentence embeddings


def _bare_encoder(seed: int = 8) -> torch.nn.Module:
    return spec.randomize(tf.BertModel(_bert_config()), seed)


def _mean_pool(model):
    def embed(ids, mask):
        hidden = model(ids, attention_mask=mask).last_hidden_state
        return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    return embed


def test_mean_pooled_embedding_dimension_matches_the_literal_spec():
    model = _bare_encoder()
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=8)
    with torch.no_grad():
        hidden = model(ids, attention_mask=mask).last_hidden_state
    literal = literal_rows(model, [], ids, mask, hidden)
    embed = _mean_pool(model)
    dx = DecompX(embed, model=model)
    for dimension in (0, 9):
        scores, delta = dx.attribute(ids, target=dimension, additional_forward_args=(mask,), return_convergence_delta=True)
        assert float(delta.abs().max()) < 1e-9
        for b, n in enumerate(LENGTHS):
            expected = sum(literal[b][p].contributions[:, dimension] for p in range(n)) / n
            spec.assert_matches(scores[b, :n], expected, float(hidden.abs().max()), f"example {b} dimension {dimension}")


def test_cls_pooling_dot_product_and_frozen_norm_cosine_are_exact():
    model = _bare_encoder(seed=9)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=9)
    direction = torch.randn(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def cls_embedding(ids, mask):
        return model(ids, attention_mask=mask).last_hidden_state[:, 0]

    dot = DecompX(lambda i, m: cls_embedding(i, m) @ direction, model=model)
    scores, delta = dot.attribute(ids, additional_forward_args=(mask,), return_convergence_delta=True)
    assert float(delta.abs().max()) < 1e-9
    cosine = DecompX(lambda i, m: cosine_similarity_frozen_norm(cls_embedding(i, m), direction), model=model)
    cos_scores, cos_delta = cosine.attribute(ids, additional_forward_args=(mask,), return_convergence_delta=True)
    with torch.no_grad():
        real_cosine = torch.nn.functional.cosine_similarity(cls_embedding(ids, mask), direction[None], dim=-1)
        norms = cls_embedding(ids, mask).norm(dim=-1) * direction.norm()
    torch.testing.assert_close(cos_scores.sum(-1), real_cosine, rtol=0, atol=1e-9)
    assert float(cos_delta.abs().max()) < 1e-9
    # With the norms frozen, the cosine is the dot product divided by the fixed norms.
    torch.testing.assert_close(cos_scores, scores / norms[:, None], rtol=1e-9, atol=1e-12)


def test_cosine_similarity_without_frozen_norms_is_refused_with_the_way_out():
    model = _bare_encoder(seed=10)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=10)
    other = torch.randn(16, dtype=torch.float64)
    embed = _mean_pool(model)
    dx = DecompX(lambda i, m: torch.nn.functional.cosine_similarity(embed(i, m), other[None], dim=-1), model=model)
    with pytest.raises(ValueError, match="cosine_similarity_frozen_norm"):
        dx.attribute(ids, additional_forward_args=(mask,))


# --------------------------------------------------------------------------------------------
# Multiple choice: ids (batch, choices, seq)


def test_multiple_choice_equals_the_sequence_classifier_with_the_same_weights():
    torch.manual_seed(0)
    config = _bert_config(layers=2, num_labels=1)
    choice_model = reinit_parameters(tf.BertForMultipleChoice(config), seed=11).eval()
    classifier = tf.BertForSequenceClassification(config).eval()
    classifier.load_state_dict(choice_model.state_dict())
    ids = torch.randint(4, VOCAB, (2, 3, 6), generator=torch.Generator().manual_seed(11))
    mask = torch.ones_like(ids)
    mask[0, 1, 4:] = 0
    mask[1, 2, 3:] = 0
    before = snapshot(choice_model)
    dx = DecompX(choice_model)
    for choice in (0, 2):
        scores, delta = dx.attribute(ids, target=choice, additional_forward_args=(mask,), return_convergence_delta=True)
        assert scores.shape == ids.shape
        assert float(delta.abs().max()) < 1e-5
        by_hand = DecompX(classifier).attribute(ids[:, choice], target=0, additional_forward_args=(mask[:, choice],))
        torch.testing.assert_close(scores[:, choice], by_hand, rtol=1e-5, atol=1e-6)
        others = [c for c in range(3) if c != choice]
        assert float(scores[:, others].abs().max()) == 0.0  # the other choices' tokens do not enter this logit
    out = dx.decompose(ids, (mask,))
    assert out.logits.shape == (2, 3) and out.attributions.shape == (2, 3, 6)
    torch.testing.assert_close(out.attributions.sum(-1), out.logits, rtol=1e-5, atol=1e-5)
    # Fast = exact without biases where the fast path applies (the pooled multiple-choice head).
    fast = DecompX(choice_model, include_biases=False, algorithm="fast").attribute(ids, target=1, additional_forward_args=(mask,))
    exact = DecompX(choice_model, include_biases=False, algorithm="exact").attribute(
        ids, target=1, additional_forward_args=(mask,)
    )
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-5)
    assert_unchanged(choice_model, before)


def _electra_config(**extra) -> tf.ElectraConfig:
    return tf.ElectraConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        embedding_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        **extra,
    )


def _albert_config(**extra) -> tf.AlbertConfig:
    return tf.AlbertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        embedding_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        **extra,
    )


def _electra_choices_as_classifier(state: dict) -> dict:
    """ElectraForMultipleChoice's weights renamed for ElectraForSequenceClassification: the summary
    linear map is the classification head's dense map (both followed by GELU), its classifier the out_proj."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("sequence_summary.summary.", "classifier.dense.")
        if key.startswith("classifier.") and not key.startswith("classifier.dense."):
            key = key.replace("classifier.", "classifier.out_proj.", 1)
        renamed[key] = value
    return renamed


def _deberta_v2_config(**extra) -> tf.DebertaV2Config:
    return tf.DebertaV2Config(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=24, **extra
    )


def _modernbert_config(**extra) -> tf.ModernBertConfig:
    return tf.ModernBertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        pad_token_id=0,
        **extra,
    )


MULTIPLE_CHOICE = {
    # name: (multiple-choice model, the sequence classifier with the same head, renaming of the weights)
    "albert": (
        lambda: tf.AlbertForMultipleChoice(_albert_config(num_labels=1)),
        lambda: tf.AlbertForSequenceClassification(_albert_config(num_labels=1)),
        dict,
    ),
    "electra": (
        lambda: tf.ElectraForMultipleChoice(_electra_config(num_labels=1)),
        lambda: tf.ElectraForSequenceClassification(_electra_config(num_labels=1)),
        _electra_choices_as_classifier,
    ),
    "deberta-v2": (
        lambda: tf.DebertaV2ForMultipleChoice(_deberta_v2_config(num_labels=1)),
        lambda: tf.DebertaV2ForSequenceClassification(_deberta_v2_config(num_labels=1)),
        dict,
    ),
    "modernbert-cls": (
        lambda: tf.ModernBertForMultipleChoice(_modernbert_config(num_labels=1, classifier_pooling="cls")),
        lambda: tf.ModernBertForSequenceClassification(_modernbert_config(num_labels=1, classifier_pooling="cls")),
        dict,
    ),
    "modernbert-mean": (
        lambda: tf.ModernBertForMultipleChoice(_modernbert_config(num_labels=1, classifier_pooling="mean")),
        lambda: tf.ModernBertForSequenceClassification(_modernbert_config(num_labels=1, classifier_pooling="mean")),
        dict,
    ),
}


@pytest.mark.parametrize("name", list(MULTIPLE_CHOICE))
def test_albert_electra_deberta_modernbert_multiple_choice_equal_their_sequence_classifiers(name):
    build_choices, build_classifier, rename = MULTIPLE_CHOICE[name]
    torch.manual_seed(0)
    choice_model = reinit_parameters(build_choices(), seed=18).eval()
    classifier = build_classifier().eval()
    missing, unexpected = classifier.load_state_dict(rename(choice_model.state_dict()), strict=False)
    assert not unexpected and all("position_ids" in key for key in missing), (missing, unexpected)
    ids = torch.randint(4, VOCAB, (2, 3, 6), generator=torch.Generator().manual_seed(18))
    mask = torch.ones_like(ids)
    mask[0, 1, 4:] = 0
    mask[1, 2, 3:] = 0
    with torch.no_grad():
        logits = choice_model(ids, attention_mask=mask).logits
        for choice in range(3):  # the renamed classifier is the same function as the choice head
            same = classifier(ids[:, choice], attention_mask=mask[:, choice]).logits[:, 0]
            torch.testing.assert_close(same, logits[:, choice], rtol=1e-5, atol=1e-6)
    before = snapshot(choice_model)
    dx = DecompX(choice_model)
    for choice in (0, 2):
        scores, delta = dx.attribute(ids, target=choice, additional_forward_args=(mask,), return_convergence_delta=True)
        assert scores.shape == ids.shape
        torch.testing.assert_close(scores.sum((1, 2)), logits[:, choice], rtol=1e-5, atol=1e-5)
        assert float(delta.abs().max()) < 1e-5
        by_hand = DecompX(classifier).attribute(ids[:, choice], target=0, additional_forward_args=(mask[:, choice],))
        torch.testing.assert_close(scores[:, choice], by_hand, rtol=1e-5, atol=1e-6)
        others = [c for c in range(3) if c != choice]
        assert float(scores[:, others].abs().max()) == 0.0
    fast = DecompX(choice_model, include_biases=False, algorithm="fast").attribute(ids, target=1, additional_forward_args=(mask,))
    exact = DecompX(choice_model, include_biases=False, algorithm="exact").attribute(
        ids, target=1, additional_forward_args=(mask,)
    )
    torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-5)
    assert_unchanged(choice_model, before)


def test_modernbert_multiple_choice_reads_the_first_real_token_under_left_padding():
    torch.manual_seed(0)
    config = _modernbert_config(num_labels=1, classifier_pooling="cls")
    model = reinit_parameters(tf.ModernBertForMultipleChoice(config), seed=3).eval()
    ids = torch.randint(4, VOCAB, (2, 2, 6), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    ids[0, 1, :2], mask[0, 1, :2] = 0, 0  # left padding: Hugging Face pools attention_mask.argmax
    ids[1, 0, :3], mask[1, 0, :3] = 0, 0
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    dx = DecompX(model)
    for choice in (0, 1):
        scores = dx.attribute(ids, target=choice, additional_forward_args=(mask,))
        torch.testing.assert_close(scores.sum((1, 2)), logits[:, choice], rtol=1e-5, atol=1e-5)
        fast = DecompX(model, include_biases=False, algorithm="fast").attribute(
            ids, target=choice, additional_forward_args=(mask,)
        )
        exact = DecompX(model, include_biases=False, algorithm="exact").attribute(
            ids, target=choice, additional_forward_args=(mask,)
        )
        torch.testing.assert_close(fast, exact, rtol=1e-4, atol=1e-5)


def test_electra_multiple_choice_matches_the_literal_spec():
    """The summary (first token, linear map, GELU) and the classifier, decomposed literally per choice."""
    model = spec.randomize(tf.ElectraForMultipleChoice(_electra_config(num_labels=1)), 19)
    ids = torch.randint(4, VOCAB, (2, 2, 5), generator=torch.Generator().manual_seed(19))
    mask = torch.ones_like(ids)
    mask[1, 0, 3:] = 0
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    head = [spec.affine_of(model.sequence_summary.summary), spec.GELU, spec.affine_of(model.classifier)]
    weights = literal_bert_weights(model.electra, head)
    embeddings_module = model.electra.embeddings
    dx = DecompX(model)
    scale = float(logits.abs().max())
    for choice in range(2):
        scores = dx.attribute(ids, target=choice, additional_forward_args=(mask,))
        for b in range(2):
            real = ids[b, choice][mask[b, choice].bool()]
            n = real.shape[0]
            embeddings = bert_embeddings_of(embeddings_module, real)
            trace = spec.real_forward(weights, embeddings, pooled_row=0)
            spec.assert_matches(trace.logits, logits[b, choice : choice + 1], scale, f"literal forward {b} {choice}", 1e-9)
            expected = spec.decompose(weights, embeddings, trace, 0).contributions[:, 0]
            spec.assert_matches(scores[b, choice, :n], expected, scale, f"example {b} choice {choice}")


@pytest.mark.parametrize(
    "options",
    [dict(summary_activation=""), dict(summary_use_proj=False, summary_activation="")],
    ids=["no-activation", "neither-projection-nor-activation"],
)
def test_electra_multiple_choice_summary_without_activation_or_projection_is_exact(options):
    model = reinit_parameters(tf.ElectraForMultipleChoice(_electra_config(num_labels=1, **options)), seed=21).eval()
    ids = torch.randint(4, VOCAB, (2, 2, 5), generator=torch.Generator().manual_seed(21))
    mask = torch.ones_like(ids)
    mask[0, 1, 3:] = 0
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    scores = DecompX(model).attribute(ids, target=1, additional_forward_args=(mask,))
    torch.testing.assert_close(scores.sum((1, 2)), logits[:, 1], rtol=1e-5, atol=1e-5)


def test_electra_multiple_choice_with_another_summary_is_refused_by_name():
    model = tf.ElectraForMultipleChoice(_electra_config(num_labels=1, summary_type="mean"))
    with pytest.raises(UnsupportedTaskError, match="summary_type='mean'.*only 'first'"):
        DecompX(model)
    activation_only = tf.ElectraForMultipleChoice(_electra_config(num_labels=1, summary_use_proj=False))
    with pytest.raises(UnsupportedTaskError, match="summary_use_proj=False and a summary activation"):
        DecompX(activation_only)


# --------------------------------------------------------------------------------------------
# The battery over the families' per-position heads


def _tiny(config_class, model_class, **extra):
    def build():
        common = dict(vocab_size=VOCAB, num_attention_heads=2, intermediate_size=24, max_position_embeddings=32)
        if config_class is tf.DistilBertConfig:
            config = config_class(vocab_size=VOCAB, dim=16, n_layers=2, n_heads=2, hidden_dim=24, max_position_embeddings=32)
        else:
            config = config_class(hidden_size=16, num_hidden_layers=2, **common, **extra)
        torch.manual_seed(0)
        return reinit_parameters(model_class(config), seed=12).eval()

    return build


HEADS = {
    "bert-qa": (_tiny(tf.BertConfig, tf.BertForQuestionAnswering), "end_logits"),
    "distilbert-qa": (_tiny(tf.DistilBertConfig, tf.DistilBertForQuestionAnswering), "start_logits"),
    "roberta-qa": (_tiny(tf.RobertaConfig, tf.RobertaForQuestionAnswering, pad_token_id=1), "end_logits"),
    "electra-qa": (_tiny(tf.ElectraConfig, tf.ElectraForQuestionAnswering, embedding_size=16), "start_logits"),
    "albert-qa": (_tiny(tf.AlbertConfig, tf.AlbertForQuestionAnswering, embedding_size=8), "end_logits"),
    "deberta-v2-qa": (_tiny(tf.DebertaV2Config, tf.DebertaV2ForQuestionAnswering), "start_logits"),
    "modernbert-token": (_tiny(tf.ModernBertConfig, tf.ModernBertForTokenClassification, pad_token_id=0, num_labels=3), "logits"),
    "bert-token": (_tiny(tf.BertConfig, tf.BertForTokenClassification, num_labels=3), "logits"),
    "distilbert-mlm": (_tiny(tf.DistilBertConfig, tf.DistilBertForMaskedLM), "logits"),
    "roberta-mlm": (_tiny(tf.RobertaConfig, tf.RobertaForMaskedLM, pad_token_id=1), "logits"),
    "deberta-v2-mlm": (_tiny(tf.DebertaV2Config, tf.DebertaV2ForMaskedLM), "logits"),
    "modernbert-mlm": (_tiny(tf.ModernBertConfig, tf.ModernBertForMaskedLM, pad_token_id=0), "logits"),
    "bert-bare": (_tiny(tf.BertConfig, tf.BertModel), "last_hidden_state"),
    "deberta-v2-bare": (_tiny(tf.DebertaV2Config, tf.DebertaV2Model), "last_hidden_state"),
}


@pytest.mark.parametrize("name", list(HEADS))
def test_battery_completeness_padding_invariance_model_unchanged(name):
    build, field = HEADS[name]
    model = build()
    generator = torch.Generator().manual_seed(13)
    short = torch.randint(4, VOCAB, (1, 6), generator=generator)
    padded = torch.cat([short, torch.full((1, 3), 0 if "roberta" not in name else 1)], dim=1)
    padded_mask = torch.cat([torch.ones(1, 6, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)], dim=1)
    per_class = field in ("logits", "last_hidden_state")
    target = (3, 2) if per_class else 3

    def forward(ids, mask):
        return getattr(model(ids, attention_mask=mask), field)

    before = snapshot(model)
    dx = DecompX(forward, model=model)
    scores, delta = dx.attribute(padded, target=target, additional_forward_args=(padded_mask,), return_convergence_delta=True)
    value = forward(padded, padded_mask).detach()
    explained = value[0, 3, 2] if per_class else value[0, 3]
    assert abs(float(scores.sum()) - float(explained)) < 1e-4 * max(1.0, abs(float(explained)))
    assert float(delta.abs().max()) < 1e-4
    alone = dx.attribute(short, target=target, additional_forward_args=(torch.ones_like(short),))
    torch.testing.assert_close(scores[:, :6], alone, rtol=1e-4, atol=1e-5)
    assert float(scores[:, 6:].abs().max()) == 0.0
    assert_unchanged(model, before)


@pytest.mark.parametrize("name", list(HEADS))
def test_fast_equals_exact_without_biases_for_every_per_position_head(name):
    build, field = HEADS[name]
    model = build()
    generator = torch.Generator().manual_seed(17)
    pad = 0 if "roberta" not in name else 1
    ids = torch.randint(4, VOCAB, (2, 9), generator=generator)
    mask = torch.ones_like(ids)
    ids[1, 6:], mask[1, 6:] = pad, 0  # the second example ends in padding

    def forward(i, m):
        return getattr(model(i, attention_mask=m), field)

    with torch.no_grad():
        value = forward(ids, mask)
    scale = max(1.0, float(value.abs().max()))
    before = snapshot(model)
    fast = DecompX(forward, model=model, include_biases=False, algorithm="fast")
    exact = DecompX(forward, model=model, include_biases=False, algorithm="exact")
    assert DecompX(forward, model=model, include_biases=False).algorithm == "fast"  # "auto"
    classes = value.shape[-1] if value.dim() == 3 else 0
    # (position, class) targets, one per example too, a padding position's own output included.
    targets = [(3, 1), [(0, classes - 1), (7, 0)], (8, 2)] if classes else [2, [0, 7], 8]
    for target in targets:
        got = fast.attribute(ids, target=target, additional_forward_args=(mask,))
        want = exact.attribute(ids, target=target, additional_forward_args=(mask,))
        assert got.shape == ids.shape
        assert float((got - want).abs().max()) <= 1e-6 * scale, f"{name} target {target}"
        assert float(want.abs().max()) > 1e-3 * scale  # not trivially zero
    assert_unchanged(model, before)


def test_fast_equals_exact_for_the_squad_tutorial_forward():
    model = _qa_model()
    ids, attention_mask = spec.padded_tokens(LENGTHS, VOCAB, seed=3)
    token_type_ids = torch.zeros_like(ids)
    position_ids = torch.arange(ids.shape[1]).unsqueeze(0).expand_as(ids)

    def squad_pos_forward_func(inputs, token_type_ids=None, position_ids=None, attention_mask=None, position=0):
        pred = model(inputs, token_type_ids=token_type_ids, position_ids=position_ids, attention_mask=attention_mask)
        return pred[position].max(1).values

    fast = DecompX(squad_pos_forward_func, model=model, include_biases=False, algorithm="fast")
    exact = DecompX(squad_pos_forward_func, model=model, include_biases=False, algorithm="exact")
    for position in (0, 1):
        args = (token_type_ids, position_ids, attention_mask, position)
        got, delta = fast.attribute(ids, additional_forward_args=args, return_convergence_delta=True)
        want, want_delta = exact.attribute(ids, additional_forward_args=args, return_convergence_delta=True)
        with torch.no_grad():
            scale = max(1.0, float(squad_pos_forward_func(ids, *args).abs().max()))
        assert float((got - want).abs().max()) <= 1e-6 * scale
        torch.testing.assert_close(delta, want_delta, rtol=0, atol=1e-6 * scale)  # minus the biases' share


def test_the_fast_path_refuses_per_position_heads_clearly_where_it_does_not_apply():
    model = _qa_model()
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=3)

    def forward(i, m):
        return model(i, attention_mask=m).start_logits

    dx = DecompX(forward, model=model, include_biases=False, algorithm="fast")
    # decompose() of every position's every output is not one backward pass: refused with the way out.
    with pytest.raises(NotImplementedError, match="per-position head.*algorithm='exact'.*with a target"):
        dx.decompose(ids, (mask,))
    no_head = DecompX(forward, model=model, include_biases=False, include_head=False, algorithm="fast")
    with pytest.raises(NotImplementedError, match="include_head=False.*algorithm='exact'"):
        no_head.attribute(ids, target=2, additional_forward_args=(mask,))
    # "auto" without biases: attribute() runs fast, decompose() exact (every position, every class).
    auto = DecompX(forward, model=model, include_biases=False)
    assert auto.algorithm == "fast"
    out = auto.decompose(ids, (mask,))
    reference = DecompX(forward, model=model, include_biases=False, algorithm="exact").decompose(ids, (mask,))
    torch.testing.assert_close(out.attributions, reference.attributions, rtol=0, atol=0)
    assert DecompX(forward, model=model, include_biases=False, include_head=False).algorithm == "exact"


# --------------------------------------------------------------------------------------------
# Regression and multi-label heads (pooled): still exact


@pytest.mark.parametrize("problem", ["regression", "multi_label_classification"])
def test_regression_and_multi_label_heads_are_exact(problem):
    labels = 1 if problem == "regression" else 4
    model = spec.randomize(tf.BertForSequenceClassification(_bert_config(num_labels=labels, problem_type=problem)), 14)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=14)
    dx = DecompX(model)
    for target in range(labels):
        scores, delta = dx.attribute(ids, target=target, additional_forward_args=(mask,), return_convergence_delta=True)
        assert float(delta.abs().max()) < 1e-9
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
    out = dx.decompose(ids, (mask,))
    torch.testing.assert_close(out.attributions.sum(1), logits, rtol=0, atol=1e-9)


# --------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    "build, task",
    [
        (lambda: tf.BertForNextSentencePrediction(_bert_config()), "next sentence prediction"),
        (lambda: tf.BertForPreTraining(_bert_config()), "pre-training"),
        (lambda: tf.AlbertForPreTraining(_albert_config()), "pre-training"),
    ],
    ids=["bert-nsp", "bert-pretraining", "albert-pretraining"],
)
def test_an_unsupported_task_head_is_named_with_the_supported_ones(build, task):
    model = build()
    with pytest.raises(UnsupportedTaskError, match=f"does not support the {task} head of {type(model).__name__}") as error:
        DecompX(model)
    assert "question answering" in str(error.value) and "sequence classification" in str(error.value)


def test_deberta_v2_masked_lm_with_the_tied_head_equals_the_legacy_head_with_the_same_weights():
    # legacy=False: dense, act, LayerNorm, then hidden @ word_embeddings.weight.T + a separate bias.
    torch.manual_seed(0)
    # (transformers 4.57 ties lm_head.dense itself to the embeddings when tie_word_embeddings=True,
    # which breaks that model's forward; the head reads the embeddings anyway.)
    config = _deberta_v2_config(legacy=False, tie_word_embeddings=False)
    model = reinit_parameters(tf.DebertaV2ForMaskedLM(config), seed=21).eval()
    legacy = tf.DebertaV2ForMaskedLM(_deberta_v2_config(legacy=True)).eval()
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("lm_predictions.")}
    head = "lm_predictions.lm_head."
    for new_name, old_name in (("transform.dense", "dense"), ("transform.LayerNorm", "LayerNorm")):
        for part in ("weight", "bias"):
            state[f"cls.predictions.{new_name}.{part}"] = model.state_dict()[f"{head}{old_name}.{part}"]
    state["cls.predictions.decoder.weight"] = model.deberta.embeddings.word_embeddings.weight.detach().clone()
    state["cls.predictions.bias"] = state["cls.predictions.decoder.bias"] = model.state_dict()[f"{head}bias"]
    legacy.load_state_dict(state, strict=False)
    ids = torch.randint(4, VOCAB, (2, 7), generator=torch.Generator().manual_seed(21))
    mask = torch.ones_like(ids)
    ids[1, 5:], mask[1, 5:] = 0, 0
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(legacy(ids, attention_mask=mask).logits, logits, rtol=1e-5, atol=1e-5)
    assert float(model.lm_predictions.lm_head.bias.detach().abs().max()) > 0  # the separate bias is decomposed
    before = snapshot(model)
    for target in ((3, 11), [(1, 40), (6, 2)]):
        scores, delta = DecompX(model).attribute(
            ids, target=target, additional_forward_args=(mask,), return_convergence_delta=True
        )
        assert float(delta.abs().max()) < 1e-5  # completeness against the model's logits
        by_legacy = DecompX(legacy).attribute(ids, target=target, additional_forward_args=(mask,))
        torch.testing.assert_close(scores, by_legacy, rtol=1e-5, atol=1e-5)
        fast = DecompX(model, include_biases=False, algorithm="fast").attribute(
            ids, target=target, additional_forward_args=(mask,)
        )
        exact = DecompX(model, include_biases=False, algorithm="exact").attribute(
            ids, target=target, additional_forward_args=(mask,)
        )
        torch.testing.assert_close(fast, exact, rtol=1e-5, atol=1e-5)
    assert_unchanged(model, before)


def test_norm_based_baselines_refuse_per_position_heads():
    from captum_decompx import ALTI, GlobEnc

    model = _qa_model()
    for baseline in (GlobEnc, ALTI):
        with pytest.raises(NotImplementedError, match="head at every position"):
            baseline(model)


def test_decomposing_every_position_of_a_large_vocabulary_is_refused_before_the_work():
    from captum_decompx import DecompXMemoryError

    model = spec.randomize(tf.BertForMaskedLM(_bert_config()), 15)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=15)
    with pytest.raises(DecompXMemoryError, match="target=\\(position"):
        DecompX(lambda i, m: model(i, attention_mask=m).logits, model=model, max_memory=20_000).decompose(ids, (mask,))


def test_the_qa_model_itself_as_forward_function_takes_position_and_start_or_end():
    model = _qa_model(seed=16)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=16)
    dx = DecompX(model)
    with torch.no_grad():
        output = model(ids, attention_mask=mask)
    for target, expected in (((2, 0), output.start_logits[:, 2]), ((4, 1), output.end_logits[:, 4])):
        scores = dx.attribute(ids, target=target, additional_forward_args=(mask,))
        torch.testing.assert_close(scores.sum(-1), expected, rtol=0, atol=1e-9)


def test_one_position_views_frame_the_token_and_escape_text(tmp_path):
    from captum_decompx.visualization import plot_position_contributions, position_contributions_html

    tokens = ["[CLS]", "<b>x</b>", "paris", "[SEP]"]
    scores = torch.tensor([0.1, -0.4, 0.9, 0.0])
    page = position_contributions_html(scores, tokens, 2, label="B-LOC", path=tmp_path / "p.html")
    assert "&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page.replace("<b>paris</b>", "")
    assert page.count("outline: 2px solid") == 1 and "B-LOC at position 2" in page
    assert 'title="+0.9000"' in page
    plot_position_contributions(scores, tokens, 2, label="B-LOC", path=tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="one example's attributions"):
        position_contributions_html(torch.zeros(3), tokens, 1)


def test_qa_tuple_outputs_return_dict_false_are_tapped_as_start_and_end():
    model = _qa_model(seed=17)
    ids, mask = spec.padded_tokens(LENGTHS, VOCAB, seed=17)
    dx = DecompX(lambda i, m: model(i, attention_mask=m, return_dict=False)[1], model=model)
    with torch.no_grad():
        end = model(ids, attention_mask=mask).end_logits
    scores, delta = dx.attribute(ids, target=3, additional_forward_args=(mask,), return_convergence_delta=True)
    torch.testing.assert_close(scores.sum(-1), end[:, 3], rtol=0, atol=1e-9)
    dict_scores = DecompX(lambda i, m: model(i, attention_mask=m).end_logits, model=model).attribute(
        ids, target=3, additional_forward_args=(mask,)
    )
    torch.testing.assert_close(scores, dict_scores, rtol=0, atol=1e-12)
