"""The explorer's computations (captum_decompx.app.explorer), without Gradio or a server.

Every view is checked against an independent computation: the literal DecompX of
``literal_spec.py`` (per-class contributions and every layer's token-to-token norms), the model's
own forward pass (logits, the deletion curve re-done by hand, greedy generation), and autograd
(Gradient x Input).
"""

from __future__ import annotations

import json

import literal_spec as spec
import pytest
import torch
from support.classifiers import make_word_tokenizer
from support.explorer import SENTENCE, WORDS
from support.literal_models import bert as literal_ready_bert
from support.literal_models import literal_bert
from support.word_level import tiny_gpt2

from captum_decompx.app import CausalLMExplorer, ClassifierExplorer, ExplorerInputError

MARKUP = "<img src=x onerror=alert(1)>"


@pytest.fixture(scope="module")
def tokenizer():
    return make_word_tokenizer(WORDS)


@pytest.fixture(scope="module")
def model():
    """BERT with every parameter re-drawn (biases too), float64, three classes."""
    return literal_ready_bert(seed=3)


@pytest.fixture(scope="module")
def explorer(model, tokenizer):
    return ClassifierExplorer(model, tokenizer, source="tiny-bert", ig_steps=8)


def _literal(model, tokenizer, text):
    batch = tokenizer(text, return_tensors="pt")
    [(trace, decomposition)] = literal_bert(model, batch["input_ids"], batch["attention_mask"], mode="rule", rule="absdot")
    return batch, trace, decomposition


def test_payload_is_the_literal_decomposition_and_adds_up_to_the_models_logits(explorer, model, tokenizer):
    explained = explorer.explain(SENTENCE)
    payload = json.loads(json.dumps(explained.payload()))  # what the API sends
    batch, trace, decomposition = _literal(model, tokenizer, SENTENCE)
    assert payload["tokens"] == tokenizer.convert_ids_to_tokens(batch["input_ids"][0].tolist())
    assert payload["labels"] == ["LABEL_0", "LABEL_1", "LABEL_2"]
    contributions = torch.tensor(payload["contributions"], dtype=torch.float64)
    assert contributions.shape == (3, len(payload["tokens"]))  # labels x tokens
    scale = float(trace.logits.abs().max())
    spec.assert_matches(contributions.T, decomposition.contributions, scale, "contributions against the literal spec")
    with torch.no_grad():
        logits = model(**batch).logits[0]
    logits_sent = torch.tensor(payload["logits"], dtype=torch.float64)
    spec.assert_matches(logits_sent, logits, scale, "logits against the model's forward")
    spec.assert_matches(contributions.sum(1) + torch.tensor(payload["bias"]), logits, scale, "sum check")
    assert payload["bias"] == [0.0, 0.0, 0.0]
    assert payload["prediction"] == payload["labels"][int(logits.argmax())]
    assert payload["truncated"] is False and payload["notice"] is None
    assert "sum of token contributions" in explained.sum_check_html()


def test_sentence_pair_is_read_with_its_segments(explorer, model, tokenizer):
    from captum_decompx import DecompX

    payload = explorer.explain("a good film", "not dull").payload()
    batch = tokenizer("a good film", "not dull", return_tensors="pt")
    assert payload["tokens"] == ["[CLS]", "a", "good", "film", "[SEP]", "not", "dull", "[SEP]"]
    forward = lambda ids, mask, types: model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits  # noqa: E731
    output = DecompX(forward, model=model).decompose(batch["input_ids"], (batch["attention_mask"], batch["token_type_ids"]))
    torch.testing.assert_close(torch.tensor(payload["contributions"], dtype=torch.float64), output.attributions[0].T)
    with torch.no_grad():
        logits = model(**batch).logits[0]  # with the second segment's token types
    torch.testing.assert_close(torch.tensor(payload["logits"], dtype=torch.float64), logits)


def test_fast_payload_reports_the_biases_share(explorer, model, tokenizer):
    payload = explorer.explain(SENTENCE, algorithm="fast").payload()
    batch, trace, _ = _literal(model, tokenizer, SENTENCE)
    exact = explorer.explain(SENTENCE).payload()
    assert payload["algorithm"] == "fast"
    contributions = torch.tensor(payload["contributions"], dtype=torch.float64)
    assert float(torch.tensor(payload["bias"]).abs().max()) > 1e-3  # random biases: a visible share
    spec.assert_matches(contributions.sum(1) + torch.tensor(payload["bias"]), trace.logits, 1.0, "fast sum check")
    assert not torch.allclose(contributions, torch.tensor(exact["contributions"], dtype=torch.float64))


