"""The component kinds DecompX propagates a decomposition through, one module per kind.

Each kind is defined once: how it is found (adapter paths), what the exact path records, how the
fast path freezes it, how it resolves to parameters and how pieces propagate through it (see
:mod:`.base`); :meth:`.network.Network.walk` lists them for both algorithms.

- :mod:`.pieces`: the decomposition tensor, :class:`BiasMode`, adding a bias;
- :mod:`.bias_rules`: how a bias is spread over the pieces (registered :class:`BiasRule` objects);
- :mod:`.linear`: linear maps (``nn.Linear``, ``Conv1D``, fused blocks ``[i/n]``);
- :mod:`.lora`: PEFT's LoRA layers as a linear layout (their effective map, nothing merged);
- :mod:`.norms`: LayerNorm, RMSNorm (registered :class:`NormKind` objects);
- :mod:`.activations`: pointwise activations and their registered approximations (ZO, LA, ReLU);
- :mod:`.attention`: attention, with grouped-query heads;
- :mod:`.windows`: attention in shifted windows (Swin), read as the full attention;
- :mod:`.merging`: patch merging between stages (Swin);
- :mod:`.feed_forward`: plain and gated feed-forward units;
- :mod:`.layer`: a post-LN or pre-LN transformer layer built from the above;
- :mod:`.head`: the classification head's steps (registered step kinds);
- :mod:`.contrastive`: the image-text logits of a two-tower model (CLIP, SigLIP), norms frozen;
- :mod:`.probe`: an attention-pooling head (SigLIP's image tower);
- :mod:`.network`: the whole network of an adapter: layers, final norm, head.
"""

from .activations import (
    FFN_APPROXIMATIONS,
    HEAD_APPROXIMATIONS,
    Approximation,
    activation,
    approximation,
    register_approximation,
    unregister_approximation,
)
from .attention import Attention, attention_bias, attention_values, mix_heads, split_heads
from .base import Component
from .bias_rules import BIAS_RULES, BiasRule, bias_rule, bias_rule_weights, register_bias_rule, unregister_bias_rule
from .contrastive import ContrastiveStep, contrastive_weights
from .feed_forward import FeedForward, feed_forward
from .head import (
    Head,
    HeadStepKind,
    head_step_kind,
    propagate_head,
    propagate_head_rows,
    register_head_step,
    unregister_head_step,
)
from .layer import LayerParams, LayerRecord, TransformerLayer, layer_attention_bias, transformer_layer
from .linear import (
    Affine,
    LinearLayout,
    LinearMap,
    UnsupportedLinearMap,
    affine,
    layout_of,
    linear,
    register_linear_layout,
    unregister_linear_layout,
)
from .lora import lora_affine
from .network import ModelParts, Network, NetworkRecord
from .norms import (
    NORM_KINDS,
    Normalization,
    NormKind,
    NormParams,
    norm_kind,
    norm_params,
    normalize,
    register_norm_kind,
    unregister_norm_kind,
)
from .pieces import BiasMode, Settings, add_bias, add_to_own_pieces, token_pieces
from .registry import Registry

__all__ = [
    "BIAS_RULES",
    "FFN_APPROXIMATIONS",
    "HEAD_APPROXIMATIONS",
    "NORM_KINDS",
    "Affine",
    "ContrastiveStep",
    "contrastive_weights",
    "Approximation",
    "Attention",
    "BiasMode",
    "BiasRule",
    "Component",
    "FeedForward",
    "Head",
    "HeadStepKind",
    "LayerParams",
    "LayerRecord",
    "LinearLayout",
    "LinearMap",
    "ModelParts",
    "Network",
    "NetworkRecord",
    "NormKind",
    "NormParams",
    "Normalization",
    "Registry",
    "Settings",
    "TransformerLayer",
    "UnsupportedLinearMap",
    "activation",
    "add_bias",
    "add_to_own_pieces",
    "affine",
    "approximation",
    "attention_bias",
    "attention_values",
    "bias_rule",
    "bias_rule_weights",
    "feed_forward",
    "head_step_kind",
    "layer_attention_bias",
    "layout_of",
    "linear",
    "lora_affine",
    "mix_heads",
    "norm_kind",
    "norm_params",
    "normalize",
    "propagate_head",
    "propagate_head_rows",
    "register_approximation",
    "register_bias_rule",
    "register_head_step",
    "register_linear_layout",
    "register_norm_kind",
    "split_heads",
    "token_pieces",
    "transformer_layer",
    "unregister_approximation",
    "unregister_bias_rule",
    "unregister_head_step",
    "unregister_linear_layout",
    "unregister_norm_kind",
]
