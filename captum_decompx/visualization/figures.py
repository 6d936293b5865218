"""The matplotlib figures: the per-class view, token-to-token maps and one position's bar chart,
drawn on matplotlib's Agg canvas directly (pyplot and the global backend are untouched)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

from torch import Tensor

from ..attribution import DecompXOutput
from ..colors import AWAY_RGB, TOWARDS_RGB, probability_text, text_colour_on
from .selection import LabelNames, PathLike, _class_rows, _mask_row, _position_values, real_positions, saved


def _colormap():
    """The same scale as a matplotlib colormap on [-1, 1]: orange (-1), white (0), blue (+1)."""
    from matplotlib.colors import LinearSegmentedColormap

    def unit(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
        return (rgb[0] / 255, rgb[1] / 255, rgb[2] / 255)

    return LinearSegmentedColormap.from_list(
        "decompx_signed", [(0.0, unit(AWAY_RGB)), (0.5, (1.0, 1.0, 1.0)), (1.0, unit(TOWARDS_RGB))]
    )


def _hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def _new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def plot_class_contributions(
    output: DecompXOutput,
    input_ids: Tensor,
    tokenizer: Any,
    *,
    index: int = 0,
    attention_mask: Optional[Tensor] = None,
    label_names: LabelNames = None,
    path: Optional[PathLike] = None,
    width: float = 11.0,
    fontsize: float = 11.0,
    title: Optional[str] = None,
    image_format: Optional[str] = None,
    save_dpi: float = 150.0,
):
    """The per-class view as a matplotlib figure: one block per class, tokens on coloured boxes
    (wrapped to ``width`` inches), a shared colour bar in logit units, ★ marking the predicted
    class. Saved when ``path`` is given, in ``image_format`` (default: from the file name's
    extension, PNG without one) at ``save_dpi`` dots per inch.

    Returns:
        the matplotlib ``Figure`` (Agg canvas; pyplot is not used).
    """
    tokens, rows, scale = _class_rows(output, input_ids, tokenizer, index, attention_mask, label_names)
    labels = [f"{row['name']}{'  ★' if row['predicted'] else ''}" for row in rows]
    details = [f"logit {row['logit']:.2f}, p {probability_text(row['probability'])}" for row in rows]
    layout = _ClassLayout.measure(tokens, labels, details, width, fontsize, n_classes=len(rows))
    figure = _new_figure(width, layout.height)
    cmap = _colormap()
    layout.text(
        figure,
        layout.margin,
        layout.height - 0.35,
        title or "Per-class token contributions (DecompX)",
        fontsize=fontsize + 2,
        weight="bold",
    )
    for number, (row, label, detail) in enumerate(zip(rows, labels, details)):
        top = layout.height - layout.header - number * layout.block
        layout.text(figure, layout.margin, top - layout.line_height * 0.5, label, weight="bold", fontsize=fontsize)
        layout.text(figure, layout.margin, top - layout.line_height * 1.3, detail, fontsize=fontsize * 0.8, color="#555")
        for token, (x, line), value in zip(tokens, layout.positions, row["normalized"].tolist()):
            layout.text(
                figure,
                layout.margin + layout.label_width + x,
                top - layout.line_height * (line + 0.5),
                token,
                fontsize=fontsize,
                ha="left",
                color=text_colour_on(value),
                bbox={
                    "boxstyle": "round,pad=0.2",
                    "facecolor": cmap(0.5 + 0.5 * value),
                    "edgecolor": "#bbbbbb",
                    "linewidth": 0.4,
                },
            )
        if number < len(rows) - 1:
            layout.separator(figure, top - layout.block + 0.08)
    _class_colour_bar(figure, layout, scale, cmap)
    if any(row["predicted"] for row in rows):
        layout.text(figure, layout.margin, 0.55 + 0.08, "★ predicted class", fontsize=fontsize * 0.8, color="#555")
    return saved(figure, path, dpi=save_dpi, format=image_format)


@dataclass
class _ClassLayout:
    """Where the per-class figure puts things, in inches (see :func:`plot_class_contributions`).

    Attributes:
        width, height: the figure's size.
        label_width: the column of class names and logits.
        positions: each token's ``(x, line)`` in the token area (the same wrapping for every class).
        line_height: one line of tokens; block: one class's block; header: the title's band.
        fontsize: the tokens' font size (points).
    """

    width: float
    height: float
    label_width: float
    positions: list[tuple[float, int]]
    line_height: float
    block: float
    fontsize: float
    margin: float = 0.25
    header: float = 0.55

    @property
    def usable(self) -> float:
        """The width of the token area."""
        return self.width - self.margin - self.label_width - self.margin

    @classmethod
    def measure(
        cls,
        tokens: Sequence[str],
        labels: Sequence[str],
        details: Sequence[str],
        width: float,
        fontsize: float,
        *,
        n_classes: int,
    ) -> "_ClassLayout":
        """Measure the texts on a scratch figure and wrap the tokens to ``width``."""
        dpi = 100
        scratch = _new_figure(width, 2)
        renderer = scratch.canvas.get_renderer()

        def text_width(text: str, size: float = fontsize, **style: Any) -> float:
            artist = scratch.text(0, 0, text, fontsize=size, parse_math=False, **style)
            extent = artist.get_window_extent(renderer)
            artist.remove()
            return extent.width / dpi

        label_width = (
            max(
                max(text_width(label, weight="bold") for label in labels),
                max(text_width(detail, fontsize * 0.8) for detail in details),
            )
            + 0.3
        )
        margin, gap, line_height = 0.25, 0.07, fontsize / 72 * 2.0
        usable = width - margin - label_width - margin
        positions, x, line = [], 0.0, 0
        for token_width in (text_width(token) + 0.12 for token in tokens):
            if x > 0 and x + token_width > usable:
                x, line = 0.0, line + 1
            positions.append((x, line))
            x += token_width + gap
        block = max(line + 1, 1.7) * line_height + 0.25
        colorbar_height = 1.0
        height = 0.55 + block * n_classes + colorbar_height
        return cls(width, height, label_width, positions, line_height, block, fontsize, margin)

    def text(self, figure: Any, x: float, y: float, text: str, **style: Any) -> None:
        """A text at ``(x, y)`` inches from the bottom left, centred vertically, without math parsing."""
        figure.text(x, y, text, transform=figure.dpi_scale_trans, va="center", parse_math=False, **style)

    def separator(self, figure: Any, y: float) -> None:
        """A thin line between two classes' blocks."""
        from matplotlib.lines import Line2D

        line = Line2D(
            [self.margin, self.width - self.margin], [y, y], transform=figure.dpi_scale_trans, color="#dddddd", linewidth=0.8
        )
        figure.add_artist(line)