def test_the_model_is_used_as_it_is_and_left_as_found(model, tokenizer):
    before = {name: value.clone() for name, value in model.state_dict().items()}
    explorer = ClassifierExplorer(model, tokenizer, ig_steps=4)
    explorer.explain(SENTENCE)
    explorer.token_maps(SENTENCE)
    explorer.compare(SENTENCE, methods=("decompx", "gxi"))
    assert explorer.classifier.model is model  # one copy: the caller's
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())
    for module in model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks and not module._backward_hooks
    assert not model.training


def test_token_maps_are_the_norms_of_the_literal_layer_decompositions(explorer, model, tokenizer):
    maps = explorer.token_maps(SENTENCE)
    _, _, decomposition = _literal(model, tokenizer, SENTENCE)
    assert len(maps.maps) == model.config.num_hidden_layers
    for layer, expected in enumerate(decomposition.layer_outputs):
        norms = torch.linalg.vector_norm(expected, dim=-1)
        spec.assert_matches(maps.maps[layer], norms, float(norms.max()), f"token map of layer {layer + 1}")
        shares = maps.composition(token=2, layer=layer + 1)
        spec.assert_matches(shares, norms[2] / norms[2].sum(), 1.0, f"composition of token 2 after layer {layer + 1}")
    page = maps.composition_html(token=2, layer=1)
    assert "after layer 1 of 2" in page and page.count("<mark") == len(maps.tokens)


def test_side_by_side_rows_are_the_methods_values(explorer, model, tokenizer):
    comparison = explorer.compare(SENTENCE, methods=("decompx", "gxi"))
    batch, trace, decomposition = _literal(model, tokenizer, SENTENCE)
    target = int(trace.logits.argmax())
    assert comparison.target == f"LABEL_{target}"
    scale = float(trace.logits.abs().max())
    spec.assert_matches(comparison.scores["DecompX"], decomposition.contributions[:, target], scale, "DecompX row")
    # Gradient x Input on the word embeddings, summed over the embedding, by autograd.
    embeddings = model.get_input_embeddings()
    words = embeddings(batch["input_ids"]).detach().requires_grad_(True)
    handle = embeddings.register_forward_hook(lambda module, args, output: words)
    try:
        model(**batch).logits[0, target].backward()
    finally:
        handle.remove()
    expected = (words.grad * words).sum(-1)[0].detach()
    spec.assert_matches(comparison.scores["Gradient x Input (sum)"], expected, float(expected.abs().max()), "GxI row")
    normalized = comparison.normalized()
    assert all(float(values.abs().max()) == pytest.approx(1.0) for values in normalized.values())
    assert comparison.html().count('data-method="') == 2


def test_deletion_curve_matches_masking_by_hand(explorer, model, tokenizer):
    curve = explorer.deletion_curve(SENTENCE, methods=("decompx",))
    batch, trace, decomposition = _literal(model, tokenizer, SENTENCE)
    target = int(trace.logits.argmax())
    ids = batch["input_ids"][0]
    scores = decomposition.contributions[:, target]
    candidates = [i for i in range(1, len(ids) - 1)]  # not [CLS], [SEP]
    ranked = sorted(candidates, key=lambda i: (-float(scores[i]), i))
    assert curve.fractions == [k / 10 for k in range(10)]
    for k, probability in zip(curve.fractions, curve.probabilities["DecompX"]):
        masked = ids.clone()
        for i in ranked[: int(k * len(candidates) + 1e-9)]:
            masked[i] = tokenizer.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=masked[None], attention_mask=batch["attention_mask"]).logits[0]
        assert probability == pytest.approx(float(torch.softmax(logits, -1)[target]), abs=1e-9), f"K = {k}"
    assert len(curve.rows()) == 10 and curve.predicted == f"LABEL_{target}"
    figure = curve.figure()  # the plot the page shows: one line per method, the curve's values
    (line,) = figure.axes[0].get_lines()
    assert list(line.get_ydata()) == pytest.approx(curve.probabilities["DecompX"], abs=1e-12)


def test_long_input_is_cut_with_a_notice(model, tokenizer):
    short = make_word_tokenizer(WORDS)
    short.model_max_length = 8
    explorer = ClassifierExplorer(model, short)
    explained = explorer.explain(" ".join(["good"] * 20))
    payload = explained.payload()
    assert len(payload["tokens"]) == 8 and payload["truncated"] is True and payload["input_tokens"] == 22
    assert "22 tokens" in payload["notice"] and "first 8" in payload["notice"]
    assert "22 tokens" in explained.summary_markdown()


