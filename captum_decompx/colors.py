"""Colours and number formats shared by the command line and the views (no torch needed).

The signed scale is diverging and colour-blind safe: white for zero, blue for contributions that
push towards the explained class, orange for those that push away from it. Blue and orange differ
in the blue-yellow channel that red-green colour blindness (deuteranopia, protanopia) keeps, and
in lightness, so they stay apart in grey too.
"""

from __future__ import annotations

import math

#: Full-strength colour of a contribution towards the class (positive), RGB 0-255.
TOWARDS_RGB: tuple[int, int, int] = (33, 102, 172)
#: Full-strength colour of a contribution away from the class (negative), RGB 0-255.
AWAY_RGB: tuple[int, int, int] = (230, 97, 1)
#: Above this value (towards the class, on the [-1, 1] scale) text on the blue is drawn white. Black
#: text reads better on every strength of the orange.
LIGHT_TEXT_ABOVE = 0.6


def signed_rgb(value: float) -> tuple[int, int, int]:
    """RGB (0-255) of ``value`` in [-1, 1] (clipped): white at 0, blue towards +1, orange towards -1."""
    value = max(-1.0, min(1.0, float(value))) if not math.isnan(value) else 0.0
    base = TOWARDS_RGB if value >= 0 else AWAY_RGB
    strength = abs(value)
    return tuple(round(255 + (channel - 255) * strength) for channel in base)  # type: ignore[return-value]


def signed_hex(value: float) -> str:
    """``#rrggbb`` of :func:`signed_rgb`."""
    return "#{:02x}{:02x}{:02x}".format(*signed_rgb(value))


def text_colour_on(value: float) -> str:
    """``"white"`` on strong blue, ``"black"`` on light blue, white and any orange (the higher contrast)."""
    return "white" if float(value) > LIGHT_TEXT_ABOVE else "black"


def probability_text(probability: float, decimals: int = 3) -> str:
    """A probability with ``decimals`` decimals, or more when it would otherwise read 0 or 1.

    ``0.9962 -> "0.996"``, ``0.99962 -> "0.9996"``, ``0.00038 -> "0.0004"``; beyond 6 decimals the
    distance to 1 (or the value) is written in scientific notation: ``"1 - 2.3e-08"``, ``"2.3e-08"``.
    Exactly 0 and 1 stay ``"0.000"`` and ``"1.000"``.
    """
    p = float(probability)
    if math.isnan(p) or p <= 0.0 or p >= 1.0:
        return f"{p:.{decimals}f}"
    for places in range(decimals, 7):
        text = f"{p:.{places}f}"
        if 0.0 < float(text) < 1.0:
            return text
    return f"1 - {1.0 - p:.1e}" if p > 0.5 else f"{p:.1e}"
