"""The HTML views: Captum records and standalone pages (records, the per-class view, one position's
explanation). Token text is always HTML-escaped."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

import torch
from captum.attr import visualization as captum_visualization
from torch import Tensor

from ..attribution import DecompXOutput
from ..colors import probability_text, signed_hex, text_colour_on
from .selection import (
    LabelNames,
    PathLike,
    _class_rows,
    _label,
    _mask_row,
    _normalized,
    _position_values,
    real_positions,
    saved,
)

if TYPE_CHECKING:  # the record class's home module is private; Captum exports it as visualization.VisualizationDataRecord
    from captum.attr._utils.visualization import VisualizationDataRecord
else:
    VisualizationDataRecord = captum_visualization.VisualizationDataRecord

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


def attribution_color(value: float) -> str:
    """CSS colour (``#rrggbb``) of a value in [-1, 1] (clipped): blue towards the class (+), orange away (-)."""
    return signed_hex(value)


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
    return saved(_document(title or "Per-class token contributions (DecompX)", body), path)


# --------------------------------------------------------------------------------------------
# One position's explanation (token classification, question answering, masked LM)


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
    return saved(_document(title or "One position's explanation (DecompX)", body), path)
