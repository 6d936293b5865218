"""Repairs of HTML that other frameworks write (no framework is imported here)."""

from __future__ import annotations

import re

_NUMPY_SCALAR_REPR = re.compile(r"np\.(?:float|int|uint)(?:16|32|64|128)?\(([^()]*)\)")


def fix_numpy_scalar_reprs(html: str) -> str:
    """Replace numpy 2's scalar reprs (``np.float64(255.0)``) in generated HTML with plain numbers.

    SHAP 0.51 and inseq 0.7.1 format colours as ``rgba{tuple}``; under numpy 2 the tuple's items
    print as ``np.float64(...)``, which browsers reject, so the colours disappear.
    """
    return _NUMPY_SCALAR_REPR.sub(r"\1", html)
