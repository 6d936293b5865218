"""The DecompX paper's faithfulness protocol and ERASER's metrics, for any Captum attribution method.

For each example the non-special tokens are ranked by their attribution to the *predicted* class
``y_hat`` and some of them are replaced with the tokenizer's mask token. Each metric is one
:class:`FaithfulnessMetric` object; the defaults (:func:`default_metrics`) are:

- :class:`AOPC`: ``floor(K * n)`` tokens (``n`` = number of non-special tokens) masked for
  ``K in {0.0, 0.1, ..., 0.9}``, once starting from the most and once from the least important;
  AOPC = mean over K and examples of ``p(y_hat | x) - p(y_hat | x_K)``;
- :class:`MaskedAccuracy`: the accuracy of those masked inputs against the gold labels, per K;
- :class:`KeepTopAccuracy`: the accuracy when only the top 20% (single sentences) or 40% (sentence
  pairs) of the non-special tokens are kept and the others masked (the paper's prediction
  performance);
- :class:`Comprehensiveness` and :class:`Sufficiency`: ERASER's metrics (DeYoung et al., 2020) as
  ferret reports them (``aopc_compr``, ``aopc_suff``): for ``k in {10%, ..., 100%}`` the rationale is
  the top ``floor(k * n)`` tokens that have a positive score; comprehensiveness is
  ``p(y_hat | x) - p(y_hat | x without the rationale)`` and sufficiency is
  ``p(y_hat | x) - p(y_hat | the rationale only)``, each averaged over the distinct non-empty
  rationales of the example, then over examples. Higher comprehensiveness and lower sufficiency are
  better.

Masking the most important tokens, higher AOPC and lower accuracy are better; masking the least
important, the reverse.

How ours relates to ferret's (``ferret.evaluators.faithfulness_measures``, 0.4.1): the thresholds,
``floor``, the positive-score filter (ferret's ``only_pos=True``), skipping a threshold whose
rationale equals the previous one, and the values for an example without any rationale
(comprehensiveness 0, sufficiency 1) are ferret's. Differences: removed tokens are replaced with the
mask token in place (ferret's default deletes them and re-tokenizes the decoded text); the class is
the predicted one (ferret takes a ``target``); all special tokens are excluded from ranking (ferret
drops the first and the last token only); ties are broken by position, earlier first (ferret's
``argsort`` leaves their order unspecified).

Example::

    forward = classifier_forward(model)
    embeddings = model.get_input_embeddings()
    result = evaluate_faithfulness(
        model, tokenizer, texts, labels,
        methods={
            "DecompX": MethodSpec(DecompX(model)),
            "IG (L2)": MethodSpec(
                LayerIntegratedGradients(forward, embeddings),
                reduce=l2_over_embedding,
                baselines=reference_baselines(tokenizer),
                attribute_kwargs={"n_steps": 50},
            ),
            "random": random_method(),
        },
    )
    print(result)                  # a markdown table
    result.plot("curves.png")      # AOPC and accuracy against K

Per-example rows and aggregation (for sharded or resumable runs): :func:`evaluate_faithfulness` is
built on three public steps, which a distributed run can call itself::

    metrics = default_metrics(pairs=False)
    batch = encode_examples(tokenizer, texts[i:j], labels[i:j])
    rows = example_rows(model, batch, {"DecompX": spec}, metrics,
                        mask_token_id=tokenizer.mask_token_id, example_ids=range(i, j))
    # ... write rows anywhere (one dict per example and method; values are str, int, float or
    # lists of floats: pyarrow.Table.from_pylist(rows) works), read all parts back ...
    result = aggregate_rows(all_rows, metrics)   # the same FaithfulnessResult

Each row has ``method``, ``example`` (the id given), ``label``, ``predicted``, ``p_predicted``,
``seconds`` (this example's share of its batch's attribution time) and the columns of every metric
(:attr:`FaithfulnessMetric.columns`). :func:`aggregate_rows` accepts the rows of any number of parts
in any order, refuses duplicates and methods evaluated on different examples, and returns
per-example arrays in the order of the example ids.

In this module *method* always means an attribution method (DecompX, Integrated Gradients, ...);
DecompX's own exact/fast choice is called its algorithm. Attribution methods can also be built by
key from a registry (:func:`build_methods`,
:func:`register_method`, :data:`METHOD_REGISTRY`), as a command line does.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor, nn

from .components.registry import Registry

DEFAULT_FRACTIONS: tuple[float, ...] = tuple(step / 10 for step in range(10))
#: ferret's default thresholds for comprehensiveness and sufficiency: 10%, 20%, ..., 100%.
ERASER_FRACTIONS: tuple[float, ...] = tuple(step / 10 for step in range(1, 11))
KEEP_FRACTION_SINGLE = 0.2
KEEP_FRACTION_PAIRS = 0.4
_FLOOR_EPS = 1e-9

Reduce = Callable[[Tensor], Tensor]
Example = Union[str, tuple[str, str]]


# --------------------------------------------------------------------------------------------
# Reductions: a method's raw output -> one score per token


def identity(attributions: Tensor) -> Tensor:
    """For methods that already give one score per token (DecompX, GlobEnc, ALTI): (batch, seq)."""
    return attributions


def sum_over_embedding(attributions: Tensor) -> Tensor:
    """Signed sum over the embedding dimension: (batch, seq, dim) -> (batch, seq)."""
    return attributions.sum(-1)


def l2_over_embedding(attributions: Tensor) -> Tensor:
    """L2 norm over the embedding dimension: (batch, seq, dim) -> (batch, seq)."""
    return torch.linalg.vector_norm(attributions, dim=-1)


# --------------------------------------------------------------------------------------------
# Batches and method specifications


@dataclass
class Batch:
    """One tokenized batch, as the methods see it.

    Attributes:
        input_ids: (batch, seq).
        attention_mask: (batch, seq), 1 on real tokens.
        token_type_ids: (batch, seq) segment ids, or None when the tokenizer gives none.
        candidates: (batch, seq) bool, the tokens that may be ranked and masked: real tokens that
            the tokenizer did not add (not [CLS], [SEP], <s>, </s>, padding).
        labels: (batch,) gold labels.
    """

    input_ids: Tensor
    attention_mask: Tensor
    token_type_ids: Optional[Tensor]
    candidates: Tensor
    labels: Tensor

    def forward_args(self) -> tuple[Tensor, ...]:
        """The ``additional_forward_args`` of a model called as ``model(input_ids, attention_mask,
        token_type_ids)``: ``(attention_mask,)``, plus ``token_type_ids`` when there are any."""
        if self.token_type_ids is None:
            return (self.attention_mask,)
        return (self.attention_mask, self.token_type_ids)


@dataclass
class MethodSpec:
    """How to call one attribution method.

    The evaluation calls::

        raw = attribution.attribute(batch.input_ids, target=predicted_classes,
                                    additional_forward_args=forward_args(batch),
                                    baselines=baselines(batch),      # only when given
                                    **attribute_kwargs)
        scores = reduce(raw)                                         # (batch, seq)

    Attributes:
        attribution: a Captum ``Attribution`` (or anything with a compatible ``attribute``).
        reduce: maps the raw output to one score per token: :func:`identity` (DecompX, GlobEnc,
            ALTI), :func:`sum_over_embedding` or :func:`l2_over_embedding` (layer methods on the
            embeddings). Larger means more important for the predicted class.
        baselines: builds the ``baselines`` argument from the batch (e.g. :func:`reference_baselines`
            for Integrated Gradients); None passes no baselines.
        attribute_kwargs: further keyword arguments of ``attribute`` (``n_steps``,
            ``internal_batch_size``, ...).
        forward_args: builds ``additional_forward_args`` from the batch; defaults to
            :meth:`Batch.forward_args`.
    """

    attribution: Any
    reduce: Reduce = identity
    baselines: Optional[Callable[[Batch], Any]] = None
    attribute_kwargs: dict[str, Any] = field(default_factory=dict)
    forward_args: Optional[Callable[[Batch], tuple]] = None

    def raw(self, batch: Batch, target: Tensor) -> Any:
        """The method's output for ``batch`` and the classes ``target`` (batch,), before ``reduce``."""
        kwargs = dict(self.attribute_kwargs)
        if self.baselines is not None:
            kwargs["baselines"] = self.baselines(batch)
        args = self.forward_args(batch) if self.forward_args is not None else batch.forward_args()
        raw = self.attribution.attribute(batch.input_ids, target=target, additional_forward_args=args, **kwargs)
        if isinstance(raw, tuple):
            raw = raw[0]
        return raw.detach()

    def reduced(self, raw: Tensor, batch: Batch) -> Tensor:
        """(batch, seq) float token scores from the raw output, checked."""
        scores = self.reduce(raw)
        if scores.shape != batch.input_ids.shape:
            raise ValueError(
                f"The reduced attributions have shape {tuple(scores.shape)}; expected one score per "
                f"token, {tuple(batch.input_ids.shape)}. Choose a `reduce` that maps the method's "
                "output to (batch, seq), e.g. l2_over_embedding for layer methods."
            )
        if not bool(torch.isfinite(scores[batch.candidates]).all()):
            raise ValueError("The attribution method returned non-finite scores.")
        return scores.float()

    def scores(self, batch: Batch, target: Tensor) -> Tensor:
        """(batch, seq) token scores for the classes ``target`` (batch,)."""
        return self.reduced(self.raw(batch, target), batch)

    def _call_key(self) -> tuple:
        """Specs with equal keys make the same ``attribute`` call (they differ only in ``reduce``)."""
        return (
            id(self.attribution),
            id(self.baselines),
            id(self.forward_args),
            tuple(sorted((k, repr(v)) for k, v in self.attribute_kwargs.items())),
        )


