"""The faithfulness metrics: masking tokens by rank, and one :class:`FaithfulnessMetric` object per
metric (AOPC, masked accuracy, keep-top accuracy, ERASER's comprehensiveness and sufficiency)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from .encoding import Batch

DEFAULT_FRACTIONS: tuple[float, ...] = tuple(step / 10 for step in range(10))
#: ferret's default thresholds for comprehensiveness and sufficiency: 10%, 20%, ..., 100%.
ERASER_FRACTIONS: tuple[float, ...] = tuple(step / 10 for step in range(1, 11))
KEEP_FRACTION_SINGLE = 0.2
KEEP_FRACTION_PAIRS = 0.4
_FLOOR_EPS = 1e-9


# --------------------------------------------------------------------------------------------
# Masking


def masked_counts(candidates: Tensor, fraction: float) -> Tensor:
    """``floor(fraction * n)`` per example, ``n`` = number of candidates: (batch,) long."""
    n = candidates.sum(dim=1).to(torch.float64)
    return torch.floor(n * fraction + _FLOOR_EPS).long()


def importance_ranks(scores: Tensor, candidates: Tensor, *, most_important: bool = True) -> Tensor:
    """Each candidate's rank (0 = first) when sorted by score; non-candidates come after all candidates.

    Args:
        scores: (batch, seq), larger = more important. Ties are broken by position (earlier first).
        candidates: (batch, seq) bool.
        most_important: rank the highest score first; False: the lowest first.

    Returns:
        (batch, seq) long.
    """
    fill = float("-inf") if most_important else float("inf")
    keyed = torch.where(candidates, scores.float(), torch.full_like(scores, fill, dtype=torch.float32))
    order = torch.sort(keyed, dim=1, descending=most_important, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return rank


def mask_ranked_tokens(
    input_ids: Tensor,
    scores: Tensor,
    candidates: Tensor,
    fraction: float,
    mask_token_id: int,
    *,
    most_important: bool = True,
) -> Tensor:
    """Replace ``floor(fraction * n)`` candidate tokens by the mask token, in order of importance.

    Args:
        input_ids: (batch, seq).
        scores: (batch, seq), larger = more important. Ties are broken by position (earlier first).
        candidates: (batch, seq) bool, the tokens that may be masked.
        fraction: K, in [0, 1].
        most_important: mask the highest-scored candidates first; False: the lowest first.

    Returns:
        (batch, seq) masked ids; non-candidates are never changed.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    rank = importance_ranks(scores, candidates, most_important=most_important)
    chosen = candidates & (rank < masked_counts(candidates, fraction).unsqueeze(1))
    return torch.where(chosen, torch.full_like(input_ids, mask_token_id), input_ids)


