"""Adapters for decoder models: GPT-2 and the Llama family (Llama, Qwen2, Mistral).

Both serve the sequence classifiers (``score`` on the last non-padding token) and the causal
language models (``lm_head`` on the last token).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Adapter, LayerPaths, Linear
from .wrappers import base_layer, running_module

GPT2_LAYER = LayerPaths(
    attention="attn",
    value="attn.c_attn[2/3]",
    attention_output="attn.c_proj",
    attention_norm="ln_1",
    ffn_in="mlp.c_fc",
    ffn_activation="mlp.act",
    ffn_out="mlp.c_proj",
    ffn_norm="ln_2",
)

LLAMA_LAYER = LayerPaths(
    attention="self_attn",
    value="self_attn.v_proj",
    attention_output="self_attn.o_proj",
    attention_norm="input_layernorm",
    ffn_in="mlp.up_proj",
    ffn_gate="mlp.gate_proj",
    ffn_activation="mlp.act_fn",
    ffn_out="mlp.down_proj",
    ffn_norm="post_attention_layernorm",
)


def _is_linear(module: object) -> bool:
    """An ``nn.Linear``, also inside PEFT's wrappers (``modules_to_save``, a LoRA layer)."""
    return isinstance(base_layer(running_module(module)), nn.Linear)


def _output_head(model: nn.Module) -> tuple[Linear, ...]:
    if _is_linear(getattr(model, "score", None)):
        return (Linear("score"),)
    if _is_linear(getattr(model, "lm_head", None)):
        return (Linear("lm_head"),)
    raise ValueError(
        f"{type(model).__name__} has neither a `score` (sequence classification) nor an `lm_head` "
        "(causal language model) layer; DecompX explains those two kinds of decoder models."
    )


def gpt2(model: nn.Module) -> Adapter:
    """GPT-2: pre-LN, fused ``c_attn`` (Conv1D) projections, final ``ln_f``."""
    return Adapter(
        name="gpt2",
        layers="base_model.h",
        layer=GPT2_LAYER,
        head=_output_head(model),
        pooling="last",
        norm_position="pre",
        final_norm="base_model.ln_f",
    )


def llama_family(model: nn.Module) -> Adapter:
    """Llama, Qwen2, Mistral: pre-RMSNorm, SwiGLU feed-forward, rotary positions and
    grouped-query attention (read from the real probabilities), final ``norm``."""
    config: Any = model.config
    return Adapter(
        name=config.model_type,
        layers="base_model.layers",
        layer=LLAMA_LAYER,
        head=_output_head(model),
        pooling="last",
        norm_position="pre",
        final_norm="base_model.norm",
    )
