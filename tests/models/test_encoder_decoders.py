"""Encoder-decoders (T5 v1.0 and v1.1, BART, mBART, Marian, Pegasus, M2M100) against the literal spec.

A target token's logit at target position ``t`` is decomposed over the target-prefix tokens
(each decoder row starts as its own embedding) and the source tokens (the encoder's pieces enter
every decoder layer through cross-attention: the value vectors of the decomposed encoder output,
mixed by the real cross-attention probabilities), plus the biases' share. The literal version
(``literal_spec.py``: ``real_seq2seq_forward``, ``decompose_seq2seq``) recomputes the forward pass
from the weights in float64 and propagates one piece at a time; the engine is reached through
``DecompX`` with the issue's Captum form only:

    f = lambda src, tgt, mask: model(input_ids=src, attention_mask=mask, decoder_input_ids=tgt).logits
    (attr_src, attr_tgt), delta = DecompX(f, model=model).attribute(
        (src_ids, tgt_ids), target=(position, token_id), additional_forward_args=(src_mask,),
        return_convergence_delta=True)
"""

from __future__ import annotations

import literal_spec as spec
import pytest
import torch
from support.encoder_decoders import (
    FAMILIES,
    forward_of,
    literal,
    model_of,
    pad_id,
    source_batch,
    target_batch,
    whisper,
    whisper_features,
)

from captum_decompx import DecompX, supported_model_types

LENGTHS = (6, 4)  # real source lengths of the padded batch
TARGET = 5  # target-prefix length
POSITION, TOKEN = 3, 11  # the explained logit: token 11 at target position 3

SETTINGS = [(True, "exact"), (False, "exact"), (False, "fast")]
SETTING_IDS = ["biases-decomposed", "biases-left-out-exact", "biases-left-out-fast"]


def _batch(model, seed: int, *, left: bool = False):
    source, mask = source_batch(LENGTHS, pad_id(model), seed, left=left)
    return source, mask, target_batch(len(LENGTHS), TARGET, seed)


def _real(ids: torch.Tensor, mask: torch.Tensor, b: int) -> torch.Tensor:
    return ids[b][mask[b].bool()]


def test_every_family_has_an_adapter():
    assert {"t5", "bart", "mbart", "marian", "pegasus", "m2m_100", "whisper"} <= set(supported_model_types())


