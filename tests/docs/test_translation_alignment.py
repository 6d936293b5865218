"""The translation-alignment benchmark (``benchmarks/translation_alignment.py``): its AER against hand
computations, the synthetic language's gold alignment on a sentence checked by hand, the rows it
explains, the rollout on hand-made attentions, and a smoke run of the script on a few sentences."""

from __future__ import annotations

import importlib.util
import json
import sys
from types import SimpleNamespace

import pytest
import torch
from support.paths import BENCHMARKS, REPOSITORY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def synthetic():
    return _load("synthetic_translation")


@pytest.fixture(scope="module")
def bench(synthetic):
    return _load("translation_alignment")


# AER ------------------------------------------------------------------------------------------


def test_aer_of_one_sentence_by_hand(bench):
    gold = {(0, 0), (1, 1), (2, 1), (3, 2)}
    predicted = {(0, 0), (1, 1), (3, 1)}  # two hits, one wrong link, (2, 1) and (3, 2) missed
    counts = bench.alignment_counts(predicted, gold)
    assert (counts.hits, counts.predicted, counts.gold) == (2, 3, 4)
    assert bench.aer([counts]) == pytest.approx(1 - 4 / 7)  # 1 - 2*2 / (3 + 4)
    assert bench.aer([bench.alignment_counts(gold, gold)]) == 0.0
    assert bench.aer([bench.alignment_counts({(0, 1)}, {(0, 0)})]) == 1.0


def test_aer_pools_counts_over_sentences(bench):
    first = bench.alignment_counts({(0, 0), (1, 1), (3, 1)}, {(0, 0), (1, 1), (2, 1), (3, 2)})
    second = bench.alignment_counts({(1, 0), (0, 1)}, {(0, 0), (1, 1)})  # no hit
    # pooled: 1 - 2 * (2 + 0) / (3 + 4 + 2 + 2), not the mean of 3/7 and 1
    assert bench.aer([first, second]) == pytest.approx(7 / 11)
    with pytest.raises(ValueError, match="empty"):
        bench.aer([bench.alignment_counts(set(), set())])


def test_bootstrap_interval(bench):
    same = [bench.alignment_counts({(0, 0), (1, 1), (3, 1)}, {(0, 0), (1, 1), (2, 1), (3, 2)})] * 20
    low, high = bench.bootstrap_aer(same, resamples=200)
    assert low == pytest.approx(3 / 7) and high == pytest.approx(3 / 7)  # nothing varies
    mixed = [bench.alignment_counts({(0, 0)}, {(0, 0)})] * 10 + [bench.alignment_counts({(0, 1)}, {(0, 0)})] * 10
    low, high = bench.bootstrap_aer(mixed, resamples=500)
    assert bench.aer(mixed) == pytest.approx(0.5) and low < 0.5 < high
    assert bench.bootstrap_aer(mixed, resamples=500) == (low, high)  # seeded


def test_paired_difference(bench):
    good = bench.alignment_counts({(0, 0)}, {(0, 0)})
    bad = bench.alignment_counts({(0, 1)}, {(0, 0)})
    half = [good] * 10 + [bad] * 10
    assert bench.paired_bootstrap_difference(half, half, resamples=200) == (0.0, 0.0, 0.0)  # same sentences, same AER
    # better on every sentence: the difference and its whole interval are positive for the worse method
    all_bad = [bad] * 20
    difference, low, high = bench.paired_bootstrap_difference(all_bad, half, resamples=500)
    assert difference == pytest.approx(0.5) and 0 < low <= 0.5 <= high <= 1.0
    with pytest.raises(ValueError, match="same sentences"):
        bench.paired_bootstrap_difference(half, half[:5])


