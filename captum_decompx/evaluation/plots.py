"""The faithfulness curves: AOPC and accuracy against the share of tokens masked (the paper's Figure 3)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Union

import numpy as np

if TYPE_CHECKING:
    from .results import FaithfulnessResult


def plot_faithfulness_curves(result: FaithfulnessResult, path: Union[str, Path, None] = None, *, title: Optional[str] = None):
    """AOPC and accuracy against K, masking the most (left) and the least (right) important tokens;
    the implementation of :meth:`FaithfulnessResult.plot`.

    Args:
        result: what :func:`evaluate_faithfulness` or :func:`aggregate_rows` measured.
        path: save the figure there as PNG.
        title: the figure's title; default: the number of examples and the model's accuracy.

    Returns:
        the matplotlib ``Figure`` (drawn with the Agg canvas; pyplot is not used).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 8.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2, sharex=True)
    percent = 100 * np.asarray(result.fractions)
    styles = ["-o", "-s", "-^", "-v", "-D", "-P", "-X", "-*", "-<", "->", "-h", "-p", "-d", "-8"]
    colors = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
        "#7f7f7f", "#bcbd22", "#17becf", "#637939", "#843c39", "#3182bd", "#e6550d",
    ]  # fmt: skip
    panels = [
        (axes[0, 0], "aopc_most", 1.0, "AOPC (most important masked) ↑", "p(ŷ|x) − p(ŷ|x_K)"),
        (axes[0, 1], "aopc_least", 1.0, "AOPC (least important masked) ↓", "p(ŷ|x) − p(ŷ|x_K)"),
        (axes[1, 0], "accuracy_most", 100.0, "Accuracy (most important masked) ↓", "accuracy (%)"),
        (axes[1, 1], "accuracy_least", 100.0, "Accuracy (least important masked) ↑", "accuracy (%)"),
    ]
    for ax, attribute, scale, panel_title, ylabel in panels:
        for index, (name, method_result) in enumerate(result.methods.items()):
            dashed = name.lower().startswith("random")
            ax.plot(
                percent,
                scale * method_result._get(attribute),
                styles[index % len(styles)] if not dashed else "--",
                color="black" if dashed else colors[index % len(colors)],
                label=name,
                markersize=4,
                linewidth=2.2 if name == "DecompX" else 1.2,
            )
        ax.set_title(panel_title)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("K: share of non-special tokens masked (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right center", fontsize=9)
    figure.suptitle(title or f"Faithfulness on {result.n_examples} examples (model accuracy {100 * result.accuracy:.2f}%)")
    if path is not None:
        figure.savefig(path, dpi=120)
    return figure