def reference_baselines(tokenizer: Any) -> Callable[[Batch], Tensor]:
    """Baselines for Integrated Gradients on the embeddings, as in Captum's BERT tutorial.

    Every candidate token is replaced by the padding token; the special tokens ([CLS], [SEP])
    and the padding are kept, so the reference is ``[CLS] [PAD] ... [PAD] [SEP]``.
    """
    pad = tokenizer.pad_token_id
    if pad is None:
        raise ValueError("The tokenizer has no padding token to build reference baselines from.")

    def build(batch: Batch) -> Tensor:
        return torch.where(batch.candidates, torch.full_like(batch.input_ids, pad), batch.input_ids)

    return build


class RandomAttribution(Attribution):
    """Uniform random scores: the chance-level baseline of the faithfulness protocol.

    Args:
        seed: seeds the generator once; successive calls draw new scores.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__(lambda *args, **kwargs: None)
        self.generator = torch.Generator().manual_seed(seed)

    @classmethod
    def get_name(cls) -> str:
        return "Random"

    def has_convergence_delta(self) -> bool:
        return False

    def attribute(self, inputs: Tensor, target: Any = None, additional_forward_args: Any = None, **_: Any) -> Tensor:
        """(batch, seq) scores drawn uniformly from [0, 1)."""
        if isinstance(inputs, tuple):
            inputs = inputs[0]
        return torch.rand(inputs.shape[:2], generator=self.generator).to(inputs.device)


def random_method(seed: int = 0) -> MethodSpec:
    """The random baseline as a :class:`MethodSpec`."""
    return MethodSpec(RandomAttribution(seed))


def classifier_forward(model: nn.Module) -> Callable[..., Tensor]:
    """A forward function ``f(input_ids, attention_mask=None, token_type_ids=None) -> logits``
    for Captum methods that need a tensor output (Integrated Gradients, Saliency, ...)."""

    def forward(input_ids: Tensor, attention_mask: Optional[Tensor] = None, token_type_ids: Optional[Tensor] = None) -> Tensor:
        kwargs = {"attention_mask": attention_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        return model(input_ids=input_ids, **kwargs).logits

    return forward


# --------------------------------------------------------------------------------------------
# A registry of attribution methods, keyed by name


class MethodContext:
    """What a registered factory builds its :class:`MethodSpec` from.

    Attributes:
        model: the classifier, in eval mode.
        tokenizer: its tokenizer.
        ig_steps: Integrated Gradients steps.
        internal_batch_size: Integrated Gradients' ``internal_batch_size`` (None: all steps at once).
        seed: the random baseline's seed.
    """

    def __init__(
        self, model: nn.Module, tokenizer: Any, *, ig_steps: int = 50, internal_batch_size: Optional[int] = None, seed: int = 0
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.ig_steps = ig_steps
        self.internal_batch_size = internal_batch_size
        self.seed = seed
        self._shared: dict[str, Any] = {}

    def shared(self, key: str, build: Callable[[], Any]) -> Any:
        """One object per ``key`` for all factories of this context, e.g. one Integrated Gradients
        instance reduced two ways, so that :func:`evaluate_faithfulness` calls it once."""
        if key not in self._shared:
            self._shared[key] = build()
        return self._shared[key]

    def input_embeddings(self) -> nn.Module:
        """The model's word-embedding layer (where the gradient methods attribute)."""
        get = getattr(self.model, "get_input_embeddings", None)
        if get is None:
            raise ValueError(
                "The model has no get_input_embeddings(): gradient methods on the word embeddings need a Hugging Face model."
            )
        return get()

    @property
    def forward(self) -> Callable[..., Tensor]:
        """:func:`classifier_forward` of the model (one per context)."""
        return self.shared("forward", lambda: classifier_forward(self.model))