def test_hard_alignment_argmax_and_threshold(bench):
    scores = torch.tensor([[0.1, 0.9, 0.5], [-1.0, -2.0, -0.5], [0.3, 0.2, 0.31]])
    assert bench.hard_alignment(scores) == {(1, 0), (2, 1), (2, 2)}
    # >= 0.5 x the best: row 0 adds source 2 (0.5 >= 0.45); row 1's best is negative: argmax only;
    # row 2 adds sources 0 and 1 (0.3 and 0.2 >= 0.155)
    assert bench.hard_alignment(scores, 0.5) == {(1, 0), (2, 0), (2, 1), (0, 2), (1, 2), (2, 2)}


# The synthetic language ------------------------------------------------------------------------


def test_gold_alignment_of_a_sentence_checked_by_hand(synthetic):
    pair = synthetic.generate_pairs(1, seed=0)[0]
    assert " ".join(pair.source) == "kino ka pelu ka waka hito nai otte ta"
    assert " ".join(pair.target) == "yesterday followed the ice cream not the man young"
    # kino=yesterday (fronted time word), then the verb second: "otte ta" (follow + past) -> followed;
    # subject "ka pelu" -> "the ice cream" (one word, two target words); "nai" -> "not";
    # object "ka waka hito" (the young man) -> "the man young" (adjective after the noun).
    assert pair.alignment == {
        (0, 0),
        (7, 1),
        (8, 1),
        (1, 2),
        (2, 3),
        (2, 4),
        (6, 5),
        (3, 6),
        (5, 7),
        (4, 8),
    }


def test_generator_is_deterministic_and_keeps_its_limits(synthetic):
    pairs = synthetic.generate_pairs(300, seed=5)
    assert pairs == synthetic.generate_pairs(300, seed=5)
    assert pairs != synthetic.generate_pairs(300, seed=6)
    for pair in pairs:
        assert 4 <= len(pair.source) <= 12 and len(pair.target) <= 12
        # every word is aligned, every link is inside the sentence
        assert {s for s, _ in pair.alignment} == set(range(len(pair.source)))
        assert {t for _, t in pair.alignment} == set(range(len(pair.target)))
    words = synthetic.Vocabulary.build().words
    assert len(set(words)) == len(words) and words[:3] == ("<pad>", "</s>", "<unk>")
    # many-to-one (a past verb) and one-to-many (ice cream) both occur
    assert any(sum(1 for _, t in pair.alignment if t == j) == 2 for pair in pairs for j in range(len(pair.target)))
    assert any(sum(1 for s, _ in pair.alignment if s == i) == 2 for pair in pairs for i in range(len(pair.source)))


def test_rows_explain_each_target_word_where_it_is_predicted(synthetic, bench):
    vocabulary = synthetic.Vocabulary.build()
    pair = synthetic.generate_pairs(1, seed=0)[0]
    rows = bench.sentence_rows(pair, vocabulary)
    index = vocabulary.index
    # row j: the logit of target word j at decoder position j (whose input is the word before it)
    assert rows.targets == [(position, index[word]) for position, word in enumerate(pair.target)]
    assert rows.tgt_ids[0].tolist() == [vocabulary.pad_id] + [index[word] for word in pair.target]
    assert rows.src_ids[0].tolist() == [index[word] for word in pair.source] + [vocabulary.eos_id]
    assert rows.src_ids.shape == (len(pair.target), len(pair.source) + 1) and rows.source_words == len(pair.source)


def _random_model(synthetic, vocabulary, seed: int = 3):
    """The benchmark's architecture with random weights, every parameter redrawn (biases included)."""
    model = synthetic.build_model(vocabulary, seed=seed).eval()
    with torch.no_grad():
        for parameter in model.parameters():  # random HF models have zero biases: redraw them all
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model


