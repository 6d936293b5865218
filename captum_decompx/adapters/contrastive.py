"""Adapters for two-tower image-text models: CLIP and SigLIP.

Each model has one adapter per tower. The one registered takes pixels (the image tower, whose
output field is ``logits_per_image``); its ``counterpart`` takes token ids (the text tower,
``logits_per_text``). A call uses the tower its inputs are for; the other tower's embeddings are
then fixed: they are the classes of the decomposed logits (one per text for the image side, one
per image for the text side). The cosine's two norms are frozen at their values
(:mod:`captum_decompx.components.contrastive`).
"""

from __future__ import annotations

from .base import Adapter, ContrastiveLogits, LayerPaths, Linear, Norm

#: The encoder layer of both towers of CLIP and SigLIP (pre-LN).
CONTRASTIVE_LAYER = LayerPaths(
    attention="self_attn",
    value="self_attn.v_proj",
    attention_output="self_attn.out_proj",
    attention_norm="layer_norm1",
    ffn_in="mlp.fc1",
    ffn_activation="mlp.activation_fn",
    ffn_out="mlp.fc2",
    ffn_norm="layer_norm2",
)

_CLIP_TEXT = Adapter(
    name="clip-text",
    layers="text_model.encoder.layers",
    layer=CONTRASTIVE_LAYER,
    head=(Linear("text_projection"), ContrastiveLogits(own="text_projection", other="visual_projection", scale="logit_scale")),
    pooling="eos_token",
    input_ids_at="text_model",
    norm_position="pre",
    final_norm="text_model.final_layer_norm",
    output_field="logits_per_text",
)

#: CLIP: the image tower's class token after ``post_layernorm`` and ``visual_projection`` (its
#: ``pre_layrnorm`` acts on each token before any mixing: it belongs to the tokens); the text
#: tower's causal transformer pooled at its end-of-text token, then ``text_projection``.
CLIP = Adapter(
    name="clip-vision",
    layers="vision_model.encoder.layers",
    layer=CONTRASTIVE_LAYER,
    head=(
        Norm("vision_model.post_layernorm"),
        Linear("visual_projection"),
        ContrastiveLogits(own="visual_projection", other="text_projection", scale="logit_scale"),
    ),
    pooling="first",
    norm_position="pre",
    input_kind="pixels",
    output_field="logits_per_image",
    counterpart=_CLIP_TEXT,
)

_SIGLIP_TEXT = Adapter(
    name="siglip-text",
    layers="text_model.encoder.layers",
    layer=CONTRASTIVE_LAYER,
    head=(
        Linear("text_model.head"),
        ContrastiveLogits(own="text_model.head", other="vision_model.head", scale="logit_scale", bias="logit_bias"),
    ),
    pooling="last_position",
    norm_position="pre",
    final_norm="text_model.final_layer_norm",
    output_field="logits_per_text",
)

#: SigLIP: the image tower has no class token; its attention-pooling head (a learned probe
#: attending to every patch, then a residual MLP) gives the embedding. The text tower reads its
#: last position and a linear head. ``logit_bias`` is a bias of every logit.
SIGLIP = Adapter(
    name="siglip-vision",
    layers="vision_model.encoder.layers",
    layer=CONTRASTIVE_LAYER,
    head=(ContrastiveLogits(own="vision_model.head", other="text_model.head", scale="logit_scale", bias="logit_bias"),),
    pooling="probe",
    probe_head="vision_model.head",
    norm_position="pre",
    final_norm="vision_model.post_layernorm",
    input_kind="pixels",
    output_field="logits_per_image",
    counterpart=_SIGLIP_TEXT,
)

__all__ = ["CLIP", "CONTRASTIVE_LAYER", "SIGLIP"]
