"""Show DecompX explanations: Captum records and HTML, a per-class view, token-to-token maps.

- :func:`visualization_records` turns a :class:`~captum_decompx.DecompXOutput` (or any
  ``(batch, seq)`` attributions with logits) into Captum ``VisualizationDataRecord`` s;
  :func:`visualize_records` renders them with Captum's ``visualize_text`` in a notebook, and
  :func:`write_records_html` (formerly ``write_html``, still available) writes the same table as a
  standalone HTML file from any Python process (no IPython needed). Token text is always HTML-escaped.
- :func:`class_contributions_html` and :func:`plot_class_contributions`: one row per class, every
  token coloured by its signed contribution to that class (Figure A.1 of the DecompX paper).
- :func:`position_contributions_html` and :func:`plot_position_contributions`: one position's
  explanation (a token's label, a start or end logit, a masked word): every input token's
  contribution to the output at that position, the position marked.
- :func:`plot_token_map`: the ``N x N`` norms ``||X_l[i, k]||`` of the propagated decomposition
  of one layer (``DecompX.decompose(..., return_token_maps=True)``) as a heatmap.

Colours (:mod:`captum_decompx.formatting`) are a colour-blind-safe diverging scale: blue for
contributions towards the explained class, orange for those away from it, white for zero, with the
values of each example divided by their largest magnitude so that they lie in [-1, 1]. (Captum's own
``visualize_text``, used by :func:`visualize_records`, keeps its green and red.)
The figures use matplotlib's Agg canvas directly (pyplot and the global backend are untouched).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Optional, Sequence, Union

import torch
from captum.attr import visualization as captum_visualization
from torch import Tensor

from .attribution import DecompXOutput
from .formatting import AWAY_RGB, TOWARDS_RGB, probability_text, signed_hex, text_colour_on

if TYPE_CHECKING:  # the record class's home module is private; Captum exports it as visualization.VisualizationDataRecord
    from captum.attr._utils.visualization import VisualizationDataRecord
else:
    VisualizationDataRecord = captum_visualization.VisualizationDataRecord

LabelNames = Union[Sequence[str], Mapping[int, str], None]
PathLike = Union[str, Path]

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
th, td { border-bottom: 1px solid #ddd; padding: 6px 10px; text-align: left; vertical-align: top; }
th { background: #f4f4f4; }
td.tokens { line-height: 2.1; max-width: 60em; }
mark { color: black; padding: 2px 3px; margin: 0 1px; border-radius: 3px; }
.legend { margin-top: 0.8em; }
.legend .swatch { margin-left: 0.8em; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #888; vertical-align: middle; }
""".strip()


# --------------------------------------------------------------------------------------------
# Helpers


def attribution_color(value: float) -> str:
    """CSS colour (``#rrggbb``) of a value in [-1, 1] (clipped): blue towards the class (+), orange away (-)."""
    return signed_hex(value)


def _colormap():
    """The same scale as a matplotlib colormap on [-1, 1]: orange (-1), white (0), blue (+1)."""
    from matplotlib.colors import LinearSegmentedColormap

    def unit(rgb: tuple[int, int, int]) -> tuple[float, float, float]:
        return (rgb[0] / 255, rgb[1] / 255, rgb[2] / 255)

    return LinearSegmentedColormap.from_list(
        "decompx_signed", [(0.0, unit(AWAY_RGB)), (0.5, (1.0, 1.0, 1.0)), (1.0, unit(TOWARDS_RGB))]
    )


def _label(names: LabelNames, index: Optional[int]) -> Any:
    if index is None:
        return ""
    if names is None:
        return index
    if isinstance(names, Mapping):
        by_key: Mapping[Any, Any] = names  # config.id2label has int keys; JSON-loaded ones may be str
        return by_key.get(index, by_key.get(str(index), index))
    return names[index] if 0 <= index < len(names) else index


def real_positions(input_ids: Tensor, tokenizer: Any, attention_mask: Optional[Tensor] = None) -> Tensor:
    """(seq,) bool for one example: False at padding (from the mask, else the pad token id)."""
    if attention_mask is not None:
        return attention_mask.bool()
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        return torch.ones_like(input_ids, dtype=torch.bool)
    return input_ids != pad


