"""PEFT's LoRA layers as a linear layout: the effective map, read without merging anything.

A LoRA layer (``peft.tuners.lora.Linear``) keeps the original map in ``base_layer`` (an
``nn.Linear`` or GPT-2's ``Conv1D``, fused projections included) and adds, per active adapter
``a``, a rank-``r`` term; dropout is the identity in eval mode. As its forward does, in order over
the active adapters::

    W, b = the base layer's map
    LoRA:  W += s_a B_a A_a,              b += s_a b_B,a      (b_B,a only with lora_bias)
    DoRA:  g = m_a / ||W_base + s_a B_a A_a||_rows            (a fixed per-output scale)
           W  = g * (W + s_a B_a A_a),     b  = b + (g - 1)(b - b_base)

with ``s_a = scaling[a]``. Disabled adapters add nothing; an adapter merged into the base weights
(``merge_adapter()``) is in ``W`` already and is not added twice. The map is linear in the input,
so it propagates like any linear map (:mod:`.linear`); the layer's real output, recorded by the
linear kind's hook, is the one the model used.

Other PEFT layers met where a linear map is expected (IA3, LoHa, LoKr, quantized LoRA layers,
LoRA variants other than DoRA, ``TrainableTokensWrapper``) are refused with a message that names
them (:class:`~.linear.UnsupportedLinearMap`).
"""

from __future__ import annotations

import sys
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .linear import Affine, LinearLayout, UnsupportedLinearMap, module_affine, register_linear_layout

SUPPORTED = "DecompX decomposes LoRA layers over nn.Linear and Conv1D (also with rsLoRA, lora_bias or DoRA)"


def _is_peft_module(module: nn.Module) -> bool:
    return "peft" in sys.modules and type(module).__module__.startswith("peft.")


def is_lora_linear(module: nn.Module) -> bool:
    """A LoRA layer on a linear map (``peft.tuners.lora.Linear``)."""
    if not _is_peft_module(module):
        return False
    from peft.tuners.lora.layer import Linear

    return type(module) is Linear


def _is_dora(variant: object) -> bool:
    from peft.tuners.lora.variants import DoraLinearVariant

    return isinstance(variant, DoraLinearVariant) or variant is DoraLinearVariant


def _add(bias: Optional[Tensor], term: Optional[Tensor]) -> Optional[Tensor]:
    if term is None:
        return bias
    return term if bias is None else bias + term


def _low_rank(module: Any, name: str, dtype: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
    """``s B A`` (out, in) and ``s b_B`` (out,) or None, of adapter ``name``."""
    lora_a, lora_b = module.lora_A[name], module.lora_B[name]
    scaling = module.scaling[name]
    delta = scaling * (lora_b.weight.detach().to(dtype) @ lora_a.weight.detach().to(dtype))
    delta_bias = None if lora_b.bias is None else scaling * lora_b.bias.detach().to(dtype)
    return delta, delta_bias


def lora_affine(module: Any) -> Affine:
    """The map a LoRA layer computes in eval mode in its current state (see the module docstring).

    Args:
        module: a LoRA layer on a linear map (``peft.tuners.lora.Linear``).

    Returns:
        weight (out, in) and bias (out,) or None, in float32 or wider.

    Raises:
        UnsupportedLinearMap: a LoRA variant other than DoRA, or a base layer that is not a linear map.
    """
    try:
        base = module_affine(module.base_layer)
    except UnsupportedLinearMap as error:
        raise UnsupportedLinearMap(f"LoRA wraps a {type(module.base_layer).__name__}: {error}. {SUPPORTED}.") from None
    dtype = torch.promote_types(base.weight.dtype, torch.float32)
    base_weight = base.weight.to(dtype)
    base_bias = None if base.bias is None else base.bias.to(dtype)
    weight, bias = base_weight, base_bias
    variants = getattr(module, "lora_variant", {})
    if module.disable_adapters:
        # Its forward first unmerges what merge_adapter() put into the base weights.
        for name in module.merged_adapters:
            if name in variants:
                raise UnsupportedLinearMap(
                    f"adapter {name!r} ({type(variants[name]).__name__}) is merged and the adapters are "
                    "disabled; unmerge it (peft_model.unmerge_adapter()) before explaining"
                )
            delta, delta_bias = _low_rank(module, name, dtype)
            weight = weight - delta
            bias = bias if delta_bias is None else _add(bias, -delta_bias)
        return Affine(weight, bias)
    if module.merged:
        return Affine(weight, bias)
    for name in module.active_adapters:
        if name not in module.lora_A:
            continue
        delta, delta_bias = _low_rank(module, name, dtype)
        variant = variants.get(name)
        if variant is None:
            weight = weight + delta
            bias = _add(bias, delta_bias)
        elif _is_dora(variant):
            magnitude = module.lora_magnitude_vector[name].weight.detach().to(dtype)
            scale = magnitude / torch.linalg.vector_norm(base_weight + delta, dim=1)
            shifted = None if bias is None else (bias if base_bias is None else bias - base_bias)
            weight = scale[:, None] * (weight + delta)
            bias = _add(
                _add(bias, None if shifted is None else (scale - 1) * shifted), None if delta_bias is None else scale * delta_bias
            )
        else:
            raise UnsupportedLinearMap(
                f"adapter {name!r} is a LoRA variant ({type(variant).__name__}) whose map DecompX does not decompose. {SUPPORTED}"
            )
    return Affine(weight, bias)


def _single_adapter_batch(module: nn.Module, args: tuple, kwargs: dict) -> Optional[Exception]:
    """Refuse PEFT's mixed-batch inference, where each example runs its own adapter."""
    if kwargs.get("adapter_names") is None:
        return None
    return UnsupportedLinearMap(
        "The forward function ran the model with adapter_names=... (PEFT's mixed-batch inference): "
        "each example used its own adapter, while DecompX reads one map per layer. Explain one "
        "adapter at a time: peft_model.set_adapter(name), and call the model without adapter_names."
    )


def _refuse(module: nn.Module) -> Tensor:
    raise UnsupportedLinearMap(
        f"found PEFT's {type(module).__module__}.{type(module).__name__}, which changes the map in a way "
        f"DecompX does not decompose. {SUPPORTED}; merge other PEFT methods into a copy of the model "
        "first: copy.deepcopy(peft_model).merge_and_unload()"
    )


#: Any other PEFT module where a linear map is expected (IA3, LoHa, quantized LoRA, ...): refused.
PEFT_REFUSED = LinearLayout("PEFT (unsupported)", _is_peft_module, _refuse, bias=lambda module: None)
#: A LoRA layer on a linear map: its effective map.
LORA = LinearLayout(
    "LoRA",
    is_lora_linear,
    lambda module: lora_affine(module).weight,
    bias=lambda module: lora_affine(module).bias,
    check_call=_single_adapter_batch,
)

register_linear_layout(PEFT_REFUSED)
register_linear_layout(LORA)
