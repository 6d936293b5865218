"""Seeing through PEFT's wrappers on the way along an adapter path.

An adapter's paths describe a Hugging Face model (``"base_model.encoder.layer"``). A PEFT model
wraps that model twice and replaces some of its modules:

- ``PeftModel`` -> ``LoraModel`` -> the Hugging Face model (``peft_model.base_model.model``):
  :func:`unwrap_model` returns the Hugging Face model, after checking that the adapters are of a
  kind DecompX explains (:func:`check_peft_model`);
- ``ModulesToSaveWrapper`` (``modules_to_save``, e.g. the classifier of a ``SEQ_CLS`` model) holds
  the original module and one trained copy per adapter: :func:`running_module` returns the one its
  forward runs in the current state (the active adapter's copy, or the original when the adapters
  are disabled);
- LoRA layers stay where they are: a path ends at the LoRA layer, whose output is the real output,
  and the linear kind reads its effective map (see :mod:`captum_decompx.components.lora`).

PEFT is imported only when the user imported it: a model can only hold PEFT's classes then.
"""

from __future__ import annotations

import sys
from typing import Any

from torch import nn

#: The PEFT methods DecompX explains (``peft_config.peft_type``).
SUPPORTED_PEFT_TYPES = ("LORA",)

_SUPPORTED = "DecompX supports LoRA adapters (with rsLoRA, lora_bias or DoRA) and modules_to_save"
_MERGE = "to explain another PEFT method, merge it into a copy of the model first: copy.deepcopy(peft_model).merge_and_unload()"


def _peft_imported() -> bool:
    return "peft" in sys.modules


def _peft_type_name(config: Any) -> str:
    peft_type = getattr(config, "peft_type", None)
    return str(getattr(peft_type, "value", peft_type))


def check_peft_model(model: nn.Module) -> None:
    """Refuse PEFT methods whose effect DecompX does not decompose.

    Prompt learning (prefix tuning, prompt tuning, P-tuning) and adaption prompts add virtual
    tokens or key-value prefixes to the sequence; other methods (IA3, LoHa, LoKr, OFT, ...) change
    the linear maps in other ways.

    Raises:
        ValueError: naming the adapter, its method and what is supported.
    """
    configs = getattr(model, "peft_config", {}) or {}
    for name, config in configs.items():
        kind = _peft_type_name(config)
        if getattr(config, "is_prompt_learning", False) or getattr(config, "is_adaption_prompt", False):
            raise ValueError(
                f"The PEFT adapter {name!r} is {kind}, which adds virtual tokens or key-value prefixes to "
                "the sequence: the model no longer reads only the input tokens that DecompX attributes to. "
                f"{_SUPPORTED}; to explain the base model, pass peft_model.get_base_model()."
            )
        if kind not in SUPPORTED_PEFT_TYPES:
            raise ValueError(f"The PEFT adapter {name!r} is {kind}, which DecompX does not decompose. {_SUPPORTED}; {_MERGE}.")


def unwrap_model(model: Any) -> Any:
    """The Hugging Face model inside a ``PeftModel`` (or a PEFT tuner model); anything else as it is.

    Raises:
        ValueError: for PEFT methods DecompX does not explain (see :func:`check_peft_model`).
    """
    if not _peft_imported() or not isinstance(model, nn.Module):
        return model
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    if isinstance(model, PeftModel):
        check_peft_model(model)
        return model.get_base_model()
    if isinstance(model, BaseTuner):
        check_peft_model(model)
        return model.model
    return model


def running_module(module: Any) -> Any:
    """The module that runs in place of ``module``: for a ``ModulesToSaveWrapper``, the active
    adapter's copy, or the original module when the adapters are disabled (as its forward decides);
    anything else as it is."""
    if not _peft_imported() or not isinstance(module, nn.Module):
        return module
    from peft.utils.other import ModulesToSaveWrapper

    if not isinstance(module, ModulesToSaveWrapper):
        return module
    active = list(module.active_adapters)
    if module.disable_adapters or not active or any(name not in module.modules_to_save for name in active):
        return module.original_module
    return module.modules_to_save[active[0]]


def base_layer(module: Any) -> Any:
    """The module a PEFT tuner layer (e.g. a LoRA layer) wraps, all the way down; else ``module``."""
    get_base_layer = getattr(module, "get_base_layer", None)
    if _peft_imported() and callable(get_base_layer):
        from peft.tuners.tuners_utils import BaseTunerLayer

        if isinstance(module, BaseTunerLayer):
            return get_base_layer()
    return module