def example_tokens(input_ids: Tensor, tokenizer: Any, attention_mask: Optional[Tensor] = None) -> list[str]:
    """The token strings of one example (seq,), padding dropped."""
    keep = real_positions(input_ids, tokenizer, attention_mask)
    return list(tokenizer.convert_ids_to_tokens(input_ids[keep].tolist()))


def _normalized(values: Tensor) -> Tensor:
    """Divide by the largest magnitude (zeros stay zeros), so that values lie in [-1, 1]."""
    scale = values.abs().max() if values.numel() else torch.tensor(0.0)
    return values / scale if float(scale) > 0 else torch.zeros_like(values)


def _mask_row(attention_mask: Optional[Tensor], row: int) -> Optional[Tensor]:
    return None if attention_mask is None else attention_mask[row]


# --------------------------------------------------------------------------------------------
# Captum records and HTML


def visualization_records(
    explanation: Union[DecompXOutput, Tensor],
    input_ids: Tensor,
    tokenizer: Any,
    *,
    attention_mask: Optional[Tensor] = None,
    logits: Optional[Tensor] = None,
    target: Union[None, int, Sequence[int], Tensor] = None,
    true_labels: Optional[Sequence[int]] = None,
    label_names: LabelNames = None,
) -> list[VisualizationDataRecord]:
    """Captum ``VisualizationDataRecord`` s, one per example.

    Args:
        explanation: a :class:`DecompXOutput` (``attributions`` (batch, seq, classes), or (batch,
            seq) norms without the head), or any (batch, seq) attributions to one class per example.
        input_ids: (batch, seq).
        tokenizer: gives the token strings (``convert_ids_to_tokens``).
        attention_mask: (batch, seq); padding positions are dropped. Without it, tokens equal to
            the tokenizer's pad token are dropped.
        logits: (batch, classes); taken from the output when ``explanation`` is a DecompXOutput.
        target: the class explained, per example or for all; default the predicted class.
        true_labels: gold labels, shown when given.
        label_names: class names (a list, or a mapping like ``model.config.id2label``).

    Returns:
        records whose ``word_attributions`` are the example's attributions divided by their
        largest magnitude (in [-1, 1], for Captum's colour scale), with ``attr_score`` the sum of
        the unnormalized attributions, ``pred_prob`` the softmax probability of the predicted
        class, and ``convergence_score`` the sum minus the explained logit (when attributions
        are logit shares). Tokens are the raw strings: escape them before writing HTML yourself.
    """
    if isinstance(explanation, DecompXOutput):
        attributions, logits = explanation.attributions, explanation.logits if logits is None else logits
    else:
        attributions = explanation
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got {tuple(input_ids.shape)}.")
    batch = input_ids.shape[0]
    if attributions.shape[:2] != input_ids.shape:
        raise ValueError(f"attributions {tuple(attributions.shape)} do not match input_ids {tuple(input_ids.shape)}.")
    per_class = attributions.dim() == 3
    probabilities = torch.softmax(logits.float(), dim=-1) if logits is not None else None
    predicted = probabilities.argmax(-1) if probabilities is not None else None
    if target is None:
        targets: list[Optional[int]] = [None] * batch if predicted is None else [int(p) for p in predicted]
    elif isinstance(target, int):
        targets = [target] * batch
    else:
        targets = [int(t) for t in torch.as_tensor(target).reshape(-1).tolist()]
    if per_class and any(t is None for t in targets):
        raise ValueError("Per-class attributions need logits or a target to choose the class shown.")
    records = []
    for row in range(batch):
        keep = real_positions(input_ids[row], tokenizer, _mask_row(attention_mask, row))
        values = attributions[row][:, targets[row]] if per_class else attributions[row]
        values = values[keep].detach().float().cpu()
        tokens = list(tokenizer.convert_ids_to_tokens(input_ids[row][keep].tolist()))
        score = float(values.sum())
        logit_units = per_class or (isinstance(explanation, DecompXOutput) and explanation.attributions.dim() == 3)
        target_row = targets[row]
        delta = score - float(logits[row, target_row]) if (logits is not None and logit_units and target_row is not None) else 0.0
        records.append(
            VisualizationDataRecord(
                word_attributions=_normalized(values),
                pred_prob=float(probabilities[row, predicted[row]])
                if probabilities is not None and predicted is not None
                else float("nan"),
                pred_class=_label(label_names, None if predicted is None else int(predicted[row])),
                true_class=_label(label_names, None if true_labels is None else int(true_labels[row])),
                attr_class=_label(label_names, targets[row]),
                attr_score=score,
                raw_input_ids=tokens,
                convergence_score=delta,
            )
        )
    return records


