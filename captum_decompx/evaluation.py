"""The DecompX paper's faithfulness protocol, for any Captum attribution method.

For each example the non-special tokens are ranked by their attribution to the *predicted* class
``y_hat``, and ``floor(K * n)`` of them (``n`` = number of non-special tokens) are replaced with
the tokenizer's mask token, for ``K in {0.0, 0.1, ..., 0.9}``, once starting from the most
important and once from the least important tokens. Reported per method:

- AOPC = mean over K and examples of ``p(y_hat | x) - p(y_hat | x_K)``;
- accuracy of the masked inputs against the gold labels, per K and averaged over K;
- prediction performance: the accuracy when only the top 20% (single sentences) or 40% (sentence
  pairs) of the non-special tokens are kept and the others masked.

Masking the most important tokens, higher AOPC and lower accuracy are better; masking the least
important, the reverse.

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
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from captum.attr import Attribution
from torch import Tensor, nn

DEFAULT_FRACTIONS: tuple[float, ...] = tuple(step / 10 for step in range(10))
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
    norm of the gradient with respect to the word embeddings) and random scores.
    """
    from captum.attr import LayerGradientXActivation, LayerIntegratedGradients

    from .attribution import DecompX
    from .baselines import ALTI, GlobEnc

    forward = classifier_forward(model)
    embeddings = model.get_input_embeddings()
    reference = reference_baselines(tokenizer)
    ig = LayerIntegratedGradients(forward, embeddings)
    ig_kwargs: dict[str, Any] = {"n_steps": ig_steps, "internal_batch_size": internal_batch_size}
    gradient_x_input = LayerGradientXActivation(forward, embeddings, multiply_by_inputs=True)
    gradient = LayerGradientXActivation(forward, embeddings, multiply_by_inputs=False)
    return {
        "DecompX": MethodSpec(DecompX(model)),
        "DecompX w/o bias (fast)": MethodSpec(DecompX(model, include_biases=False, method="fast")),
        "DecompX w/o FFN": MethodSpec(DecompX(model, include_ffn=False)),
        "DecompX w/o head": MethodSpec(DecompX(model, include_head=False)),
        "GlobEnc": MethodSpec(GlobEnc(model)),
        "ALTI": MethodSpec(ALTI(model)),
        "IG (L2)": MethodSpec(ig, reduce=l2_over_embedding, baselines=reference, attribute_kwargs=ig_kwargs),
        "IG (sum)": MethodSpec(ig, reduce=sum_over_embedding, baselines=reference, attribute_kwargs=ig_kwargs),
        "Gradient x Input (sum)": MethodSpec(gradient_x_input, reduce=sum_over_embedding),
        "Gradient x Input (L2)": MethodSpec(gradient_x_input, reduce=l2_over_embedding),
        "Saliency (L2)": MethodSpec(gradient, reduce=l2_over_embedding),
        "random": random_method(seed),
    }


# --------------------------------------------------------------------------------------------
# Masking


