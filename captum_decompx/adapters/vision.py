"""Adapters for the vision classifiers: ViT, DeiT, BEiT / Data2VecVision, DINOv2 and Swin.

All are pre-LN encoders over the patches of an image (plus a CLS token, and DeiT's distillation
token). What differs is data: the module names, a layer scale (BEiT, DINOv2), a gated feed-forward
unit (DINOv2's SwiGLU variant), and how the head reads the last layer (the CLS token; the mean of
the patches and a LayerNorm, BEiT; the CLS token and that mean concatenated, DINOv2; the CLS and
distillation tokens each through their own classifier, averaged, DeiT with a teacher). Relative
position biases (BEiT, Swin) change only the attention probabilities, which DecompX takes as the
real forward pass produced them. Swin adds windowed attention and patch mergings between stages
(component kinds of their own, :mod:`~captum_decompx.components.windows` and
:mod:`~captum_decompx.components.merging`).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from torch import nn

from .base import Adapter, LayerPaths, LayersSpec, Linear, MeanOfLinears, Norm, Stages, Windows, grouped_layer, resolve
from .bert_family import BERT_LAYER

_VIT_LAYER = grouped_layer(  # transformers 5.x (ViT, DeiT, BEiT)
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


def _layers_and_first(model: nn.Module) -> tuple[str, Any]:
    """The path of the layer list (``layers`` in transformers 5.x, ``encoder.layer`` before) and its first layer."""
    base: Any = model.base_model
    if hasattr(base, "layers"):
        return "base_model.layers", base.layers[0]
    return "base_model.encoder.layer", base.encoder.layer[0]


def _vit_layout(model: nn.Module) -> tuple[str, LayerPaths]:
    layers, first_layer = _layers_and_first(model)
    return layers, _VIT_LAYER if hasattr(first_layer.attention, "v_proj") else _VIT_LAYER_4X


_CLASSIFIER = (Linear("classifier"),)


def _image_classifier(name: str, layers: LayersSpec, layer: LayerPaths, **data: Any) -> Adapter:
    """A pre-LN image classifier's adapter: by default the ``classifier`` on the first token after
    the final LayerNorm ``base_model.layernorm``; ``data`` gives the other fields."""
    defaults: dict[str, Any] = {"head": _CLASSIFIER, "pooling": "first", "final_norm": "base_model.layernorm"}
    return Adapter(name=name, layers=layers, layer=layer, norm_position="pre", input_kind="pixels", **{**defaults, **data})


def vit(model: nn.Module) -> Adapter:
    """ViT: pre-LN, patch embeddings plus a CLS token; the classifier reads the CLS token after
    the final LayerNorm. Inputs are ``pixel_values``; attributions are per position (CLS first)."""
    layers, layer = _vit_layout(model)
    return _image_classifier("vit", layers, layer, fixed_image_size=True)


def deit(model: nn.Module) -> Adapter:
    """DeiT: ViT's layers over a CLS token, a distillation token and the patches (positions: CLS,
    distillation, then the patches). ``DeiTForImageClassification`` reads the CLS token;
    ``DeiTForImageClassificationWithTeacher`` averages its CLS classifier on the CLS token and its
    distillation classifier on the distillation token (pooling ``"first_two"``)."""
    layers, layer = _vit_layout(model)
    with_teacher = hasattr(model, "distillation_classifier")
    if not with_teacher:
        return _image_classifier("deit", layers, layer, fixed_image_size=True)
    teacher_head = (MeanOfLinears(("cls_classifier", "distillation_classifier")),)
    return _image_classifier("deit", layers, layer, head=teacher_head, pooling="first_two", fixed_image_size=True)


_BEIT_LAYER = replace(_VIT_LAYER, attention_scale="lambda_1", ffn_scale="lambda_2")

# Data2VecVision (and BEiT in transformers 4.x): ViT's 4.x module names
_BEIT_LAYER_4X = replace(_VIT_LAYER_4X, attention_scale="lambda_1", ffn_scale="lambda_2")


def beit(model: nn.Module) -> Adapter:
    """BEiT and Data2VecVision: pre-LN layers with a layer scale on each block's output
    (``lambda_1``, ``lambda_2``) and relative position biases in the attention scores. With
    ``use_mean_pooling`` (the default) the classifier reads the mean of the patches (the CLS token
    left out) after the pooler's LayerNorm; without, the CLS token after the final LayerNorm."""
    layers, first_layer = _layers_and_first(model)
    layer = _BEIT_LAYER if hasattr(first_layer.attention, "v_proj") else _BEIT_LAYER_4X
    base: Any = model.base_model
    pooler_norm = getattr(getattr(base, "pooler", None), "layernorm", None)
    name = str(base.config.model_type)
    if not isinstance(pooler_norm, nn.Module):  # use_mean_pooling=False
        return _image_classifier(name, layers, layer)
    mean_head = (Norm("base_model.pooler.layernorm"), *_CLASSIFIER)
    return _image_classifier(name, layers, layer, head=mean_head, pooling="patch_mean", final_norm=None)


