"""Adapters for two-tower image-text models: CLIP and SigLIP.

Each model has one adapter per tower. The one registered takes pixels (the image tower, whose
output field is ``logits_per_image``); its ``counterpart`` takes token ids (the text tower,
``logits_per_text``). A call uses the tower its inputs are for; the other tower's embeddings are
then fixed: they are the classes of the decomposed logits (one per text for the image side, one
per image for the text side). The cosine's two norms are frozen at their values
(:mod:`captum_decompx.components.contrastive`).
"""

from __future__ import annotations

from typing import Any, Sequence

from .base import Adapter, ContrastiveLogits, HeadStep, Linear, Norm, grouped_layer

#: The encoder layer of both towers of CLIP and SigLIP (pre-LN).
CONTRASTIVE_LAYER = grouped_layer(
    ("self_attn", "v_proj", "out_proj"), ("mlp", "fc1", "activation_fn", "fc2"), ("layer_norm1", "layer_norm2")
)


def _tower(name: str, tower: str, head: Sequence[HeadStep], pooling: str, **options: Any) -> Adapter:
    """One tower's pre-LN adapter: ``tower`` is ``"text"`` or ``"vision"`` (the prefix of its
    ``*_model`` module); the vision tower takes pixels and decomposes ``logits_per_image``."""
    pixels = tower == "vision"
    return Adapter(
        name=name,
        layers=f"{tower}_model.encoder.layers",
        layer=CONTRASTIVE_LAYER,
        head=head,
        pooling=pooling,
        norm_position="pre",
        input_kind="pixels" if pixels else "tokens",
        output_field="logits_per_image" if pixels else "logits_per_text",
        **options,
    )


#: CLIP: the image tower's class token after ``post_layernorm`` and ``visual_projection`` (its
#: ``pre_layrnorm`` acts on each token before any mixing: it belongs to the tokens); the text
#: tower's causal transformer pooled at its end-of-text token, then ``text_projection``.
CLIP = _tower(
    "clip-vision",
    "vision",
    (
        Norm("vision_model.post_layernorm"),
        Linear("visual_projection"),
        ContrastiveLogits(own="visual_projection", other="text_projection", scale="logit_scale"),
    ),
    "first",
    counterpart=_tower(
        "clip-text",
        "text",
        (Linear("text_projection"), ContrastiveLogits(own="text_projection", other="visual_projection", scale="logit_scale")),
        "eos_token",
        input_ids_at="text_model",
        final_norm="text_model.final_layer_norm",
    ),
)

#: SigLIP: the image tower has no class token; its attention-pooling head (a learned probe
#: attending to every patch, then a residual MLP) gives the embedding. The text tower reads its
#: last position and a linear head. ``logit_bias`` is a bias of every logit.
SIGLIP = _tower(
    "siglip-vision",
    "vision",
    (ContrastiveLogits(own="vision_model.head", other="text_model.head", scale="logit_scale", bias="logit_bias"),),
    "probe",
    probe_head="vision_model.head",
    final_norm="vision_model.post_layernorm",
    counterpart=_tower(
        "siglip-text",
        "text",
        (
            Linear("text_model.head"),
            ContrastiveLogits(own="text_model.head", other="vision_model.head", scale="logit_scale", bias="logit_bias"),
        ),
        "last_position",
        final_norm="text_model.final_layer_norm",
    ),
)

__all__ = ["CLIP", "CONTRASTIVE_LAYER", "SIGLIP"]
