"""Patch attributions of vision transformers, as image-sized heatmaps.

DecompX returns one value per position of a vision model's first layer: its leading tokens (ViT,
BEiT and DINOv2 have a CLS token, DeiT a CLS and a distillation token, Swin none), then the patches
in row-major order of the patch grid. :func:`pixel_attributions` gives each pixel its patch's value
in the layout of ``pixel_values`` (one channel), and :func:`captum_image_inputs` turns that into the
``(height, width, channels)`` arrays that Captum's ``visualize_image_attr`` and
``visualize_image_attr_multiple`` draw. The patch grid is the one the model reads from the image
actually given (``height // patch``, ``width // patch``: DINOv2's interpolated position embeddings,
ViT with ``interpolate_pos_encoding=True``); Swin pads an image whose size is not a multiple of its
patch size, so its grid is rounded up. Pixels that no patch reads (the remainder a patch embedding
of stride ``patch`` drops) get 0.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import Tensor, nn

#: Tokens before the patches, by ``config.model_type`` (1, a CLS token, for the others).
LEADING_TOKENS = {"deit": 2, "swin": 0}
#: Model types whose patch embedding pads the image to a multiple of the patch size.
_PADDING_PATCHES = ("swin",)


def _pair(value: Any) -> tuple[int, int]:
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def patch_grid(image_size: tuple[int, int], patch_size: Union[int, tuple[int, int]], *, pads: bool = False) -> tuple[int, int]:
    """(rows, cols) of the patches a model reads from an image of ``image_size`` (height, width):
    the remainder is dropped, or, for a model that pads (``pads``: Swin), rounded up."""
    (height, width), (patch_h, patch_w) = image_size, _pair(patch_size)
    if pads:
        return math.ceil(height / patch_h), math.ceil(width / patch_w)
    return height // patch_h, width // patch_w


def patch_heatmap(
    attributions: Tensor,
    image_size: tuple[int, int],
    patch_size: Union[int, tuple[int, int]],
    *,
    leading_tokens: Optional[int] = None,
    pads: bool = False,
) -> Tensor:
    """Spread per-patch attributions over the pixels of their patches.

    Args:
        attributions: (leading + patches,): the leading tokens (CLS, distillation), then the patches
            in row-major order, as DecompX returns them for one image.
        image_size: (height, width) of the model's input.
        patch_size: the side of a square patch, or (height, width).
        leading_tokens: how many positions precede the patches; None: 0 or 1 by the count (a CLS
            token or none), the count given by ViT and BEiT.
        pads: the model pads the image to a multiple of the patch size (Swin).

    Returns:
        (height, width): each pixel holds its patch's attribution (0 where no patch reads it).
    """
    height, width = image_size
    rows, cols = patch_grid(image_size, patch_size, pads=pads)
    patches = rows * cols
    counts = (patches, patches + 1) if leading_tokens is None else (patches + leading_tokens,)
    if attributions.dim() != 1 or attributions.numel() not in counts:
        expected = " or ".join(str(count) for count in counts)
        leading = "no token or a CLS token" if leading_tokens is None else f"{leading_tokens} leading token(s)"
        raise ValueError(
            f"Expected {expected} patch attributions ({rows}x{cols} patches of a {height}x{width} image with "
            f"{patch_size}-pixel patches, after {leading}); got shape {tuple(attributions.shape)}. Pass "
            "leading_tokens= (DeiT: 2, Swin: 0) or the model."
        )
    patch_h, patch_w = _pair(patch_size)
    grid = attributions[attributions.numel() - patches :].reshape(rows, cols)
    spread = grid.repeat_interleave(patch_h, 0).repeat_interleave(patch_w, 1)
    heat = torch.zeros(height, width, dtype=attributions.dtype, device=attributions.device)
    covered_h, covered_w = min(height, spread.shape[0]), min(width, spread.shape[1])
    heat[:covered_h, :covered_w] = spread[:covered_h, :covered_w]
    return heat


def _model_layout(model: Optional[nn.Module], patch_size: Any, leading_tokens: Optional[int]) -> tuple[Any, int, bool]:
    """The patch size, leading tokens and padding of ``model`` (arguments given win)."""
    config = getattr(model, "config", None) if model is not None else None
    model_type = getattr(config, "model_type", None)
    if patch_size is None:
        patch_size = getattr(config, "patch_size", None)
        if patch_size is None:
            raise ValueError("Pass patch_size=, or the model (its config.patch_size is read).")
    if leading_tokens is None:
        leading_tokens = LEADING_TOKENS.get(str(model_type), 1) if config is not None else 1
    return patch_size, leading_tokens, model_type in _PADDING_PATCHES


def pixel_attributions(
    attributions: Tensor,
    pixel_values: Tensor,
    model: Optional[nn.Module] = None,
    *,
    patch_size: Optional[Union[int, tuple[int, int]]] = None,
    leading_tokens: Optional[int] = None,
) -> Tensor:
    """Per-position attributions of images as per-pixel maps in the layout of ``pixel_values``.

    Args:
        attributions: (batch, positions) from ``DecompX.attribute`` (or (positions,) for one image).
        pixel_values: (batch, channels, height, width), the images explained (or (channels, height,
            width)); only their size is read.
        model: the vision model, for its patch size and leading tokens (DeiT: 2, Swin: 0, else 1).
        patch_size, leading_tokens: instead of, or overriding, what the model says.

    Returns:
        (batch, 1, height, width) (or (1, height, width)): broadcastable to ``pixel_values``
        (``.expand_as(pixel_values)`` for a per-channel map).
    """
    single = attributions.dim() == 1
    values = attributions.unsqueeze(0) if single else attributions
    height, width = int(pixel_values.shape[-2]), int(pixel_values.shape[-1])
    patch, leading, pads = _model_layout(model, patch_size, leading_tokens)
    maps = torch.stack(
        [patch_heatmap(row, (height, width), patch, leading_tokens=leading, pads=pads) for row in values.detach()]
    ).unsqueeze(1)
    return maps[0] if single else maps


def captum_image_inputs(
    attributions: Tensor,
    pixel_values: Tensor,
    model: Optional[nn.Module] = None,
    *,
    patch_size: Optional[Union[int, tuple[int, int]]] = None,
    leading_tokens: Optional[int] = None,
) -> list[tuple[Any, Any]]:
    """Per image, the ``(attr, original_image)`` numpy arrays for Captum's image visualizations.

    ``attr`` is (height, width, 1), the pixel map of :func:`pixel_attributions`; ``original_image``
    is (height, width, channels), the pixel values min-max scaled to [0, 1]. Use them as
    ``visualize_image_attr(attr, image, method="blended_heat_map", sign="all")`` or with
    ``visualize_image_attr_multiple``.

    Args:
        attributions: (batch, positions), or (positions,) for one image.
        pixel_values: (batch, channels, height, width), or (channels, height, width).
    """
    maps = pixel_attributions(attributions, pixel_values, model, patch_size=patch_size, leading_tokens=leading_tokens)
    images = pixel_values.unsqueeze(0) if pixel_values.dim() == 3 else pixel_values
    maps = maps.unsqueeze(0) if maps.dim() == 3 else maps
    pairs = []
    for heat, image in zip(maps, images.detach().float().cpu()):
        shown = (image - image.min()) / (image.max() - image.min() + 1e-12)
        pairs.append((heat.float().cpu().permute(1, 2, 0).numpy(), shown.permute(1, 2, 0).numpy()))
    return pairs


def plot_patch_attribution(
    image: Tensor,
    attributions: Tensor,
    patch_size: Union[int, tuple[int, int]],
    path: Optional[Union[str, Path]] = None,
    title: str = "DecompX patch attribution",
    *,
    leading_tokens: Optional[int] = None,
    pads: bool = False,
):
    """Draw the signed patch heatmap over the image; save it to ``path`` (PNG) when given.

    Args:
        image: (channels, height, width) pixel values (any range; min-max scaled for display).
        attributions: (leading + patches,) (see :func:`patch_heatmap`).

    Returns:
        the matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    image = image.detach().float().cpu()
    height, width = image.shape[-2:]
    heat = patch_heatmap(
        attributions.detach().float().cpu(), (int(height), int(width)), patch_size, leading_tokens=leading_tokens, pads=pads
    )
    shown = (image - image.min()) / (image.max() - image.min() + 1e-12)
    limit = float(heat.abs().max()) or 1.0
    figure, axes = plt.subplots(1, 2, figsize=(8, 4))
    axes[0].imshow(shown.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if shown.shape[0] == 1 else None)
    axes[0].set_title("input")
    axes[1].imshow(shown.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray" if shown.shape[0] == 1 else None)
    overlay = axes[1].imshow(heat.numpy(), cmap="bwr", vmin=-limit, vmax=limit, alpha=0.6)
    axes[1].set_title(title)
    for axis in axes:
        axis.axis("off")
    figure.colorbar(overlay, ax=axes[1], fraction=0.046, label="contribution to the logit")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