def _escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _escaped_copy(record: VisualizationDataRecord) -> VisualizationDataRecord:
    escape = _escape
    return VisualizationDataRecord(
        word_attributions=record.word_attributions,
        pred_prob=record.pred_prob,
        pred_class=escape(record.pred_class),
        true_class=escape(record.true_class),
        attr_class=escape(record.attr_class),
        attr_score=record.attr_score,
        raw_input_ids=[escape(token) for token in record.raw_input_ids],
        convergence_score=record.convergence_score,
    )


def visualize_records(records: Sequence[VisualizationDataRecord], legend: bool = True):
    """Render records with Captum's ``visualize_text`` (in a notebook), token text escaped.

    Captum's renderer needs IPython; outside a notebook, use :func:`write_records_html`.

    Returns:
        the ``IPython.display.HTML`` object Captum returns.
    """
    try:
        import IPython  # noqa: F401
    except ImportError as error:
        raise ImportError(
            "Captum's visualize_text needs IPython (pip install ipython). Without it, write a "
            "standalone page with captum_decompx.visualization.write_records_html(records, 'out.html')."
        ) from error
    return captum_visualization.visualize_text([_escaped_copy(record) for record in records], legend=legend)


def _token_marks(tokens: Sequence[str], values: Sequence[float], raw: Optional[Sequence[float]] = None) -> str:
    marks = []
    for index, (token, value) in enumerate(zip(tokens, values)):
        shown = float(raw[index]) if raw is not None else float(value)
        marks.append(
            f'<mark style="background-color: {attribution_color(value)}; color: {text_colour_on(value)}" title="{shown:+.4f}">'
            f"{html.escape(token, quote=True)}</mark>"
        )
    return " ".join(marks)


def _legend(the_class: str = "the class") -> str:
    """What the colours mean, relative to the class of each row (not the class names)."""
    items = " ".join(
        f'<span class="swatch" style="background-color: {attribution_color(value)}"></span> {name}'
        for value, name in ((1, f"towards {the_class}"), (0, "no contribution"), (-1, f"away from {the_class}"))
    )
    return f'<div class="legend"><b>Colour:</b> {items} <span class="note">(stronger colour: larger contribution)</span></div>'


def _document(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{_STYLE}\n</style>\n</head>\n<body>\n"
        f"<h2>{html.escape(title)}</h2>\n{body}\n</body>\n</html>\n"
    )


def records_html(records: Sequence[VisualizationDataRecord], *, legend: bool = True, title: str = "Token attributions") -> str:
    """A standalone HTML page with the columns of Captum's ``visualize_text``, tokens escaped."""
    escape = _escape
    rows = [
        (
            "<tr><th>True Label</th><th>Predicted Label</th><th>Attribution Label</th>"
            "<th>Attribution Score</th><th>Word Importance</th></tr>"
        )
    ]
    for record in records:
        values = [float(v) for v in torch.as_tensor(record.word_attributions).reshape(-1).tolist()]
        rows.append(
            "<tr>"
            f"<td><b>{escape(record.true_class)}</b></td>"
            f"<td><b>{escape(record.pred_class)} ({probability_text(record.pred_prob)})</b></td>"
            f"<td><b>{escape(record.attr_class)}</b></td>"
            f"<td><b>{record.attr_score:.2f}</b></td>"
            f'<td class="tokens">{_token_marks(record.raw_input_ids, values)}</td>'
            "</tr>"
        )
    body = "<table>\n" + "\n".join(rows) + "\n</table>" + ("\n" + _legend("the attribution label") if legend else "")
    return _document(title, body)


