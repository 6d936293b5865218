"""Visualization: Captum records, standalone HTML (escaped), the per-class view, token maps."""

from __future__ import annotations

import re

import pytest
import torch
from captum.attr import visualization as captum_visualization
from support.classifiers import make_model, make_word_tokenizer
from transformers import BertTokenizer

from captum_decompx import DecompX
from captum_decompx.colors import probability_text
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
    colours = re.findall(r'<mark style="background-color: (#[0-9a-f]{6}); color: (\w+)"', page)
    # white, full blue (towards), half orange (away), white; white text only on the strong colour
    assert colours == [("#ffffff", "black"), ("#2166ac", "white"), ("#f2b080", "black"), ("#ffffff", "black")]
    assert attribution_color(1.0) == "#2166ac" and attribution_color(-1.0) == "#e66101" and attribution_color(0.0) == "#ffffff"


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


# --------------------------------------------------------------------------------------------
# What the views say: legend, the star, probabilities, a colour-blind-safe palette


def _simulated(rgb, matrix):
    """sRGB (0-255) as seen with a dichromacy: Vienot, Brettel and Mollon (1999), in linear RGB."""
    linear = [(c / 255) / 12.92 if c / 255 <= 0.04045 else ((c / 255 + 0.055) / 1.055) ** 2.4 for c in rgb]
    seen = [max(0.0, min(1.0, sum(m * v for m, v in zip(row, linear)))) for row in matrix]
    return [12.92 * v if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055 for v in seen]


PROTANOPIA = [[0.11238, 0.88762, 0.0], [0.11238, 0.88762, 0.0], [0.00401, -0.00401, 1.0]]
DEUTERANOPIA = [[0.29275, 0.70725, 0.0], [0.29275, 0.70725, 0.0], [-0.02234, 0.02234, 1.0]]


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))


@pytest.mark.parametrize("deficiency", [PROTANOPIA, DEUTERANOPIA], ids=["protanopia", "deuteranopia"])
def test_towards_and_away_stay_apart_for_red_green_colour_blindness(deficiency):
    """Blue against orange: on the blue-yellow axis that red-green colour blindness keeps, the two
    directions fall on opposite sides at every strength (Captum's green and red both turn yellowish)."""
    for strength in (0.25, 0.5, 1.0):
        towards = _simulated(_hex_to_rgb(attribution_color(strength)), deficiency)
        away = _simulated(_hex_to_rgb(attribution_color(-strength)), deficiency)
        assert towards[2] > (towards[0] + towards[1]) / 2 > 0 and away[2] < (away[0] + away[1]) / 2, strength
    full = [_simulated(_hex_to_rgb(attribution_color(v)), deficiency) for v in (1.0, -1.0)]
    assert sum((a - b) ** 2 for a, b in zip(*full)) ** 0.5 > 0.5


def test_the_old_green_red_scale_fails_the_colour_blind_check():
    """The check above can fail: Captum's green and red fall on the same side for deuteranopia."""
    green, red = (32, 223, 32), (230, 77, 77)
    seen = [_simulated(colour, DEUTERANOPIA) for colour in (green, red)]
    assert all(colour[2] < (colour[0] + colour[1]) / 2 for colour in seen)


def test_html_legends_name_the_direction_not_class_names(explained, tokenizer):
    output, encoded = explained
    page = class_contributions_html(output, encoded["input_ids"], tokenizer, attention_mask=encoded["attention_mask"], label_names=LABELS)
    legend = re.search(r'<div class="legend">(.*?)</div>', page).group(1)
    assert "towards the row's class" in legend and "away from the row's class" in legend
    assert not re.search(r"\b(Negative|Neutral|Positive)\b", legend, re.I)
    swatches = re.findall(r'background-color: (#[0-9a-f]{6})"></span> (towards|no contribution|away)', legend)
    assert swatches == [(attribution_color(1.0), "towards"), ("#ffffff", "no contribution"), (attribution_color(-1.0), "away")]
    records = visualization_records(output, encoded["input_ids"], tokenizer, attention_mask=encoded["attention_mask"], label_names=LABELS)
    assert "towards the attribution label" in records_html(records)


@pytest.mark.parametrize(
    "probability, shown",
    [(0.5, "0.500"), (0.9962, "0.996"), (0.99962, "0.9996"), (0.00038, "0.0004"), (0.9999996, "1 - 4.0e-07"), (3e-9, "3.0e-09"), (1.0, "1.000")],
)
def test_probabilities_never_read_0_or_1_unless_they_are(probability, shown):
    assert probability_text(probability) == shown


def test_views_show_probabilities_with_enough_digits(tokenizer):
    record = captum_visualization.VisualizationDataRecord(torch.tensor([0.5, -1.0]), 0.99962, "positive", "positive", "positive", 1.0, ["a", "b"], 0.0)
    assert "positive (0.9996)" in records_html([record])


def test_per_class_figure_explains_the_star_and_the_colours(explained, tokenizer):
    output, encoded = explained
    figure = plot_class_contributions(output, encoded["input_ids"], tokenizer, index=1, attention_mask=encoded["attention_mask"], label_names=LABELS)
    texts = [text.get_text() for text in figure.texts]
    predicted = LABELS[int(output.logits[1].argmax())]
    assert f"{predicted}  ★" in texts and "★ predicted class" in texts
    bar_texts = [text.get_text() for axes in figure.axes for text in axes.texts]
    assert "← away from the class" in bar_texts and "towards the class →" in bar_texts
    probabilities = torch.softmax(output.logits[1].float(), -1)
    details = [text for text in texts if text.startswith("logit ")]
    assert details == [f"logit {float(output.logits[1, c]):.2f}, p {probability_text(float(probabilities[c]))}" for c in range(len(LABELS))]


def test_per_class_figure_colours_tokens_on_the_blue_orange_scale(explained, tokenizer):
    output, encoded = explained
    figure = plot_class_contributions(output, encoded["input_ids"], tokenizer, index=1, attention_mask=encoded["attention_mask"], label_names=LABELS)
    length = int(encoded["attention_mask"][1].sum())
    contributions = output.attributions[1, :length]  # (tokens, classes)
    scale = float(contributions.abs().max())
    boxes = [text for text in figure.texts if text.get_bbox_patch() is not None]
    assert len(boxes) == length * len(LABELS)
    for number, box in enumerate(boxes):
        value = float(contributions[number % length, number // length]) / scale
        expected = [channel / 255 for channel in _hex_to_rgb(attribution_color(value))]
        assert list(box.get_bbox_patch().get_facecolor()[:3]) == pytest.approx(expected, abs=0.02), (number, value)