def _class_colour_bar(figure: Any, layout: _ClassLayout, scale: float, cmap: Any) -> None:
    """The shared colour bar in logit units, under the classes, labelled with both directions."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    width, height = layout.width, layout.height
    fontsize = layout.fontsize
    bar = figure.add_axes(
        [(layout.margin + layout.label_width) / width, 0.55 / height, min(4.0, layout.usable) / width, 0.16 / height]
    )
    limit = scale if scale > 0 else 1.0
    figure.colorbar(ScalarMappable(Normalize(-limit, limit), cmap), cax=bar, orientation="horizontal")
    bar.set_xlabel("contribution to the row's class logit", fontsize=fontsize * 0.8)
    bar.tick_params(labelsize=fontsize * 0.75)
    for x, text, align, colour in (
        (0.0, "← away from the class", "left", AWAY_RGB),
        (1.0, "towards the class →", "right", TOWARDS_RGB),
    ):
        bar.text(x, 1.5, text, transform=bar.transAxes, ha=align, va="bottom", fontsize=fontsize * 0.75, color=_hex(colour))


def plot_token_map(
    output: DecompXOutput,
    input_ids: Tensor,
    tokenizer: Any,
    *,
    layer: int = -1,
    index: int = 0,
    attention_mask: Optional[Tensor] = None,
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
    save_dpi: float = 130.0,
):
    """Heatmap of ``||X_l[i, k]||``: how large input token ``k``'s piece is in token ``i``'s
    representation after layer ``l`` (rows ``i``, columns ``k``, padding dropped).

    Args:
        output: from ``DecompX.decompose(..., return_token_maps=True)``.
        input_ids: (batch, seq).
        layer: which layer (Python indexing: -1 is the last).
        index: which example of the batch.
        path: save the figure there as PNG, at ``save_dpi`` dots per inch.

    Returns:
        the matplotlib ``Figure`` (Agg canvas; pyplot is not used).
    """
    if output.token_maps is None:
        raise ValueError("The output has no token maps: call DecompX.decompose(..., return_token_maps=True).")
    maps = output.token_maps
    layer_number = layer % len(maps)
    keep = real_positions(input_ids[index], tokenizer, _mask_row(attention_mask, index))
    tokens = list(tokenizer.convert_ids_to_tokens(input_ids[index][keep].tolist()))
    matrix = maps[layer_number][index][keep][:, keep].detach().float().cpu().numpy()
    n = len(tokens)
    side = min(16.0, max(4.5, 0.38 * n + 2.5))
    figure = _new_figure(side + 1.2, side)
    ax = figure.add_axes([0.16, 0.16, 0.68 * side / (side + 1.2), 0.72])
    image = ax.imshow(matrix, cmap="viridis", aspect="equal", interpolation="nearest")
    ax.set_xticks(range(n), tokens, rotation=90, fontsize=9)
    ax.set_yticks(range(n), tokens, fontsize=9)
    for label in ax.get_xticklabels() + ax.get_yticklabels():
        label.set_parse_math(False)
    ax.set_xlabel("input token k")
    ax.set_ylabel("token i (representation after the layer)")
    ax.set_title(title or f"DecompX token map, layer {layer_number + 1} of {len(maps)}: ||X[i, k]||", fontsize=11)
    colorbar = figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("||X[i, k]||")
    return saved(figure, path, dpi=save_dpi, bbox_inches="tight")


def plot_position_contributions(
    scores: Tensor,
    tokens: Sequence[str],
    position: int,
    *,
    label: str = "",
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
    fontsize: float = 10.0,
):
    """One position's explanation as a bar chart: one bar per input token (green raises the
    output at ``position``, red lowers it); the explained token is marked. Saved as PNG when
    ``path`` is given.

    Args:
        scores: (seq,), one example's attributions (see :func:`position_contributions_html`).
        tokens: the example's tokens.
        position: the position whose output is explained.
        label: what is explained there, e.g. ``"B-PER"`` or ``"start"``.

    Returns:
        the matplotlib ``Figure`` (Agg canvas; pyplot is not used).
    """
    values = _position_values(scores, tokens, position)
    cmap = _colormap()
    scale = float(values.abs().max()) or 1.0
    figure = _new_figure(max(5.0, 0.45 * len(tokens) + 1.5), 3.6)
    axes = figure.add_subplot(1, 1, 1)
    colors = [cmap(0.5 + 0.5 * float(v) / scale) for v in values]
    axes.bar(range(len(tokens)), values.tolist(), color=colors, edgecolor="#555555", linewidth=0.6)
    axes.axhline(0, color="#333333", linewidth=0.8)
    axes.axvspan(position - 0.5, position + 0.5, color="#cccccc", alpha=0.45, zorder=0)
    axes.set_xticks(range(len(tokens)))
    axes.set_xticklabels(tokens, rotation=60, ha="right", fontsize=fontsize)
    axes.get_xticklabels()[position].set_fontweight("bold")
    axes.set_xlim(-0.6, len(tokens) - 0.4)
    axes.set_ylabel("contribution", fontsize=fontsize)
    what = f"{label} at " if label else ""
    axes.set_title(
        title or f"DecompX: {what}position {position} ({tokens[position]}), sum {float(values.sum()):+.3f}",
        fontsize=fontsize + 1,
    )
    figure.tight_layout()
    return saved(figure, path, dpi=150)
