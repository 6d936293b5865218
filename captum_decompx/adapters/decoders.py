"""Adapters for decoder models: GPT-2, the Llama family (Llama, Qwen2, Qwen3, Mistral), Gemma
(1, 2, 3) and Phi-3.

Each serves the sequence classifiers (``score`` on the rightmost token that is not the pad
token, as Hugging Face pools) and the causal language models (``lm_head``; the forward function
picks the position, the decomposition covers the last token the attention mask keeps).
"""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any

from torch import nn

from .base import Adapter, LayerPaths, Linear, grouped_layer
from .wrappers import base_layer, running_module

GPT2_LAYER = grouped_layer(("attn", "c_attn[2/3]", "c_proj"), ("mlp", "c_fc", "act", "c_proj"), ("ln_1", "ln_2"))

LLAMA_LAYER = grouped_layer(
    ("self_attn", "v_proj", "o_proj"),
    ("mlp", "up_proj", "act_fn", "down_proj"),
    ("input_layernorm", "post_attention_layernorm"),
    gate="gate_proj",
)

# Gemma 2 and 3: sandwich norms. The attention block is x + post_attention_layernorm(attn(
# input_layernorm(x))), the feed-forward block h + post_feedforward_layernorm(mlp(
# pre_feedforward_layernorm(h))).
GEMMA2_LAYER = replace(
    LLAMA_LAYER,
    ffn_norm="pre_feedforward_layernorm",
    attention_output_norm="post_attention_layernorm",
    ffn_output_norm="post_feedforward_layernorm",
)


def _is_linear(module: object) -> bool:
    """An ``nn.Linear``, also inside PEFT's wrappers (``modules_to_save``, a LoRA layer)."""
    return isinstance(base_layer(running_module(module)), nn.Linear)


def _output_head(model: nn.Module) -> tuple[tuple[Linear, ...], str]:
    """The head and the pooling of a decoder: its sequence classifier or its language model."""
    if _is_linear(getattr(model, "score", None)):
        return (Linear("score"),), "last_non_pad_token"
    if _is_linear(getattr(model, "lm_head", None)):
        return (Linear("lm_head"),), "last"
    raise ValueError(
        f"{type(model).__name__} has neither a `score` (sequence classification) nor an `lm_head` "
        "(causal language model) layer; DecompX explains those two kinds of decoder models."
    )


def _decoder(model: nn.Module, layer: LayerPaths, layers: str, final_norm: str, **extra: Any) -> Adapter:
    config: Any = model.config
    head, pooling = _output_head(model)
    return Adapter(
        name=config.model_type,
        layers=layers,
        layer=layer,
        head=head,
        pooling=pooling,
        norm_position="pre",
        final_norm=final_norm,
        **extra,
    )


def gpt2(model: nn.Module) -> Adapter:
    """GPT-2: pre-LN, fused ``c_attn`` (Conv1D) projections, final ``ln_f``."""
    return _decoder(model, GPT2_LAYER, "base_model.h", "base_model.ln_f")


def llama_family(model: nn.Module) -> Adapter:
    """Llama, Qwen2, Qwen3, Mistral, Gemma 1: pre-RMSNorm, gated feed-forward (SwiGLU; GeGLU in
    Gemma), rotary positions and grouped-query attention (read from the real probabilities, so
    Qwen3's query/key norms are covered), final ``norm``. Gemma's RMSNorm gain ``1 + weight`` is
    its norm kind's; its embedding scale is part of the first layer's input."""
    return _decoder(model, LLAMA_LAYER, "base_model.layers", "base_model.norm")


def gemma_sandwich(model: nn.Module) -> Adapter:
    """Gemma 2 and Gemma 3 (text): as Gemma 1 plus sandwich norms (a norm on each block's output
    before its residual); attention soft-capping and sliding windows only shape the probabilities,
    which are read as the model produced them. The causal LMs' final-logit soft-cap is not
    decomposed (see :attr:`Adapter.logit_softcap`)."""
    config: Any = model.config
    head, _ = _output_head(model)
    # Only the causal LMs apply the cap; the sequence classifiers return the score's output.
    cap = getattr(config, "final_logit_softcapping", None) if head[0].path == "lm_head" else None
    implementation = getattr(config, "_attn_implementation", None)
    if getattr(config, "attn_logit_softcapping", None) is not None and implementation == "sdpa":
        warnings.warn(
            f"This {config.model_type} model runs sdpa attention, which skips its attention soft-capping "
            f"(attn_logit_softcapping={config.attn_logit_softcapping}); DecompX reads the probabilities of "
            "eager attention, which applies it, so it explains logits that differ from this model's sdpa "
            "output. Load the model with attn_implementation='eager' (as transformers recommends for "
            "Gemma 2) to explain what it returns.",
            UserWarning,
            stacklevel=4,
        )
    # transformers 4.57's Gemma3ForCausalLM has no `base_model` (its prefix names a missing module)
    base = "base_model" if hasattr(getattr(model, "base_model", None), "layers") else "model"
    return _decoder(model, GEMMA2_LAYER, f"{base}.layers", f"{base}.norm", logit_softcap=cap, input_ids_at=base)


def phi3(model: nn.Module) -> Adapter:
    """Phi-3: as Llama, with a fused query-key-value projection ``qkv_proj`` (queries, then keys and
    values of the key-value heads: unequal blocks with grouped-query attention) and a fused
    ``gate_up_proj`` (gate, then up: equal halves)."""
    config: Any = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    queries = config.num_attention_heads * head_dim
    kv_width = (config.num_key_value_heads or config.num_attention_heads) * head_dim
    layer = replace(
        LLAMA_LAYER,
        value=f"self_attn.qkv_proj[{queries + kv_width}:{queries + 2 * kv_width}]",
        ffn_in="mlp.gate_up_proj[1/2]",
        ffn_gate="mlp.gate_up_proj[0/2]",
        ffn_activation="mlp.activation_fn",
    )
    return _decoder(model, layer, "base_model.layers", "base_model.norm")