def masked_counts(candidates: Tensor, fraction: float) -> Tensor:
    """``floor(fraction * n)`` per example, ``n`` = number of candidates: (batch,) long."""
    n = candidates.sum(dim=1).to(torch.float64)
    return torch.floor(n * fraction + _FLOOR_EPS).long()


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
    fill = float("-inf") if most_important else float("inf")
    keyed = torch.where(candidates, scores.float(), torch.full_like(scores, fill, dtype=torch.float32))
    order = torch.sort(keyed, dim=1, descending=most_important, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    chosen = candidates & (rank < masked_counts(candidates, fraction).unsqueeze(1))
    return torch.where(chosen, torch.full_like(input_ids, mask_token_id), input_ids)


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class MethodResult:
    """The faithfulness of one method.

    Attributes:
        aopc_most: (K,) mean probability drop of the predicted class per K, most important masked.
        accuracy_most: (K,) accuracy against the gold labels per K, most important masked.
        aopc_least: (K,) as above, least important masked.
        accuracy_least: (K,).
        keep_top_accuracy: accuracy with only the top ``keep_fraction`` of the tokens kept.
        aopc_most_per_example: (examples,) each example's probability drop averaged over K,
            most important masked, in the order the examples were given.
        aopc_least_per_example: (examples,) the same, least important masked.
        seconds: wall time spent computing the attributions (not the masked forward passes); a
            call shared with an earlier method (same attribution and arguments, another
            ``reduce``) is counted for the earlier method only.
    """

    aopc_most: np.ndarray
    accuracy_most: np.ndarray
    aopc_least: np.ndarray
    accuracy_least: np.ndarray
    keep_top_accuracy: float
    aopc_most_per_example: np.ndarray
    aopc_least_per_example: np.ndarray
    seconds: float

    @property
    def aopc_most_mean(self) -> float:
        return float(self.aopc_most.mean())

    @property
    def accuracy_most_mean(self) -> float:
        return float(self.accuracy_most.mean())

    @property
    def aopc_least_mean(self) -> float:
        return float(self.aopc_least.mean())

    @property
    def accuracy_least_mean(self) -> float:
        return float(self.accuracy_least.mean())


@dataclass
class FaithfulnessResult:
    """What :func:`evaluate_faithfulness` measured.

    Attributes:
        methods: method name -> :class:`MethodResult`, in the order the methods were given.
        fractions: the K values.
        keep_fraction: the share of tokens kept for the prediction-performance column.
        n_examples: number of examples evaluated.
        accuracy: the model's accuracy on the unmasked examples.
    """

    methods: dict[str, MethodResult]
    fractions: tuple[float, ...]
    keep_fraction: float
    n_examples: int
    accuracy: float

    def to_markdown(self, *, timings: bool = False) -> str:
        """A markdown table: AOPC and accuracy (%) averaged over K, masking the most and the least
        important tokens, and the accuracy (%) with only the top tokens kept."""
        keep = f"Acc keep top {round(self.keep_fraction * 100)}% ↑"
        header = ["Method", "AOPC most ↑", "Acc most ↓", "AOPC least ↓", "Acc least ↑", keep]
        if timings:
            header.append("Attribution time (s)")
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
        for name, result in self.methods.items():
            row = [
                name.replace("|", "\\|"),
                f"{result.aopc_most_mean:.3f}",
                f"{100 * result.accuracy_most_mean:.2f}",
                f"{result.aopc_least_mean:.3f}",
                f"{100 * result.accuracy_least_mean:.2f}",
                f"{100 * result.keep_top_accuracy:.2f}",
            ]
            if timings:
                row.append(f"{result.seconds:.1f}")
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.to_markdown()

    def paired_difference(self, first: str, second: str, *, most_important: bool = True) -> tuple[float, float]:
        """AOPC of ``first`` minus AOPC of ``second`` and the standard error of that difference,
        from the per-example differences (the same examples were masked for both methods).

        Returns:
            ``(mean difference, standard error)``; ``mean +- 1.96 * se`` is a 95% interval.
        """
        field_name = "aopc_most_per_example" if most_important else "aopc_least_per_example"
        differences = getattr(self.methods[first], field_name) - getattr(self.methods[second], field_name)
        if differences.size < 2:
            return float(differences.mean()), float("nan")
        return float(differences.mean()), float(differences.std(ddof=1) / np.sqrt(differences.size))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (lists and floats), e.g. for ``json.dump``."""
        return {
            "fractions": list(self.fractions),
            "keep_fraction": self.keep_fraction,
            "n_examples": self.n_examples,
            "accuracy": self.accuracy,
            "methods": {
                name: {
                    "aopc_most": r.aopc_most.tolist(),
                    "accuracy_most": r.accuracy_most.tolist(),
                    "aopc_least": r.aopc_least.tolist(),
                    "accuracy_least": r.accuracy_least.tolist(),
                    "keep_top_accuracy": r.keep_top_accuracy,
                    "aopc_most_per_example": r.aopc_most_per_example.tolist(),
                    "aopc_least_per_example": r.aopc_least_per_example.tolist(),
                    "seconds": r.seconds,
                }
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
        ]
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
                    scale * getattr(result, attribute),
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


# --------------------------------------------------------------------------------------------
# The protocol


def _encode(tokenizer: Any, examples: Sequence[Example], max_length: Optional[int], *, pad: bool = True):
    """Tokenize texts or pairs: padded tensors, or (``pad=False``) lists of ids."""
    texts = [list(column) for column in zip(*examples)] if isinstance(examples[0], (tuple, list)) else [list(examples)]
    options: dict[str, Any] = {"truncation": max_length is not None, "max_length": max_length}
    if pad:
        options.update(padding=True, return_tensors="pt", return_special_tokens_mask=True)
    return tokenizer(*texts, **options)


def _probabilities(model: nn.Module, input_ids: Tensor, batch: Batch, chunk: int) -> Tensor:
    """Softmax probabilities (len(input_ids), classes) of variants of ``batch`` stacked along dim 0.

    Identical rows (e.g. a K too small to mask any token of a short example) run once.
    """
    repeats = input_ids.shape[0] // batch.input_ids.shape[0]
    columns = [input_ids, batch.attention_mask.repeat(repeats, 1)]
    if batch.token_type_ids is not None:
        columns.append(batch.token_type_ids.repeat(repeats, 1))
    unique, inverse = torch.unique(torch.cat(columns, dim=1), dim=0, return_inverse=True)
    seq = input_ids.shape[1]
    out = []
    with torch.no_grad():
        for start in range(0, unique.shape[0], chunk):
            part = unique[start : start + chunk]
            kwargs = {"attention_mask": part[:, seq : 2 * seq]}
            if batch.token_type_ids is not None:
                kwargs["token_type_ids"] = part[:, 2 * seq :]
            out.append(torch.softmax(model(input_ids=part[:, :seq], **kwargs).logits.float(), dim=-1))
    return torch.cat(out)[inverse]


def evaluate_faithfulness(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Example],
    labels: Sequence[int],
    methods: Mapping[str, Union[MethodSpec, tuple]],
    *,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    keep_fraction: Optional[float] = None,
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
        fractions: the K values (shares of the non-special tokens masked).
        keep_fraction: the share of top tokens kept for the prediction-performance column;
            default 0.2 for single texts and 0.4 for pairs.
        batch_size: examples per attribution call.
        forward_batch_size: sequences per forward pass when scoring the masked variants.
        max_length: truncate longer inputs (None: no truncation).
        show_progress: show a tqdm progress bar over examples x methods.

    Returns:
        a :class:`FaithfulnessResult`; ``print`` it for the markdown table, ``.plot(path)`` for
        the curves.
    """
    if model.training:
        raise ValueError("The model is in training mode: call model.eval() before evaluating.")
    if len(examples) == 0:
        raise ValueError("No examples to evaluate.")
    if len(examples) != len(labels):
        raise ValueError(f"{len(examples)} examples but {len(labels)} labels.")
    mask_id = getattr(tokenizer, "mask_token_id", None)
    if mask_id is None:
        raise ValueError("The protocol replaces tokens with the mask token, but the tokenizer has none.")
    fractions = tuple(float(k) for k in fractions)
    pairs = isinstance(examples[0], (tuple, list))
    if keep_fraction is None:
        keep_fraction = KEEP_FRACTION_PAIRS if pairs else KEEP_FRACTION_SINGLE
    specs = {name: spec if isinstance(spec, MethodSpec) else MethodSpec(*spec) for name, spec in methods.items()}
    if not specs:
        raise ValueError("Give at least one method.")
    device = next(model.parameters()).device
    n_k = len(fractions)
    drops = {name: {"most": np.zeros(n_k), "least": np.zeros(n_k)} for name in specs}
    correct = {name: {"most": np.zeros(n_k), "least": np.zeros(n_k)} for name in specs}
    keep_correct = {name: 0 for name in specs}
    per_example = {name: {"most": np.zeros(len(examples)), "least": np.zeros(len(examples))} for name in specs}
    seconds = {name: 0.0 for name in specs}
    base_correct = 0

    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(examples) * len(specs), desc="faithfulness", unit="attribution")
    # Batches of similar lengths waste less work on padding; the metrics are means, so order is free.
    lengths = [len(ids) for ids in _encode(tokenizer, list(examples), max_length, pad=False)["input_ids"]]
    order = sorted(range(len(examples)), key=lambda index: lengths[index])
    try:
        for start in range(0, len(examples), batch_size):
            indices = order[start : start + batch_size]
            chunk = [examples[index] for index in indices]
            encoded = _encode(tokenizer, chunk, max_length)
            input_ids = encoded["input_ids"].to(device)
            attention_mask = encoded["attention_mask"].to(device)
            token_type_ids = encoded.get("token_type_ids")
            special = encoded["special_tokens_mask"].to(device).bool()
            batch = Batch(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=None if token_type_ids is None else token_type_ids.to(device),
                candidates=attention_mask.bool() & ~special,
                labels=torch.as_tensor([int(labels[index]) for index in indices], device=device),
            )
            rows = input_ids.shape[0]
            probabilities = _probabilities(model, input_ids, batch, forward_batch_size)
            predicted = probabilities.argmax(-1)
            p_hat = probabilities.gather(1, predicted.view(-1, 1)).squeeze(1)
            base_correct += int((predicted == batch.labels).sum())
            raw_outputs: dict[tuple, Tensor] = {}
            for name, spec in specs.items():
                if bar is not None:
                    bar.set_postfix_str(name)
                key = spec._call_key()
                if key not in raw_outputs:  # e.g. IG reduced by L2 and by sum: one attribute call
                    began = time.perf_counter()
                    raw_outputs[key] = spec.raw(batch, predicted)
                    seconds[name] += time.perf_counter() - began
                scores = spec.reduced(raw_outputs[key], batch)
                variants = []
                for direction in ("most", "least"):
                    for k in fractions:
                        if k > 0:
                            variants.append(mask_ranked_tokens(input_ids, scores, batch.candidates, k, mask_id, most_important=direction == "most"))
                variants.append(mask_ranked_tokens(input_ids, scores, batch.candidates, 1.0 - keep_fraction, mask_id, most_important=False))
                masked_probs = _probabilities(model, torch.cat(variants), batch, forward_batch_size).view(len(variants), rows, -1)
                position = 0
                for direction in ("most", "least"):
                    for index, k in enumerate(fractions):
                        if k > 0:
                            variant = masked_probs[position]
                            position += 1
                        else:
                            variant = probabilities
                        drop = (p_hat - variant.gather(1, predicted.view(-1, 1)).squeeze(1)).double().cpu().numpy()
                        drops[name][direction][index] += float(drop.sum())
                        per_example[name][direction][indices] += drop / n_k
                        correct[name][direction][index] += int((variant.argmax(-1) == batch.labels).sum())
                keep_correct[name] += int((masked_probs[position].argmax(-1) == batch.labels).sum())
                if bar is not None:
                    bar.update(rows)
    finally:
        if bar is not None:
            bar.close()

    total = len(examples)
    results = {
        name: MethodResult(
            aopc_most=drops[name]["most"] / total,
            accuracy_most=correct[name]["most"] / total,
            aopc_least=drops[name]["least"] / total,
            accuracy_least=correct[name]["least"] / total,
            keep_top_accuracy=keep_correct[name] / total,
            aopc_most_per_example=per_example[name]["most"],
            aopc_least_per_example=per_example[name]["least"],
            seconds=seconds[name],
        )
        for name in specs
    }
    return FaithfulnessResult(results, fractions, keep_fraction, total, base_correct / total)


__all__ = [
    "DEFAULT_FRACTIONS",
    "Batch",
    "FaithfulnessResult",
    "MethodResult",
    "MethodSpec",
    "RandomAttribution",
    "classifier_forward",
    "evaluate_faithfulness",
    "identity",
    "l2_over_embedding",
    "mask_ranked_tokens",
    "masked_counts",
    "paper_methods",
    "random_method",
    "reference_baselines",
    "sum_over_embedding",
]
