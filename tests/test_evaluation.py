"""The faithfulness protocol: masking, AOPC and accuracy against hand computations, and a model with
a known ground truth (its label is decided by the presence of one token)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from captum.attr import LayerIntegratedGradients
from torch import Tensor, nn
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from conftest import make_word_tokenizer

from captum_decompx import DecompX
from captum_decompx.evaluation import (
    DEFAULT_FRACTIONS,
    FaithfulnessResult,
    MethodSpec,
    classifier_forward,
    evaluate_faithfulness,
    l2_over_embedding,
    mask_ranked_tokens,
    masked_counts,
    random_method,
    reference_baselines,
    sum_over_embedding,
)


def make_tokenizer(words: list[str]) -> BertTokenizer:
    return make_word_tokenizer(words)


# --------------------------------------------------------------------------------------------
# Masking


def test_masked_counts_are_floor_of_k_times_n_for_every_k_and_length():
    for length in range(0, 60):
        candidates = torch.zeros(1, 64, dtype=torch.bool)
        candidates[0, :length] = True
        for step in range(10):
            assert int(masked_counts(candidates, step / 10)) == (step * length) // 10, (step, length)


def test_mask_ranked_tokens_masks_the_top_or_bottom_candidates_and_never_specials():
    #                         [CLS]  a    b    c    d    e  [SEP] [PAD]
    input_ids = torch.tensor([[2, 10, 11, 12, 13, 14, 3, 0]])
    candidates = torch.tensor([[False, True, True, True, True, True, False, False]])
    scores = torch.tensor([[100.0, 0.5, 3.0, -1.0, 2.0, 0.0, 50.0, 99.0]])
    most = mask_ranked_tokens(input_ids, scores, candidates, 0.4, mask_token_id=4, most_important=True)
    least = mask_ranked_tokens(input_ids, scores, candidates, 0.4, mask_token_id=4, most_important=False)
    assert most.tolist() == [[2, 10, 4, 12, 4, 14, 3, 0]]  # b (3.0) and d (2.0)
    assert least.tolist() == [[2, 10, 11, 4, 13, 4, 3, 0]]  # c (-1.0) and e (0.0)
    assert mask_ranked_tokens(input_ids, scores, candidates, 0.0, 4).equal(input_ids)
    everything = mask_ranked_tokens(input_ids, scores, candidates, 1.0, 4)
    assert everything.tolist() == [[2, 4, 4, 4, 4, 4, 3, 0]]


def test_ties_are_broken_by_position():
    input_ids = torch.tensor([[2, 10, 11, 12, 13, 3]])
    candidates = torch.tensor([[False, True, True, True, True, False]])
    scores = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 0.0]])
    assert mask_ranked_tokens(input_ids, scores, candidates, 0.5, 4).tolist() == [[2, 4, 4, 12, 13, 3]]
    assert mask_ranked_tokens(input_ids, scores, candidates, 0.5, 4, most_important=False).tolist() == [[2, 4, 4, 12, 13, 3]]


# --------------------------------------------------------------------------------------------
# AOPC and accuracy against a hand computation

WEIGHTS = {"good": 1.5, "bad": -2.0, "fine": 0.5, "meh": 0.2, "x": 0.0}


class CountingClassifier(nn.Module):
    """logit_0 = 0, logit_1 = the sum of per-word weights of the real tokens ([MASK] weighs 0)."""

    def __init__(self, tokenizer: BertTokenizer) -> None:
        super().__init__()
        weights = torch.zeros(len(tokenizer.get_vocab()))
        for word, weight in WEIGHTS.items():
            weights[tokenizer.convert_tokens_to_ids(word)] = weight
        self.weights = nn.Parameter(weights, requires_grad=False)

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor = None):
        positive = (self.weights[input_ids] * attention_mask).sum(-1)
        return SimpleNamespace(logits=torch.stack([torch.zeros_like(positive), positive], dim=-1))


class WordWeightAttribution:
    """Scores every token by its weight, signed for the target class: the exact logit shares."""

    def __init__(self, model: CountingClassifier) -> None:
        self.model = model

    def attribute(self, inputs, target=None, additional_forward_args=None):
        sign = torch.where(target == 1, 1.0, -1.0).unsqueeze(1)
        return self.model.weights[inputs] * sign


def hand_protocol(sentences: list[str], labels: list[int], keep_fraction: float):
    """The protocol on word lists, with integer arithmetic for floor(K * n)."""
    drops = [[0.0] * 10 for _ in range(2)]
    correct = [[0] * 10 for _ in range(2)]
    keep_correct = 0
    per_example = [[], []]
    for sentence, label in zip(sentences, labels):
        words = sentence.split()
        n = len(words)
        weights = [WEIGHTS[word] for word in words]

        def probability_of(predicted: int, masked: set, weights: list = weights) -> tuple[float, int]:
            logit = sum(weight for position, weight in enumerate(weights) if position not in masked)
            p_positive = 1 / (1 + math.exp(-logit))
            return (p_positive if predicted == 1 else 1 - p_positive), int(logit > 0)

        predicted = int(sum(weights) > 0)
        p_hat, _ = probability_of(predicted, set())
        signed = [w if predicted == 1 else -w for w in weights]
        most_first = sorted(range(n), key=lambda position: -signed[position])
        least_first = sorted(range(n), key=lambda position: signed[position])
        for direction, ranking in enumerate((most_first, least_first)):
            total_drop = 0.0
            for step in range(10):
                masked = set(ranking[: (step * n) // 10])
                p_k, prediction_k = probability_of(predicted, masked)
                drops[direction][step] += p_hat - p_k
                total_drop += p_hat - p_k
                correct[direction][step] += int(prediction_k == label)
            per_example[direction].append(total_drop / 10)
        kept_masked = set(least_first[: (round((1 - keep_fraction) * 10) * n) // 10])
        keep_correct += int(probability_of(predicted, kept_masked)[1] == label)
    count = len(sentences)
    return (
        [[d / count for d in row] for row in drops],
        [[c / count for c in row] for row in correct],
        keep_correct / count,
        per_example,
    )


def test_aopc_accuracy_and_keep_top_match_a_hand_computation():
    tokenizer = make_tokenizer(list(WEIGHTS))
    model = CountingClassifier(tokenizer).eval()
    sentences = [
        "good fine x bad good meh x x fine good",
        "bad x good meh bad",
        "fine x x",
        "meh bad fine good x good bad",
    ]
    labels = [1, 0, 0, 1]
    result = evaluate_faithfulness(
        model, tokenizer, sentences, labels, {"weights": MethodSpec(WordWeightAttribution(model))}, batch_size=3, show_progress=False
    )
    drops, accuracy, keep, per_example = hand_protocol(sentences, labels, keep_fraction=0.2)
    scores = result.methods["weights"]
    # Batches are formed by length, but per-example values come back in the given order.
    assert scores.aopc_most_per_example.tolist() == pytest.approx(per_example[0], abs=1e-6)
    assert scores.aopc_least_per_example.tolist() == pytest.approx(per_example[1], abs=1e-6)
    assert scores.aopc_most.tolist() == pytest.approx(drops[0], abs=1e-6)
    assert scores.aopc_least.tolist() == pytest.approx(drops[1], abs=1e-6)
    assert scores.accuracy_most.tolist() == pytest.approx(accuracy[0])
    assert scores.accuracy_least.tolist() == pytest.approx(accuracy[1])
    assert scores.keep_top_accuracy == pytest.approx(keep)
    assert scores.aopc_most_mean == pytest.approx(sum(drops[0]) / 10, abs=1e-6)
    # Logits 3.7, -2.3, 0.5, -0.3: the last two are predicted against their labels.
    assert result.accuracy == pytest.approx(0.5)
    assert result.fractions == DEFAULT_FRACTIONS and result.keep_fraction == 0.2 and result.n_examples == 4


def test_pairs_rank_tokens_of_both_segments_and_keep_forty_percent():
    tokenizer = make_tokenizer(list(WEIGHTS))
    model = CountingClassifier(tokenizer).eval()
    pairs = [("good x x", "bad fine"), ("meh", "good bad x x x")]
    labels = [0, 1]
    result = evaluate_faithfulness(model, tokenizer, pairs, labels, {"weights": (WordWeightAttribution(model), lambda s: s)}, show_progress=False)
    drops, accuracy, keep, _ = hand_protocol([" ".join(pair) for pair in pairs], labels, keep_fraction=0.4)
    assert result.keep_fraction == 0.4
    assert result.methods["weights"].aopc_most.tolist() == pytest.approx(drops[0], abs=1e-6)
    assert result.methods["weights"].accuracy_least.tolist() == pytest.approx(accuracy[1])
    assert result.methods["weights"].keep_top_accuracy == pytest.approx(keep)


def test_a_layer_method_without_reduction_gets_a_clear_error():
    tokenizer = make_tokenizer(list(WEIGHTS))
    model = CountingClassifier(tokenizer).eval()

    class PerDimension(WordWeightAttribution):
        def attribute(self, inputs, target=None, additional_forward_args=None):
            return super().attribute(inputs, target).unsqueeze(-1).expand(-1, -1, 8)

    with pytest.raises(ValueError, match="l2_over_embedding"):
        evaluate_faithfulness(model, tokenizer, ["good x"], [1], {"m": MethodSpec(PerDimension(model))}, show_progress=False)
    spec = MethodSpec(PerDimension(model), reduce=sum_over_embedding)
    result = evaluate_faithfulness(model, tokenizer, ["good x"], [1], {"m": spec}, show_progress=False)
    assert result.methods["m"].aopc_most[5] > 0  # half of two tokens: "good" is masked


def test_a_model_in_training_mode_is_refused():
    tokenizer = make_tokenizer(list(WEIGHTS))
    model = CountingClassifier(tokenizer)
    with pytest.raises(ValueError, match="eval"):
        evaluate_faithfulness(model, tokenizer, ["good"], [1], {"random": random_method()}, show_progress=False)


# --------------------------------------------------------------------------------------------
# A classifier whose label is decided by one token

KEY = "key"
FILLERS = [f"w{index}" for index in range(20)]


def synthetic_data(count: int, generator: torch.Generator) -> tuple[list[str], list[int]]:
    """Random filler sentences of 4 to 8 words; half contain ``KEY`` once (label 1)."""
    texts, labels = [], []
    for index in range(count):
        length = int(torch.randint(4, 9, (1,), generator=generator))
        words = [FILLERS[int(i)] for i in torch.randint(0, len(FILLERS), (length,), generator=generator)]
        label = index % 2
        if label:
            words[int(torch.randint(0, length, (1,), generator=generator))] = KEY
        texts.append(" ".join(words))
        labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def key_classifier():
    """A tiny BERT trained (a few hundred Adam steps) to say whether ``KEY`` occurs."""
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    tokenizer = make_tokenizer([KEY] + FILLERS)
    config = BertConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=16,
        num_labels=2,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = BertForSequenceClassification(config)
    texts, labels = synthetic_data(512, generator)
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    targets = torch.tensor(labels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(300):
        rows = torch.randint(0, len(texts), (32,), generator=generator)
        loss = model(
            input_ids=encoded["input_ids"][rows], attention_mask=encoded["attention_mask"][rows], labels=targets[rows]
        ).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    test_texts, test_labels = synthetic_data(60, generator)
    return model, tokenizer, test_texts, test_labels


def test_decompx_ranks_the_deciding_token_first(key_classifier):
    model, tokenizer, texts, labels = key_classifier
    encoded = tokenizer(texts, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    with torch.no_grad():
        predicted = model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits.argmax(-1)
    assert (predicted == torch.tensor(labels)).float().mean() >= 0.95, "the toy classifier did not learn its task"
    scores = DecompX(model).attribute(encoded["input_ids"], target=predicted, additional_forward_args=(encoded["attention_mask"],))
    candidates = encoded["attention_mask"].bool() & ~encoded["special_tokens_mask"].bool()
    key_id = tokenizer.convert_tokens_to_ids(KEY)
    checked = 0
    for row, label in enumerate(labels):
        if label == 1 and int(predicted[row]) == 1:
            top = int(torch.where(candidates[row], scores[row], torch.tensor(float("-inf"))).argmax())
            assert int(encoded["input_ids"][row, top]) == key_id, texts[row]
            checked += 1
    assert checked >= 25


def test_decompx_is_more_faithful_than_random_on_the_known_task(key_classifier):
    model, tokenizer, texts, labels = key_classifier
    forward = classifier_forward(model)
    methods = {
        "DecompX": MethodSpec(DecompX(model)),
        "IG": MethodSpec(
            LayerIntegratedGradients(forward, model.get_input_embeddings()),
            reduce=l2_over_embedding,
            baselines=reference_baselines(tokenizer),
            attribute_kwargs={"n_steps": 8},
        ),
        "random": random_method(seed=1),
    }
    result = evaluate_faithfulness(model, tokenizer, texts, labels, methods, batch_size=16, show_progress=False)
    decompx, random = result.methods["DecompX"], result.methods["random"]
    assert decompx.aopc_most_mean > random.aopc_most_mean + 0.05
    assert decompx.accuracy_most_mean < random.accuracy_most_mean
    assert decompx.aopc_least_mean < random.aopc_least_mean
    assert all(0.0 <= value <= 1.0 for value in result.methods["IG"].accuracy_most)


# --------------------------------------------------------------------------------------------
# The result object


def small_result() -> FaithfulnessResult:
    tokenizer = make_tokenizer(list(WEIGHTS))
    model = CountingClassifier(tokenizer).eval()
    methods = {"weights": MethodSpec(WordWeightAttribution(model)), "random": random_method()}
    return evaluate_faithfulness(model, tokenizer, ["good fine x bad", "bad meh x x"], [1, 0], methods, show_progress=False)


def test_markdown_table_has_one_row_per_method_and_prints_as_str():
    result = small_result()
    table = result.to_markdown()
    lines = table.splitlines()
    assert lines[0].startswith("| Method | AOPC most") and "Acc keep top 20%" in lines[0]
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["weights", "random"]
    weights_row = lines[2].split("|")
    assert weights_row[2].strip() == f"{result.methods['weights'].aopc_most_mean:.3f}"
    assert weights_row[3].strip() == f"{100 * result.methods['weights'].accuracy_most_mean:.2f}"
    assert str(result) == table
    assert "Attribution time" in result.to_markdown(timings=True)
    assert set(result.to_dict()["methods"]) == {"weights", "random"}


def test_paired_difference_is_the_mean_and_standard_error_of_per_example_differences():
    result = small_result()
    a = result.methods["weights"].aopc_most_per_example
    b = result.methods["random"].aopc_most_per_example
    mean, se = result.paired_difference("weights", "random")
    assert mean == pytest.approx(float(a.mean() - b.mean()))
    d = [x - y for x, y in zip(a.tolist(), b.tolist())]
    expected_se = math.sqrt(sum((v - sum(d) / 2) ** 2 for v in d) / (2 - 1)) / math.sqrt(2)
    assert se == pytest.approx(expected_se)


def test_plot_writes_a_png(tmp_path):
    path = tmp_path / "curves.png"
    figure = small_result().plot(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(figure.axes) == 4
