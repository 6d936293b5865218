"""Adapters for encoder-decoder models: T5 (v1.0 and v1.1 / Flan-T5), the BART family (BART,
mBART, Marian, Pegasus, M2M100 and NLLB, which is an M2M100 model) and Whisper.

An encoder-decoder adapter describes the decoder as any adapter does (its layers, with a
cross-attention block, its final norm and its LM head read at every target position) and the
encoder in :attr:`Adapter.encoder <captum_decompx.adapters.base.Adapter.encoder>`. Everything
before the first layer of each stack (token embeddings, BART's learned positions with their
offset of 2, its ``layernorm_embedding``, the sinusoidal positions of Marian, Pegasus and M2M100,
the embedding scale ``sqrt(d_model)``) acts on each token alone and belongs to that token: it is
part of the recorded input of the stack's first layer.
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from .base import Adapter, EncoderStack, LayerPaths, Linear, ScaledLinear, TiedLinear, resolve

__all__ = ["bart_family", "t5", "whisper"]


def _t5_layer(attention_block: int, ffn_block: int, gated: bool, cross: bool, on_request: bool) -> LayerPaths:
    """A T5 block: ``layer[0]`` self-attention, ``layer[1]`` cross-attention (decoder), then the
    feed-forward block, each ``x + sublayer(rms_norm(x))``."""
    attention = f"layer.{attention_block}.SelfAttention"
    ffn = f"layer.{ffn_block}.DenseReluDense"
    cross_paths: dict[str, Any] = {}
    if cross:
        cross_paths = dict(
            cross_attention="layer.1.EncDecAttention",
            cross_value="layer.1.EncDecAttention.v",
            cross_output="layer.1.EncDecAttention.o",
            cross_norm="layer.1.layer_norm",
        )
    return LayerPaths(
        attention=attention,
        value=f"{attention}.v",
        attention_output=f"{attention}.o",
        attention_norm=f"layer.{attention_block}.layer_norm",
        ffn_in=f"{ffn}.wi_1" if gated else f"{ffn}.wi",
        ffn_gate=f"{ffn}.wi_0" if gated else None,
        ffn_activation=f"{ffn}.act",
        ffn_out=f"{ffn}.wo",
        ffn_norm=f"layer.{ffn_block}.layer_norm",
        probs_index=2,  # T5Attention returns (output, position_bias, probs)
        probs_on_request=on_request,
        **cross_paths,
    )


def t5(model: nn.Module) -> Adapter:
    """T5 v1.0 (ReLU feed-forward) and v1.1 / Flan-T5 (gated GELU): pre-RMSNorm without centring
    or bias, relative position bias (read with the probabilities), no biases anywhere, final
    norms on both stacks; the decoder's output is scaled by ``d_model ** -0.5`` before a tied LM
    head (``config.scale_decoder_outputs``)."""
    config: Any = model.config
    if not isinstance(getattr(model, "lm_head", None), nn.Linear):
        raise ValueError(
            f"{type(model).__name__} has no `lm_head`; DecompX explains T5 models with a language-model head "
            "(T5ForConditionalGeneration)."
        )
    gated = bool(getattr(config, "is_gated_act", False))
    # transformers 5 keeps the rescale in scale_decoder_outputs; 4.x rescales when the head is tied
    scaled = getattr(config, "scale_decoder_outputs", getattr(config, "tie_word_embeddings", True))
    head = ScaledLinear("lm_head", scale=config.d_model**-0.5) if scaled else Linear("lm_head")
    # transformers 4.x's T5Attention appends its probabilities only when asked (output_attentions),
    # and the decoder stack finds the cross-attention's position bias by that flag
    attention = resolve(model, "encoder.block.0.layer.0.SelfAttention")
    on_request = "output_attentions" in inspect.signature(attention.forward).parameters
    return Adapter(
        name=config.model_type,
        layers="decoder.block",
        layer=_t5_layer(0, 2, gated, cross=True, on_request=on_request),
        head=(head,),
        pooling="each",
        norm_position="pre",
        final_norm="decoder.final_layer_norm",
        encoder=EncoderStack(
            layers="encoder.block",
            layer=_t5_layer(0, 1, gated, cross=False, on_request=on_request),
            final_norm="encoder.final_layer_norm",
            norm_position="pre",
        ),
    )


BART_ENCODER_LAYER = LayerPaths(
    attention="self_attn",
    value="self_attn.v_proj",
    attention_output="self_attn.out_proj",
    attention_norm="self_attn_layer_norm",
    ffn_in="fc1",
    ffn_activation="activation_fn",
    ffn_out="fc2",
    ffn_norm="final_layer_norm",
)

BART_DECODER_LAYER = replace(
    BART_ENCODER_LAYER,
    cross_attention="encoder_attn",
    cross_value="encoder_attn.v_proj",
    cross_output="encoder_attn.out_proj",
    cross_norm="encoder_attn_layer_norm",
)


def bart_family(model: nn.Module) -> Adapter:
    """The BART family, one layout: post-LN (BART, Marian) or pre-LN with a final ``layer_norm`` on
    each stack (mBART, Pegasus, M2M100 / NLLB); whatever builds each stack's first-layer input
    belongs to the tokens; the LM head ``lm_head`` plus the ``final_logits_bias`` buffer where the
    model has one (not M2M100)."""
    config: Any = model.config
    if not isinstance(getattr(model, "lm_head", None), nn.Linear) or not hasattr(getattr(model, "model", None), "encoder"):
        raise ValueError(
            f"{type(model).__name__} has no `lm_head` over an encoder-decoder `model`; DecompX explains "
            f"{config.model_type} models with a language-model head (e.g. BartForConditionalGeneration, MarianMTModel)."
        )
    base = "model"
    biased = isinstance(getattr(model, "final_logits_bias", None), torch.Tensor)
    head = TiedLinear("lm_head", bias="final_logits_bias") if biased else Linear("lm_head")
    pre = isinstance(getattr(resolve(model, f"{base}.decoder"), "layer_norm", None), nn.Module)
    return Adapter(
        name=config.model_type,
        layers=f"{base}.decoder.layers",
        layer=BART_DECODER_LAYER,
        head=(head,),
        pooling="each",
        norm_position="pre" if pre else "post",
        final_norm=f"{base}.decoder.layer_norm" if pre else None,
        encoder=EncoderStack(
            layers=f"{base}.encoder.layers",
            layer=BART_ENCODER_LAYER,
            final_norm=f"{base}.encoder.layer_norm" if pre else None,
            norm_position="pre" if pre else "post",
        ),
    )


def whisper(model: nn.Module) -> Adapter:
    """Whisper: the BART family's pre-LN layout (final norms on both stacks) over log-mel
    features. The encoder's convolutional stem (two convolutions with GELU, the second of stride
    2) and its positions make each audio frame's first-layer input, so each frame (two mel frames,
    20 ms) is one piece, as a patch is in a vision transformer; the LM head is ``proj_out``."""
    config: Any = model.config
    if not isinstance(getattr(model, "proj_out", None), nn.Linear):
        raise ValueError(
            f"{type(model).__name__} has no `proj_out` language-model head; DecompX explains Whisper through "
            "WhisperForConditionalGeneration."
        )
    return Adapter(
        name=config.model_type,
        layers="model.decoder.layers",
        layer=BART_DECODER_LAYER,
        head=(Linear("proj_out"),),
        pooling="each",
        norm_position="pre",
        final_norm="model.decoder.layer_norm",
        encoder=EncoderStack(
            layers="model.encoder.layers",
            layer=BART_ENCODER_LAYER,
            final_norm="model.encoder.layer_norm",
            norm_position="pre",
            input_kind="features",
        ),
    )