@dataclass(frozen=True)
class RegisteredMethod:
    """A registry entry.

    Attributes:
        key: the short name a command line uses (``"ig"``).
        label: the display name in tables and plots (``"IG (sum)"``).
        build: ``context -> MethodSpec``.
        description: one line for help texts.
    """

    key: str
    label: str
    build: Callable[[MethodContext], MethodSpec]
    description: str = ""


#: Registered attribution methods by key, in registration order (the paper's Table 1 order).
METHOD_REGISTRY: Registry[RegisteredMethod] = Registry("attribution method")


def register_method(
    key: str, label: str, build: Callable[[MethodContext], MethodSpec], *, description: str = "", overwrite: bool = False
) -> None:
    """Register an attribution method under ``key`` so that :func:`build_methods` (and a command line)
    can pick it by name.

    Args:
        key: lower-case short name, e.g. ``"lime"``.
        label: display name, e.g. ``"LIME"``.
        build: ``MethodContext -> MethodSpec``; use ``context.shared(...)`` to share one Captum
            object between entries that only reduce its output differently.
        description: one line for help texts.
        overwrite: replace the method registered before under ``key``.
    """
    METHOD_REGISTRY.register(key, RegisteredMethod(key, label, build, description), overwrite=overwrite)


def unregister_method(key: str) -> None:
    """Remove a method registered with :func:`register_method`."""
    METHOD_REGISTRY.unregister(key)