def top_rationale(scores: Tensor, candidates: Tensor, fraction: float, *, only_positive: bool = True) -> Tensor:
    """ferret's discrete rationale: the top ``floor(fraction * n)`` candidates by score, of which
    (``only_positive``) only those with a positive score.

    Args:
        scores: (batch, seq), larger = more important; ties broken by position (earlier first).
        candidates: (batch, seq) bool.
        fraction: k, in [0, 1].

    Returns:
        (batch, seq) bool, True on the rationale's tokens.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}.")
    rank = importance_ranks(scores, candidates, most_important=True)
    rationale = candidates & (rank < masked_counts(candidates, fraction).unsqueeze(1))
    if only_positive:
        rationale = rationale & (scores > 0)
    return rationale


# --------------------------------------------------------------------------------------------
# The metric protocol


@dataclass
class MaskedPredictions:
    """What a metric sees after its masked inputs went through the model.

    Attributes:
        batch: the examples.
        reference: (batch, classes) probabilities of the unmasked inputs.
        predicted: (batch,) the predicted classes, ``y_hat``.
        masked: one (batch, classes) probability tensor per input the metric returned from
            :meth:`FaithfulnessMetric.masked_inputs`, in the same order.
        scores: (batch, seq) the token scores of the attribution method.
    """

    batch: Batch
    reference: Tensor
    predicted: Tensor
    masked: list[Tensor]
    scores: Tensor

    def drop(self, index: int) -> Tensor:
        """(batch,) float64 ``p(y_hat | x) - p(y_hat | masked input number index)``."""
        column = self.predicted.view(-1, 1)
        return (self.reference.gather(1, column) - self.masked[index].gather(1, column)).squeeze(1).double()

    def correct(self, index: int) -> Tensor:
        """(batch,) bool: the prediction on masked input number ``index`` equals the gold label."""
        return self.masked[index].argmax(-1) == self.batch.labels


class FaithfulnessMetric(ABC):
    """One faithfulness metric: which masked inputs it needs, what it records per example and how it
    aggregates. A new metric is one subclass; :func:`evaluate_faithfulness`, :func:`example_rows`,
    :func:`aggregate_rows` and :meth:`FaithfulnessResult.to_markdown` need no change.

    Attributes:
        columns: the per-example row columns that :meth:`example_values` returns (plain floats or
            lists of floats, so that rows can go to JSON or Parquet).
    """

    columns: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def masked_inputs(self, batch: Batch, scores: Tensor, mask_token_id: int) -> list[Tensor]:
        """The inputs to run the model on.

        Args:
            batch: the examples.
            scores: (batch, seq) float token scores for the predicted class.
            mask_token_id: the id that replaces a removed token.

        Returns:
            a list of (batch, seq) id tensors (variants of ``batch.input_ids``); identical rows across
            metrics run once.
        """

    @abstractmethod
    def example_values(self, predictions: MaskedPredictions) -> dict[str, list[Any]]:
        """Per-example values: ``{column: [value of example 0, value of example 1, ...]}``."""

    @abstractmethod
    def summarize(self, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
        """Aggregates of one attribution method over all examples.

        Args:
            columns: each of :attr:`columns` stacked over the examples (examples first), float64.

        Returns:
            named floats or arrays; they become :attr:`MethodResult.summary` entries.
        """

    def table_cells(self, summary: Mapping[str, Any]) -> list[tuple[float, str, str]]:
        """``(position, header, formatted value)`` per column of the markdown table; cells of all
        metrics are sorted by position."""
        return []


class _OverFractions(FaithfulnessMetric):
    """A metric measured with ``floor(K * n)`` tokens masked for each K of ``fractions``, the most
    important first and then the least important first (2K masked inputs per example)."""

    def __init__(self, fractions: Sequence[float] = DEFAULT_FRACTIONS) -> None:
        self.fractions = _check_fractions(fractions)

    def masked_inputs(self, batch: Batch, scores: Tensor, mask_token_id: int) -> list[Tensor]:
        return [
            mask_ranked_tokens(batch.input_ids, scores, batch.candidates, k, mask_token_id, most_important=most)
            for most in (True, False)
            for k in self.fractions
        ]


class AOPC(_OverFractions):
    """The DecompX paper's AOPC: mean over K of ``p(y_hat | x) - p(y_hat | x_K)``, where ``x_K`` has
    ``floor(K * n)`` tokens masked, most (``aopc_most``) or least (``aopc_least``) important first.

    Row columns ``aopc_most``, ``aopc_least``: (K,) probability drops. Summary: ``aopc_most`` (K,)
    mean over examples, ``aopc_most_per_example`` (examples,) mean over K, and the same for least.
    """

    columns = ("aopc_most", "aopc_least")

    def example_values(self, predictions: MaskedPredictions) -> dict[str, list[Any]]:
        n_k = len(self.fractions)
        drops = torch.stack([predictions.drop(index) for index in range(2 * n_k)], dim=1)  # (batch, 2K)
        return {"aopc_most": drops[:, :n_k].tolist(), "aopc_least": drops[:, n_k:].tolist()}

    def summarize(self, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {
            "aopc_most": columns["aopc_most"].mean(axis=0),
            "aopc_least": columns["aopc_least"].mean(axis=0),
            "aopc_most_per_example": columns["aopc_most"].mean(axis=1),
            "aopc_least_per_example": columns["aopc_least"].mean(axis=1),
        }

    def table_cells(self, summary: Mapping[str, Any]) -> list[tuple[float, str, str]]:
        return [
            (1, "AOPC most ↑", f"{float(summary['aopc_most'].mean()):.3f}"),
            (3, "AOPC least ↓", f"{float(summary['aopc_least'].mean()):.3f}"),
        ]


class MaskedAccuracy(_OverFractions):
    """Accuracy against the gold labels with ``floor(K * n)`` tokens masked, most or least important first.

    Row columns ``correct_most``, ``correct_least``: (K,) 1.0 or 0.0. Summary: ``accuracy_most`` and
    ``accuracy_least``, (K,) each.
    """

    columns = ("correct_most", "correct_least")

    def example_values(self, predictions: MaskedPredictions) -> dict[str, list[Any]]:
        n_k = len(self.fractions)
        correct = torch.stack([predictions.correct(index) for index in range(2 * n_k)], dim=1).double()
        return {"correct_most": correct[:, :n_k].tolist(), "correct_least": correct[:, n_k:].tolist()}

    def summarize(self, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {"accuracy_most": columns["correct_most"].mean(axis=0), "accuracy_least": columns["correct_least"].mean(axis=0)}

    def table_cells(self, summary: Mapping[str, Any]) -> list[tuple[float, str, str]]:
        return [
            (2, "Acc most ↓", f"{100 * float(summary['accuracy_most'].mean()):.2f}"),
            (4, "Acc least ↑", f"{100 * float(summary['accuracy_least'].mean()):.2f}"),
        ]


class KeepTopAccuracy(FaithfulnessMetric):
    """The paper's prediction performance: accuracy when only the top ``keep_fraction`` of the
    tokens are kept (the lowest ``floor((1 - keep_fraction) * n)`` are masked).

    Row column ``keep_top_correct``: 1.0 or 0.0. Summary: ``keep_top_accuracy``.
    """

    columns = ("keep_top_correct",)

    def __init__(self, keep_fraction: float = KEEP_FRACTION_SINGLE) -> None:
        if not 0.0 <= keep_fraction <= 1.0:
            raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}.")
        self.keep_fraction = float(keep_fraction)

    def masked_inputs(self, batch: Batch, scores: Tensor, mask_token_id: int) -> list[Tensor]:
        return [
            mask_ranked_tokens(
                batch.input_ids, scores, batch.candidates, 1.0 - self.keep_fraction, mask_token_id, most_important=False
            )
        ]

    def example_values(self, predictions: MaskedPredictions) -> dict[str, list[Any]]:
        return {"keep_top_correct": predictions.correct(0).double().tolist()}

    def summarize(self, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {"keep_top_accuracy": float(columns["keep_top_correct"].mean())}

    def table_cells(self, summary: Mapping[str, Any]) -> list[tuple[float, str, str]]:
        return [(5, f"Acc keep top {round(self.keep_fraction * 100)}% ↑", f"{100 * summary['keep_top_accuracy']:.2f}")]


class _EraserMetric(FaithfulnessMetric):
    """Shared by comprehensiveness and sufficiency: rationales at every threshold, and ferret's mean
    over the distinct non-empty ones."""

    name: ClassVar[str]
    empty_value: ClassVar[float]

    def __init__(self, fractions: Sequence[float] = ERASER_FRACTIONS, *, only_positive: bool = True) -> None:
        self.fractions = _check_fractions(fractions)
        if list(self.fractions) != sorted(self.fractions):
            raise ValueError(f"{type(self).__name__} needs increasing thresholds, got {self.fractions}.")
        self.only_positive = only_positive

    @abstractmethod
    def _remove(self, batch: Batch, rationale: Tensor) -> Tensor:
        """(batch, seq) bool: the tokens to mask, given the (batch, seq) rationale."""

    def masked_inputs(self, batch: Batch, scores: Tensor, mask_token_id: int) -> list[Tensor]:
        variants = []
        for fraction in self.fractions:
            rationale = top_rationale(scores, batch.candidates, fraction, only_positive=self.only_positive)
            variants.append(
                torch.where(self._remove(batch, rationale), torch.full_like(batch.input_ids, mask_token_id), batch.input_ids)
            )
        return variants

    def example_values(self, predictions: MaskedPredictions) -> dict[str, list[Any]]:
        batch = predictions.batch
        sizes = torch.stack(
            [
                top_rationale(predictions.scores, batch.candidates, k, only_positive=self.only_positive).sum(1)
                for k in self.fractions
            ],
            dim=1,
        )  # (batch, thresholds); rationales are nested, so a repeat has the size of the one before
        previous = torch.cat([torch.zeros_like(sizes[:, :1]), sizes[:, :-1]], dim=1)
        used = (sizes > 0) & (sizes != previous)
        drops = torch.stack([predictions.drop(index) for index in range(len(self.fractions))], dim=1)
        steps = used.sum(1)
        mean = (drops * used).sum(1) / steps.clamp(min=1)
        values = torch.where(steps > 0, mean, torch.full_like(mean, self.empty_value))
        return {self.name: values.tolist(), f"{self.name}_steps": steps.double().tolist()}

    def summarize(self, columns: Mapping[str, np.ndarray]) -> dict[str, Any]:
        return {self.name: float(columns[self.name].mean()), f"{self.name}_per_example": columns[self.name]}


class Comprehensiveness(_EraserMetric):
    """ERASER's comprehensiveness as ferret reports it (``aopc_compr``): per example, the mean over
    thresholds ``k`` of ``p(y_hat | x) - p(y_hat | x with the rationale masked)``, the rationale being
    the top ``floor(k * n)`` tokens that have a positive score (:func:`top_rationale`); a threshold
    whose rationale is empty or equals the previous one is skipped; an example without any rationale
    scores 0. Higher is better.

    Args:
        fractions: the thresholds, increasing; ferret's 10%, ..., 100% by default.
        only_positive: keep only positively scored tokens in the rationale (ferret's ``only_pos``).

    Row columns ``comprehensiveness`` and ``comprehensiveness_steps`` (the number of thresholds
    averaged). Summary: ``comprehensiveness`` (mean over examples), ``comprehensiveness_per_example``.
    """

    name = "comprehensiveness"
    columns = ("comprehensiveness", "comprehensiveness_steps")
    empty_value = 0.0

    def _remove(self, batch: Batch, rationale: Tensor) -> Tensor:
        return rationale

    def table_cells(self, summary: Mapping[str, Any]) -> list[tuple[float, str, str]]:
        return [(6, "Comp ↑", f"{summary['comprehensiveness']:.3f}")]


class Sufficiency(_EraserMetric):
    """ERASER's sufficiency as ferret reports it (``aopc_suff``): per example, the mean over thresholds
    ``k`` of ``p(y_hat | x) - p(y_hat | only the rationale kept)``, every other non-special token
    masked; rationales as in :class:`Comprehensiveness`; an example without any rationale scores 1.
    Lower is better.

    Row columns ``sufficiency`` and ``sufficiency_steps``. Summary: ``sufficiency``,
    ``sufficiency_per_example``.
    """

    name = "sufficiency"
    columns = ("sufficiency", "sufficiency_steps")
    empty_value = 1.0

    def _remove(self, batch: Batch, rationale: Tensor) -> Tensor:
        return batch.candidates & ~rationale

    def table_cells(self, summary: Mapping[str, Any]) -> list[tuple[float, str, str]]:
        return [(7, "Suff ↓", f"{summary['sufficiency']:.3f}")]


def default_metrics(
    fractions: Sequence[float] = DEFAULT_FRACTIONS, keep_fraction: Optional[float] = None, *, pairs: bool = False
) -> list[FaithfulnessMetric]:
    """AOPC and accuracy over ``fractions``, the keep-top accuracy (``keep_fraction``, default 0.2,
    or 0.4 with ``pairs``), comprehensiveness and sufficiency (ferret's thresholds)."""
    if keep_fraction is None:
        keep_fraction = KEEP_FRACTION_PAIRS if pairs else KEEP_FRACTION_SINGLE
    return [AOPC(fractions), MaskedAccuracy(fractions), KeepTopAccuracy(keep_fraction), Comprehensiveness(), Sufficiency()]


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    values = tuple(float(k) for k in fractions)
    if not values:
        raise ValueError("Give at least one fraction of tokens to mask.")
    if any(not 0.0 <= k <= 1.0 for k in values):
        raise ValueError(f"Fractions must be in [0, 1], got {values}.")
    return values


# --------------------------------------------------------------------------------------------
# Results
