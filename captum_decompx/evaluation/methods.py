"""Attribution methods for the faithfulness protocol: how to call one (:class:`MethodSpec`), how its
output becomes one score per token (the reductions), and a registry of methods keyed by name
(:func:`register_method`, :func:`build_methods`, :data:`METHOD_REGISTRY`) with the DecompX paper's
methods built in (:func:`paper_methods`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch
from captum.attr import Attribution
from torch import Tensor, nn

from ..components.registry import Registry
from .encoding import Batch

Reduce = Callable[[Tensor], Tensor]


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
# Method specifications


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
        from ..attribution import DecompX

        return MethodSpec(DecompX(context.model, **options))

    return build


def _globenc(context: MethodContext) -> MethodSpec:
    from ..baselines import GlobEnc

    return MethodSpec(GlobEnc(context.model))


def _alti(context: MethodContext) -> MethodSpec:
    from ..baselines import ALTI

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