def build_methods(keys: Sequence[str], model: nn.Module, tokenizer: Any, **context_options: Any) -> dict[str, MethodSpec]:
    """The :class:`MethodSpec` of each registered ``key``, keyed by its display label.

    Args:
        keys: registry keys (see :data:`METHOD_REGISTRY`), e.g. ``["decompx", "ig", "random"]``.
        model: the classifier.
        tokenizer: its tokenizer.
        **context_options: ``ig_steps``, ``internal_batch_size``, ``seed`` of :class:`MethodContext`.
    """
    unknown = [key for key in keys if key not in METHOD_REGISTRY]
    if unknown:
        raise ValueError(
            f"Unknown attribution method(s) {', '.join(map(repr, unknown))}; registered: {', '.join(map(str, METHOD_REGISTRY))}."
        )
    context = MethodContext(model, tokenizer, **context_options)
    return {METHOD_REGISTRY[key].label: METHOD_REGISTRY[key].build(context) for key in dict.fromkeys(keys)}


def _decompx(**options: Any) -> Callable[[MethodContext], MethodSpec]:
    def build(context: MethodContext) -> MethodSpec:
        from .attribution import DecompX

        return MethodSpec(DecompX(context.model, **options))

    return build


def _globenc(context: MethodContext) -> MethodSpec:
    from .baselines import GlobEnc

    return MethodSpec(GlobEnc(context.model))


def _alti(context: MethodContext) -> MethodSpec:
    from .baselines import ALTI

    return MethodSpec(ALTI(context.model))


def _integrated_gradients(reduce: Reduce) -> Callable[[MethodContext], MethodSpec]:
    def build(context: MethodContext) -> MethodSpec:
        from captum.attr import LayerIntegratedGradients

        embeddings = context.input_embeddings()
        return MethodSpec(
            context.shared("ig", lambda: LayerIntegratedGradients(context.forward, embeddings)),
            reduce=reduce,
            baselines=context.shared("reference", lambda: reference_baselines(context.tokenizer)),
            attribute_kwargs={"n_steps": context.ig_steps, "internal_batch_size": context.internal_batch_size},
        )

    return build


def _layer_gradient(multiply_by_inputs: bool, reduce: Reduce) -> Callable[[MethodContext], MethodSpec]:
    def build(context: MethodContext) -> MethodSpec:
        from captum.attr import LayerGradientXActivation

        embeddings = context.input_embeddings()
        make = lambda: LayerGradientXActivation(context.forward, embeddings, multiply_by_inputs=multiply_by_inputs)  # noqa: E731
        return MethodSpec(context.shared(f"layer_gradient_{multiply_by_inputs}", make), reduce=reduce)

    return build


