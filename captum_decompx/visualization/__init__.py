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
- :func:`plot_image_text_view` and :func:`plot_image_text_interaction`: an image-text model
  (CLIP, SigLIP): the image heatmap per prompt with the prompt's tokens, and one pair's
  (position x token) matrix (:mod:`.two_tower`).
- :func:`plot_token_map`: the ``N x N`` norms ``||X_l[i, k]||`` of the propagated decomposition
  of one layer (``DecompX.decompose(..., return_token_maps=True)``) as a heatmap.

Colours (:mod:`captum_decompx.colors`) are a colour-blind-safe diverging scale: blue for
contributions towards the explained class, orange for those away from it, white for zero, with the
values of each example divided by their largest magnitude so that they lie in [-1, 1]. (Captum's own
``visualize_text``, used by :func:`visualize_records`, keeps its green and red.)
The figures use matplotlib's Agg canvas directly (pyplot and the global backend are untouched).

The package: :mod:`.html` (Captum records and the HTML pages), :mod:`.figures` (the matplotlib
figures) and :mod:`.selection` (the tokens and values both show). Every public name is importable
from ``captum_decompx.visualization`` itself.
"""

from .figures import plot_class_contributions, plot_position_contributions, plot_token_map
from .html import VisualizationDataRecord as VisualizationDataRecord  # Captum's record class, as before
from .html import (
    attribution_color,
    class_contributions_html,
    position_contributions_html,
    records_html,
    visualization_records,
    visualize_records,
    write_html,
    write_records_html,
)
from .selection import LabelNames as LabelNames  # type aliases, public but not in __all__
from .selection import PathLike as PathLike
from .selection import example_tokens
from .selection import real_positions as real_positions  # public but not in __all__
from .two_tower import plot_image_text_interaction, plot_image_text_view

__all__ = [
    "attribution_color",
    "class_contributions_html",
    "example_tokens",
    "plot_image_text_interaction",
    "plot_image_text_view",
    "plot_class_contributions",
    "plot_position_contributions",
    "plot_token_map",
    "position_contributions_html",
    "records_html",
    "visualization_records",
    "visualize_records",
    "write_html",
    "write_records_html",
]
