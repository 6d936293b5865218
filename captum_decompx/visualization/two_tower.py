"""Views of an image-text model (CLIP, SigLIP): the image heatmap per text prompt, the text tokens
per image, and the (position x token) interaction matrix of one pair.

The image heatmaps are drawn by Captum's ``visualize_image_attr`` (``blended_heat_map``, signed),
from :func:`~captum_decompx.visualization.image.captum_image_inputs`, which spreads each patch's
score over its pixels (a class token is not drawn: it is no place in the image); the token rows
use the package's diverging colours (:mod:`captum_decompx.colors`). Figures are drawn on
matplotlib's Agg canvas (pyplot and the global backend are untouched).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np
from torch import Tensor

from ..colors import signed_hex
from .figures import _colormap, _new_figure
from .image import captum_image_inputs
from .selection import PathLike


def _image_panel(figure: Any, axis: Any, image: Tensor, scores: Tensor, patch_size: int, title: str) -> None:
    from captum.attr import visualization

    ((attribution, picture),) = captum_image_inputs(
        scores.detach().float().cpu(), image.detach().float().cpu(), patch_size=patch_size
    )
    if not np.any(attribution):
        attribution = attribution + 1e-12  # Captum refuses an all-zero map; a blank one is drawn
    visualization.visualize_image_attr(
        attribution,
        picture,
        method="blended_heat_map",
        sign="all",
        plt_fig_axis=(figure, axis),
        cmap=_colormap(),
        outlier_perc=1,
        use_pyplot=False,
        title=title,
    )


def _token_panel(axis: Any, tokens: Sequence[str], scores: Tensor, title: str) -> None:
    values = scores.detach().float().cpu()
    scale = float(values.abs().max()) or 1.0
    axis.set_xlim(0, max(1, len(tokens)))
    axis.set_ylim(0, 1)
    axis.axis("off")
    axis.set_title(title, fontsize=9)
    for index, (token, value) in enumerate(zip(tokens, values.tolist())):
        axis.text(
            index + 0.5,
            0.5,
            token,
            ha="center",
            va="center",
            fontsize=9,
            rotation=90 if len(tokens) > 12 else 0,
            bbox=dict(boxstyle="round,pad=0.2", facecolor=signed_hex(value / scale), edgecolor="none"),
        )


def plot_image_text_view(
    image: Tensor,
    image_scores: Tensor,
    prompts: Sequence[str],
    prompt_tokens: Sequence[Sequence[str]],
    text_scores: Tensor,
    patch_size: int,
    *,
    logits: Optional[Tensor] = None,
    path: Optional[PathLike] = None,
):
    """One image against several text prompts: per prompt, the image heatmap of that prompt's
    logit and the prompt's tokens coloured by their share of the same logit.

    Args:
        image: (channels, height, width) pixel values (any range; min-max scaled for display).
        image_scores: (prompts, positions), the image side's attributions, one row per prompt
            (``DecompX(...).decompose(pixel_values, ...).attributions[0].T``).
        prompts: the prompts' text, for the titles.
        prompt_tokens: per prompt, its token strings (as many as ``text_scores`` has columns;
            padding may be left out).
        text_scores: (prompts, tokens), the text side's attributions to the same logits
            (``DecompX(...).decompose(input_ids, ...).attributions[:, :, image_index]``).
        logits: (prompts,), shown in the titles when given.
        path: save the figure there (PNG) when given.

    Returns:
        the matplotlib ``Figure``.
    """
    count = len(prompts)
    if image_scores.shape[0] != count or text_scores.shape[0] != count or len(prompt_tokens) != count:
        raise ValueError(
            f"Expected one row of image scores, of text scores and of tokens per prompt ({count}); got "
            f"{image_scores.shape[0]}, {text_scores.shape[0]} and {len(prompt_tokens)}."
        )
    figure = _new_figure(9.0, 2.6 * count)
    grid = figure.add_gridspec(count, 2, width_ratios=(1, 2.2))
    for row, prompt in enumerate(prompts):
        logit = "" if logits is None else f" (logit {float(logits[row]):+.3f})"
        _image_panel(figure, figure.add_subplot(grid[row, 0]), image, image_scores[row], patch_size, f"{prompt!r}{logit}")
        tokens = list(prompt_tokens[row])
        _token_panel(figure.add_subplot(grid[row, 1]), tokens, text_scores[row, : len(tokens)], "tokens: share of the same logit")
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


def plot_image_text_interaction(
    matrix: Tensor,
    image: Tensor,
    tokens: Sequence[str],
    patch_size: int,
    *,
    path: Optional[PathLike] = None,
    title: str = "image x text interaction",
):
    """One image-text pair's interaction matrix (:func:`~captum_decompx.image_text_interaction`):
    the (position x token) matrix, then the image heatmap of each token's column.

    Args:
        matrix: (positions, tokens) for one pair (``result.matrix[i, t]``).
        image: (channels, height, width).
        tokens: the text's token strings, one per column.
        path: save the figure there (PNG) when given.

    Returns:
        the matplotlib ``Figure``.
    """
    values = matrix.detach().float().cpu()
    if values.shape[1] != len(tokens):
        raise ValueError(f"The matrix has {values.shape[1]} token columns; got {len(tokens)} token strings.")
    figure = _new_figure(3.2 + 2.0 * len(tokens), 3.6)
    grid = figure.add_gridspec(1, 1 + len(tokens), width_ratios=(2.5,) + (1,) * len(tokens))
    axis = figure.add_subplot(grid[0, 0])
    limit = float(values.abs().max()) or 1.0
    shown = axis.imshow(values.numpy(), cmap=_colormap(), vmin=-limit, vmax=limit, aspect="auto")
    axis.set_xticks(range(len(tokens)), labels=list(tokens), rotation=90, fontsize=8)
    axis.set_ylabel("image position")
    axis.set_title(title, fontsize=9)
    figure.colorbar(shown, ax=axis, fraction=0.05)
    for column, token in enumerate(tokens):
        _image_panel(figure, figure.add_subplot(grid[0, 1 + column]), image, values[:, column], patch_size, token)
    figure.tight_layout()
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure


__all__ = ["plot_image_text_interaction", "plot_image_text_view"]
