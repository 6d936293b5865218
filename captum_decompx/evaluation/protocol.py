"""The faithfulness protocol: per-example metric rows of a batch (:func:`example_rows`) and the whole
evaluation of several attribution methods on a list of examples (:func:`evaluate_faithfulness`)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .encoding import Batch, Example, _encode, encode_examples
from .methods import MethodSpec
from .metrics import DEFAULT_FRACTIONS, FaithfulnessMetric, MaskedPredictions, default_metrics
from .results import ROW_KEYS, FaithfulnessResult, aggregate_rows


def _probabilities(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Optional[Tensor], chunk: int
) -> Tensor:
    """Softmax probabilities (rows, classes); identical rows run once."""
    columns = [input_ids, attention_mask] + ([] if token_type_ids is None else [token_type_ids])
    unique, inverse = torch.unique(torch.cat(columns, dim=1), dim=0, return_inverse=True)
    seq = input_ids.shape[1]
    out = []
    with torch.no_grad():
        for start in range(0, unique.shape[0], chunk):
            part = unique[start : start + chunk]
            kwargs = {"attention_mask": part[:, seq : 2 * seq]}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = part[:, 2 * seq :]
            out.append(torch.softmax(model(input_ids=part[:, :seq], **kwargs).logits.float(), dim=-1))
    return torch.cat(out)[inverse]


def _variant_probabilities(model: nn.Module, batch: Batch, variants: list[Tensor], reference: Tensor, chunk: int) -> Tensor:
    """(variants, batch, classes) probabilities of masked copies of ``batch``; unchanged rows reuse
    ``reference`` (batch, classes) and identical rows run once."""
    if not variants:
        return reference.new_zeros((0,) + tuple(reference.shape))
    repeats = len(variants)
    stacked = torch.cat(variants)
    out = reference.repeat(repeats, 1)
    changed = (stacked != batch.input_ids.repeat(repeats, 1)).any(1)
    if bool(changed.any()):
        token_type_ids = None if batch.token_type_ids is None else batch.token_type_ids.repeat(repeats, 1)[changed]
        out[changed] = _probabilities(
            model, stacked[changed], batch.attention_mask.repeat(repeats, 1)[changed], token_type_ids, chunk
        )
    return out.view(repeats, *reference.shape)


def _check_model_and_tokens(model: nn.Module, mask_token_id: Optional[int]) -> int:
    if model.training:
        raise ValueError("The model is in training mode: call model.eval() before evaluating.")
    if mask_token_id is None:
        raise ValueError("The protocol replaces tokens with the mask token, but the tokenizer has none.")
    return int(mask_token_id)


def _as_spec(spec: Union[MethodSpec, tuple]) -> MethodSpec:
    return spec if isinstance(spec, MethodSpec) else MethodSpec(*spec)


def _metric_columns(
    model: nn.Module,
    batch: Batch,
    scores: Tensor,
    metrics: Sequence[FaithfulnessMetric],
    mask_id: int,
    reference: Tensor,
    predicted: Tensor,
    forward_batch_size: int,
) -> dict[str, list[Any]]:
    """Every metric's per-example columns for one method's ``scores`` (batch, seq).

    The masked inputs of all metrics are scored in one series of forward passes.
    """
    size = batch.input_ids.shape[0]
    inputs = [metric.masked_inputs(batch, scores, mask_id) for metric in metrics]
    probabilities = _variant_probabilities(
        model, batch, [variant for group in inputs for variant in group], reference, forward_batch_size
    )
    columns: dict[str, list[Any]] = {}
    position = 0
    for metric, group in zip(metrics, inputs):
        masked = list(probabilities[position : position + len(group)])
        position += len(group)
        values = metric.example_values(MaskedPredictions(batch, reference, predicted, masked, scores))
        for column in metric.columns:
            if column not in values or len(values[column]) != size:
                raise ValueError(f"{type(metric).__name__}.example_values must return {size} values for column {column!r}.")
            if column in columns or column in ROW_KEYS:
                raise ValueError(f"Two metrics (or a metric and the row keys) use the column {column!r}.")
            columns[column] = values[column]
    return columns


def example_rows(
    model: nn.Module,
    batch: Batch,
    methods: Mapping[str, Union[MethodSpec, tuple]],
    metrics: Sequence[FaithfulnessMetric],
    *,
    mask_token_id: Optional[int],
    example_ids: Optional[Iterable[Any]] = None,
    forward_batch_size: int = 128,
    on_method_done: Optional[Callable[[str, int], None]] = None,
) -> list[dict[str, Any]]:
    """Per-example metric rows of a batch, for each attribution method.

    Args:
        model: the classifier, in eval mode.
        batch: the examples (:func:`encode_examples`).
        methods: name -> :class:`MethodSpec` (or the tuple form of :func:`evaluate_faithfulness`).
        metrics: the metrics to measure (e.g. :func:`default_metrics`).
        mask_token_id: the tokenizer's mask token id.
        example_ids: one id per example (int or str), recorded in the rows; default 0, 1, ...
        forward_batch_size: sequences per forward pass when scoring the masked inputs.
        on_method_done: called as ``on_method_done(name, number_of_examples)`` after each method
            (e.g. to advance a progress bar).

    Returns:
        one dict per (method, example), methods in the given order: the keys :data:`ROW_KEYS` and
        every metric's columns, with str, int, float or list-of-float values.
    """
    mask_id = _check_model_and_tokens(model, mask_token_id)
    size = batch.input_ids.shape[0]
    ids = list(range(size)) if example_ids is None else list(example_ids)
    if len(ids) != size:
        raise ValueError(f"{len(ids)} example ids for a batch of {size} examples.")
    specs = {name: _as_spec(spec) for name, spec in methods.items()}
    reference = _probabilities(model, batch.input_ids, batch.attention_mask, batch.token_type_ids, forward_batch_size)
    predicted = reference.argmax(-1)
    p_predicted = reference.gather(1, predicted.view(-1, 1)).squeeze(1)
    rows: list[dict[str, Any]] = []
    raw_outputs: dict[tuple, Tensor] = {}
    for name, spec in specs.items():
        key = spec._call_key()
        seconds = 0.0
        if key not in raw_outputs:  # e.g. IG reduced by L2 and by sum: one attribute call
            began = time.perf_counter()
            raw_outputs[key] = spec.raw(batch, predicted)
            seconds = time.perf_counter() - began
        scores = spec.reduced(raw_outputs[key], batch)
        columns = _metric_columns(model, batch, scores, metrics, mask_id, reference, predicted, forward_batch_size)
        for row in range(size):
            entry: dict[str, Any] = {
                "method": name,
                "example": ids[row],
                "label": int(batch.labels[row]),
                "predicted": int(predicted[row]),
                "p_predicted": float(p_predicted[row]),
                "seconds": seconds / size,
            }
            entry.update({column: values[row] for column, values in columns.items()})
            rows.append(entry)
        if on_method_done is not None:
            on_method_done(name, size)
    return rows


def _protocol_inputs(
    examples: Sequence[Example],
    labels: Sequence[int],
    methods: Mapping[str, Union[MethodSpec, tuple]],
    fractions: Optional[Sequence[float]],
    keep_fraction: Optional[float],
    metrics: Optional[Sequence[FaithfulnessMetric]],
) -> tuple[dict[str, MethodSpec], Sequence[FaithfulnessMetric]]:
    """Check :func:`evaluate_faithfulness`'s inputs; the methods as :class:`MethodSpec` and the metrics to measure."""
    if len(examples) == 0:
        raise ValueError("No examples to evaluate.")
    if len(examples) != len(labels):
        raise ValueError(f"{len(examples)} examples but {len(labels)} labels.")
    specs = {name: _as_spec(spec) for name, spec in methods.items()}
    if not specs:
        raise ValueError("Give at least one method.")
    if metrics is None:
        pairs = isinstance(examples[0], (tuple, list))
        metrics = default_metrics(DEFAULT_FRACTIONS if fractions is None else fractions, keep_fraction, pairs=pairs)
    elif fractions is not None or keep_fraction is not None:
        raise ValueError("Give either `metrics` or `fractions`/`keep_fraction` (which configure the default metrics), not both.")
    if not metrics:
        raise ValueError("Give at least one metric.")
    return specs, metrics


