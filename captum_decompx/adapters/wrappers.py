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

``DistributedDataParallel`` and ``nn.DataParallel`` are seen through too (:func:`unwrap_parallel`,
:func:`unwrap_for_decompx`).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

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


# --------------------------------------------------------------------------------------------
# Models wrapped in DistributedDataParallel or nn.DataParallel


def _is_parallel_wrapper(module: Any) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    return isinstance(module, (DistributedDataParallel, nn.DataParallel))


def unwrap_parallel(model: nn.Module) -> nn.Module:
    """The module inside ``DistributedDataParallel`` or ``nn.DataParallel`` (other modules unchanged).

    DecompX records the forward pass of the calling thread, and ``DataParallel`` over several GPUs
    runs its replicas in other threads; ``DistributedDataParallel`` synchronizes buffers in every
    forward pass, a collective that ranks with different numbers of batches would never complete.
    The wrapped module computes the same logits in the calling thread without either.
    """
    while _is_parallel_wrapper(model):
        inner = model.module
        assert isinstance(inner, nn.Module)
        model = inner
    return model


def unwrap_for_decompx(forward_func: Any, model: Optional[nn.Module]) -> tuple[Any, Optional[nn.Module]]:
    """The forward function and model DecompX uses when given parallel wrappers.

    - A wrapper passed as the forward function (``DecompX(DistributedDataParallel(model))``) is
      replaced by its module: the same logits, computed in the calling thread.
    - A wrapper passed as ``model=`` is hooked through its module.
    - A forward function of its own that calls a ``DataParallel`` over several devices is refused:
      its replicas run in other threads, which DecompX does not record.

    Raises:
        ValueError: the last case; the message says to pass ``model.module``.
    """
    if _is_parallel_wrapper(forward_func):
        inner = unwrap_parallel(forward_func)
        return inner, inner if model is None or model is forward_func else unwrap_parallel(model)
    if model is not None and isinstance(model, nn.DataParallel) and len(model.device_ids) > 1:
        raise ValueError(
            f"model is an nn.DataParallel over {len(model.device_ids)} devices: it runs the forward pass in other "
            "threads, which DecompX does not record. Explain the wrapped module in one thread: "
            "DecompX(forward_func_calling_model_module, model=model.module), or DecompX(model) with the wrapper itself."
        )
    return forward_func, None if model is None else unwrap_parallel(model)
