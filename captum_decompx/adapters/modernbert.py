"""Adapter for ModernBERT sequence classifiers."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Adapter, dense_head, grouped_layer


def modernbert(model: nn.Module) -> Adapter:
    """ModernBERT: pre-LN, fused query-key-value projection, GeGLU feed-forward unit, rotary
    positions and local/global attention (read from the real probabilities), CLS or mean pooling,
    and a dense + activation + norm head."""
    config: Any = model.config
    pooling = {"cls": "first", "mean": "mean"}[config.classifier_pooling]
    if pooling == "first" and type(model).__name__.endswith("ForMultipleChoice"):
        pooling = "first_real"  # its CLS is the first token the attention mask keeps (left padding)
    return Adapter(
        name="modernbert",
        layers="base_model.layers",
        layer=grouped_layer(
            ("attn", "Wqkv[2/3]", "Wo"), ("mlp", "Wi[1/2]", "act", "Wo"), ("attn_norm", "mlp_norm"), gate="Wi[0/2]"
        ),
        head=dense_head("head.dense", "head.act", "classifier", norm="head.norm"),
        pooling=pooling,
        norm_position="pre",
        final_norm="base_model.final_norm",
    )
