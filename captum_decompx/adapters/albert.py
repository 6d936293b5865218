"""Adapter for ALBERT sequence classifiers (layers shared in groups)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import Adapter, dense_head, grouped_layer


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
    # the feed-forward maps and activation sit in the layer itself
    layer=grouped_layer(
        ("attention", "value", "dense"), ("", "ffn", "activation", "ffn_output"), ("attention.LayerNorm", "full_layer_layer_norm")
    ),
    head=dense_head("base_model.pooler", "base_model.pooler_activation", "classifier"),
)