def write_records_html(
    records_or_result: Union[Sequence[VisualizationDataRecord], DecompXOutput, Tensor],
    path: PathLike,
    *,
    title: str = "Token attributions",
    legend: bool = True,
    **record_options: Any,
) -> Path:
    """Write a standalone HTML page (no IPython needed) with one row per example.

    Args:
        records_or_result: records from :func:`visualization_records`, or a DecompXOutput /
            (batch, seq) attributions, turned into records with ``record_options`` (``input_ids``
            and ``tokenizer`` required; ``attention_mask``, ``logits``, ``target``,
            ``true_labels``, ``label_names`` optional).
        path: where to write the ``.html`` file.

    Returns:
        the path written.
    """
    if isinstance(records_or_result, (DecompXOutput, Tensor)):
        missing = [name for name in ("input_ids", "tokenizer") if name not in record_options]
        if missing:
            raise ValueError(f"write_records_html needs {', '.join(missing)} to turn attributions into records.")
        records = visualization_records(
            records_or_result, record_options.pop("input_ids"), record_options.pop("tokenizer"), **record_options
        )
    else:
        if record_options:
            raise TypeError(f"Unexpected options for a list of records: {', '.join(record_options)}.")
        records = list(records_or_result)
    path = Path(path)
    path.write_text(records_html(records, legend=legend, title=title), encoding="utf-8")
    return path


#: The former name of :func:`write_records_html` (kept working).
write_html = write_records_html


# --------------------------------------------------------------------------------------------
# Per-class view (the paper's Figure A.1)


def _class_rows(output: DecompXOutput, input_ids: Tensor, tokenizer: Any, index: int, attention_mask, label_names):
    if output.attributions.dim() != 3:
        raise ValueError(
            "The per-class view needs per-class attributions (batch, seq, classes): decompose with include_head=True."
        )
    keep = real_positions(input_ids[index], tokenizer, _mask_row(attention_mask, index))
    tokens = list(tokenizer.convert_ids_to_tokens(input_ids[index][keep].tolist()))
    contributions = output.attributions[index][keep].detach().float().cpu()  # (n, classes)
    scale = float(contributions.abs().max()) if contributions.numel() else 0.0
    probabilities = torch.softmax(output.logits[index].float(), dim=-1)
    predicted = int(probabilities.argmax())
    rows = []
    for cls in range(contributions.shape[1]):
        values = contributions[:, cls]
        name = str(_label(label_names, cls))
        rows.append(
            {
                "name": name,
                "predicted": cls == predicted,
                "logit": float(output.logits[index, cls]),
                "probability": float(probabilities[cls]),
                "raw": values,
                "normalized": values / scale if scale > 0 else torch.zeros_like(values),
            }
        )
    return tokens, rows, scale