def evaluate_faithfulness(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    labels: Sequence[int],
    methods: Mapping[str, Union[MethodSpec, tuple]],
    *,
    fractions: Optional[Sequence[float]] = None,
    keep_fraction: Optional[float] = None,
    metrics: Optional[Sequence[FaithfulnessMetric]] = None,
    batch_size: int = 16,
    forward_batch_size: int = 128,
    max_length: Optional[int] = 128,
    show_progress: bool = True,
) -> FaithfulnessResult:
    """Score attribution methods by masking the tokens they rank most (and least) important.

    Args:
        model: a sequence classifier in eval mode, called as ``model(input_ids=..., attention_mask=...,
            token_type_ids=...)`` and returning an object with ``.logits``.
        tokenizer: a Hugging Face tokenizer with a mask token.
        examples: texts, or ``(text_a, text_b)`` pairs.
        labels: the gold label of every example.
        methods: name -> :class:`MethodSpec`, or a tuple ``(attribution, reduce)`` or
            ``(attribution, reduce, baselines, attribute_kwargs)``, the fields of a MethodSpec.
        fractions: the K values of AOPC and accuracy (shares of the non-special tokens masked);
            default 0.0, 0.1, ..., 0.9.
        keep_fraction: the share of top tokens kept for the prediction-performance column;
            default 0.2 for single texts and 0.4 for pairs.
        metrics: the metrics to measure instead of :func:`default_metrics` (then ``fractions`` and
            ``keep_fraction`` must not be given).
        batch_size: examples per attribution call.
        forward_batch_size: sequences per forward pass when scoring the masked variants.
        max_length: truncate longer inputs (None: no truncation).
        show_progress: show a tqdm progress bar over examples x methods.

    Returns:
        a :class:`FaithfulnessResult`; ``print`` it for the markdown table, ``.plot(path)`` for
        the curves. The same as :func:`aggregate_rows` of the :func:`example_rows` of every batch.
    """
    mask_id = _check_model_and_tokens(model, getattr(tokenizer, "mask_token_id", None))
    specs, metrics = _protocol_inputs(examples, labels, methods, fractions, keep_fraction, metrics)
    device = next(model.parameters()).device

    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples) * len(specs), desc="faithfulness", unit="attribution")
    # Batches of similar lengths waste less work on padding; rows are aggregated by example id.
    lengths = [len(ids) for ids in _encode(tokenizer, list(examples), max_length, pad=False)["input_ids"]]
    order = sorted(range(len(examples)), key=lambda index: lengths[index])
    rows: list[dict[str, Any]] = []
    try:
        for start in range(0, len(examples), batch_size):
            indices = order[start : start + batch_size]
            batch = encode_examples(
                tokenizer, [examples[i] for i in indices], [labels[i] for i in indices], max_length=max_length, device=device
            )
            rows += example_rows(
                model,
                batch,
                specs,
                metrics,
                mask_token_id=mask_id,
                example_ids=indices,
                forward_batch_size=forward_batch_size,
                on_method_done=None if bar is None else lambda name, count: bar.update(count),
            )
    finally:
        if bar is not None:
            bar.close()
    return aggregate_rows(rows, metrics, methods=list(specs))
