"""SHAP integration: DecompX results as ``shap.Explanation``, SHAP's plots on them, the text-plot
colour fix, and SHAP's Partition explainer as a Captum ``Attribution``.

Values are checked against independent computations: the logits of a separate forward pass of
the model, DecompX's ``attribute`` for one class on each example alone (no padding), and SHAP's
own explainer output.
"""

from __future__ import annotations

import re

import pytest
import torch

shap = pytest.importorskip("shap", reason="the shap extra is not installed: pip install -e '.[shap]'")
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from support.classifiers import cached_model, make_word_tokenizer  # noqa: E402
from support.paths import BENCHMARKS  # noqa: E402

from captum_decompx import DecompX  # noqa: E402
from captum_decompx.integrations.shap import (  # noqa: E402
    ShapPartitionAttribution,
    fix_numpy_colour_reprs,
    text_plot_html,
    to_shap_explanation,
    token_strings,
)

WORDS = ["good", "bad", "film", "a", "very", "not", "dull", "fun", "plot", "the", "##s", "."]
TEXTS = ["a very good film", "not a dull plot .", "the films"]
LABELS = {0: "negative", 1: "positive", 2: "neutral"}


@pytest.fixture(scope="module")
def tokenizer():
    return make_word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def model():
    return cached_model("bert")


def encode(tokenizer, texts):
    return tokenizer(texts, padding=True, return_tensors="pt")


def model_logits(model, encoded):
    with torch.no_grad():
        return model(**encoded).logits.double()


@pytest.mark.parametrize("include_biases", [True, False], ids=["biases", "no-biases"])
def test_values_plus_base_values_are_the_logits_for_a_padded_batch(model, tokenizer, include_biases):
    encoded = encode(tokenizer, TEXTS)
    decompx = DecompX(model, include_biases=include_biases)
    out = decompx.decompose(encoded["input_ids"], (encoded["attention_mask"], encoded["token_type_ids"]))
    explanation = to_shap_explanation(
        out, encoded["input_ids"], tokenizer, attention_mask=encoded["attention_mask"], label_names=LABELS
    )
    logits = model_logits(model, encoded)  # an independent forward pass
    lengths = encoded["attention_mask"].sum(1).tolist()
    assert explanation.shape[0] == 3 and list(explanation.output_names) == ["negative", "positive", "neutral"]
    for row, length in enumerate(lengths):
        values = np.asarray(explanation.values[row], dtype=np.float64)
        assert values.shape == (length, 3)
        np.testing.assert_allclose(values.sum(0) + explanation.base_values[row], logits[row].numpy(), atol=2e-5)
        # Each token's value for each class is DecompX's attribution on the example alone, unpadded.
        alone_ids = encoded["input_ids"][row : row + 1, :length]
        alone_args = (encoded["attention_mask"][row : row + 1, :length], encoded["token_type_ids"][row : row + 1, :length])
        for label in range(3):
            expected = decompx.attribute(alone_ids, target=label, additional_forward_args=alone_args)[0]
            np.testing.assert_allclose(values[:, label], expected.double().numpy(), atol=2e-5)
            expected_base = logits[row, label] - expected.double().sum()
            assert explanation.base_values[row][label] == pytest.approx(float(expected_base), abs=2e-5)
    if include_biases:
        assert np.all(explanation.base_values == 0)
    else:
        assert np.abs(explanation.base_values).max() > 1e-3  # the biases' share, per class


def test_one_example_and_token_texts(model, tokenizer):
    encoded = encode(tokenizer, TEXTS[2:])
    out = DecompX(model).decompose(encoded["input_ids"], (encoded["attention_mask"], encoded["token_type_ids"]))
    explanation = to_shap_explanation(out, encoded["input_ids"][0], tokenizer, label_names=list(LABELS.values()))
    assert explanation.shape == (5, 3)
    assert list(explanation.data) == ["[CLS]", " the", " film", "s", " [SEP]"]
    np.testing.assert_allclose(
        explanation.values.sum(0) + explanation.base_values, model_logits(model, encoded)[0].numpy(), atol=2e-5
    )
    assert token_strings(encoded["input_ids"][0].tolist(), tokenizer) == list(explanation.data)


def test_shap_plots_accept_it(model, tokenizer, tmp_path):
    encoded = encode(tokenizer, TEXTS)
    out = DecompX(model).decompose(encoded["input_ids"], (encoded["attention_mask"], encoded["token_type_ids"]))
    explanation = to_shap_explanation(
        out, encoded["input_ids"], tokenizer, attention_mask=encoded["attention_mask"], label_names=LABELS
    )
    html = shap.plots.text(explanation[:, :, "positive"], display=False)
    assert "very" in html and "dull" in html
    shap.plots.waterfall(explanation[0, :, "positive"], show=False)
    plt.savefig(tmp_path / "waterfall.png")
    plt.close("all")
    shap.plots.bar(explanation[1, :, "negative"], show=False)
    plt.savefig(tmp_path / "bar.png")
    plt.close("all")
    assert (tmp_path / "waterfall.png").stat().st_size > 1000 and (tmp_path / "bar.png").stat().st_size > 1000


