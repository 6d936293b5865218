"""Adapters for DeBERTa-v2/v3, ALBERT and ModernBERT sequence classifiers."""

from __future__ import annotations

import dataclasses

from torch import nn
from transformers.activations import ACT2FN

from .base import Activation, Adapter, LayerPaths, Linear, Norm
from .bert_family import BERT_LAYER


def deberta_v2(model: nn.Module) -> Adapter:
    """DeBERTa-v2/v3: post-LN, disentangled attention (its probabilities are read by asking the
    attention module for them, per call), ContextPooler head (dense + configured activation)."""
    config = model.config
    if getattr(config, "conv_kernel_size", 0):
        raise ValueError(
            "DeBERTa-v2 models with a convolution layer (conv_kernel_size > 0) are not supported by "
            "DecompX yet: the convolution mixes tokens outside attention."
        )
    return Adapter(
        name="deberta-v2",
        layers="base_model.encoder.layer",
        layer=dataclasses.replace(BERT_LAYER, value="attention.self.value_proj"),
        head=(
            Linear("pooler.dense"),
            Activation(function=ACT2FN[config.pooler_hidden_act]),
            Linear("classifier"),
        ),
        force_output_attentions=(2, "output_attentions"),
    )


def _albert_layers(model: nn.Module) -> list[nn.Module]:
    """ALBERT shares layers: layer ``i`` runs group ``int(i / (L / G))``, all its inner layers."""
    config = model.config
    transformer = model.base_model.encoder
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
    head=(
        Linear("base_model.pooler"),
        Activation(path="base_model.pooler_activation"),
        Linear("classifier"),
    ),
)


def modernbert(model: nn.Module) -> Adapter:
    """ModernBERT: pre-LN, fused query-key-value projection, GeGLU feed-forward unit, rotary
    positions and local/global attention (read from the real probabilities), CLS or mean pooling,
    and a dense + activation + norm head."""
    pooling = {"cls": "first", "mean": "mean"}[model.config.classifier_pooling]
    return Adapter(
        name="modernbert",
        layers="base_model.layers",
        layer=LayerPaths(
            attention="attn",
            value="attn.Wqkv[2/3]",
            attention_output="attn.Wo",
            attention_norm="attn_norm",
            ffn_in="mlp.Wi[1/2]",
            ffn_gate="mlp.Wi[0/2]",
            ffn_activation="mlp.act",
            ffn_out="mlp.Wo",
            ffn_norm="mlp_norm",
        ),
        head=(Linear("head.dense"), Activation(path="head.act"), Norm("head.norm"), Linear("classifier")),
        pooling=pooling,
        norm_position="pre",
        final_norm="base_model.final_norm",
    )
