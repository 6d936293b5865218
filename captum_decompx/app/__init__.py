"""An interactive explorer of DecompX explanations in the browser (``captum-decompx serve``; needs the ``[app]`` extra).

- :func:`build_app` ``(model, tokenizer)``: the Gradio page for a sequence classifier (per-class
  contributions with the sum check, methods side by side, layer-by-layer token maps, the
  sentence's deletion curve, downloads) or for a causal LM (prompt and generated tokens as a
  token x token matrix), with an API endpoint ``explain`` that returns JSON.
- :func:`serve`: load a model folder (the demo classifier by default) and serve its page on
  ``127.0.0.1``.
- :class:`ClassifierExplorer`, :class:`CausalLMExplorer`: the computations behind the pages,
  usable without Gradio.

Gradio loads only with :func:`build_app` and :func:`serve`.
"""

from __future__ import annotations

from typing import Any

from .explorer import CausalLMExplorer, ClassifierExplorer, ExplorerInputError

_FROM_UI = ("build_app", "serve", "launch_options", "load_for_app", "is_causal_lm", "DEFAULT_HOST", "DEFAULT_PORT")
INSTALL_HINT = "The explorer needs Gradio: pip install -e '.[app]' (or pip install 'gradio>=6,<7')."


def __getattr__(name: str) -> Any:
    if name in _FROM_UI:
        try:
            from . import ui
        except ImportError as error:
            if error.name is not None and error.name.split(".")[0] == "gradio":
                raise ImportError(INSTALL_HINT) from error
            raise
        return getattr(ui, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["CausalLMExplorer", "ClassifierExplorer", "ExplorerInputError", *_FROM_UI]
