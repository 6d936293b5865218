"""Patch attributions of vision transformers, as image-sized heatmaps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from torch import Tensor


def patch_heatmap(attributions: Tensor, image_size: tuple[int, int], patch_size: int) -> Tensor:
    """Spread per-patch attributions over the pixels of their patches.

    Args:
        attributions: (1 + patches,) with the CLS token first (as DecompX returns for ViT), or
            (patches,).
        image_size: (height, width) of the model's input.
        patch_size: the side of a square patch.

    Returns:
        (height, width): each pixel holds its patch's attribution.
    """
    height, width = image_size
    rows, cols = height // patch_size, width // patch_size
    if attributions.dim() != 1 or attributions.numel() not in (rows * cols, rows * cols + 1):
        raise ValueError(
            f"Expected {rows * cols} patch attributions (plus an optional CLS token first) for a "
            f"{height}x{width} image with {patch_size}-pixel patches; got shape {tuple(attributions.shape)}."
        )
    patches = attributions[-rows * cols :].reshape(rows, cols)
    return patches.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)


def plot_patch_attribution(
    image: Tensor,
    attributions: Tensor,
    patch_size: int,
    path: Optional[Union[str, Path]] = None,
    title: str = "DecompX patch attribution",
):
    """Draw the signed patch heatmap over the image; save it to ``path`` (PNG) when given.

    Args:
        image: (channels, height, width) pixel values (any range; min-max scaled for display).
        attributions: (1 + patches,) or (patches,).

    Returns:
        the matplotlib figure.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    image = image.detach().float().cpu()
    height, width = image.shape[-2:]
    heat = patch_heatmap(attributions.detach().float().cpu(), (int(height), int(width)), patch_size)
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