register_method("decompx", "DecompX", _decompx(), description="DecompX, biases decomposed (exact)")
register_method(
    "decompx-fast",
    "DecompX w/o bias (fast)",
    _decompx(include_biases=False, algorithm="fast"),
    description="DecompX without biases, fast algorithm",
)
register_method(
    "decompx-no-ffn", "DecompX w/o FFN", _decompx(include_ffn=False), description="DecompX ablation: FFNs not decomposed"
)
register_method(
    "decompx-no-head",
    "DecompX w/o head",
    _decompx(include_head=False),
    description="DecompX ablation: classification head not decomposed",
)
register_method("globenc", "GlobEnc", _globenc, description="GlobEnc (norm-based, no FFN)")
register_method("alti", "ALTI", _alti, description="ALTI (norm-based aggregation)")
register_method(
    "ig-l2",
    "IG (L2)",
    _integrated_gradients(l2_over_embedding),
    description="Integrated Gradients on the word embeddings, L2 norm",
)
register_method(
    "ig",
    "IG (sum)",
    _integrated_gradients(sum_over_embedding),
    description="Integrated Gradients on the word embeddings, signed sum",
)
register_method(
    "gxi",
    "Gradient x Input (sum)",
    _layer_gradient(True, sum_over_embedding),
    description="Gradient x Input on the word embeddings, signed sum",
)
register_method(
    "gxi-l2",
    "Gradient x Input (L2)",
    _layer_gradient(True, l2_over_embedding),
    description="Gradient x Input on the word embeddings, L2 norm",
)
register_method(
    "saliency",
    "Saliency (L2)",
    _layer_gradient(False, l2_over_embedding),
    description="L2 norm of the gradient with respect to the word embeddings",
)
register_method(
    "random", "random", lambda context: random_method(context.seed), description="uniform random scores (chance level)"
)


def paper_methods(
    model: nn.Module,
    tokenizer: Any,
    *,
    ig_steps: int = 50,
    internal_batch_size: Optional[int] = None,
    seed: int = 0,
) -> dict[str, MethodSpec]:
    """The methods of the DecompX paper's Table 1, ready for :func:`evaluate_faithfulness`.

    DecompX (exact; without bias, fast path; without FFN; without the classification head),
    GlobEnc, ALTI, Integrated Gradients on the word embeddings against the ``[CLS] [PAD]... [SEP]``
    reference (L2 norm and signed sum over the embedding), Gradient x Input on the word
    embeddings (signed sum: the dot product of gradient and embedding; and L2 norm), Saliency (L2
    norm of the gradient with respect to the word embeddings) and random scores: the registry's
    built-in entries, keyed by display label.
    """
    keys = [
        "decompx", "decompx-fast", "decompx-no-ffn", "decompx-no-head", "globenc", "alti",
        "ig-l2", "ig", "gxi", "gxi-l2", "saliency", "random",
    ]  # fmt: skip
    return build_methods(keys, model, tokenizer, ig_steps=ig_steps, internal_batch_size=internal_batch_size, seed=seed)


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


def _measured(key: str, doc: str) -> Any:
    """A read-only property: ``summary[key]`` of a :class:`MethodResult` (a KeyError naming the measured ones)."""
    return property(lambda result: result._get(key), doc=doc)


def _mean_of(key: str) -> Any:
    """A read-only property: the mean of ``summary[key]`` as a float."""
    return property(lambda result: float(result._get(key).mean()), doc=f"The mean of ``{key}`` over K.")


