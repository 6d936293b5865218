"""ferret integration: ``DecompXExplainer`` in ferret-xai 0.4.1's ``Benchmark``, on a tiny random BERT.

The explainer's scores are checked against an independent forward pass (they add up to the
target logit, or to the logit margin) and against DecompX's ``attribute``; ferret's Tau-LOO is
recomputed by hand from leave-one-out probabilities, so a score attached to the wrong token fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("ferret", reason="the ferret extra is not installed: pip install -e '.[ferret]'")
from ferret import Benchmark  # noqa: E402
from ferret.evaluators.faithfulness_measures import (  # noqa: E402
    AOPC_Comprehensiveness_Evaluation,
    AOPC_Sufficiency_Evaluation,
    TauLOO_Evaluation,
)
from scipy.stats import kendalltau  # noqa: E402
from support.classifiers import cached_model, make_word_tokenizer  # noqa: E402

from captum_decompx import DecompX  # noqa: E402
from captum_decompx.integrations.ferret import DecompXExplainer  # noqa: E402

WORDS = ["good", "bad", "film", "a", "very", "not", "dull", "fun", "plot", "the", "##s", "."]
TEXT = "a very good film , not a dull plot ."


@pytest.fixture(scope="module")
def tokenizer():
    return make_word_tokenizer(WORDS + [","])


@pytest.fixture(scope="module")
def model():
    return cached_model("bert")  # 3 classes


def logits_of(model, tokenizer, text):
    with torch.no_grad():
        return model(**tokenizer(text, return_tensors="pt")).logits[0].double()


@pytest.mark.parametrize("include_biases", [True, False], ids=["biases", "no-biases"])
def test_scores_are_decompx_logit_shares(model, tokenizer, include_biases):
    explainer = DecompXExplainer(model, tokenizer, include_biases=include_biases)
    explanation = explainer(TEXT, target=2)
    encoded = tokenizer(TEXT, return_tensors="pt")
    assert explanation.tokens == tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
    expected = DecompX(model, include_biases=include_biases).attribute(
        encoded["input_ids"], target=2, additional_forward_args=(encoded["attention_mask"], encoded["token_type_ids"])
    )[0]
    np.testing.assert_allclose(explanation.scores, expected.double().numpy(), atol=2e-5)
    if include_biases:
        assert explanation.scores.sum() == pytest.approx(float(logits_of(model, tokenizer, TEXT)[2]), abs=2e-5)
    assert explanation.target == 2 and explanation.explainer == ("DecompX" if include_biases else "DecompX (w/o bias)")


def test_margin_scores_add_up_to_the_logit_margin(model, tokenizer):
    explanation = DecompXExplainer(model, tokenizer, score="margin")(TEXT, target=0)
    logits = logits_of(model, tokenizer, TEXT)
    assert explanation.scores.sum() == pytest.approx(float(logits[0] - logits[1:].mean()), abs=2e-5)
    per_class = [DecompXExplainer(model, tokenizer)(TEXT, target=label).scores for label in range(3)]
    np.testing.assert_allclose(explanation.scores, per_class[0] - (per_class[1] + per_class[2]) / 2, atol=1e-6)


def test_runs_in_ferrets_benchmark(model, tokenizer):
    evaluators = [AOPC_Comprehensiveness_Evaluation, AOPC_Sufficiency_Evaluation, TauLOO_Evaluation]
    explainer = DecompXExplainer(model, tokenizer)
    benchmark = Benchmark(model, tokenizer, explainers=[explainer], evaluators=[ev(model, tokenizer) for ev in evaluators])
    target = int(logits_of(model, tokenizer, TEXT).argmax())
    (explanation,) = benchmark.explain(TEXT, target=target, show_progress=False)
    raw = explainer(TEXT, target=target).scores
    # ferret's L1 normalization: the same signs and ranking, unit L1 norm, no longer logit units.
    np.testing.assert_allclose(explanation.scores, raw / np.abs(raw).sum(), rtol=1e-6)
    (evaluation,) = benchmark.evaluate_explanations([explanation], target=target, show_progress=False)
    scores = {item.name: item.score for item in evaluation.evaluation_scores}
    assert set(scores) == {"aopc_compr", "aopc_suff", "taucorr_loo"}
    assert all(np.isfinite(value) for value in scores.values())
    # Tau-LOO by hand: leave each non-special token out, the drop of p(target), rank-correlated with the scores.
    ids = tokenizer(TEXT)["input_ids"][1:-1]
    base = torch.softmax(logits_of(model, tokenizer, TEXT), -1)[target]
    drops = []
    for position in range(len(ids)):
        text = tokenizer.decode(ids[:position] + ids[position + 1 :])
        drops.append(float(base - torch.softmax(logits_of(model, tokenizer, text), -1)[target]))
    assert scores["taucorr_loo"] == pytest.approx(kendalltau(drops, explanation.scores[1:-1])[0], abs=1e-6)
    table = benchmark.show_evaluation_table([evaluation])
    assert table is not None


def test_errors(model, tokenizer):
    with pytest.raises(ValueError, match="score="):
        DecompXExplainer(model, tokenizer, score="probability")
    with pytest.raises(ValueError, match="include_head=False"):
        DecompXExplainer(model, tokenizer, include_head=False)
    explainer = DecompXExplainer(model, tokenizer)
    assert explainer(TEXT, target="LABEL_1").target == 1  # a label name works too
    with pytest.raises(ValueError, match="Unknown label"):
        explainer(TEXT, target="positive")
    with pytest.raises(ValueError, match="out of range"):
        explainer(TEXT, target=3)
    with pytest.raises(TypeError, match="takes no explainer arguments"):
        explainer(TEXT, target=1, n_steps=5)