def test_text_plot_html_has_css_colours(model, tokenizer, tmp_path):
    encoded = encode(tokenizer, TEXTS[:2])
    out = DecompX(model).decompose(encoded["input_ids"], (encoded["attention_mask"], encoded["token_type_ids"]))
    explanation = to_shap_explanation(
        out, encoded["input_ids"], tokenizer, attention_mask=encoded["attention_mask"], label_names=LABELS
    )
    page = text_plot_html(explanation[:, :, "positive"], tmp_path / "plot.html", title="DecompX <positive>")
    assert (tmp_path / "plot.html").read_text(encoding="utf-8") == page
    assert "np.float" not in page and "&lt;positive&gt;" in page
    colours = re.findall(r"rgba?\(([^)]*)\)", page)
    assert len(colours) > 10
    for colour in colours:  # every CSS colour is plain numbers, as a browser needs
        assert all(re.fullmatch(r"\s*-?\d+(\.\d+)?(e-?\d+)?\s*", part) for part in colour.split(",")), colour
    # The token backgrounds are really coloured: not all transparent.
    alphas = [float(colour.split(",")[3]) for colour in re.findall(r"background: rgba\(([^)]*)\)", page)]
    assert max(alphas) > 0.5


def test_fix_numpy_colour_reprs():
    assert (
        fix_numpy_colour_reprs("rgba(np.float64(255.0), np.float64(13.5), 0, np.float32(0.25))") == "rgba(255.0, 13.5, 0, 0.25)"
    )


def test_errors(model, tokenizer):
    encoded = encode(tokenizer, TEXTS)
    args = (encoded["attention_mask"], encoded["token_type_ids"])
    out = DecompX(model).decompose(encoded["input_ids"], args)
    with pytest.raises(ValueError, match="do not match the decomposition"):
        to_shap_explanation(out, encoded["input_ids"][:2], tokenizer)
    with pytest.raises(ValueError, match="label_names has 2 names"):
        to_shap_explanation(out, encoded["input_ids"], tokenizer, label_names=["a", "b"])
    norms = DecompX(model, include_head=False).decompose(encoded["input_ids"], args)
    with pytest.raises(ValueError, match="include_head=False"):
        to_shap_explanation(norms, encoded["input_ids"], tokenizer)


@pytest.mark.slow  # SHAP's partition explainer (18 s on a busy 2-core machine)
def test_partition_attribution_places_shap_values_on_the_tokens(model, tokenizer):
    encoded = encode(tokenizer, TEXTS[:2])
    attribution = ShapPartitionAttribution(model, tokenizer, max_evals=40)
    targets = [1, 0]
    scores = attribution.attribute(encoded["input_ids"], target=targets, additional_forward_args=(encoded["attention_mask"],))
    assert scores.shape == encoded["input_ids"].shape
    logits = model_logits(model, encoded)
    for row, text in enumerate(TEXTS[:2]):
        length = int(encoded["attention_mask"][row].sum())
        assert torch.all(scores[row, length:] == 0)
        reference = attribution.explainer([text], max_evals=40, silent=True)
        np.testing.assert_allclose(scores[row, :length].numpy(), reference.values[0][:, targets[row]], atol=1e-5)
        # SHAP's additivity, on an independent forward pass: values + SHAP's base value = the logit.
        total = float(scores[row].double().sum()) + float(reference.base_values[0][targets[row]])
        assert total == pytest.approx(float(logits[row, targets[row]]), abs=1e-4)
    # SHAP's own explanation: its text plot carries numpy reprs under numpy 2; the helper's does not.
    own = attribution.explainer([TEXTS[0]], max_evals=40, silent=True)[:, :, 1]
    if np.lib.NumpyVersion(np.__version__) >= "2.0.0":
        assert "np.float64(" in shap.plots.text(own, display=False)
    assert "np.float" not in text_plot_html(own)


@pytest.mark.slow  # a benchmark smoke run
def test_benchmark_script_runs_end_to_end(tmp_path):
    """``benchmarks/shap_vs_decompx.py`` on 2 sentences of the demo model, SHAP with 20 evaluations."""
    import importlib.util

    path = BENCHMARKS / "shap_vs_decompx.py"
    spec = importlib.util.spec_from_file_location("benchmark_shap_vs_decompx", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--limit", "2", "--max-evals", "20", "--output-dir", str(tmp_path), "--no-progress"])
    markdown = (tmp_path / "shap_vs_decompx.md").read_text(encoding="utf-8")
    assert "--limit 2 --max-evals 20" in markdown
    rows = [line for line in markdown.splitlines() if line.startswith("| DecompX") or line.startswith("| SHAP Partition")]
    assert len(rows) >= 5  # results, times and paired differences
    assert "| SHAP Partition (max_evals=20) |" in markdown