@dataclass
class MethodResult:
    """The faithfulness of one attribution method.

    Attributes:
        summary: every metric's aggregates by name (see each metric's ``summarize``), e.g.
            ``aopc_most`` (K,), ``accuracy_most`` (K,), ``keep_top_accuracy``, ``comprehensiveness``,
            ``sufficiency``, ``aopc_most_per_example`` (examples,).
        per_example: every row column stacked over the examples, in the order of the example ids:
            (examples,) or (examples, K).
        seconds: wall time spent computing the attributions (not the masked forward passes); a
            call shared with an earlier method (same attribution and arguments, another
            ``reduce``) is counted for the earlier method only.
    """

    summary: dict[str, Any]
    per_example: dict[str, np.ndarray]
    seconds: float

    def _get(self, key: str) -> Any:
        if key not in self.summary:
            raise KeyError(f"{key!r} was not measured; the metrics measured: {', '.join(self.summary)}.")
        return self.summary[key]

    aopc_most = _measured("aopc_most", "(K,) mean probability drop of the predicted class per K, most important masked.")
    aopc_least = _measured("aopc_least", "(K,) as above, least important masked.")
    accuracy_most = _measured("accuracy_most", "(K,) accuracy against the gold labels per K, most important masked.")
    accuracy_least = _measured("accuracy_least", "(K,) as above, least important masked.")
    keep_top_accuracy = _measured("keep_top_accuracy", "Accuracy with only the top ``keep_fraction`` of the tokens kept.")
    aopc_most_per_example = _measured(
        "aopc_most_per_example", "(examples,) each example's probability drop averaged over K, most important masked."
    )
    aopc_least_per_example = _measured("aopc_least_per_example", "(examples,) the same, least important masked.")
    comprehensiveness = _measured(
        "comprehensiveness", "ERASER comprehensiveness (ferret's ``aopc_compr``), mean over examples; higher is better."
    )
    sufficiency = _measured("sufficiency", "ERASER sufficiency (ferret's ``aopc_suff``), mean over examples; lower is better.")

    aopc_most_mean = _mean_of("aopc_most")
    accuracy_most_mean = _mean_of("accuracy_most")
    aopc_least_mean = _mean_of("aopc_least")
    accuracy_least_mean = _mean_of("accuracy_least")