@pytest.mark.parametrize("family", FAMILIES)
def test_the_literal_forward_pass_reproduces_hugging_faces_logits(family):
    model = model_of(family, seed=3)
    source, mask, target = _batch(model, seed=3)
    with torch.no_grad():
        logits = model(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
    for b in range(len(LENGTHS)):
        trace, _ = literal(family, model, _real(source, mask, b), target[b], "rule")
        spec.assert_matches(trace.logits, logits[b], float(logits.abs().max()), f"example {b}: literal forward", 1e-9)


@pytest.mark.parametrize("include_biases, algorithm", SETTINGS, ids=SETTING_IDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_attribute_matches_the_literal_spec(family, include_biases, algorithm):
    """attr_src (B, S) and attr_tgt (B, T) are the literal row ``POSITION``'s shares of TOKEN's
    logit; source padding gets exactly zero; the delta is zero with the biases decomposed, minus
    the biases' share without them."""
    model = model_of(family, seed=4)
    source, mask, target = _batch(model, seed=4)
    explainer = DecompX(forward_of(model), model=model, include_biases=include_biases, algorithm=algorithm)
    (attr_src, attr_tgt), delta = explainer.attribute(
        (source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,), return_convergence_delta=True
    )
    assert attr_src.shape == source.shape and attr_tgt.shape == target.shape
    mode = "rule" if include_biases else "drop"
    for b, n in enumerate(LENGTHS):
        trace, decomposition = literal(family, model, _real(source, mask, b), target[b], mode)
        shares = decomposition.contributions[POSITION, :, TOKEN]  # (T + S)
        scale = float(trace.logits.abs().max())
        spec.assert_matches(attr_tgt[b], shares[:TARGET], scale, f"example {b}: target-prefix shares")
        spec.assert_matches(attr_src[b, :n], shares[TARGET:], scale, f"example {b}: source shares")
        assert torch.equal(attr_src[b, n:], torch.zeros_like(attr_src[b, n:])), "source padding gets exactly zero"
        expected_delta = shares.sum() - trace.logits[POSITION, TOKEN]  # 0 with the biases decomposed
        spec.assert_matches(delta[b], expected_delta, scale, f"example {b}: convergence delta")
    if include_biases:
        assert float(delta.abs().max()) < 1e-9


@pytest.mark.parametrize("rule", ["absdot", "norm", "equal"])
def test_bart_bias_rules_match_the_literal_spec(rule):
    model = model_of("bart", seed=5)
    source, mask, target = _batch(model, seed=5)
    explainer = DecompX(forward_of(model), model=model, bias_decomposition=rule)
    attr_src, attr_tgt = explainer.attribute((source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,))
    for b, n in enumerate(LENGTHS):
        trace, decomposition = _literal_with_rule(model, _real(source, mask, b), target[b], rule)
        shares = decomposition.contributions[POSITION, :, TOKEN]
        scale = float(trace.logits.abs().max())
        spec.assert_matches(torch.cat([attr_tgt[b], attr_src[b, :n]]), shares, scale, f"example {b}, rule {rule}")


def _literal_with_rule(model, source, target, rule):
    from support.encoder_decoders import bart_embeddings, bart_weights

    weights = bart_weights(model)
    src = bart_embeddings(model, model.model.encoder, source)
    tgt = bart_embeddings(model, model.model.decoder, target)
    trace = spec.real_seq2seq_forward(weights, src, tgt)
    return trace, spec.decompose_seq2seq(weights, src, tgt, trace, rule=rule)


@pytest.mark.parametrize("include_biases, algorithm", SETTINGS, ids=SETTING_IDS)
@pytest.mark.parametrize("family", FAMILIES)
def test_decompose_target_explains_every_position_like_the_literal_spec(family, include_biases, algorithm):
    """One call decomposes every target position's logit of the given next tokens; row ``t`` is
    the literal decomposition's row ``t``, zero after ``t`` in the target prefix, and complete."""
    model = model_of(family, seed=6)
    source, mask, target = _batch(model, seed=6)
    tokens = target_batch(len(LENGTHS), TARGET, seed=60)
    out = DecompX(forward_of(model), model=model, include_biases=include_biases, algorithm=algorithm).decompose_target(
        (source, target), tokens, additional_forward_args=(mask,)
    )
    with torch.no_grad():
        logits = model(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
    own = logits.gather(2, tokens.unsqueeze(-1)).squeeze(-1)
    spec.assert_matches(out.logits, own, float(own.abs().max()), "the explained logits are Hugging Face's", 1e-12)
    spec.assert_matches(out.source.sum(-1) + out.target.sum(-1) + out.bias, own, float(own.abs().max()), "complete", 1e-9)
    mode = "rule" if include_biases else "drop"
    for b, n in enumerate(LENGTHS):
        trace, decomposition = literal(family, model, _real(source, mask, b), target[b], mode)
        rows = torch.arange(TARGET)
        shares = decomposition.contributions[rows, :, tokens[b]]  # (T, T + S)
        scale = float(trace.logits.abs().max())
        spec.assert_matches(out.target[b], shares[:, :TARGET], scale, f"example {b}: target-prefix shares")
        spec.assert_matches(out.source[b, :, :n], shares[:, TARGET:], scale, f"example {b}: source shares")
        assert torch.equal(out.source[b, :, n:], torch.zeros_like(out.source[b, :, n:]))
        later = torch.ones(TARGET, TARGET, dtype=torch.bool).triu(1)
        assert torch.equal(out.target[b][later], torch.zeros_like(out.target[b][later])), "later positions get exactly zero"
        if include_biases:
            assert float(out.bias.abs().max()) == 0.0


@pytest.mark.parametrize("family", FAMILIES)
def test_later_target_positions_get_exactly_zero_and_the_decomposition_is_complete(family):
    model = model_of(family, seed=7)
    source, mask, target = _batch(model, seed=7)
    f = forward_of(model)
    for algorithm, include_biases in (("exact", True), ("fast", False)):
        explainer = DecompX(f, model=model, algorithm=algorithm, include_biases=include_biases)
        for position in range(TARGET):
            (attr_src, attr_tgt), delta = explainer.attribute(
                (source, target), target=(position, TOKEN), additional_forward_args=(mask,), return_convergence_delta=True
            )
            assert torch.equal(attr_tgt[:, position + 1 :], torch.zeros_like(attr_tgt[:, position + 1 :]))
            if include_biases:
                assert float(delta.abs().max()) < 1e-9


def _explainers(model):
    for algorithm, include_biases in (("exact", True), ("exact", False), ("fast", False)):
        yield algorithm, DecompX(forward_of(model), model=model, algorithm=algorithm, include_biases=include_biases)


@pytest.mark.parametrize("family", FAMILIES)
def test_right_source_padding_and_the_batch_do_not_change_the_values(family):
    model = model_of(family, seed=8)
    source, mask, target = _batch(model, seed=8)
    for algorithm, explainer in _explainers(model):
        padded_src, padded_tgt = explainer.attribute((source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,))
        for b, n in enumerate(LENGTHS):
            alone_src, alone_tgt = explainer.attribute(
                (source[b : b + 1, :n], target[b : b + 1]),
                target=(POSITION, TOKEN),
                additional_forward_args=(mask[b : b + 1, :n],),
            )
            spec.assert_matches(padded_src[b, :n], alone_src[0], 1.0, f"{algorithm}: right-padded vs alone", 1e-9)
            spec.assert_matches(padded_tgt[b], alone_tgt[0], 1.0, f"{algorithm}: target shares", 1e-9)
            assert torch.equal(padded_src[b, n:], torch.zeros_like(padded_src[b, n:]))


@pytest.mark.parametrize("family", ["t5", "t5-gated", "m2m_100"])
def test_left_source_padding_does_not_change_the_values_where_the_model_ignores_it(family):
    """T5's positions are relative and M2M100 counts its positions over the tokens that are not
    padding, so left padding leaves their logits, and the attributions, as they are."""
    model = model_of(family, seed=8)
    right, right_mask, target = _batch(model, seed=8)
    left, left_mask, _ = _batch(model, seed=8, left=True)
    width = right.shape[1]
    for algorithm, explainer in _explainers(model):
        right_src, right_tgt = explainer.attribute(
            (right, target), target=(POSITION, TOKEN), additional_forward_args=(right_mask,)
        )
        left_src, left_tgt = explainer.attribute((left, target), target=(POSITION, TOKEN), additional_forward_args=(left_mask,))
        for b, n in enumerate(LENGTHS):
            spec.assert_matches(left_src[b, width - n :], right_src[b, :n], 1.0, f"{algorithm}: left vs right padding", 1e-9)
            spec.assert_matches(left_tgt[b], right_tgt[b], 1.0, f"{algorithm}: target shares", 1e-9)
            assert torch.equal(left_src[b, : width - n], torch.zeros(width - n, dtype=left_src.dtype))


@pytest.mark.parametrize("family", ["bart", "mbart", "marian", "pegasus"])
def test_left_padded_bart_is_explained_as_the_model_runs_it(family):
    """BART's learned positions (and Marian's and Pegasus's sinusoidal ones) count from the first
    column whatever the mask says, so a left-padded source is another input for the model (its
    logits change): the attributions explain those logits, completely, with exactly zero on the
    padding."""
    model = model_of(family, seed=8)
    right, right_mask, target = _batch(model, seed=8)
    left, left_mask, _ = _batch(model, seed=8, left=True)
    f = forward_of(model)
    with torch.no_grad():
        assert not torch.allclose(f(left, target, left_mask), f(right, target, right_mask))
    (left_src, left_tgt), delta = DecompX(f, model=model).attribute(
        (left, target), target=(POSITION, TOKEN), additional_forward_args=(left_mask,), return_convergence_delta=True
    )
    assert float(delta.abs().max()) < 1e-9
    width = left.shape[1]
    for b, n in enumerate(LENGTHS):
        assert torch.equal(left_src[b, : width - n], torch.zeros(width - n, dtype=left_src.dtype))


@pytest.mark.parametrize("family", FAMILIES)
def test_fast_equals_exact_without_biases_in_float32(family):
    """The fast path (one frozen forward, one backward) equals the exact propagation without
    biases to 1e-6 of the logit scale, for attribute and for every position at once."""
    model = model_of(family, seed=9).float()
    source, mask, target = _batch(model, seed=9)
    f = forward_of(model)
    exact = DecompX(f, model=model, algorithm="exact", include_biases=False)
    fast = DecompX(f, model=model, algorithm="fast", include_biases=False)
    with torch.no_grad():
        scale = float(f(source, target, mask).abs().max())
    for a, b in zip(
        exact.attribute((source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,)),
        fast.attribute((source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,)),
    ):
        spec.assert_matches(b, a, scale, "attribute: fast vs exact", 1e-6)
    rows_exact = exact.decompose_target((source, target), additional_forward_args=(mask,))
    rows_fast = fast.decompose_target((source, target), additional_forward_args=(mask,))
    assert torch.equal(rows_exact.token_ids, rows_fast.token_ids)
    for name in ("source", "target", "bias"):
        spec.assert_matches(getattr(rows_fast, name), getattr(rows_exact, name), scale, f"decompose_target {name}", 1e-6)


def test_t5_without_tied_embeddings_has_no_rescale():
    """T5 v1.1 checkpoints untie the LM head, and then the decoder's output is not rescaled."""
    from support.encoder_decoders import t5

    model = t5(seed=10, gated=True, tied=False)
    source, mask, target = _batch(model, seed=10)
    (attr_src, attr_tgt), delta = DecompX(forward_of(model), model=model).attribute(
        (source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,), return_convergence_delta=True
    )
    assert float(delta.abs().max()) < 1e-9


def test_a_softmax_output_is_explained_by_its_logit_with_a_warning():
    model = model_of("bart", seed=11)
    source, mask, target = _batch(model, seed=11)
    f = forward_of(model)
    (attr_src, attr_tgt), delta = DecompX(f, model=model).attribute(
        (source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,), return_convergence_delta=True
    )
    with pytest.warns(UserWarning, match="logit"):
        (soft_src, soft_tgt), soft_delta = DecompX(lambda s, t, m: f(s, t, m).softmax(-1), model=model).attribute(
            (source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,), return_convergence_delta=True
        )
    torch.testing.assert_close(soft_src, attr_src, rtol=0, atol=1e-12)
    torch.testing.assert_close(soft_tgt, attr_tgt, rtol=0, atol=1e-12)


@pytest.mark.parametrize("include_biases, algorithm", SETTINGS, ids=SETTING_IDS)
def test_whisper_explains_each_audio_frame_like_the_literal_spec(include_biases, algorithm):
    """Whisper's source is log-mel features; each audio frame after the convolutional stem (two
    mel frames) is a piece. attr_src is (batch, audio frames), the literal row's source shares."""
    model = whisper(seed=12)
    features, target = whisper_features(2, seed=12), target_batch(2, TARGET, seed=12)
    f = lambda x, t: model(input_features=x, decoder_input_ids=t).logits  # noqa: E731
    explainer = DecompX(f, model=model, include_biases=include_biases, algorithm=algorithm)
    (attr_src, attr_tgt), delta = explainer.attribute((features, target), target=(POSITION, TOKEN), return_convergence_delta=True)
    assert attr_src.shape == (2, 8) and attr_tgt.shape == (2, TARGET)
    rows = explainer.decompose_target((features, target), target_batch(2, TARGET, seed=13))
    for b in range(2):
        trace, decomposition = literal("whisper", model, features[b], target[b], "rule" if include_biases else "drop")
        shares = decomposition.contributions[POSITION, :, TOKEN]
        scale = float(trace.logits.abs().max())
        spec.assert_matches(torch.cat([attr_tgt[b], attr_src[b]]), shares, scale, f"example {b}: shares")
        spec.assert_matches(delta[b], shares.sum() - trace.logits[POSITION, TOKEN], scale, f"example {b}: delta")
    complete = rows.source.sum(-1) + rows.target.sum(-1) + rows.bias - rows.logits
    assert float(complete.abs().max()) < 1e-9


@pytest.mark.parametrize("options", [{"include_ffn": False}, {"ffn_approximation": "la"}], ids=["without-ffn", "tangent-line"])
@pytest.mark.parametrize("family", ["t5-gated", "bart"])
def test_the_papers_options_keep_fast_equal_to_exact(family, options):
    model = model_of(family, seed=13)
    source, mask, target = _batch(model, seed=13)
    f = forward_of(model)
    exact, fast = (
        DecompX(f, model=model, algorithm=algorithm, include_biases=False, **options).attribute(
            (source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,), return_convergence_delta=True
        )
        for algorithm in ("exact", "fast")
    )
    (exact_src, exact_tgt), exact_delta = exact
    (fast_src, fast_tgt), fast_delta = fast
    spec.assert_matches(fast_src, exact_src, 1.0, "source shares", 1e-9)
    spec.assert_matches(fast_tgt, exact_tgt, 1.0, "target shares", 1e-9)
    spec.assert_matches(fast_delta, exact_delta, 1.0, "bias share", 1e-9)


def test_a_decomposition_larger_than_max_memory_is_refused_with_what_to_do():
    from captum_decompx import DecompXMemoryError

    model = model_of("bart", seed=14)
    source, mask, target = _batch(model, seed=14)
    with pytest.raises(DecompXMemoryError, match="more than max_memory=1,000 bytes.*algorithm='fast'"):
        DecompX(forward_of(model), model=model, max_memory=1000).attribute(
            (source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,)
        )


@pytest.mark.parametrize("asks", [False, True], ids=["attentions-not-asked", "attentions-asked"])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_model_runs_as_its_caller_asked_while_its_probabilities_are_read(family, asks):
    """The exact path sets output_attentions where an attention module takes that flag
    (transformers 4.x); T5's decoder stack finds the cross-attention's position bias by the flag
    it passed, so a source as long as the target (where a misplaced bias has the right shape) must
    still give the model's own logits, and the caller gets the attentions only when it asked."""
    model = model_of(family, seed=15)
    source, mask = source_batch((TARGET, TARGET), pad_id(model), seed=15)
    target = target_batch(2, TARGET, seed=15)
    outputs = []

    def f(src, tgt, src_mask):
        outputs.append(model(input_ids=src, attention_mask=src_mask, decoder_input_ids=tgt, output_attentions=asks))
        return outputs[-1].logits

    with torch.no_grad():
        own = model(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
    rows = DecompX(f, model=model).decompose_target((source, target), additional_forward_args=(mask,))
    spec.assert_matches(rows.logits, own.gather(2, rows.token_ids.unsqueeze(-1)).squeeze(-1), 1.0, "the model's logits", 1e-12)
    assert float((rows.source.sum(-1) + rows.target.sum(-1) + rows.bias - rows.logits).abs().max()) < 1e-9
    (output,) = outputs
    assert (output.cross_attentions is not None) == asks
    if asks:
        assert output.cross_attentions[0].shape == (2, 4, TARGET, TARGET)


@pytest.mark.parametrize("algorithm, include_biases", [("exact", True), ("fast", False)])
def test_a_linear_tail_is_explained_as_the_same_combination_of_logits(algorithm, include_biases):
    """A forward function that returns a logit difference (batch, target) is explained, for
    target=position, by the difference of the two logits' decompositions, and completely."""
    model = model_of("bart", seed=15)
    source, mask, target = _batch(model, seed=15)
    f = forward_of(model)

    def difference(src, tgt, m):
        logits = f(src, tgt, m)
        return logits[:, :, TOKEN] - 0.5 * logits[:, :, 4]

    explainer = DecompX(difference, model=model, algorithm=algorithm, include_biases=include_biases)
    (src_attr, tgt_attr), delta = explainer.attribute(
        (source, target), target=POSITION, additional_forward_args=(mask,), return_convergence_delta=True
    )
    plain = DecompX(f, model=model, algorithm=algorithm, include_biases=include_biases)
    (src_a, tgt_a), delta_a = plain.attribute(
        (source, target), target=(POSITION, TOKEN), additional_forward_args=(mask,), return_convergence_delta=True
    )
    (src_b, tgt_b), delta_b = plain.attribute(
        (source, target), target=(POSITION, 4), additional_forward_args=(mask,), return_convergence_delta=True
    )
    spec.assert_matches(src_attr, src_a - 0.5 * src_b, 1.0, "source shares of the difference", 1e-9)
    spec.assert_matches(tgt_attr, tgt_a - 0.5 * tgt_b, 1.0, "target shares of the difference", 1e-9)
    spec.assert_matches(delta, delta_a - 0.5 * delta_b, 1.0, "delta of the difference", 1e-9)


@pytest.mark.parametrize("family", ["t5", "bart"])
def test_a_small_max_memory_splits_the_work_and_changes_no_value(family, monkeypatch):
    """Under a small max_memory the exact path works in row chunks and example groups (the planner
    of the other families, leaving room for the encoder's pieces) and gives the same values."""
    from captum_decompx.core import seq2seq

    model = model_of(family, seed=16)
    source, mask, target = _batch(model, seed=16)
    f = forward_of(model)
    whole = DecompX(f, model=model).decompose_target((source, target), additional_forward_args=(mask,))
    plans = []
    planner = seq2seq.plan_rows
    monkeypatch.setattr(seq2seq, "plan_rows", lambda *args: plans.append(planner(*args)) or plans[-1])
    split = DecompX(f, model=model, max_memory=60_000).decompose_target((source, target), additional_forward_args=(mask,))
    _, decoder_rows, examples = plans[0]
    assert decoder_rows < TARGET and examples == 1
    for name in ("source", "target", "bias"):
        spec.assert_matches(getattr(split, name), getattr(whole, name), 1.0, name, 1e-12)
