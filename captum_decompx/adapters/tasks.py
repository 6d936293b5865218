"""Task heads: which head a Hugging Face model class puts after the encoder, as adapter data.

A model type (``config.model_type``) has one encoder layout and several task heads, told apart
by the model class (``BertForQuestionAnswering``, ``BertForTokenClassification``, ...). Heads
that read one pooled state (sequence classification, multiple choice) keep the adapter's
``pooling``; heads applied to every position (question answering, token classification, masked
LM, a bare encoder's hidden states) use ``pooling="each"``: the decomposition then covers every
position's row and applies the head to each.

:func:`task_of` names the task of a model class; :func:`task_adapter` builds a family's adapter
for that task, or raises an error that names the task and lists the supported ones.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from .base import Activation, Adapter, HeadStep, Linear, Norm, TiedLinear, dense_head

#: Hugging Face class-name endings and the task each names (longest ending first).
TASK_SUFFIXES: tuple[tuple[str, str], ...] = (
    ("ForSequenceClassification", "sequence classification"),
    ("ForQuestionAnswering", "question answering"),
    ("ForTokenClassification", "token classification"),
    ("ForMultipleChoice", "multiple choice"),
    ("ForMaskedLM", "masked LM"),
    ("ForCausalLM", "causal LM"),
    ("LMHeadModel", "causal LM"),
    ("ForImageClassification", "image classification"),
    ("ForNextSentencePrediction", "next sentence prediction"),
    ("ForPreTraining", "pre-training"),
    ("ForMaskedImageModeling", "masked image modeling"),
    ("Model", "bare encoder"),
)

#: The tasks whose head is applied at every position (``pooling="each"``).
PER_POSITION_TASKS = ("question answering", "token classification", "masked LM", "bare encoder")


def task_of(model: nn.Module) -> str:
    """The task a Hugging Face model class is for, from its name or its nearest base class's
    (e.g. ``"question answering"``); the class name itself when none ends in :data:`TASK_SUFFIXES`."""
    for cls in type(model).__mro__:
        for suffix, task in TASK_SUFFIXES:
            if cls.__name__.endswith(suffix) and cls.__name__ != "PreTrainedModel":
                return task
    return type(model).__name__


#: A task's head: its steps, or a function ``model -> steps`` when they depend on the config.
HeadSpec = Union[Sequence[HeadStep], Callable[[nn.Module], Sequence[HeadStep]]]


class UnsupportedTaskError(ValueError):
    """A model whose task head DecompX does not support (yet)."""


def unsupported_task(model: nn.Module, family: str, supported: Sequence[str]) -> UnsupportedTaskError:
    """The error for a model whose task head has no adapter: names the class and the task, and
    lists the tasks supported for the family."""
    task = task_of(model)
    return UnsupportedTaskError(
        f"DecompX does not support the {task} head of {type(model).__name__} ({family!r} models). "
        f"Supported tasks for {family!r}: {', '.join(supported)}. For another head, describe it "
        "with captum_decompx.Adapter(head=...) and pass adapter= (see the README)."
    )


@dataclasses.dataclass(frozen=True)
class TaskHeads:
    """One family's encoder adapter and its head per task.

    Attributes:
        base: the family's sequence-classification adapter (the encoder's layout), or a function
            ``model -> Adapter`` for families whose layout depends on the config.
        heads: per task (a value of :data:`TASK_SUFFIXES`), the head steps, or a function
            ``model -> steps`` for heads whose layout depends on the config (None: the base's own
            head); tasks in
            :data:`PER_POSITION_TASKS` get ``pooling="each"``, the others keep the base's pooling.
        family: the family's name, for messages (defaults to ``base.name``).
    """

    base: Union[Adapter, Callable[[nn.Module], Adapter]]
    heads: Mapping[str, Optional[HeadSpec]]
    family: Optional[str] = None

    @property
    def supported(self) -> list[str]:
        return list(self.heads)

    def for_task(self, task: str, model: Optional[nn.Module] = None) -> Optional[Adapter]:
        """The adapter of ``task`` (``model`` builds a callable base), or None when unsupported."""
        if task not in self.heads:
            return None
        steps = self.heads[task]
        if isinstance(self.base, Adapter):
            base = self.base
        elif model is not None:
            base = self.base(model)
        else:
            raise ValueError("This family's adapter depends on the model: pass model=.")
        if callable(steps):
            if model is None:
                raise ValueError(f"This family's {task} head depends on the model: pass model=.")
            steps = steps(model)
        pooling = "each" if task in PER_POSITION_TASKS else base.pooling
        name = base.name if task == "sequence classification" else f"{base.name} ({task})"
        head = tuple(base.head) if steps is None else tuple(steps)
        return dataclasses.replace(base, name=name, head=head, pooling=pooling)

    def __call__(self, model: nn.Module) -> Adapter:
        """The adapter for ``model``'s task head (usable as a :func:`register_adapter` factory)."""
        task = task_of(model)
        if task not in self.heads:
            family = self.family or (self.base.name if isinstance(self.base, Adapter) else "this family")
            raise unsupported_task(model, family, self.supported)
        adapter = self.for_task(task, model)
        assert adapter is not None
        return adapter


