"""The adapter registry, keyed by ``config.model_type``.

Users add an architecture with :func:`register_adapter`; see the README for a worked example.
"""

from __future__ import annotations

from typing import Callable, Iterable, Union

from torch import nn

from ..components.registry import Registry
from .albert import ALBERT
from .base import (
    Activation,
    Adapter,
    ContrastiveLogits,
    EncoderStack,
    HeadStep,
    LayerPaths,
    Linear,
    MeanOfLinears,
    Norm,
    ScaledLinear,
    Stages,
    Windows,
    grouped_layer,
    resolve,
    split_block,
)
from .bert_family import BERT, DISTILBERT, ELECTRA, ROBERTA, ROBERTA_MODEL_TYPES, ROBERTA_POSITION_OFFSET
from .contrastive import CLIP, SIGLIP
from .deberta import deberta_v2
from .decoders import gemma_sandwich, gpt2, llama_family, phi3
from .encoder_decoders import bart_family, t5, whisper
from .modernbert import modernbert
from .tasks import (
    ALBERT_MLM_HEAD,
    BERT_MLM_HEAD,
    DISTILBERT_MLM_HEAD,
    ELECTRA_MLM_HEAD,
    MODERNBERT_MLM_HEAD,
    MODERNBERT_TOKEN_HEAD,
    ROBERTA_MLM_HEAD,
    TaskHeads,
    UnsupportedTaskError,
    bert_family_tasks,
    deberta_v2_masked_lm_head,
    electra_multiple_choice_head,
    task_of,
)
from .vision import beit, deit, dinov2, swin, vit
from .wrappers import unwrap_model

AdapterOrFactory = Union[Adapter, Callable[[nn.Module], Adapter]]

_REGISTRY: Registry[AdapterOrFactory] = Registry("adapter for model_type")


def register_adapter(model_types: Union[str, Iterable[str]], adapter: AdapterOrFactory, *, overwrite: bool = False) -> None:
    """Make DecompX support the models whose ``config.model_type`` is in ``model_types``.

    Args:
        model_types: one ``model_type`` or several.
        adapter: an :class:`Adapter`, or a function ``model -> Adapter`` for families whose layout
            depends on the model class (e.g. a classifier and a language model of one type).
        overwrite: replace an adapter registered before for the same type.
    """
    names = [model_types] if isinstance(model_types, str) else list(model_types)
    if not names:
        raise ValueError("register_adapter needs at least one model_type.")
    if not (isinstance(adapter, Adapter) or callable(adapter)):
        raise TypeError(f"adapter must be an Adapter or a callable returning one, got {adapter!r}.")
    for name in names:
        if name in _REGISTRY and not overwrite:
            _REGISTRY.register(name, adapter)  # refuses, before any of the names is registered
    for name in names:
        _REGISTRY.register(name, adapter, overwrite=overwrite)


def unregister_adapter(model_types: Union[str, Iterable[str]]) -> None:
    """Remove the adapters registered with :func:`register_adapter` for ``model_types``."""
    names = [model_types] if isinstance(model_types, str) else list(model_types)
    for name in names:
        _REGISTRY.unregister(name)


def supported_model_types() -> list[str]:
    """The model types (``config.model_type`` values) that have an adapter, sorted."""
    return sorted(str(name) for name in _REGISTRY)


def position_offset(model_type: str | None) -> int:
    """Position embeddings that no token uses, for models of ``model_type`` (2 for RoBERTa's family, else 0).

    The longest input a model takes is ``config.max_position_embeddings - position_offset(...)``.
    """
    return ROBERTA_POSITION_OFFSET if model_type in ROBERTA_MODEL_TYPES else 0


