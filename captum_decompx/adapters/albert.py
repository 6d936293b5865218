"""Adapter for ALBERT sequence classifiers (layers shared in groups)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Adapter, LayerPaths, dense_head


def _albert_layers(model: nn.Module) -> list[nn.Module]:
    """ALBERT shares layers: layer ``i`` runs group ``int(i / (L / G))``, all its inner layers."""
    config: Any = model.config
    base: Any = model.base_model
    transformer = base.encoder
    layers = []
    for index in range(config.num_hidden_layers):
        group = int(index / (config.num_hidden_layers / config.num_hidden_groups))
        layers.extend(transformer.albert_layer_groups[group].albert_layers)
    return layers


ALBERT = Adapter(
    name="albert",
    layers=_albert_layers,
    layer=LayerPaths(
        attention="attention",
        value="attention.value",
        attention_output="attention.dense",
        attention_norm="attention.LayerNorm",
        ffn_in="ffn",
        ffn_activation="activation",
        ffn_out="ffn_output",
        ffn_norm="full_layer_layer_norm",
    ),
    head=dense_head("base_model.pooler", "base_model.pooler_activation", "classifier"),
)