def bert_family_tasks(
    base: Union[Adapter, Callable[[nn.Module], Adapter]],
    *,
    sequence_classification: Optional[Sequence[HeadStep]] = None,
    question_answering: Sequence[HeadStep] = (Linear("qa_outputs"),),
    token_classification: Sequence[HeadStep] = (Linear("classifier"),),
    multiple_choice: Optional[HeadSpec] = None,
    masked_lm: Optional[HeadSpec] = None,
    family: Optional[str] = None,
    multiple_choice_as_classifier: bool = False,
) -> TaskHeads:
    """The task heads of a BERT-like family (by default its QA and token heads are one linear map).

    Args:
        sequence_classification: the classifier's head; None keeps the base's own head.
        multiple_choice_as_classifier: the multiple-choice head is the sequence classifier's
            head (the same steps, one logit per choice), whatever the base builds for the model.
    """
    heads: dict[str, Optional[HeadSpec]] = {
        "sequence classification": None if sequence_classification is None else tuple(sequence_classification)
    }
    heads.update(
        {
            "question answering": tuple(question_answering),
            "token classification": tuple(token_classification),
            "bare encoder": (),
        }
    )
    if multiple_choice is not None:
        heads["multiple choice"] = multiple_choice if callable(multiple_choice) else tuple(multiple_choice)
    elif multiple_choice_as_classifier:
        heads["multiple choice"] = heads["sequence classification"]
    if masked_lm is not None:
        heads["masked LM"] = masked_lm if callable(masked_lm) else tuple(masked_lm)
    return TaskHeads(base, heads, family)


def _gelu(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.gelu(x)


BERT_MLM_HEAD = dense_head(
    "cls.predictions.transform.dense",
    "cls.predictions.transform.transform_act_fn",
    "cls.predictions.decoder",
    norm="cls.predictions.transform.LayerNorm",
)
ROBERTA_MLM_HEAD = dense_head("lm_head.dense", _gelu, "lm_head.decoder", norm="lm_head.layer_norm")
ELECTRA_MLM_HEAD = dense_head(
    "generator_predictions.dense",
    "generator_predictions.activation",
    "generator_lm_head",
    norm="generator_predictions.LayerNorm",
)
ALBERT_MLM_HEAD = dense_head("predictions.dense", "predictions.activation", "predictions.decoder", norm="predictions.LayerNorm")
MODERNBERT_MLM_HEAD = dense_head("head.dense", "head.act", "decoder", norm="head.norm")
#: DeBERTa-v2's legacy masked-LM head (``config.legacy=True``, the default): the same layout as BERT's.
DEBERTA_V2_LEGACY_MLM_HEAD = BERT_MLM_HEAD


def electra_multiple_choice_head(model: nn.Module) -> tuple[HeadStep, ...]:
    """ELECTRA's multiple-choice head: its sequence summary of the first token (summary linear map,
    then the summary activation), then the classifier. Summaries of another token (``"last"``,
    ``"mean"``, ``"cls_index"``) read positions the adapter's pooling does not, and an activation
    without the projection has no linear map before it: both are refused."""
    config = model.config
    summary_type = getattr(config, "summary_type", "last")
    if summary_type != "first":
        raise UnsupportedTaskError(
            f"DecompX does not support the multiple choice head of {type(model).__name__} with "
            f"config.summary_type={summary_type!r}: only 'first' (the default, the first token) is "
            "supported. For another summary, describe the head with captum_decompx.Adapter(head=..., "
            "pooling=...) and pass adapter=."
        )
    projected = bool(getattr(config, "summary_use_proj", False))
    activated = bool(getattr(config, "summary_activation", None))
    if activated and not projected:
        raise UnsupportedTaskError(
            f"DecompX does not support the multiple choice head of {type(model).__name__} with "
            "config.summary_use_proj=False and a summary activation: the activation would act on the "
            "encoder's output directly, which no head step describes. Supported: a projected summary "
            "(the default), or neither projection nor activation."
        )
    steps: list[HeadStep] = []
    if projected:
        steps.append(Linear("sequence_summary.summary"))
    if activated:
        steps.append(Activation(path="sequence_summary.activation"))
    steps.append(Linear("classifier"))
    return tuple(steps)


def deberta_v2_masked_lm_head(model: nn.Module) -> tuple[HeadStep, ...]:
    """DeBERTa-v2's masked-LM head. The legacy head (``config.legacy=True``) is BERT's layout; the
    newer one (:data:`DEBERTA_V2_MLM_HEAD`) multiplies by the word embeddings and adds its bias."""
    if getattr(model.config, "legacy", True):
        return DEBERTA_V2_LEGACY_MLM_HEAD
    return DEBERTA_V2_MLM_HEAD


#: DeBERTa-v2's masked-LM head with ``config.legacy=False``: dense, activation, LayerNorm, then
#: ``hidden @ word_embeddings.weight.T + bias``.
DEBERTA_V2_MLM_HEAD = (
    Linear("lm_predictions.lm_head.dense"),
    Activation(path="lm_predictions.lm_head.transform_act_fn"),
    Norm("lm_predictions.lm_head.LayerNorm"),
    TiedLinear("base_model.embeddings.word_embeddings", bias="lm_predictions.lm_head.bias"),
)


MODERNBERT_TOKEN_HEAD = dense_head("head.dense", "head.act", "classifier", norm="head.norm")
DISTILBERT_MLM_HEAD = dense_head("vocab_transform", "activation", "vocab_projector", norm="vocab_layer_norm")

__all__ = [
    "HeadSpec",
    "PER_POSITION_TASKS",
    "TASK_SUFFIXES",
    "TaskHeads",
    "UnsupportedTaskError",
    "bert_family_tasks",
    "deberta_v2_masked_lm_head",
    "electra_multiple_choice_head",
    "task_of",
    "unsupported_task",
]