def test_gradient_methods_explain_each_word_at_its_own_step(synthetic, bench):
    # Integrated Gradients is complete: each row's source scores (signed sum; </s> is the same in input and
    # baseline, so it gets nothing) add up to logit(x) - logit(baseline) of that row's word at its step,
    # computed here from the model's own token-id forward pass.
    vocabulary = synthetic.Vocabulary.build()
    model = _random_model(synthetic, vocabulary)
    pair = synthetic.generate_pairs(2, seed=0)[1]
    rows = bench.sentence_rows(pair, vocabulary)
    scores = bench.integrated_gradients(64, "sum")(model, rows)
    baseline_ids = rows.src_ids.clone()
    baseline_ids[:, : rows.source_words] = vocabulary.pad_id
    with torch.no_grad():
        logits = model(input_ids=rows.src_ids[:1], decoder_input_ids=rows.tgt_ids[:1]).logits[0]
        baseline_logits = model(input_ids=baseline_ids[:1], decoder_input_ids=rows.tgt_ids[:1]).logits[0]
    index = vocabulary.index
    expected = torch.stack([logits[j, index[word]] - baseline_logits[j, index[word]] for j, word in enumerate(pair.target)])
    assert torch.allclose(scores.sum(-1), expected, atol=2e-3 * expected.abs().max().item())
    # Input x Gradient: the gradient of that same logit, dotted with the (scaled) source embedding
    embeddings = bench.source_embeddings(model, rows.src_ids[:1]).detach().requires_grad_(True)
    logit = model(inputs_embeds=embeddings, decoder_input_ids=rows.tgt_ids[:1]).logits[0, 2, index[pair.target[2]]]
    (gradient,) = torch.autograd.grad(logit, embeddings)
    by_hand = (gradient * embeddings)[0, : rows.source_words].sum(-1)
    assert torch.allclose(bench.input_x_gradient("sum")(model, rows)[2], by_hand, atol=1e-5)


def test_decompx_scores_are_each_words_source_shares(synthetic, bench):
    vocabulary = synthetic.Vocabulary.build()
    model = _random_model(synthetic, vocabulary)
    pair = synthetic.generate_pairs(2, seed=0)[1]
    rows = bench.sentence_rows(pair, vocabulary)
    scores_of = bench.DecompXScores(include_biases=True)
    try:
        scores = scores_of(model, rows)
    except ValueError as error:
        if "no adapter for model_type" in str(error):
            pytest.skip(f"DecompX does not support this encoder-decoder yet: {error}")
        raise
    (source, prefix), _ = scores_of.explainer.attribute(
        (rows.src_ids, rows.tgt_ids), target=rows.targets, additional_forward_args=(rows.src_mask,), return_convergence_delta=True
    )
    with torch.no_grad():
        logits = model(input_ids=rows.src_ids[:1], decoder_input_ids=rows.tgt_ids[:1]).logits[0]
    index = vocabulary.index
    explained = torch.stack([logits[j, index[word]] for j, word in enumerate(pair.target)])
    # complete against the model's own logit of word j at step j; </s> gets the rest of the source share
    torch.testing.assert_close(source.sum(-1) + prefix.sum(-1), explained, rtol=0, atol=1e-4)
    torch.testing.assert_close(scores, source[:, : len(pair.source)], rtol=0, atol=1e-5)
    assert scores.shape == (len(pair.target), len(pair.source))
    assert scores_of.last_delta.abs().max() < 1e-4


def test_rollout_on_hand_made_attentions(bench, monkeypatch):
    # One encoder layer attending to itself (R_ss = I), two decoder layers whose self-attention is the
    # identity and whose cross-attention is C: after layer 1 the source share is 0.5 C, after layer 2
    # 0.5 * 0.5 C + 0.5 C = 0.75 C, the prefix keeps 0.25 on the diagonal.
    cross = torch.tensor([[0.0, 1.0, 0.0], [0.2, 0.0, 0.8], [1.0, 0.0, 0.0]])  # (T + 1 = 3, S = 3)
    heads = lambda matrix: matrix.expand(2, -1, -1).unsqueeze(0)  # noqa: E731  (1, heads, rows, cols)
    output = SimpleNamespace(
        encoder_attentions=(heads(torch.eye(3)),),
        decoder_attentions=(heads(torch.eye(3)), heads(torch.eye(3))),
        cross_attentions=(heads(cross), heads(cross)),
    )
    monkeypatch.setattr(bench, "attentions", lambda model, rows: output)
    rows = SimpleNamespace(
        src_ids=torch.zeros(2, 3, dtype=torch.long),
        tgt_ids=torch.zeros(2, 3, dtype=torch.long),
        targets=[(0, 5), (1, 6)],
        source_words=2,
    )
    assert torch.allclose(bench.rollout_scores(None, rows), 0.75 * cross[:2, :2])


