"""The faithfulness protocol: masking, AOPC and accuracy against hand computations, and a model with
a known ground truth (its label is decided by the presence of one token)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from captum.attr import LayerIntegratedGradients
from support.classifiers import make_word_tokenizer
from torch import Tensor, nn
from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

from captum_decompx import DecompX
from captum_decompx.evaluation import (
    DEFAULT_FRACTIONS,
    METHOD_REGISTRY,
    Comprehensiveness,
    FaithfulnessMetric,
    FaithfulnessResult,
    MethodSpec,
    Sufficiency,
    aggregate_rows,
    build_methods,
    classifier_forward,
    default_metrics,
    encode_examples,
    evaluate_faithfulness,
    example_rows,
    l2_over_embedding,
    mask_ranked_tokens,
    masked_counts,
    paper_methods,
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


# --------------------------------------------------------------------------------------------
# ERASER comprehensiveness and sufficiency (ferret's definitions)


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_comprehensiveness_and_sufficiency_match_hand_computed_values():
    tokenizer = make_tokenizer(list(WEIGHTS))
    model = CountingClassifier(tokenizer).eval()
    sentences = ["good fine bad good x", "bad fine", "x x"]
    result = evaluate_faithfulness(
        model, tokenizer, sentences, [1, 0, 1], {"weights": MethodSpec(WordWeightAttribution(model))}, show_progress=False
    )
    scores = result.methods["weights"]
    # "good fine bad good x": logit 1.5, y_hat = 1; scores good 1.5, good 1.5, fine 0.5, x 0, bad -2.
    # floor(k * 5) for k = 10%..100%: 0 1 1 2 2 3 3 4 4 5. Rationales {good}, {good, good},
    # {good, good, fine}; the top 4 and 5 add only non-positive tokens: skipped as repeats.
    # Masking them leaves logits 0, -1.5, -2.0; keeping only them gives 1.5, 3.0, 3.5.
    p_hat = sigmoid(1.5)
    comprehensiveness_0 = p_hat - (sigmoid(0.0) + sigmoid(-1.5) + sigmoid(-2.0)) / 3
    sufficiency_0 = p_hat - (sigmoid(1.5) + sigmoid(3.0) + sigmoid(3.5)) / 3
    # "bad fine": logit -1.5, y_hat = 0, scores for class 0: bad 2, fine -0.5. floor(k * 2): the
    # rationale {bad} from 50% on; 100% adds only "fine" (negative): one rationale.
    comprehensiveness_1 = sigmoid(1.5) - (1 - sigmoid(0.5))  # "bad" masked: logit 0.5
    sufficiency_1 = sigmoid(1.5) - (1 - sigmoid(-2.0))  # only "bad" kept: logit -2
    # "x x": no positive score, no rationale: ferret's values 0 and 1.
    assert scores.per_example["comprehensiveness"].tolist() == pytest.approx([comprehensiveness_0, comprehensiveness_1, 0.0], abs=1e-6)
    assert scores.per_example["sufficiency"].tolist() == pytest.approx([sufficiency_0, sufficiency_1, 1.0], abs=1e-6)
    assert scores.per_example["comprehensiveness_steps"].tolist() == [3, 1, 0]
    assert scores.comprehensiveness == pytest.approx((comprehensiveness_0 + comprehensiveness_1) / 3, abs=1e-6)
    assert scores.sufficiency == pytest.approx((sufficiency_0 + sufficiency_1 + 1.0) / 3, abs=1e-6)
    assert sufficiency_0 < 0 < comprehensiveness_0  # signs matter: a flipped difference fails
    table = result.to_markdown().splitlines()
    assert table[0].endswith("| Comp ↑ | Suff ↓ |")
    assert table[2].endswith(f"| {scores.comprehensiveness:.3f} | {scores.sufficiency:.3f} |")


class FerretCountingClassifier(CountingClassifier):
    """The counting classifier with what ferret's ModelHelper expects of a Hugging Face model."""

    device = torch.device("cpu")

    def forward(self, input_ids, attention_mask, token_type_ids=None, output_hidden_states=False):
        return super().forward(input_ids, attention_mask, token_type_ids)


def test_comprehensiveness_and_sufficiency_equal_ferrets_own_evaluators():
    """ferret deletes tokens where we mask them; the counting classifier gives [MASK] weight 0, so
    deleting and masking give the same logit and the two must agree exactly."""
    faithfulness_measures = pytest.importorskip("ferret.evaluators.faithfulness_measures")
    from ferret.explainers.explanation import Explanation

    tokenizer = make_tokenizer(list(WEIGHTS))
    model = FerretCountingClassifier(tokenizer).eval()
    sentences = ["good fine bad meh x good", "bad fine meh", "meh x bad x bad fine good", "fine"]
    result = evaluate_faithfulness(
        model, tokenizer, sentences, [1, 0, 0, 1], {"weights": MethodSpec(WordWeightAttribution(model))}, show_progress=False
    )
    comprehensiveness = faithfulness_measures.AOPC_Comprehensiveness_Evaluation(model, tokenizer)
    sufficiency = faithfulness_measures.AOPC_Sufficiency_Evaluation(model, tokenizer)
    for index, sentence in enumerate(sentences):
        encoded = tokenizer(sentence, return_tensors="pt")
        with torch.no_grad():
            predicted = int(model(**encoded).logits.argmax(-1))
        scores = WordWeightAttribution(model).attribute(encoded["input_ids"], target=torch.tensor([predicted]))[0]
        tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"][0])
        explanation = Explanation(sentence, tokens, scores.numpy(), "weights", predicted)
        ours = result.methods["weights"].per_example
        assert float(ours["comprehensiveness"][index]) == pytest.approx(comprehensiveness.compute_evaluation(explanation, target=predicted).score, abs=1e-6)
        assert float(ours["sufficiency"][index]) == pytest.approx(sufficiency.compute_evaluation(explanation, target=predicted).score, abs=1e-6)