@dataclass
class FaithfulnessResult:
    """What :func:`evaluate_faithfulness` (or :func:`aggregate_rows`) measured.

    Attributes:
        methods: method name -> :class:`MethodResult`, in the order the methods were given.
        fractions: the K values of AOPC and accuracy (empty when neither was measured).
        keep_fraction: the share of tokens kept for the prediction-performance column (NaN when
            not measured).
        n_examples: number of examples evaluated.
        accuracy: the model's accuracy on the unmasked examples.
        metrics: the metrics that were measured.
        example_ids: the id of each example, in the order of the per-example arrays.
    """

    methods: dict[str, MethodResult]
    fractions: tuple[float, ...]
    keep_fraction: float
    n_examples: int
    accuracy: float
    metrics: tuple[FaithfulnessMetric, ...] = ()
    example_ids: tuple[Any, ...] = ()

    def to_markdown(self, *, timings: bool = False) -> str:
        """A markdown table, one row per method: AOPC and accuracy (%) averaged over K, masking the
        most and the least important tokens, the accuracy (%) with only the top tokens kept,
        comprehensiveness and sufficiency (each metric contributes its own cells)."""
        rows = []
        header: list[str] = []
        for name, result in self.methods.items():
            cells = sorted(
                (cell for metric in self.metrics for cell in metric.table_cells(result.summary)), key=lambda cell: cell[0]
            )
            header = ["Method"] + [cell[1] for cell in cells]
            row = [name.replace("|", "\\|")] + [cell[2] for cell in cells]
            if timings:
                row.append(f"{result.seconds:.1f}")
            rows.append(row)
        if timings:
            header.append("Attribution time (s)")
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def paired_difference(
        self, first: str, second: str, *, most_important: bool = True, metric: Optional[str] = None
    ) -> tuple[float, float]:
        """A per-example metric of ``first`` minus that of ``second`` and the standard error of the
        difference, from the per-example differences (the same examples were masked for both).

        Args:
            first, second: method names.
            most_important: AOPC with the most (True) or the least (False) important masked; used
                when ``metric`` is None.
            metric: a per-example summary entry instead, e.g. ``"comprehensiveness"`` or
                ``"sufficiency"`` (``"<name>_per_example"`` is looked up).

        Returns:
            ``(mean difference, standard error)``; ``mean +- 1.96 * se`` is a 95% interval.
        """
        if metric is None:
            key = "aopc_most_per_example" if most_important else "aopc_least_per_example"
        else:
            key = metric if metric.endswith("_per_example") else f"{metric}_per_example"
        differences = np.asarray(self.methods[first]._get(key)) - np.asarray(self.methods[second]._get(key))
        if differences.size < 2:
            return float(differences.mean()), float("nan")
        return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(differences.size))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists and floats), e.g. for ``json.dump``: the summaries and times."""
        return {
            "fractions": list(self.fractions),
            "keep_fraction": self.keep_fraction,
            "n_examples": self.n_examples,
            "accuracy": self.accuracy,
            "methods": {
                name: {**{key: _plain(value) for key, value in r.summary.items()}, "seconds": r.seconds}
                for name, r in self.methods.items()
            },
        }

    def plot(self, path: Union[str, Path, None] = None, *, title: Optional[str] = None):
        """AOPC and accuracy against K (the paper's Figure 3), masking the most (left) and the
        least (right) important tokens. Saved as PNG when ``path`` is given.

        Returns:
            the matplotlib ``Figure`` (drawn with the Agg canvas; pyplot is not used).
        """
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(12, 8.5), layout="constrained")
        FigureCanvasAgg(figure)
        axes = figure.subplots(2, 2, sharex=True)
        percent = 100 * np.asarray(self.fractions)
        styles = ["-o", "-s", "-^", "-v", "-D", "-P", "-X", "-*", "-<", "->", "-h", "-p", "-d", "-8"]
        colors = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#637939", "#843c39", "#3182bd", "#e6550d",
        ]  # fmt: skip
        panels = [
            (axes[0, 0], "aopc_most", 1.0, "AOPC (most important masked) ↑", "p(ŷ|x) − p(ŷ|x_K)"),
            (axes[0, 1], "aopc_least", 1.0, "AOPC (least important masked) ↓", "p(ŷ|x) − p(ŷ|x_K)"),
            (axes[1, 0], "accuracy_most", 100.0, "Accuracy (most important masked) ↓", "accuracy (%)"),
            (axes[1, 1], "accuracy_least", 100.0, "Accuracy (least important masked) ↑", "accuracy (%)"),
        ]
        for ax, attribute, scale, panel_title, ylabel in panels:
            for index, (name, result) in enumerate(self.methods.items()):
                dashed = name.lower().startswith("random")
                ax.plot(
                    percent,
                    scale * result._get(attribute),
                    styles[index % len(styles)] if not dashed else "--",
                    color="black" if dashed else colors[index % len(colors)],
                    label=name,
                    markersize=4,
                    linewidth=2.2 if name == "DecompX" else 1.2,
                )
            ax.set_title(panel_title)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        for ax in axes[1]:
            ax.set_xlabel("K: share of non-special tokens masked (%)")
        handles, labels = axes[0, 0].get_legend_handles_labels()
        figure.legend(handles, labels, loc="outside right center", fontsize=9)
        figure.suptitle(title or f"Faithfulness on {self.n_examples} examples (model accuracy {100 * self.accuracy:.2f}%)")
        if path is not None:
            figure.savefig(path, dpi=120)
        return figure


def _plain(value: Any) -> Any:
    return value.tolist() if isinstance(value, np.ndarray) else value


# --------------------------------------------------------------------------------------------
# Per-example rows and their aggregation

#: The columns every row has besides the metrics' columns.
ROW_KEYS: tuple[str, ...] = ("method", "example", "label", "predicted", "p_predicted", "seconds")


def _encode(tokenizer: Any, examples: Sequence[Example], max_length: Optional[int], *, pad: bool = True):
    """Tokenize texts or pairs: padded tensors, or (``pad=False``) lists of ids."""
    texts = [list(column) for column in zip(*examples)] if isinstance(examples[0], (tuple, list)) else [list(examples)]
    options: dict[str, Any] = {"truncation": max_length is not None, "max_length": max_length}
    if pad:
        options.update(padding=True, return_tensors="pt", return_special_tokens_mask=True)
    return tokenizer(*texts, **options)


def encode_examples(
    tokenizer: Any,
    examples: Sequence[Example],
    labels: Sequence[int],
    *,
    max_length: Optional[int] = 128,
    device: Union[str, torch.device, None] = None,
) -> Batch:
    """Tokenize texts or ``(text_a, text_b)`` pairs into a padded :class:`Batch`.

    Args:
        tokenizer: a Hugging Face tokenizer.
        examples: the texts or pairs (not mixed).
        labels: the gold label of every example.
        max_length: truncate longer inputs (None: no truncation).
        device: where the tensors go.

    Returns:
        a :class:`Batch`; its candidates are the real tokens the tokenizer did not add.
    """
    if len(examples) == 0:
        raise ValueError("No examples to encode.")
    if len(examples) != len(labels):
        raise ValueError(f"{len(examples)} examples but {len(labels)} labels.")
    encoded = _encode(tokenizer, examples, max_length)
    attention_mask = encoded["attention_mask"].to(device)
    token_type_ids = encoded.get("token_type_ids")
    special = encoded["special_tokens_mask"].to(device).bool()
    return Batch(
        input_ids=encoded["input_ids"].to(device),
        attention_mask=attention_mask,
        token_type_ids=None if token_type_ids is None else token_type_ids.to(device),
        candidates=attention_mask.bool() & ~special,
        labels=torch.as_tensor([int(label) for label in labels], device=device),
    )


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


def aggregate_rows(
    rows: Iterable[Mapping[str, Any]],
    metrics: Sequence[FaithfulnessMetric],
    *,
    methods: Optional[Sequence[str]] = None,
) -> FaithfulnessResult:
    """The :class:`FaithfulnessResult` of per-example rows from :func:`example_rows`.

    Args:
        rows: the rows of any number of parts, in any order (dicts, e.g. from
            ``pyarrow.parquet.read_table(path).to_pylist()``).
        metrics: the metrics the rows were measured with.
        methods: the order of the methods in the result; default: order of first appearance.

    Returns:
        the result; per-example arrays follow the sorted example ids.

    Raises:
        ValueError: no rows, a missing column, an (example, method) pair twice, methods measured on
            different examples, or ``methods`` naming a method without rows.
    """
    by_method: dict[str, dict[Any, Mapping[str, Any]]] = {}
    for row in rows:
        missing = [key for key in ROW_KEYS + tuple(c for metric in metrics for c in metric.columns) if key not in row]
        if missing:
            raise ValueError(f"A row lacks the column(s) {', '.join(missing)}: were these rows measured with other metrics?")
        per_example = by_method.setdefault(str(row["method"]), {})
        if row["example"] in per_example:
            raise ValueError(
                f"Example {row['example']!r} of method {row['method']!r} appears twice (a part read twice, or a resumed "
                "run that repeated work): drop the duplicate rows before aggregating."
            )
        per_example[row["example"]] = row
    if not by_method:
        raise ValueError("No rows to aggregate.")
    order = list(by_method) if methods is None else list(methods)
    absent = [name for name in order if name not in by_method]
    if absent:
        raise ValueError(
            f"No rows for method(s) {', '.join(map(repr, absent))}; the rows have {', '.join(map(repr, by_method))}."
        )
    example_ids = sorted(by_method[order[0]])
    for name in order:
        if sorted(by_method[name]) != example_ids:
            raise ValueError(
                f"Method {name!r} has {len(by_method[name])} examples and {order[0]!r} has {len(example_ids)}, or other ones: "
                "every method must be measured on the same examples (a part missing?)."
            )
    results = {}
    for name in order:
        ordered = [by_method[name][example] for example in example_ids]
        columns = {c: np.asarray([row[c] for row in ordered], dtype=np.float64) for metric in metrics for c in metric.columns}
        summary: dict[str, Any] = {}
        for metric in metrics:
            summary.update(metric.summarize(columns))
        results[name] = MethodResult(summary, columns, float(sum(float(row["seconds"]) for row in ordered)))
    first = [by_method[order[0]][example] for example in example_ids]
    accuracy = float(np.mean([int(row["predicted"]) == int(row["label"]) for row in first]))
    fractions = next((m.fractions for m in metrics if isinstance(m, (AOPC, MaskedAccuracy))), ())
    keep_fraction = next((m.keep_fraction for m in metrics if isinstance(m, KeepTopAccuracy)), float("nan"))
    return FaithfulnessResult(
        results, tuple(fractions), keep_fraction, len(example_ids), accuracy, tuple(metrics), tuple(example_ids)
    )


# --------------------------------------------------------------------------------------------
# The protocol


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


__all__ = [
    "AOPC",
    "DEFAULT_FRACTIONS",
    "ERASER_FRACTIONS",
    "METHOD_REGISTRY",
    "ROW_KEYS",
    "Batch",
    "Comprehensiveness",
    "FaithfulnessMetric",
    "FaithfulnessResult",
    "KeepTopAccuracy",
    "MaskedAccuracy",
    "MaskedPredictions",
    "MethodContext",
    "MethodResult",
    "MethodSpec",
    "RandomAttribution",
    "RegisteredMethod",
    "Sufficiency",
    "aggregate_rows",
    "build_methods",
    "classifier_forward",
    "default_metrics",
    "encode_examples",
    "evaluate_faithfulness",
    "example_rows",
    "identity",
    "importance_ranks",
    "l2_over_embedding",
    "mask_ranked_tokens",
    "masked_counts",
    "paper_methods",
    "random_method",
    "reference_baselines",
    "register_method",
    "unregister_method",
    "sum_over_embedding",
    "top_rationale",
]