def _dinov2_layer(
    attention: tuple[str, str, str], feed_forward: tuple[str, str, str, str], gate: Optional[str] = None
) -> LayerPaths:
    """A DINOv2 layer with these attention and feed-forward modules, its layer scales on both blocks' outputs."""
    paths = grouped_layer(attention, feed_forward, ("norm1", "norm2"), gate=gate)
    return replace(paths, attention_scale="layer_scale1.lambda1", ffn_scale="layer_scale2.lambda1")


# transformers 5.x
_DINOV2_ATTENTION = ("attention", "v_proj", "o_proj")
_DINOV2_LAYER = _dinov2_layer(_DINOV2_ATTENTION, ("mlp", "fc1", "activation_fn", "fc2"))
_DINOV2_SWIGLU_LAYER = _dinov2_layer(_DINOV2_ATTENTION, ("mlp", "up_proj", "act_fn", "down_proj"), gate="gate_proj")

# transformers 4.x: the self-attention one level deeper, W_O in ``attention.output``; the SwiGLU
# unit's gate and up-projection are the two halves of one map ``weights_in``, its activation
# ``nn.functional.silu`` called from no attribute
_DINOV2_ATTENTION_4X = ("attention", "attention.value", "output.dense")
_DINOV2_LAYER_4X = replace(
    _dinov2_layer(_DINOV2_ATTENTION_4X, ("mlp", "fc1", "activation", "fc2")), attention="attention.attention"
)
_DINOV2_SWIGLU_LAYER_4X = replace(
    _dinov2_layer(_DINOV2_ATTENTION_4X, ("mlp", "weights_in[1/2]", "silu", "weights_out"), gate="weights_in[0/2]"),
    attention="attention.attention",
    ffn_activation=nn.functional.silu,
)


def _dinov2_layout(first_layer: Any) -> LayerPaths:
    """The layer paths of this DINOv2 layer's modules (transformers 5.x or 4.x, plain or SwiGLU unit)."""
    if hasattr(first_layer.attention, "v_proj"):
        return _DINOV2_SWIGLU_LAYER if hasattr(first_layer.mlp, "gate_proj") else _DINOV2_LAYER
    return _DINOV2_SWIGLU_LAYER_4X if hasattr(first_layer.mlp, "weights_in") else _DINOV2_LAYER_4X


def dinov2(model: nn.Module) -> Adapter:
    """DINOv2: pre-LN layers with a layer scale on each block's output, a plain or SwiGLU
    (``use_swiglu_ffn``) feed-forward unit; the classifier reads the CLS token and the mean of the
    patches, concatenated, after the final LayerNorm. Position embeddings are interpolated for any
    image size (a multiple of the patch size): the positions are the CLS token and that grid."""
    layers, first_layer = _layers_and_first(model)
    return _image_classifier("dinov2", layers, _dinov2_layout(first_layer), pooling="first_and_patch_mean")


_SWIN_STAGES = Stages(path="base_model.encoder.layers")

_SWIN_LAYER = replace(_VIT_LAYER, attention_windows=Windows())

# transformers 4.x: ViT's 4.x names, the self-attention module called ``self``
_SWIN_LAYER_4X = replace(_VIT_LAYER_4X, attention="attention.self", value="attention.self.value", attention_windows=Windows())


def _swin_blocks(model: nn.Module) -> list[nn.Module]:
    """Every stage's layers, in execution order."""
    return [block for stage in resolve(model, _SWIN_STAGES.path) for block in stage.blocks]


def swin(model: nn.Module) -> Adapter:
    """Swin: pre-LN layers whose attention runs in shifted windows of the token grid (read as the
    full attention, zero between windows), stages joined by patch mergings (each 2x2 block of
    tokens concatenated, normalized and mapped linearly: the decomposition stays over the first
    layer's patches); the classifier reads the mean of the last stage's tokens after the final
    LayerNorm. Positions are the patches of the first layer, in row-major order (no CLS token)."""
    layer = _SWIN_LAYER if hasattr(_swin_blocks(model)[0].attention, "v_proj") else _SWIN_LAYER_4X
    return _image_classifier("swin", _swin_blocks, layer, pooling="mean", stages=_SWIN_STAGES)