@pytest.mark.parametrize("text", ["", "   ", None], ids=["empty", "spaces", "none"])
def test_empty_text_is_a_message(explorer, text):
    for view in (explorer.explain, explorer.compare, explorer.token_maps, explorer.deletion_curve):
        with pytest.raises(ExplorerInputError, match="empty: type a sentence"):
            view(text)


def test_markup_in_the_text_is_shown_as_text(explorer):
    assert "<img" not in explorer.explain(MARKUP).summary_markdown()
    for page in (
        explorer.explain(MARKUP).page(),
        explorer.compare(MARKUP, methods=("decompx",)).html(),
        explorer.token_maps(MARKUP).composition_html(1, 1),
    ):
        assert "<img" not in page and ">&lt;</mark>" in page and ">&gt;</mark>" in page
    # Tokens that are markup as a whole (byte-level vocabularies can have them) are escaped too.
    comparison = explorer.compare(SENTENCE, methods=("decompx",))
    comparison.tokens = [MARKUP] + comparison.tokens[1:]
    html = comparison.html()
    assert "<img" not in html and "&lt;img src=x onerror=alert(1)&gt;" in html


def test_downloads_hold_the_view_the_figure_and_the_values(explorer, tmp_path):
    explained = explorer.explain(SENTENCE)
    files = explained.write_files(tmp_path)
    assert json.loads(files["json"].read_text()) == json.loads(json.dumps(explained.payload()))
    assert files["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = files["html"].read_text()
    assert page.startswith("<!DOCTYPE html>") and "towards the row's class" in page and "<mark" in page


# ------------------------------------------------------------------------------------------------
# Causal LM


def test_causal_lm_matrix_rows_decompose_each_generated_tokens_logit(llm_tokenizer):
    model = spec.randomize(tiny_gpt2(), seed=4).float()
    explorer = CausalLMExplorer(model, llm_tokenizer)
    matrix, notice = explorer.generate("the cat sat on", max_new_tokens=4)
    assert notice is None
    assert matrix.prompt_tokens == ["the", "cat", "sat", "on"]
    # Greedy generation, step by step with the model's own forward pass.
    ids = llm_tokenizer("the cat sat on", return_tensors="pt")["input_ids"]
    expected_logits = []
    for _ in range(4):
        with torch.no_grad():
            step = model(input_ids=ids).logits[0, -1]
        token = int(step.argmax())
        expected_logits.append(float(step[token]))
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    assert matrix.generated_tokens == llm_tokenizer.convert_ids_to_tokens(ids[0, 4:].tolist())
    assert matrix.matrix.shape == (4, 8)
    expected = torch.tensor(expected_logits, dtype=torch.float64)
    torch.testing.assert_close(matrix.logits, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(matrix.matrix.sum(1) + matrix.bias, expected, rtol=1e-4, atol=1e-4)
    for t in range(4):  # a generated token's logit owes nothing to itself or later tokens
        assert torch.all(matrix.matrix[t, 4 + t :] == 0)
    table = matrix.html()
    assert table.count("<tr>") == 5 and json.loads(json.dumps(matrix.payload()))["matrix"] == matrix.matrix.tolist()


def test_causal_lm_prompt_too_long_is_cut_and_empty_prompt_is_a_message(llm_tokenizer):
    explorer = CausalLMExplorer(tiny_gpt2(), llm_tokenizer, max_new_tokens=4)
    matrix, notice = explorer.generate(" ".join(["the cat"] * 40), max_new_tokens=2)
    assert notice is not None and "80 tokens" in notice and "last 62" in notice
    assert len(matrix.prompt_tokens) == 62
    with pytest.raises(ExplorerInputError, match="prompt is empty"):
        explorer.generate("  ")


# ------------------------------------------------------------------------------------------------
# The command


def test_serve_without_gradio_says_how_to_install_it(monkeypatch, capsys):
    import sys

    from captum_decompx.cli import main

    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    monkeypatch.delitem(sys.modules, "captum_decompx.app.ui", raising=False)
    assert main(["serve"]) == 2
    assert "The explorer needs Gradio: pip install -e '.[app]'" in capsys.readouterr().err


def test_serve_with_a_missing_model_folder_fails_before_loading_anything(capsys, tmp_path):
    from captum_decompx.cli import main

    assert main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err