# The stored model and the script ---------------------------------------------------------------


@pytest.mark.slow  # generates the training set to exclude it, and decodes
@pytest.mark.parametrize("folder", ["bart-synthetic-alignment", "marian-synthetic-alignment"])
def test_stored_model_translates_held_out_sentences(synthetic, folder):
    model_dir = REPOSITORY / "models" / folder
    assert json.loads((model_dir / "vocab.json").read_text()) == list(synthetic.Vocabulary.build().words)
    model = synthetic.load_model(model_dir)
    accuracy = synthetic.translation_accuracy(model, synthetic.held_out_pairs(100), synthetic.Vocabulary.build())
    assert accuracy["exact_match"] >= 0.95 and accuracy["token_accuracy"] >= 0.99


@pytest.mark.slow  # a benchmark smoke run
def test_quick_run_writes_table_json_and_plot(bench, tmp_path):
    code = bench.main(
        ["--sentences", "3", "--ig-steps", "4", "--resamples", "50", "--output-dir", str(tmp_path), "--name", "run"]
    )
    assert code == 0
    assert (tmp_path / "run.png").read_bytes().startswith(PNG_MAGIC)
    markdown = (tmp_path / "run.md").read_text()
    assert "python benchmarks/translation_alignment.py --sentences 3" in markdown
    methods = json.loads((tmp_path / "run.json").read_text())["methods"]
    assert [row["key"] for row in methods] == list(bench.build_methods(4))
    for row in methods:
        if "skipped" in row:  # only DecompX, only while it refuses encoder-decoders, with its reason
            assert row["key"].startswith("decompx") and "model_type 'bart'" in row["skipped"]
            assert f"| {row['label']} | skipped |" in markdown
            continue
        assert 0.0 <= row["aer_ci"][0] <= row["aer"] <= row["aer_ci"][1] <= 1.0
        assert 0.0 <= row["aer_thresholded"] <= 1.0 and row["seconds_per_sentence"] > 0
        assert f"| {row['label']} | {row['aer']:.3f} |" in markdown
        if "max_abs_convergence_delta" in row:
            assert row["max_abs_convergence_delta"] < 1e-3


def test_the_stored_marian_model_is_explained_completely_on_a_held_out_sentence(synthetic, bench):
    model = synthetic.load_model(REPOSITORY / "models" / "marian-synthetic-alignment")
    assert type(model).__name__ == "MarianMTModel"
    vocabulary = synthetic.Vocabulary.build()
    pair = synthetic.held_out_pairs(1)[0]
    rows = bench.sentence_rows(pair, vocabulary)
    scores_of = bench.DecompXScores(include_biases=True)
    scores = scores_of(model, rows)
    with torch.no_grad():
        logits = model(input_ids=rows.src_ids[:1], decoder_input_ids=rows.tgt_ids[:1]).logits[0]
    explained = torch.stack([logits[j, vocabulary.index[word]] for j, word in enumerate(pair.target)])
    (source, prefix), _ = scores_of.explainer.attribute(
        (rows.src_ids, rows.tgt_ids), target=rows.targets, additional_forward_args=(rows.src_mask,), return_convergence_delta=True
    )
    torch.testing.assert_close(source.sum(-1) + prefix.sum(-1), explained, rtol=0, atol=1e-4)
    torch.testing.assert_close(scores, source[:, : len(pair.source)], rtol=0, atol=1e-5)
    # most target words are linked to a gold source word (the results file: precision 0.98 over 300 sentences)
    linked = [int(scores[target].argmax()) for target in range(len(pair.target))]
    right = sum((source_index, target) in pair.alignment for target, source_index in enumerate(linked))
    assert right >= 0.75 * len(pair.target), (linked, sorted(pair.alignment))
