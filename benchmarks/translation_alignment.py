#!/usr/bin/env python
"""Word alignment from attributions on a synthetic translation task with a known alignment (AER).

A small BART model trained on the synthetic language of ``synthetic_translation.py`` (word
substitution, adjective-noun swap, verb-final to verb-second, many-to-one and one-to-many words) is
teacher-forced on the gold translation of held-out sentences. For each target word, each method
scores the source words for the logit of that word at the step that predicts it; the hard alignment
links the target word to the best-scored source word (argmax; ``</s>`` excluded), and, in a second
column, to every source word scored at least half the best score. The alignment error rate against
the gold (sure) links, Och & Ney 2003: ``AER = 1 - 2 |A ∩ S| / (|A| + |S|)``, pooled over sentences,
with a 95% bootstrap interval over sentences.

Methods (see :data:`METHODS`): DecompX exact (with biases) and fast (without biases), Integrated
Gradients and Input x Gradient on the source embeddings (signed sum over the embedding, and L2
norm), raw cross-attention averaged over heads (last layer, mean of layers), attention rollout
extended to encoder-decoders, and two references: uniformly random source words and the monotone
(diagonal) alignment. DecompX is skipped, with its message, where it refuses the model.

Example::

    python benchmarks/translation_alignment.py --sentences 20          # a quick look
    python benchmarks/translation_alignment.py                         # the stored results
    python benchmarks/translation_alignment.py --train                 # retrain the model first

Writes ``benchmarks/results/translation_alignment.md``, ``.json`` and ``.png`` (AER per method).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic_translation as synthetic  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
#: A target word is also linked to every source word scored at least this fraction of the best score.
THRESHOLD = 0.5


# AER -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AlignmentCounts:
    """Counts for one sentence: ``|A ∩ S|``, ``|A|`` and ``|S|`` (sure links only)."""

    hits: int
    predicted: int
    gold: int


def alignment_counts(
    predicted: set[tuple[int, int]] | frozenset[tuple[int, int]], gold: set[tuple[int, int]] | frozenset[tuple[int, int]]
) -> AlignmentCounts:
    """Counts of a predicted alignment against the gold sure links (pairs of source and target index)."""
    return AlignmentCounts(len(set(predicted) & set(gold)), len(predicted), len(gold))


def aer(counts: Sequence[AlignmentCounts]) -> float:
    """Alignment error rate with sure links only, pooled over sentences: 1 - 2|A∩S| / (|A| + |S|)."""
    hits = sum(count.hits for count in counts)
    total = sum(count.predicted + count.gold for count in counts)
    if total == 0:
        raise ValueError("AER of empty alignments: no predicted and no gold links.")
    return 1.0 - 2.0 * hits / total


def _resampled_aer(counts: Sequence[AlignmentCounts], draws: np.ndarray) -> np.ndarray:
    """(resamples,) pooled AER of each resample; ``draws`` (resamples, sentences) are sentence indices."""
    table = np.array([(count.hits, count.predicted + count.gold) for count in counts], dtype=np.float64)
    sums = table[draws].sum(axis=1)  # (resamples, 2)
    return 1.0 - 2.0 * sums[:, 0] / sums[:, 1]


def _draws(sentences: int, resamples: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, sentences, size=(resamples, sentences))


def _interval(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_aer(
    counts: Sequence[AlignmentCounts], resamples: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled AER, resampling sentences with replacement."""
    return _interval(_resampled_aer(counts, _draws(len(counts), resamples, seed)), level)