class PositionalScores:
    """Deterministic scores with both signs and no ties: a function of token id and position."""

    def attribute(self, inputs, target=None, additional_forward_args=None):
        positions = torch.arange(inputs.shape[1], dtype=torch.float32)
        return torch.sin(inputs.float() * 1.7 + positions * 0.9 + 0.3)


def slow_eraser(model, tokenizer, text: str, thresholds: list[float]) -> tuple[float, float]:
    """Comprehensiveness and sufficiency of one unpadded text, one forward pass per variant, ranking
    with Python's sorted: a literal reading of ferret's definition with masking instead of deletion."""
    encoded = tokenizer(text, return_special_tokens_mask=True)
    ids, special = encoded["input_ids"], encoded["special_tokens_mask"]

    def p_of(token_ids: list[int], label: int | None = None):
        with torch.no_grad():
            probabilities = torch.softmax(model(input_ids=torch.tensor([token_ids])).logits[0].float(), -1)
        return probabilities, probabilities[label].item() if label is not None else None

    probabilities, _ = p_of(ids)
    y_hat = int(probabilities.argmax())
    p_hat = probabilities[y_hat].item()
    scores = PositionalScores().attribute(torch.tensor([ids]))[0].tolist()
    candidates = [position for position in range(len(ids)) if not special[position]]
    ranked = sorted(candidates, key=lambda position: -scores[position])
    comprehensiveness, sufficiency, previous = [], [], None
    for k in thresholds:
        count = (round(k * 10) * len(candidates)) // 10
        rationale = {position for position in ranked[:count] if scores[position] > 0}
        if not rationale or rationale == previous:
            continue
        previous = rationale
        removed = [tokenizer.mask_token_id if position in rationale else token for position, token in enumerate(ids)]
        kept = [token if position in rationale or special[position] else tokenizer.mask_token_id for position, token in enumerate(ids)]
        comprehensiveness.append(p_hat - p_of(removed, y_hat)[1])
        sufficiency.append(p_hat - p_of(kept, y_hat)[1])
    if not comprehensiveness:
        return 0.0, 1.0
    return sum(comprehensiveness) / len(comprehensiveness), sum(sufficiency) / len(sufficiency)


def test_eraser_metrics_on_a_tiny_bert_match_a_slow_unbatched_computation(key_classifier):
    model, tokenizer, texts, labels = key_classifier
    texts, labels = texts[:12], labels[:12]
    result = evaluate_faithfulness(model, tokenizer, texts, labels, {"positional": MethodSpec(PositionalScores())}, batch_size=5, show_progress=False)
    ours = result.methods["positional"].per_example
    thresholds = [step / 10 for step in range(1, 11)]
    for index, text in enumerate(texts):
        comprehensiveness, sufficiency = slow_eraser(model, tokenizer, text, thresholds)
        assert float(ours["comprehensiveness"][index]) == pytest.approx(comprehensiveness, abs=2e-5), text
        assert float(ours["sufficiency"][index]) == pytest.approx(sufficiency, abs=2e-5), text


def test_decompx_is_more_comprehensive_and_sufficient_than_random_on_the_known_task(key_classifier):
    model, tokenizer, texts, labels = key_classifier
    metrics = [Comprehensiveness(), Sufficiency()]
    methods = {"DecompX": MethodSpec(DecompX(model)), "random": random_method(seed=1)}
    result = evaluate_faithfulness(model, tokenizer, texts[:30], labels[:30], methods, metrics=metrics, show_progress=False)
    decompx, random = result.methods["DecompX"], result.methods["random"]
    assert decompx.comprehensiveness > random.comprehensiveness + 0.05
    assert decompx.sufficiency < random.sufficiency - 0.05
    mean, se = result.paired_difference("DecompX", "random", metric="comprehensiveness")
    assert mean == pytest.approx(decompx.comprehensiveness - random.comprehensiveness)
    assert se > 0
    with pytest.raises(KeyError, match="aopc_most"):
        decompx.aopc_most  # noqa: B018  (not measured with these metrics)


# --------------------------------------------------------------------------------------------
# The metric protocol, per-example rows and their aggregation


