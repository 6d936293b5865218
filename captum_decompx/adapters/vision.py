"""Adapter for ViT image classifiers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from .base import Adapter, Linear, grouped_layer
from .bert_family import BERT_LAYER

_VIT_LAYER = grouped_layer(  # transformers 5.x
    ("attention", "v_proj", "o_proj"), ("mlp", "fc1", "activation_fn", "fc2"), ("layernorm_before", "layernorm_after")
)

# transformers 4.x: BERT's layer modules, with the attention one level deeper and pre-LN norms
_VIT_LAYER_4X = replace(
    BERT_LAYER,
    attention="attention.attention",
    value="attention.attention.value",
    attention_norm="layernorm_before",
    ffn_norm="layernorm_after",
)


def vit(model: nn.Module) -> Adapter:
    """ViT: pre-LN, patch embeddings plus a CLS token; the classifier reads the CLS token after
    the final LayerNorm. Inputs are ``pixel_values``; attributions are per position (CLS first)."""
    base: Any = model.base_model
    layers = "base_model.layers" if hasattr(base, "layers") else "base_model.encoder.layer"
    first_layer = base.layers[0] if hasattr(base, "layers") else base.encoder.layer[0]
    layer = _VIT_LAYER if hasattr(first_layer.attention, "v_proj") else _VIT_LAYER_4X
    return Adapter(
        name="vit",
        layers=layers,
        layer=layer,
        head=(Linear("classifier"),),
        pooling="first",
        norm_position="pre",
        final_norm="base_model.layernorm",
        input_kind="pixels",
    )
