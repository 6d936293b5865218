"""Both towers of an image-text model at once: a (patch x token) matrix per image-text pair.

CLIP and SigLIP compute ``logit = c * <u, v> + b`` with ``c = exp(logit_scale) / (|u| |v|)`` (the
two norms frozen at their values, as :class:`~captum_decompx.DecompX` freezes them), ``u`` the
image embedding and ``v`` the text embedding, and ``b`` SigLIP's ``logit_bias`` (0 for CLIP).
DecompX decomposes each embedding over its own tower's inputs, ``u = sum_p U_p + U_b`` and
``v = sum_k V_k + V_b`` (``U_b``, ``V_b``: the biases' pieces, zero when the biases are spread over
the tokens). The dot product is bilinear, so

    logit = sum_{p,k} c <U_p, V_k>  +  c (<u - U_b, V_b> + <U_b, v>) + b

The first sum is the interaction matrix ``M[p, k] = c <U_p, V_k>``; the rest is its bias term. Its
row sums are the image side's attributions (what ``DecompX(...).attribute(pixel_values, ...)``
gives each patch, less its share of ``b``) and its column sums the text side's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor, nn

from .adapters import Adapter, ContrastiveLogits, adapter_for
from .attribution import DecompX
from .components import BiasMode, propagate_head, token_pieces
from .core.capture import Captured
from .core.decomposition import _diagonal_pieces, _head_inputs, exact_settings, pooling_of, propagate_and_pool, resolve_parts


@dataclass
class ImageTextInteraction:
    """What :func:`image_text_interaction` returns.

    Attributes:
        matrix: (images, texts, image_positions, text_tokens): ``matrix[i, t, p, k]`` is the part
            of ``logits[i, t]`` carried jointly by image position ``p`` (the class token first for
            CLIP, then the patches) and text token ``k``.
        bias: (images, texts): the rest of each logit (``logit_bias``, and with the biases left
            out, the terms of the biases' pieces); ``matrix.sum((2, 3)) + bias == logits``.
        logits: (images, texts), the model's ``logits_per_image``.
        image_pieces: (images, image_positions, dim), each position's piece of the image embedding.
        text_pieces: (texts, text_tokens, dim), each token's piece of the text embedding.
    """

    matrix: Tensor
    bias: Tensor
    logits: Tensor
    image_pieces: Tensor
    text_pieces: Tensor


def _two_tower_adapter(model: nn.Module) -> Adapter:
    adapter = adapter_for(model)
    if adapter.counterpart is None or not adapter.head or not isinstance(adapter.head[-1], ContrastiveLogits):
        raise ValueError(
            f"image_text_interaction needs a two-tower image-text model (CLIP, SigLIP); {type(model).__name__} has "
            f"the adapter {adapter.name!r}, which has one tower. Use DecompX(...).attribute for one input."
        )
    return adapter


def _embedding_pieces(
    captured: Captured, model: nn.Module, adapter: Adapter, explainer: DecompX, dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor]:
    """One tower's embedding decomposed: (batch, positions, dim) token pieces, (batch, dim) the
    biases' piece (zero when the biases are spread), and (batch, classes + 1, dim) the real
    embeddings the logits step read (this side's first, then the other side's)."""
    parts = resolve_parts(model, adapter, dtype)
    settings = exact_settings(explainer.options)
    embeddings = captured.layer_input
    batch, seq, _ = embeddings.shape
    n_pieces = seq + (1 if settings.bias_mode is BiasMode.PIECE else 0)
    everything = slice(0, batch)
    pooled = propagate_and_pool(
        _diagonal_pieces(embeddings, n_pieces, dtype),
        captured,
        parts,
        settings,
        pooling_of(captured, adapter, dtype),
        everything,
        dtype,
        rows_per_chunk=seq,
    )
    inputs = _head_inputs(parts, captured, everything, dtype)
    embedding = propagate_head(pooled, parts.head[:-1], inputs[:-1], settings)  # (batch, pieces, dim)
    tokens = token_pieces(embedding.unsqueeze(1), settings).squeeze(1)
    bias = embedding[:, -1] if settings.bias_mode is BiasMode.PIECE else torch.zeros_like(embedding[:, 0])
    real = inputs[-1]
    assert real is not None, "the logits step records the real embeddings"
    return tokens, bias, real


def image_text_interaction(
    model: nn.Module,
    pixel_values: Tensor,
    input_ids: Tensor,
    attention_mask: Optional[Tensor] = None,
    *,
    include_biases: bool = True,
    bias_decomposition: str = "absdot",
    ffn_approximation: str = "zo",
    **forward_kwargs: Any,
) -> ImageTextInteraction:
    """Decompose both towers of a CLIP or SigLIP model at once: one (position x token) matrix per
    image-text pair whose sum, plus a bias term, is the pair's logit (see the module docstring).

    The exact algorithm runs once per tower (two forward passes of ``model``), with the options of
    :class:`~captum_decompx.DecompX` of the same names.

    Args:
        model: a ``CLIPModel`` or ``SiglipModel`` (or another registered two-tower model).
        pixel_values: (images, channels, height, width).
        input_ids: (texts, seq).
        attention_mask: (texts, seq), or None.
        forward_kwargs: passed on to the model (e.g. ``interpolate_pos_encoding=True``).

    Returns:
        An :class:`ImageTextInteraction`.
    """
    adapter = _two_tower_adapter(model)

    def image_side(pixels: Tensor, ids: Tensor, mask: Optional[Tensor]) -> Tensor:
        return getattr(
            model(pixel_values=pixels, input_ids=ids, attention_mask=mask, **forward_kwargs), str(adapter.output_field)
        )

    def text_side(ids: Tensor, pixels: Tensor, mask: Optional[Tensor]) -> Tensor:
        text = adapter.counterpart
        assert text is not None
        return getattr(model(pixel_values=pixels, input_ids=ids, attention_mask=mask, **forward_kwargs), str(text.output_field))

    options = dict(include_biases=include_biases, bias_decomposition=bias_decomposition, ffn_approximation=ffn_approximation)
    image_explainer = DecompX(image_side, model=model, algorithm="exact", **options)  # type: ignore[arg-type]
    text_explainer = DecompX(text_side, model=model, algorithm="exact", **options)  # type: ignore[arg-type]
    dtype = image_explainer._compute_dtype()
    with image_explainer._call_modes():
        pixels, _ = image_explainer._input_ids(pixel_values)
        image_run = image_explainer._capture_forward(pixels, (input_ids, attention_mask))
        image_tokens, image_bias, image_real = _embedding_pieces(
            image_run.captured, model, image_explainer.adapter, image_explainer, dtype
        )
        logits = image_run.captured.logits
    with text_explainer._call_modes():
        ids, _ = text_explainer._input_ids(input_ids)
        text_run = text_explainer._capture_forward(ids, (pixel_values, attention_mask))
        text_tokens, text_bias, text_real = _embedding_pieces(
            text_run.captured, model, text_explainer.adapter, text_explainer, dtype
        )
    step = adapter.head[-1]
    assert isinstance(step, ContrastiveLogits)
    scale, logit_bias = _scale_and_bias(model, step, dtype)
    image_norm = torch.linalg.vector_norm(image_real[:, 0], dim=-1)  # (images,)
    text_norm = torch.linalg.vector_norm(text_real[:, 0], dim=-1)  # (texts,)
    factor = scale / (image_norm[:, None] * text_norm[None, :])  # (images, texts)
    matrix = torch.einsum("ipd,tkd->itpk", image_tokens, text_tokens) * factor[:, :, None, None]
    image_sum = image_tokens.sum(1)  # u - U_b
    text_full = text_tokens.sum(1) + text_bias  # v
    bias = factor * (image_sum @ text_bias.T + image_bias @ text_full.T) + (0.0 if logit_bias is None else logit_bias)
    out_dtype = logits.dtype
    return ImageTextInteraction(
        matrix.to(out_dtype), bias.to(out_dtype), logits, image_tokens.to(out_dtype), text_tokens.to(out_dtype)
    )


def _scale_and_bias(model: nn.Module, step: ContrastiveLogits, dtype: torch.dtype) -> tuple[Tensor, Optional[Tensor]]:
    from .components.contrastive import ContrastiveStep

    return ContrastiveStep().resolve(model, step, dtype)


__all__ = ["ImageTextInteraction", "image_text_interaction"]