def class_contributions_html(
    output: DecompXOutput,
    input_ids: Tensor,
    tokenizer: Any,
    *,
    index: int = 0,
    attention_mask: Optional[Tensor] = None,
    label_names: LabelNames = None,
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
) -> str:
    """One row per class, tokens coloured by their signed contribution to that class's logit.

    All rows share one scale (the largest magnitude over tokens and classes), so colours compare
    across classes; hovering a token shows its contribution in logit units.

    Args:
        output: from :meth:`DecompX.decompose` with the head (attributions (batch, seq, classes)).
        input_ids: (batch, seq).
        index: which example of the batch.
        attention_mask: (batch, seq); padding is dropped.
        label_names: class names (list or ``id2label`` mapping).
        path: also write the page there.

    Returns:
        the standalone HTML page.
    """
    tokens, rows, scale = _class_rows(output, input_ids, tokenizer, index, attention_mask, label_names)
    lines = ["<tr><th>Class</th><th>Logit</th><th>p</th><th>Sum of token contributions</th><th>Tokens</th></tr>"]
    for row in rows:
        name = html.escape(row["name"]) + (" (predicted)" if row["predicted"] else "")
        lines.append(
            f"<tr><td><b>{name}</b></td><td>{row['logit']:.3f}</td><td>{probability_text(row['probability'])}</td>"
            f"<td>{float(row['raw'].sum()):.3f}</td>"
            f'<td class="tokens">{_token_marks(tokens, row["normalized"].tolist(), row["raw"].tolist())}</td></tr>'
        )
    body = (
        "<p>Each row colours the tokens by their contribution to <em>that row's</em> class logit; all rows share "
        f"one scale, full colour = &plusmn;{scale:.3f} logit units (the largest contribution of this example). "
        "Hover a token for its value.</p>\n"
        "<table>\n" + "\n".join(lines) + "\n</table>\n" + _legend("the row's class")
    )
    page = _document(title or "Per-class token contributions (DecompX)", body)
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


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
    if path is not None:
        figure.savefig(path, dpi=save_dpi, format=image_format)
    return figure


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
    if path is not None:
        figure.savefig(path, dpi=save_dpi, bbox_inches="tight")
    return figure


__all__ = [
    "attribution_color",
    "class_contributions_html",
    "example_tokens",
    "plot_class_contributions",
    "plot_token_map",
    "records_html",
    "visualization_records",
    "visualize_records",
    "write_html",
    "write_records_html",
]


# --------------------------------------------------------------------------------------------
# One position's explanation (token classification, question answering, masked LM)


def _position_values(scores: Tensor, tokens: Sequence[str], position: int) -> Tensor:
    values = scores.detach().float().cpu().flatten()
    if values.shape[0] != len(tokens):
        raise ValueError(
            f"scores has {values.shape[0]} values but tokens has {len(tokens)}: pass one example's "
            "attributions (seq,) and its tokens (e.g. tokenizer.convert_ids_to_tokens(input_ids[0]))."
        )
    if not 0 <= position < len(tokens):
        raise ValueError(f"position {position} is outside the {len(tokens)} tokens.")
    return values


def position_contributions_html(
    scores: Tensor,
    tokens: Sequence[str],
    position: int,
    *,
    label: str = "",
    path: Optional[PathLike] = None,
    title: Optional[str] = None,
) -> str:
    """One position's explanation as HTML: each input token coloured by its contribution to the
    output at ``position`` (a token's label, a start or end logit, a masked word's logit); the
    explained token is framed.

    Args:
        scores: (seq,), one example's attributions from :meth:`DecompX.attribute` with
            ``target=(position, label)`` (or a start/end position).
        tokens: the example's tokens, one per score.
        position: the position whose output is explained.
        label: what is explained there, e.g. ``"B-PER"`` or ``"start"``.
        path: also write the page there.

    Returns:
        the standalone HTML page.
    """
    values = _position_values(scores, tokens, position)
    scale = float(values.abs().max()) if values.numel() else 0.0
    normalized = values / scale if scale > 0 else torch.zeros_like(values)
    marks = [_token_marks([token], [n], [v]) for token, n, v in zip(tokens, normalized.tolist(), values.tolist())]
    marks[position] = f'<span style="outline: 2px solid #333; border-radius: 3px; padding: 1px">{marks[position]}</span>'
    what = f"{html.escape(label)} at " if label else ""
    body = (
        f"<p>Explained: {what}position {position} (<b>{html.escape(tokens[position])}</b>, framed); "
        f"sum of the contributions {float(values.sum()):+.4f}. Colour scale: &plusmn;{scale:.3f}.</p>\n"
        f'<div class="tokens" style="line-height: 2.1">{" ".join(marks)}</div>\n' + _legend()
    )
    page = _document(title or "One position's explanation (DecompX)", body)
    if path is not None:
        Path(path).write_text(page, encoding="utf-8")
    return page


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
    if path is not None:
        figure.savefig(path, dpi=150)
    return figure