def model_type_of(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def adapter_for(model: nn.Module) -> Adapter:
    """The adapter registered for ``model.config.model_type``; a clear error when there is none."""
    model_type = model_type_of(unwrap_model(model))
    entry = _REGISTRY.find(model_type) if model_type is not None else None
    if entry is None:
        found = f"model_type {model_type!r}" if model_type else f"a {type(model).__name__} without config.model_type"
        raise ValueError(
            f"DecompX has no adapter for {found}. Supported model_types: "
            f"{', '.join(supported_model_types())}. To add an architecture, describe where its "
            "components live with captum_decompx.Adapter and call "
            "captum_decompx.register_adapter(model_type, adapter) (see the README)."
        )
    adapter = entry if isinstance(entry, Adapter) else entry(unwrap_model(model))
    if not isinstance(adapter, Adapter):
        raise TypeError(f"The adapter factory for {model_type!r} returned {adapter!r}, not an Adapter.")
    _check_head_paths(model, adapter, model_type)
    return adapter


def _check_head_paths(model: nn.Module, adapter: Adapter, model_type: str | None) -> None:
    """Refuse, naming the task, a model whose head is not where the adapter says (e.g. an
    ``AlbertForQuestionAnswering`` under the ALBERT classifier's adapter)."""
    paths = [path for step in adapter.head for path in (getattr(step, "path", None), *getattr(step, "paths", ()))]
    for path in paths:
        if not isinstance(path, str):
            continue
        module_path, _ = split_block(path)
        try:
            resolve(model, module_path)
        except AttributeError:
            entry = _REGISTRY.find(model_type) if model_type is not None else None
            supported = entry.supported if isinstance(entry, TaskHeads) else ["sequence classification"]
            raise UnsupportedTaskError(
                f"DecompX does not support the {task_of(model)} head of {type(model).__name__} "
                f"(model_type {model_type!r}): the adapter {adapter.name!r} expects its head at {path!r}, "
                f"which this model does not have. Supported tasks for {model_type!r}: "
                f"{', '.join(supported)}. For another head, describe it with "
                "captum_decompx.Adapter(head=...) and pass adapter= (see the README)."
            ) from None


register_adapter("bert", bert_family_tasks(BERT, multiple_choice=BERT.head, masked_lm=BERT_MLM_HEAD))
register_adapter(
    ROBERTA_MODEL_TYPES,
    bert_family_tasks(
        ROBERTA,
        multiple_choice=(
            Linear("base_model.pooler.dense"),
            Activation(path="base_model.pooler.activation"),
            Linear("classifier"),
        ),
        masked_lm=ROBERTA_MLM_HEAD,
    ),
)
register_adapter("electra", bert_family_tasks(ELECTRA, multiple_choice=electra_multiple_choice_head, masked_lm=ELECTRA_MLM_HEAD))
register_adapter("distilbert", bert_family_tasks(DISTILBERT, multiple_choice=DISTILBERT.head, masked_lm=DISTILBERT_MLM_HEAD))
register_adapter(
    "deberta-v2",
    bert_family_tasks(deberta_v2, masked_lm=deberta_v2_masked_lm_head, family="deberta-v2", multiple_choice_as_classifier=True),
)
register_adapter("albert", bert_family_tasks(ALBERT, multiple_choice=ALBERT.head, masked_lm=ALBERT_MLM_HEAD))
register_adapter(
    "modernbert",
    bert_family_tasks(
        modernbert,
        question_answering=MODERNBERT_TOKEN_HEAD,
        token_classification=MODERNBERT_TOKEN_HEAD,
        masked_lm=MODERNBERT_MLM_HEAD,
        family="modernbert",
        multiple_choice_as_classifier=True,
    ),
)
register_adapter("vit", vit)
register_adapter("deit", deit)
register_adapter(("beit", "data2vec-vision"), beit)
register_adapter("dinov2", dinov2)
register_adapter("swin", swin)
register_adapter("clip", CLIP)
register_adapter("siglip", SIGLIP)
register_adapter("gpt2", gpt2)
register_adapter(("llama", "qwen2", "qwen3", "mistral", "gemma"), llama_family)
register_adapter(("gemma2", "gemma3_text"), gemma_sandwich)
register_adapter("phi3", phi3)
register_adapter("t5", t5)
register_adapter(("bart", "mbart", "marian", "pegasus", "m2m_100"), bart_family)
register_adapter("whisper", whisper)

__all__ = [
    "Activation",
    "Adapter",
    "EncoderStack",
    "ContrastiveLogits",
    "HeadStep",
    "LayerPaths",
    "Linear",
    "MeanOfLinears",
    "Norm",
    "ScaledLinear",
    "Stages",
    "TaskHeads",
    "UnsupportedTaskError",
    "adapter_for",
    "grouped_layer",
    "register_adapter",
    "resolve",
    "position_offset",
    "supported_model_types",
    "task_of",
    "unregister_adapter",
    "Windows",
]