def paired_bootstrap_difference(
    counts: Sequence[AlignmentCounts],
    reference: Sequence[AlignmentCounts],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """AER(counts) - AER(reference) on the same sentences, with a percentile bootstrap interval that
    resamples the sentences once for both (paired).

    Returns:
        (difference, low, high).
    """
    if len(counts) != len(reference):
        raise ValueError(f"paired counts need the same sentences: {len(counts)} and {len(reference)}.")
    draws = _draws(len(counts), resamples, seed)
    low, high = _interval(_resampled_aer(counts, draws) - _resampled_aer(reference, draws), level)
    return aer(counts) - aer(reference), low, high


def hard_alignment(scores: Tensor, threshold: float | None = None) -> set[tuple[int, int]]:
    """Links from a score matrix.

    Args:
        scores: (target words, source words) scores of each source word for each target word.
        threshold: None links each target word to its best source word (argmax); a fraction links it
            also to every source word scored at least ``threshold`` times the best score (when the
            best score is positive).

    Returns:
        ``(source index, target index)`` pairs.
    """
    links = set()
    for target_index, row in enumerate(scores):
        best = int(row.argmax())
        links.add((best, target_index))
        if threshold is not None and row[best] > 0:
            links.update(
                (int(source_index), target_index) for source_index in torch.nonzero(row >= threshold * row[best]).flatten()
            )
    return links


# Methods -------------------------------------------------------------------------------------


@dataclass
class Rows:
    """One sentence prepared for explanation: one row per target word (batch = target words).

    Attributes:
        src_ids: (T, S) the source words then ``</s>``, the same in every row.
        src_mask: (T, S) ones.
        tgt_ids: (T, T + 1) the decoder's input (``<pad>`` then the gold target words), every row.
        targets: ``(position, token id)`` per row: row j explains the logit of target word j at
            decoder position j, the step that predicts it.
        source_words: how many source words (the scores' last ``</s>`` column is dropped).
    """

    src_ids: Tensor
    src_mask: Tensor
    tgt_ids: Tensor
    targets: list[tuple[int, int]]
    source_words: int


def sentence_rows(pair: synthetic.SentencePair, vocabulary: synthetic.Vocabulary) -> Rows:
    batch = synthetic.make_batch([pair], vocabulary)
    count = len(pair.target)
    targets = [(position, int(batch.labels[0, position])) for position in range(count)]
    return Rows(
        batch.src_ids.repeat(count, 1),
        batch.src_mask.repeat(count, 1),
        batch.tgt_ids.repeat(count, 1),
        targets,
        len(pair.source),
    )


#: A method: (model, rows) -> (target words, source words) scores.
ScoreFunction = Callable[[torch.nn.Module, Rows], Tensor]


def translation_forward(model: torch.nn.Module) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The Captum form of the issue: ``f(src_ids, tgt_ids, src_mask)`` -> logits (batch, T, vocabulary)."""

    def forward(src_ids: Tensor, tgt_ids: Tensor, src_mask: Tensor) -> Tensor:
        return model(input_ids=src_ids, attention_mask=src_mask, decoder_input_ids=tgt_ids).logits

    return forward


class DecompXScores:
    """DecompX's source attributions; a refusal of the model is the reason to skip the method.

    Every target word of a sentence is explained in one call: by ``DecompX.decompose_target`` where
    DecompX has it (one decomposition for all positions), else by Captum's ``attribute`` on the rows
    (one row per target word). On the first sentence both are computed and must agree.
    """

    def __init__(self, include_biases: bool, magnitude: bool = False):
        self.include_biases = include_biases
        self.magnitude = magnitude  # score by |contribution| instead of the signed contribution
        self.explainer = None
        self.last_delta: Tensor | None = None
        self.checked = False

    def __call__(self, model: torch.nn.Module, rows: Rows) -> Tensor:
        from captum_decompx import DecompX

        if self.explainer is None or self.explainer.model is not model:
            self.explainer = DecompX(translation_forward(model), model=model, include_biases=self.include_biases)
            self.checked = False
        scores = self.signed_scores(rows)
        return scores.abs() if self.magnitude else scores

    def signed_scores(self, rows: Rows) -> Tensor:
        """(T, source words) signed contributions of the source words to each target word's logit."""
        if not hasattr(self.explainer, "decompose_target"):
            return self.captum_form(rows)
        words = len(rows.targets)
        token_ids = torch.tensor([[token for _, token in rows.targets] + [0]])  # the last position is not read
        out = self.explainer.decompose_target(
            (rows.src_ids[:1], rows.tgt_ids[:1]), token_ids=token_ids, additional_forward_args=(rows.src_mask[:1],)
        )
        explained = out.source.sum(-1) + out.target.sum(-1) - out.logits  # minus the biases' share
        self.last_delta = explained[0, :words].detach()
        source = out.source[0, :words, : rows.source_words].detach()
        if not self.checked:  # the one-call form explains what Captum's form explains
            by_rows = self.captum_form(rows)
            scale = by_rows.abs().max().item()
            if not torch.allclose(source, by_rows, rtol=0, atol=1e-4 * max(scale, 1.0)):
                raise RuntimeError("DecompX.decompose_target and DecompX.attribute disagree on the first sentence.")
            self.checked = True
        return source

    def captum_form(self, rows: Rows) -> Tensor:
        """(T, source words) from ``attribute((src_ids, tgt_ids), target=[(j, word j), ...])``."""
        (source, _target_prefix), delta = self.explainer.attribute(  # type: ignore[union-attr]
            (rows.src_ids, rows.tgt_ids),
            target=rows.targets,
            additional_forward_args=(rows.src_mask,),
            return_convergence_delta=True,
        )
        self.last_delta = delta.detach()
        return source[:, : rows.source_words].detach()


def source_embeddings(model: torch.nn.Module, src_ids: Tensor) -> Tensor:
    """(batch, S, d_model): the source's word embeddings as the encoder reads them, before positions.

    BART's embedding module scales its output itself; Marian's encoder scales the looked-up vectors
    (``embed_scale``) only when it reads ids. :func:`check_source_embeddings` checks the result.
    """
    encoder = model.get_encoder()
    return encoder.embed_tokens(src_ids) * getattr(encoder, "embed_scale", 1.0)


def check_source_embeddings(model: torch.nn.Module, rows: Rows) -> None:
    """Refuse to run the embedding methods when the model, given :func:`source_embeddings`, does not
    return its own logits."""
    with torch.no_grad():
        by_ids = translation_forward(model)(rows.src_ids[:1], rows.tgt_ids[:1], rows.src_mask[:1])
        by_embeddings = embedding_forward(model)(source_embeddings(model, rows.src_ids[:1]), rows.tgt_ids[:1], rows.src_mask[:1])
    if not torch.allclose(by_ids, by_embeddings, atol=1e-5):
        raise RuntimeError(
            f"{type(model).__name__} given its source embeddings does not reproduce its logits: fix source_embeddings."
        )


def embedding_forward(model: torch.nn.Module) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``f(source embeddings, tgt_ids, src_mask)`` -> logits: the encoder reads the given embeddings."""

    def forward(embeddings: Tensor, tgt_ids: Tensor, src_mask: Tensor) -> Tensor:
        return model(inputs_embeds=embeddings, attention_mask=src_mask, decoder_input_ids=tgt_ids).logits

    return forward


def _reduce(attribution: Tensor, rows: Rows, reduction: str) -> Tensor:
    """(T, S, d_model) -> (T, source words): signed sum over the embedding, or its L2 norm."""
    reduced = attribution.sum(-1) if reduction == "sum" else attribution.norm(dim=-1)
    return reduced[:, : rows.source_words].detach()


def integrated_gradients(steps: int, reduction: str) -> ScoreFunction:
    """Captum ``IntegratedGradients`` on the source embeddings; baseline: the ``<pad>`` embedding at the
    words, ``</s>`` kept."""

    def scores(model: torch.nn.Module, rows: Rows) -> Tensor:
        from captum.attr import IntegratedGradients

        embeddings = source_embeddings(model, rows.src_ids).detach()
        baseline_ids = rows.src_ids.clone()
        baseline_ids[:, : rows.source_words] = model.config.pad_token_id
        baselines = source_embeddings(model, baseline_ids).detach()
        attribution = IntegratedGradients(embedding_forward(model)).attribute(
            embeddings,
            baselines=baselines,
            target=rows.targets,
            additional_forward_args=(rows.tgt_ids, rows.src_mask),
            n_steps=steps,
        )
        return _reduce(attribution, rows, reduction)

    return scores


def input_x_gradient(reduction: str) -> ScoreFunction:
    """Captum ``InputXGradient`` on the source embeddings."""

    def scores(model: torch.nn.Module, rows: Rows) -> Tensor:
        from captum.attr import InputXGradient

        embeddings = source_embeddings(model, rows.src_ids).detach().requires_grad_(True)
        attribution = InputXGradient(embedding_forward(model)).attribute(
            embeddings, target=rows.targets, additional_forward_args=(rows.tgt_ids, rows.src_mask)
        )
        return _reduce(attribution, rows, reduction)

    return scores


@torch.no_grad()
def attentions(model: torch.nn.Module, rows: Rows):
    """The model's attention probabilities for the first row (all rows are the same sentence)."""
    return model(
        input_ids=rows.src_ids[:1], attention_mask=rows.src_mask[:1], decoder_input_ids=rows.tgt_ids[:1], output_attentions=True
    )


def cross_attention(layers: str) -> ScoreFunction:
    """Cross-attention probabilities averaged over heads: of the last decoder layer, or averaged over layers."""

    def scores(model: torch.nn.Module, rows: Rows) -> Tensor:
        cross = attentions(model, rows).cross_attentions  # per layer (1, heads, T + 1, S)
        chosen = cross[-1:] if layers == "last" else cross
        mean = torch.stack([layer[0].mean(0) for layer in chosen]).mean(0)
        return mean[: len(rows.targets), : rows.source_words]

    return scores


def rollout_scores(model: torch.nn.Module, rows: Rows) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020) carried through an encoder-decoder.

    Each attention sub-layer is counted with its residual as ``0.5 A + 0.5 I`` (heads averaged).
    The encoder's rollout ``R_ss`` (S, S) is the product over its layers. In the decoder, every
    position holds shares over the target prefix ``R_tt`` (T, T) and over the source ``R_ts``
    (T, S), starting from ``R_tt = I``, ``R_ts = 0``: self-attention mixes both
    (``R <- (0.5 A + 0.5 I) R``); cross-attention ``C`` (T, S) brings in the encoder's output:
    ``R_tt <- 0.5 R_tt``, ``R_ts <- 0.5 R_ts + 0.5 C R_ss``. Each row sums to 1 over prefix and source.
    """
    output = attentions(model, rows)
    source_length = rows.src_ids.shape[1]
    encoder_rollout = torch.eye(source_length)
    for layer in output.encoder_attentions:
        mixing = 0.5 * layer[0].mean(0) + 0.5 * torch.eye(source_length)
        encoder_rollout = mixing @ encoder_rollout
    target_length = rows.tgt_ids.shape[1]
    prefix = torch.eye(target_length)
    source = torch.zeros(target_length, source_length)
    for self_attention, cross in zip(output.decoder_attentions, output.cross_attentions):
        mixing = 0.5 * self_attention[0].mean(0) + 0.5 * torch.eye(target_length)
        prefix, source = mixing @ prefix, mixing @ source
        prefix, source = 0.5 * prefix, 0.5 * source + 0.5 * cross[0].mean(0) @ encoder_rollout
    return source[: len(rows.targets), : rows.source_words]


class RandomScores:
    """Uniform random scores, seeded: a reference for chance."""

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model: torch.nn.Module, rows: Rows) -> Tensor:
        return torch.rand(len(rows.targets), rows.source_words, generator=self.generator)


def monotone_scores(model: torch.nn.Module, rows: Rows) -> Tensor:
    """The diagonal: target word j scores best on the source word at the same relative position."""
    target_words, source_words = len(rows.targets), rows.source_words
    target_position = (torch.arange(target_words, dtype=torch.float64) + 0.5) / target_words
    source_position = (torch.arange(source_words, dtype=torch.float64) + 0.5) / source_words
    return -(target_position[:, None] - source_position[None, :]).abs()


@dataclass(frozen=True)
class Method:
    """A method in the table: its display label, its score function and a one-line description."""

    label: str
    scores: ScoreFunction
    description: str
    decompx: bool = False


def build_methods(ig_steps: int) -> dict[str, Method]:
    """The methods by key, in table order."""
    return {
        "decompx-exact": Method(
            "DecompX exact",
            DecompXScores(include_biases=True),
            "exact path, biases decomposed (absdot); all target words of a sentence in one `decompose_target` call "
            "(checked against Captum's `attribute` on the first sentence)",
            True,
        ),
        "decompx-fast": Method(
            "DecompX fast",
            DecompXScores(include_biases=False),
            "fast path, without biases (one frozen forward pass, one backward pass); the same call",
            True,
        ),
        "decompx-exact-abs": Method(
            "DecompX exact (abs)",
            DecompXScores(include_biases=True, magnitude=True),
            "as DecompX exact, source words scored by the magnitude of their contribution",
            True,
        ),
        "decompx-fast-abs": Method(
            "DecompX fast (abs)",
            DecompXScores(include_biases=False, magnitude=True),
            "as DecompX fast, scored by magnitude",
            True,
        ),
        "ig": Method(
            "Integrated Gradients",
            integrated_gradients(ig_steps, "sum"),
            f"source embeddings, {ig_steps} steps, signed sum over the embedding",
        ),
        "ig-l2": Method(
            "Integrated Gradients (L2)",
            integrated_gradients(ig_steps, "l2"),
            f"source embeddings, {ig_steps} steps, L2 norm over the embedding",
        ),
        "ixg": Method("Input x Gradient", input_x_gradient("sum"), "source embeddings, signed sum over the embedding"),
        "ixg-l2": Method("Input x Gradient (L2)", input_x_gradient("l2"), "source embeddings, L2 norm over the embedding"),
        "cross-last": Method("Cross-attention, last layer", cross_attention("last"), "heads averaged"),
        "cross-mean": Method("Cross-attention, mean of layers", cross_attention("mean"), "heads and layers averaged"),
        "rollout": Method(
            "Attention rollout", rollout_scores, "encoder rollout carried through cross-attention, residual as 0.5 I"
        ),
        "random": Method("Random", RandomScores(), "uniform random scores (chance)"),
        "monotone": Method("Monotone (diagonal)", monotone_scores, "same relative position (ignores the reordering)"),
    }


# The run ------------------------------------------------------------------------------------


@dataclass
class MethodResult:
    """What one method gave over the sentences."""

    argmax: list[AlignmentCounts] = field(default_factory=list)
    thresholded: list[AlignmentCounts] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    max_abs_delta: float = 0.0
    skipped: str | None = None


def gold_argmax_counts(pair: synthetic.SentencePair) -> AlignmentCounts:
    """The best any argmax alignment can do: one gold source word per target word."""
    links = {min(link for link in pair.alignment if link[1] == target_index) for target_index in range(len(pair.target))}
    return alignment_counts(links, pair.alignment)


def evaluate(
    model: torch.nn.Module, pairs: Sequence[synthetic.SentencePair], methods: dict[str, Method], show_progress: bool = True
) -> dict[str, MethodResult]:
    """Score every sentence with every method; a DecompX refusal of the model skips that method."""
    vocabulary = synthetic.Vocabulary.build()
    results = {key: MethodResult() for key in methods}
    for number, pair in enumerate(pairs, 1):
        rows = sentence_rows(pair, vocabulary)
        if number == 1:
            check_source_embeddings(model, rows)
        for key, method in methods.items():
            result = results[key]
            if result.skipped:
                continue
            started = time.perf_counter()
            try:
                scores = method.scores(model, rows)
            except (ValueError, NotImplementedError, TypeError) as error:
                if not method.decompx or number > 1:
                    raise
                result.skipped = f"{type(error).__name__}: {error}"
                print(f"{method.label}: skipped, DecompX refuses this model: {error}", file=sys.stderr)
                continue
            result.seconds.append(time.perf_counter() - started)
            if isinstance(method.scores, DecompXScores) and method.scores.last_delta is not None and method.scores.include_biases:
                result.max_abs_delta = max(result.max_abs_delta, float(method.scores.last_delta.abs().max()))
            if scores.shape != (len(pair.target), len(pair.source)):
                raise RuntimeError(
                    f"{method.label} gave scores of shape {tuple(scores.shape)} for {len(pair.target)} x {len(pair.source)} words"
                )
            result.argmax.append(alignment_counts(hard_alignment(scores), pair.alignment))
            result.thresholded.append(alignment_counts(hard_alignment(scores, THRESHOLD), pair.alignment))
        if show_progress and (number % 25 == 0 or number == len(pairs)):
            print(f"{number}/{len(pairs)} sentences", file=sys.stderr, flush=True)
    return results


#: The method the others are compared with, sentence by sentence.
REFERENCE = "decompx-exact"


def summarize(results: dict[str, MethodResult], methods: dict[str, Method], resamples: int) -> list[dict]:
    """One row per method: AER (argmax and thresholded) with intervals, precision, recall, cost, and the
    paired difference of AER (argmax) with :data:`REFERENCE` where it ran."""
    rows = []
    reference = results.get(REFERENCE)
    for key, result in results.items():
        row: dict = {"key": key, "label": methods[key].label, "description": methods[key].description}
        if result.skipped:
            row["skipped"] = result.skipped
        else:
            hits = sum(count.hits for count in result.argmax)
            row.update(
                aer=aer(result.argmax),
                aer_ci=bootstrap_aer(result.argmax, resamples),
                precision=hits / sum(count.predicted for count in result.argmax),
                recall=hits / sum(count.gold for count in result.argmax),
                aer_thresholded=aer(result.thresholded),
                aer_thresholded_ci=bootstrap_aer(result.thresholded, resamples),
                seconds_per_sentence=float(np.mean(result.seconds)),
                seconds_median=float(np.median(result.seconds)),
            )
            if methods[key].decompx and methods[key].scores.include_biases:  # type: ignore[attr-defined]
                row["max_abs_convergence_delta"] = result.max_abs_delta
            if reference is not None and not reference.skipped and key != REFERENCE:
                row["difference_to_reference"] = paired_bootstrap_difference(result.argmax, reference.argmax, resamples)
        rows.append(row)
    return rows


def machine() -> str:
    cpu = platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs (shared), torch {torch.__version__} with {torch.get_num_threads()} threads"


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def write_report(rows: list[dict], info: dict, output_dir: Path, name: str) -> None:
    """``<name>.md``, ``<name>.json`` and ``<name>.png`` in ``output_dir``."""
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / f"{name}.json").write_text(json.dumps({"info": info, "methods": rows}, indent=2) + "\n")
    lines = [
        "# Word alignment from attributions: AER on a synthetic translation task",
        "",
        f"- Command (from the repository root): `{info['command']}`",
        f"- Model: `{info['model']}` ({info['model_class']}, {info['parameters']:,} parameters, d_model {info['d_model']}, "
        f"{info['layers']} encoder and decoder layers; trained by `python benchmarks/synthetic_translation.py`). "
        f"On these {info['sentences']} held-out sentences: greedy exact match {100 * info['exact_match']:.1f}%, "
        f"teacher-forced token accuracy {100 * info['token_accuracy']:.2f}%.",
        f"- Data: {info['sentences']} held-out sentences (seed {info['seed']}, none in the training set), "
        f"{info['target_words']} target words, {info['gold_links']} gold sure links.",
        f"- Date: {info['date']}; wall time {info['wall_seconds'] / 60:.1f} min; machine: {info['machine']}; "
        f"load average before {info['load_before']}, after {info['load_after']}.",
        "- Alignment: each target word is explained at the step that predicts it (teacher-forced on the gold target) and "
        "linked to its best-scored source word (argmax, `</s>` excluded); the thresholded column also links every source "
        f"word scored at least {THRESHOLD} of the best score. AER = 1 − 2|A∩S| / (|A|+|S|) with sure links only, pooled; "
        f"95% percentile bootstrap over sentences ({info['resamples']} resamples).",
        f"- The best possible argmax alignment (one gold source word per target word) has AER {info['gold_argmax_aer']:.3f}: "
        "many-to-one words (a past verb, a two-word noun) have two gold source words and argmax links only one.",
        "- Cost: mean wall time per sentence, all its target words explained at once: DecompX in one `decompose_target` "
        "call, the gradient methods on a batch of one row per target word, the attention methods from one forward pass.",
        "",
        "| Method | AER (argmax) | 95% CI | precision | recall | AER (≥ 0.5 · max) | 95% CI | s / sentence |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if "skipped" in row:
            lines.append(f"| {row['label']} | skipped | | | | | | |")
            continue
        low, high = row["aer_ci"]
        low_t, high_t = row["aer_thresholded_ci"]
        lines.append(
            f"| {row['label']} | {row['aer']:.3f} | {low:.3f}–{high:.3f} | {row['precision']:.3f} | {row['recall']:.3f} | "
            f"{row['aer_thresholded']:.3f} | {low_t:.3f}–{high_t:.3f} | {row['seconds_per_sentence']:.4f} |"
        )
    compared = [row for row in rows if "difference_to_reference" in row]
    if compared:
        reference_label = next(row["label"] for row in rows if row["key"] == REFERENCE)
        lines += [
            "",
            f"Paired differences with {reference_label} (AER argmax of the method minus its AER, on the same sentences; "
            "95% interval of a bootstrap that resamples the sentences once for both; positive: the method aligns worse):",
            "",
            f"| Method | AER − AER({reference_label}) | 95% CI |",
            "|---|---:|---:|",
        ]
        for row in compared:
            difference, low, high = row["difference_to_reference"]
            lines.append(f"| {row['label']} | {difference:+.3f} | {low:+.3f} to {high:+.3f} |")
    lines += ["", f"![AER per method, 95% bootstrap intervals]({name}.png)", "", "Methods:", ""]
    for row in rows:
        lines.append(f"- {row['label']}: {row['description']}.")
        if "skipped" in row:  # the reason's first sentence (the whole message is in the JSON)
            lines.append(f"  Skipped: {row['skipped'].split('. ')[0].rstrip('.')}.")
        if "max_abs_convergence_delta" in row:
            lines.append(f"  Largest |convergence delta| over all explained words: {row['max_abs_convergence_delta']:.2e}.")
    (output_dir / f"{name}.md").write_text("\n".join(lines) + "\n")
    plot(rows, output_dir / f"{name}.png", info)


def plot(rows: list[dict], path: Path, info: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [row for row in rows if "skipped" not in row]
    figure, axis = plt.subplots(figsize=(7, 0.42 * len(shown) + 1.2), dpi=100)
    positions = np.arange(len(shown))
    for offset, key, label in ((-0.2, "aer", "argmax"), (0.2, "aer_thresholded", f"≥ {THRESHOLD} · max")):
        values = np.array([row[key] for row in shown])
        intervals = np.array([row[key + "_ci"] for row in shown]).T
        axis.barh(positions + offset, values, height=0.38, xerr=np.abs(intervals - values), capsize=2, label=label)
    axis.axvline(info["gold_argmax_aer"], color="grey", linestyle=":", linewidth=1, label="best possible argmax")
    axis.set_yticks(positions, [row["label"] for row in shown])
    axis.invert_yaxis()
    axis.set_xlabel("AER (lower is better), 95% bootstrap interval")
    axis.set_xlim(0, 1)
    axis.legend(loc="upper right", fontsize=8)
    axis.set_title(f"Synthetic translation, {info['sentences']} held-out sentences", fontsize=10)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(synthetic.MODEL_DIR), help="the trained model's folder")
    parser.add_argument("--train", action="store_true", help="retrain the model (and store it in --model) first")
    parser.add_argument("--sentences", type=int, default=300, help="held-out sentences to align")
    parser.add_argument("--seed", type=int, default=1, help="the held-out sentences' generator seed (training uses 0)")
    parser.add_argument("--ig-steps", type=int, default=50, help="Integrated Gradients steps")
    parser.add_argument("--methods", default=None, help="comma-separated keys (default: all): " + ", ".join(build_methods(50)))
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--output-dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--name", default="translation_alignment", help="output file stem")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = build_methods(args.ig_steps)
    if args.methods:
        keys = args.methods.split(",")
        unknown = [key for key in keys if key not in methods]
        if unknown:
            raise SystemExit(f"unknown methods {unknown}; choose from {list(methods)}")
        methods = {key: methods[key] for key in keys}
    if args.train:
        synthetic.train(args.model, command="python benchmarks/translation_alignment.py --train")
    model_path = Path(args.model)
    vocabulary = synthetic.Vocabulary.build()
    stored_vocabulary = json.loads((model_path / "vocab.json").read_text())
    if stored_vocabulary != list(vocabulary.words):
        raise SystemExit(f"{model_path / 'vocab.json'} is not the generator's vocabulary: retrain with --train.")
    model = synthetic.load_model(model_path)
    pairs = synthetic.held_out_pairs(args.sentences, args.seed)
    accuracy = synthetic.translation_accuracy(model, pairs, vocabulary)

    load_before = load_average()
    started = time.perf_counter()
    results = evaluate(model, pairs, methods)
    wall = time.perf_counter() - started
    rows = summarize(results, methods, args.resamples)
    arguments = sys.argv[1:] if argv is None else list(argv)
    command = " ".join(["python benchmarks/translation_alignment.py", *map(shlex.quote, arguments)])
    info = {
        "command": command,
        "model": os.path.relpath(model_path.resolve(), REPO) if model_path.resolve().is_relative_to(REPO) else str(model_path),
        "model_class": type(model).__name__,
        "parameters": sum(parameter.numel() for parameter in model.parameters()),
        "d_model": model.config.d_model,
        "layers": model.config.encoder_layers,
        "sentences": len(pairs),
        "seed": args.seed,
        "target_words": sum(len(pair.target) for pair in pairs),
        "gold_links": sum(len(pair.alignment) for pair in pairs),
        "exact_match": accuracy["exact_match"],
        "token_accuracy": accuracy["token_accuracy"],
        "gold_argmax_aer": aer([gold_argmax_counts(pair) for pair in pairs]),
        "resamples": args.resamples,
        "ig_steps": args.ig_steps,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_seconds": wall,
        "machine": machine(),
        "load_before": load_before,
        "load_after": load_average(),
    }
    write_report(rows, info, Path(args.output_dir), args.name)
    print((Path(args.output_dir) / f"{args.name}.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
