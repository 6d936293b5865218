"""Visualization: Captum records, standalone HTML (escaped), the per-class view, token maps."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import make_model, make_word_tokenizer
from transformers import BertTokenizer

from captum_decompx import DecompX
from captum_decompx.visualization import (
    attribution_color,
    class_contributions_html,
    example_tokens,
    plot_class_contributions,
    plot_token_map,
    records_html,
    visualization_records,
    visualize_records,
    write_html,
)

WORDS = ["the", "film", "is", "great", "dull", "and", "long", "$", "a", "plot"]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


@pytest.fixture(scope="module")
def tokenizer() -> BertTokenizer:
    tokenizer = make_word_tokenizer(WORDS)
    tokenizer.add_tokens(["<script>"])  # an added token is never split: it reaches the page whole
    return tokenizer


@pytest.fixture(scope="module")
def explained(tokenizer):
    model = make_model("bert", seed=5)  # 3 classes
    encoded = tokenizer(
        ["the film is great <script> and long", "a dull plot $"], padding=True, return_tensors="pt"
    )
    output = DecompX(model).decompose(
        encoded["input_ids"], additional_forward_args=(encoded["attention_mask"],), return_token_maps=True
    )
    return output, encoded


def test_records_hold_normalized_attributions_of_the_predicted_class_without_padding(explained, tokenizer):
    output, encoded = explained
    records = visualization_records(
        output, encoded["input_ids"], tokenizer, attention_mask=encoded["attention_mask"], true_labels=[2, 0], label_names=LABELS
    )
    assert len(records) == 2
    lengths = encoded["attention_mask"].sum(1).tolist()
    assert lengths[1] < encoded["input_ids"].shape[1]  # the second example is padded
    probabilities = torch.softmax(output.logits, -1)
    for row, record in enumerate(records):
        predicted = int(output.logits[row].argmax())
        raw = output.attributions[row, : lengths[row], predicted]
        assert len(record.raw_input_ids) == lengths[row] == len(record.word_attributions)
        assert record.raw_input_ids == tokenizer.convert_ids_to_tokens(encoded["input_ids"][row, : lengths[row]].tolist())
        assert float(record.word_attributions.abs().max()) == pytest.approx(1.0)
        torch.testing.assert_close(record.word_attributions * raw.abs().max(), raw)
        assert record.attr_score == pytest.approx(float(raw.sum()), abs=1e-5)
        assert record.pred_class == LABELS[predicted] == record.attr_class
        assert record.pred_prob == pytest.approx(float(probabilities[row, predicted]))
        # Biases are decomposed: the tokens' shares add up to the logit.
        assert record.convergence_score == pytest.approx(0.0, abs=1e-4)
    assert [record.true_class for record in records] == ["positive", "negative"]
    assert "<script>" in records[0].raw_input_ids


def test_records_for_a_chosen_target_and_for_plain_attribution_tensors(explained, tokenizer):
    output, encoded = explained
    records = visualization_records(output, encoded["input_ids"], tokenizer, attention_mask=encoded["attention_mask"], target=1)
    assert [record.attr_class for record in records] == [1, 1]
    plain = output.attributions[:, :, 1]
    from_tensor = visualization_records(plain, encoded["input_ids"], tokenizer, logits=output.logits)
    for a, b in zip(records, from_tensor):  # without a mask, padding is recognized by the pad id
        torch.testing.assert_close(a.word_attributions, b.word_attributions)
        assert a.raw_input_ids == b.raw_input_ids


def test_write_html_is_a_standalone_page_with_every_token_escaped(explained, tokenizer, tmp_path):
    output, encoded = explained
    path = write_html(
        output, tmp_path / "records.html", input_ids=encoded["input_ids"], tokenizer=tokenizer,
        attention_mask=encoded["attention_mask"], label_names=LABELS,
    )
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<script" not in page.lower()
    assert "&lt;script&gt;" in page
    marks = re.findall(r"<mark [^>]*>(.*?)</mark>", page)
    assert len(marks) == int(encoded["attention_mask"].sum())
    assert marks[0] == "[CLS]" and "&lt;script&gt;" in marks


def test_records_html_colours_follow_the_sign(tokenizer):
    records = visualization_records(
        torch.tensor([[0.0, 2.0, -1.0, 0.0]]), torch.tensor([[2, 5, 6, 3]]), tokenizer, logits=torch.tensor([[0.0, 1.0]])
    )
    page = records_html(records)
    colours = re.findall(r'background-color: (hsl\([^)]*\))" title', page)
    assert colours == [attribution_color(0.0), attribution_color(1.0), attribution_color(-0.5), attribution_color(0.0)]
    assert attribution_color(1.0).startswith("hsl(120") and attribution_color(-1.0).startswith("hsl(0")
    assert attribution_color(0.0) == "hsl(0, 75%, 100%)"  # white


def test_visualize_records_uses_captum_with_escaped_tokens(explained, tokenizer):
    pytest.importorskip("IPython")
    output, encoded = explained
    records = visualization_records(output, encoded["input_ids"], tokenizer, attention_mask=encoded["attention_mask"])
    rendered = visualize_records(records)
    assert "&lt;script&gt;" in rendered.data and "<script>" not in rendered.data
    assert records[0].raw_input_ids.count("<script>") == 1  # the caller's records are unchanged


def test_per_class_html_has_one_row_per_class_with_raw_contributions(explained, tokenizer, tmp_path):
    output, encoded = explained
    page = class_contributions_html(
        output, encoded["input_ids"], tokenizer, index=1, attention_mask=encoded["attention_mask"],
        label_names=LABELS, path=tmp_path / "classes.html",
    )
    assert (tmp_path / "classes.html").read_text(encoding="utf-8") == page
    rows = re.findall(r"<tr><td><b>(.*?)</b></td>(.*?)</tr>", page)
    assert [name for name, _ in rows] == [
        name + (" (predicted)" if index == int(output.logits[1].argmax()) else "") for index, name in LABELS.items()
    ]
    length = int(encoded["attention_mask"][1].sum())
    for cls, (_, cells) in enumerate(rows):
        shown = [float(v) for v in re.findall(r'title="([-+0-9.]+)"', cells)]
        assert shown == pytest.approx(output.attributions[1, :length, cls].tolist(), abs=1e-4)
    assert "$" in page


def test_per_class_figure_draws_every_token_once_per_class(explained, tokenizer, tmp_path):
    output, encoded = explained
    path = tmp_path / "classes.png"
    figure = plot_class_contributions(
        output, encoded["input_ids"], tokenizer, index=1, attention_mask=encoded["attention_mask"], label_names=LABELS, path=path
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    texts = [text.get_text() for text in figure.texts]
    for token in example_tokens(encoded["input_ids"][1], tokenizer, encoded["attention_mask"][1]):
        assert texts.count(token) == len(LABELS), token


def test_per_class_view_needs_the_head(explained, tokenizer):
    _, encoded = explained
    norms = DecompX(make_model("bert", seed=5), include_head=False).decompose(encoded["input_ids"], (encoded["attention_mask"],))
    with pytest.raises(ValueError, match="include_head=True"):
        class_contributions_html(norms, encoded["input_ids"], tokenizer)


def test_token_map_shows_the_chosen_layer_on_real_tokens(explained, tokenizer, tmp_path):
    output, encoded = explained
    path = tmp_path / "map.png"
    figure = plot_token_map(output, encoded["input_ids"], tokenizer, layer=0, index=1, attention_mask=encoded["attention_mask"], path=path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    length = int(encoded["attention_mask"][1].sum())
    (image,) = figure.axes[0].get_images()
    torch.testing.assert_close(torch.as_tensor(image.get_array()), output.token_maps[0][1, :length, :length])
    tokens = example_tokens(encoded["input_ids"][1], tokenizer, encoded["attention_mask"][1])
    assert [label.get_text() for label in figure.axes[0].get_xticklabels()] == tokens
    assert [label.get_text() for label in figure.axes[0].get_yticklabels()] == tokens


def test_token_map_without_maps_says_how_to_get_them(tokenizer):
    model = make_model("bert", seed=5)
    ids = torch.tensor([[2, 5, 6, 3]])
    output = DecompX(model).decompose(ids)
    with pytest.raises(ValueError, match="return_token_maps=True"):
        plot_token_map(output, ids, tokenizer)