class TopTokenDrop(FaithfulnessMetric):
    """A metric defined in a test: the probability drop when only the single top token is masked."""

    columns = ("top_drop",)

    def masked_inputs(self, batch, scores, mask_token_id):
        top = torch.where(batch.candidates, scores, torch.tensor(float("-inf"))).argmax(1, keepdim=True)
        return [batch.input_ids.scatter(1, top, mask_token_id)]

    def example_values(self, predictions):
        return {"top_drop": predictions.drop(0).tolist()}

    def summarize(self, columns):
        return {"top_drop": float(columns["top_drop"].mean())}

    def table_cells(self, summary):
        return [(10, "Top drop", f"{summary['top_drop']:.4f}")]


def test_a_new_metric_is_one_class():
    tokenizer = make_tokenizer(list(WEIGHTS))
    model = CountingClassifier(tokenizer).eval()
    sentences = ["good fine x", "bad meh"]
    result = evaluate_faithfulness(
        model, tokenizer, sentences, [1, 0], {"weights": MethodSpec(WordWeightAttribution(model))}, metrics=[TopTokenDrop()], show_progress=False
    )
    # "good fine x": logit 2 -> 0.5 without "good"; "bad meh": logit -1.8 -> 0.2 without "bad", class 0.
    expected = [sigmoid(2.0) - sigmoid(0.5), (1 - sigmoid(-1.8)) - (1 - sigmoid(0.2))]
    assert result.methods["weights"].per_example["top_drop"].tolist() == pytest.approx(expected, abs=1e-6)
    assert result.to_markdown().splitlines()[0] == "| Method | Top drop |"
    with pytest.raises(ValueError, match="either"):
        evaluate_faithfulness(model, tokenizer, sentences, [1, 0], {"w": MethodSpec(WordWeightAttribution(model))}, metrics=[TopTokenDrop()], fractions=[0.5])


def test_rows_from_shuffled_parquet_parts_aggregate_to_the_same_result(tmp_path):
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet as parquet

    tokenizer = make_tokenizer(list(WEIGHTS))
    model = CountingClassifier(tokenizer).eval()
    sentences = ["good fine x bad good meh", "bad meh x x", "fine x x", "meh bad fine good x good bad", "good"]
    labels = [1, 0, 0, 1, 1]
    methods = {"weights": MethodSpec(WordWeightAttribution(model)), "random": random_method()}
    whole = evaluate_faithfulness(model, tokenizer, sentences, labels, methods, show_progress=False)
    metrics = default_metrics()
    for part, ids in enumerate([[3, 0], [4, 2, 1]]):
        batch = encode_examples(tokenizer, [sentences[i] for i in ids], [labels[i] for i in ids])
        methods = {"weights": MethodSpec(WordWeightAttribution(model)), "random": random_method()}
        rows = example_rows(model, batch, methods, metrics, mask_token_id=tokenizer.mask_token_id, example_ids=ids)
        assert {key for row in rows for key in row} >= {"method", "example", "comprehensiveness", "aopc_most"}
        parquet.write_table(pyarrow.Table.from_pylist(rows), tmp_path / f"part-{part}.parquet")
    read = [row for part in (1, 0) for row in parquet.read_table(tmp_path / f"part-{part}.parquet").to_pylist()]
    merged = aggregate_rows(read, metrics, methods=["weights", "random"])
    assert merged.example_ids == (0, 1, 2, 3, 4) and merged.n_examples == 5
    assert merged.accuracy == whole.accuracy
    for key, value in whole.methods["weights"].summary.items():
        assert np.asarray(merged.methods["weights"].summary[key]) == pytest.approx(np.asarray(value), abs=1e-9), key
    # The random scores depend on how examples were batched, the deterministic method's do not.
    assert merged.to_markdown().splitlines()[:3] == whole.to_markdown().splitlines()[:3]
    with pytest.raises(ValueError, match="appears twice"):
        aggregate_rows(read + read[:1], metrics)
    with pytest.raises(ValueError, match="same examples"):
        aggregate_rows([row for row in read if not (row["method"] == "random" and row["example"] == 4)], metrics)
    with pytest.raises(ValueError, match="lacks the column"):
        aggregate_rows([{key: value for key, value in row.items() if key != "sufficiency"} for row in read], metrics)


def test_registry_builds_methods_by_key_and_paper_methods_keeps_its_labels():
    tokenizer = make_tokenizer(list(WEIGHTS))
    config = BertConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=20)
    model = BertForSequenceClassification(config).eval()
    specs = build_methods(["ig", "ig-l2", "random"], model, tokenizer, ig_steps=4)
    assert list(specs) == ["IG (sum)", "IG (L2)", "random"]
    assert specs["IG (sum)"]._call_key() == specs["IG (L2)"]._call_key()  # one attribute call, two reductions
    assert specs["IG (sum)"].attribute_kwargs["n_steps"] == 4
    assert list(paper_methods(model, tokenizer)) == [METHOD_REGISTRY[key].label for key in METHOD_REGISTRY]
    with pytest.raises(ValueError, match="Unknown attribution method"):
        build_methods(["lime"], model, tokenizer)
