"""Adapter for DeBERTa-v2/v3 sequence classifiers."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn
from transformers.activations import ACT2FN

from .base import Activation, Adapter, Linear
from .bert_family import BERT_LAYER


def deberta_v2(model: nn.Module) -> Adapter:
    """DeBERTa-v2/v3: post-LN, disentangled attention (its probabilities are read by asking the
    attention module for them, per call), ContextPooler head (dense + configured activation)."""
    config: Any = model.config
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
