"""The explorer's Gradio pages: :func:`build_app` for notebooks and Spaces, :func:`serve` for the command line.

Nothing leaves the machine: Gradio's analytics and version check are switched off (the
``GRADIO_ANALYTICS_ENABLED`` variable is set to ``False`` before Gradio loads, and every page is
built with ``analytics_enabled=False``), the page's scripts and fonts come from the Gradio package
itself, and :func:`serve` binds ``127.0.0.1`` unless told otherwise, never opens a share link and
runs without server-side rendering.
"""

from __future__ import annotations

import html
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio loads: no analytics, no version check

import gradio as gr  # noqa: E402
from torch import nn  # noqa: E402

from .explorer import (  # noqa: E402
    COMPARE_METHODS,
    DELETION_METHODS,
    CausalLMExplorer,
    ClassExplanation,
    ClassifierExplorer,
    ExplorerInputError,
    method_label,
)

#: The default address :func:`serve` binds (the local machine only).
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
#: Download folders kept per page (older ones are removed; Gradio serves its own copies).
_KEPT_DOWNLOADS = 64
#: Gradio's cached copies of the downloads are removed after this many seconds (checked as often).
_CACHE_SECONDS = 3600
#: Height of the frame that shows the per-class HTML view, per class row, in pixels.
_FRAME_ROW_PX = 85
_FRAME_BASE_PX = 300

_CSS = """
.decompx-sum-check td, .decompx-sum-check th { padding: 2px 8px; font-variant-numeric: tabular-nums; }
.decompx-compare td { padding: 4px 8px; line-height: 2.0; }
.decompx-llm-matrix td, .decompx-llm-matrix th { padding: 2px 6px; font-size: 0.85em; text-align: right; }
"""


def is_causal_lm(model: nn.Module) -> bool:
    """``model`` is a Hugging Face causal language model (its class is one of transformers' causal-LM classes)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    causal_classes = set()
    for names in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        causal_classes.update([names] if isinstance(names, str) else names)
    return any(cls.__name__ in causal_classes for cls in type(model).__mro__)


def build_app(model: nn.Module, tokenizer: Any, *, source: str = "", title: Optional[str] = None) -> gr.Blocks:
    """The explorer's page for ``model``: the classifier views, or the causal-LM view for a causal LM.

    The model is used as it is (one copy, in the caller's device and dtype) and never changed;
    requests take turns on it. Launch the result with ``app.launch()`` (or :func:`serve`).

    Args:
        model: a sequence classifier or a causal LM that DecompX supports, in eval mode.
        tokenizer: its tokenizer.
        source: where the model came from, shown on the page.
        title: the page's title.

    Returns:
        the Gradio ``Blocks``; its API endpoint ``explain`` takes one text and returns the JSON of
        the explanation.
    """
    if is_causal_lm(model):
        return _causal_lm_app(CausalLMExplorer(model, tokenizer, source=source), title or "DecompX explorer (causal LM)")
    return _classifier_app(ClassifierExplorer(model, tokenizer, source=source), title or "DecompX explorer")


def _download_folder(root: Path) -> Path:
    """A new folder for one request's downloads under ``root``; the oldest beyond :data:`_KEPT_DOWNLOADS` are removed."""
    folders = sorted((path for path in root.iterdir() if path.is_dir()), key=lambda path: path.stat().st_mtime)
    for old in folders[: max(0, len(folders) - _KEPT_DOWNLOADS + 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return Path(tempfile.mkdtemp(dir=root))


# ------------------------------------------------------------------------------------------------
# Sequence classifiers


def _frame(page: str, rows: int) -> str:
    """A standalone page shown in a frame of its own, so that its styles stay inside it (sandboxed: no scripts)."""
    height = _FRAME_BASE_PX + _FRAME_ROW_PX * rows
    return (
        f'<iframe id="decompx-view-frame" title="per-class token contributions" sandbox="" srcdoc="{html.escape(page, quote=True)}" '
        f'style="width: 100%; height: {height}px; border: 1px solid #ddd; border-radius: 6px"></iframe>'
    )


def _classifier_app(explorer: ClassifierExplorer, title: str) -> gr.Blocks:
    downloads_root = Path(tempfile.mkdtemp(prefix="decompx-explorer-"))
    layers = int(getattr(explorer.classifier.model.config, "num_hidden_layers", 1) or 1)
    labels = ", ".join(explorer.labels)

    def explain_api(text: str) -> dict:
        """DecompX (exact) on one text: tokens, labels, contributions (labels x tokens), logits, bias, prediction."""
        try:
            return explorer.explain(text).payload()
        except ExplorerInputError as error:
            raise gr.Error(str(error)) from None

    def on_explain(text: str, pair: str, algorithm: str):
        try:
            explained: ClassExplanation = explorer.explain(text, pair, algorithm)
        except ExplorerInputError as error:
            return (f"**{error}**", "", "", None, None, gr.update(choices=[], value=None))
        files = explained.write_files(_download_folder(downloads_root))
        tokens = [(f"{index}: {token}", index) for index, token in enumerate(explained.tokens)]
        return (
            explained.summary_markdown(),
            _frame(explained.page(), len(explained.explanation.labels)),
            explained.sum_check_html(),
            [str(files["html"]), str(files["png"]), str(files["json"])],
            explained.payload(),
            gr.update(choices=tokens, value=0),
        )

    def on_layers(text: str, pair: str, token: Optional[int], layer: float):
        try:
            maps = explorer.token_maps(text, pair)
        except ExplorerInputError:
            return "", None
        position = 0 if token is None else min(int(token), len(maps.tokens) - 1)
        number = max(1, min(int(layer), len(maps.maps)))
        return maps.composition_html(position, number), maps.figure(number)

    def on_compare(text: str, pair: str):
        try:
            return explorer.compare(text, pair).html()
        except ExplorerInputError:
            return ""

    def on_deletion(text: str, pair: str):
        try:
            curve = explorer.deletion_curve(text, pair)
        except ExplorerInputError:
            return None, None
        return curve.figure(), {"headers": ["K", *curve.probabilities], "data": curve.rows()}

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(_CACHE_SECONDS, _CACHE_SECONDS)) as app:
        gr.Markdown(
            f"# {title}\n"
            f"Model: `{explorer.classifier.source or type(explorer.classifier.model).__name__}` "
            f"({explorer.classifier.model_type}); classes: {labels}. "
            "DecompX decomposes every class logit over the input tokens; the contributions plus the "
            "biases' share add up to the logit."
        )
        with gr.Row():
            text = gr.Textbox(
                label="Text", lines=2, elem_id="decompx-text", placeholder="a good piece of work more often than not."
            )
            pair = gr.Textbox(label="Second text of a sentence pair (optional)", lines=2, elem_id="decompx-pair")
        with gr.Row():
            method = gr.Radio(
                ["exact", "fast"], value="exact", label="DecompX algorithm (fast: bias-free, O(N))", elem_id="decompx-method"
            )
            run = gr.Button("Explain", variant="primary", elem_id="decompx-run")
        status = gr.Markdown(elem_id="decompx-status")

        gr.Markdown("## 1. Per-class token contributions")
        view = gr.HTML(elem_id="decompx-view")
        sum_check = gr.HTML(elem_id="decompx-sum-check")

        gr.Markdown(
            "## 2. Methods side by side\n"
            + ", ".join(method_label(key) for key in COMPARE_METHODS)
            + ": the predicted class, each row divided by its largest magnitude."
        )
        compare = gr.HTML(elem_id="decompx-compare")

        gr.Markdown("## 3. Layer by layer: what a token is made of")
        with gr.Row():
            token = gr.Dropdown(choices=[], label="Token", elem_id="decompx-token", type="value")
            layer = gr.Slider(1, layers, value=layers, step=1, label="Layer", elem_id="decompx-layer")
        composition = gr.HTML(elem_id="decompx-composition")
        token_map = gr.Plot(label="Token-to-token map ||X[i, k]||", elem_id="decompx-token-map", format="png")

        gr.Markdown(
            "## 4. Deletion curve of this sentence\n"
            "p(predicted class) after masking the K% most important tokens (K = 0, 10, ..., 90%) by "
            + ", ".join(method_label(key) for key in DELETION_METHODS)
            + "."
        )
        curve = gr.Plot(label="Deletion curve", elem_id="decompx-deletion", format="png")
        curve_table = gr.Dataframe(label="p(predicted class)", elem_id="decompx-deletion-table", interactive=False)

        gr.Markdown("## 5. Downloads: the HTML view, the PNG figure, the JSON of the values")
        files = gr.File(label="Downloads", file_count="multiple", elem_id="decompx-downloads", interactive=False)
        values = gr.JSON(label="Values (JSON)", elem_id="decompx-values")

        private: dict[str, Any] = {"api_visibility": "private"}
        for trigger in (run.click, text.submit):
            (
                trigger(on_explain, [text, pair, method], [status, view, sum_check, files, values, token], **private)
                .then(on_layers, [text, pair, token, layer], [composition, token_map], **private)
                .then(on_compare, [text, pair], [compare], **private)
                .then(on_deletion, [text, pair], [curve, curve_table], **private)
            )
        layer.change(on_layers, [text, pair, token, layer], [composition, token_map], **private)
        token.input(on_layers, [text, pair, token, layer], [composition, token_map], **private)
        gr.api(explain_api, api_name="explain")
    app.decompx_explorer = explorer  # type: ignore[attr-defined]
    return app


# ------------------------------------------------------------------------------------------------
# Causal language models


def _causal_lm_app(explorer: CausalLMExplorer, title: str) -> gr.Blocks:
    downloads_root = Path(tempfile.mkdtemp(prefix="decompx-explorer-"))

    def explain_api(text: str) -> dict:
        """Greedy continuation of one prompt, each generated token's logit decomposed (JSON)."""
        try:
            matrix, notice = explorer.generate(text, max_new_tokens=explorer.max_new_tokens // 2 or 1)
        except ExplorerInputError as error:
            raise gr.Error(str(error)) from None
        return {**matrix.payload(), "notice": notice}

    def on_generate(prompt: str, steps: float, continuation: str):
        import json

        try:
            matrix, notice = explorer.generate(prompt, int(steps), continuation)
        except ExplorerInputError as error:
            return f"**{error}**", "", None, None
        folder = _download_folder(downloads_root)
        payload = {**matrix.payload(), "notice": notice}
        (folder / "decompx_generation.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        (folder / "decompx_generation.html").write_text(
            f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title></head><body>{matrix.html()}</body></html>',
            encoding="utf-8",
        )
        status = f"Generated {len(matrix.generated_tokens)} tokens." + (f"\n\n**Note:** {notice}" if notice else "")
        return status, matrix.html(), [str(folder / "decompx_generation.html"), str(folder / "decompx_generation.json")], payload

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(_CACHE_SECONDS, _CACHE_SECONDS)) as app:
        gr.Markdown(
            f"# {title}\nModel: `{explorer.source or type(explorer.model).__name__}`. Each generated token's next-token "
            "logit is decomposed over the prompt and the tokens generated before it (DecompX, biases decomposed)."
        )
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", lines=2, elem_id="decompx-prompt")
            continuation = gr.Textbox(
                label="Continuation to explain (optional; empty: generate greedily)", elem_id="decompx-continuation"
            )
        with gr.Row():
            steps = gr.Slider(
                1,
                explorer.max_new_tokens,
                value=min(8, explorer.max_new_tokens),
                step=1,
                label="Tokens to generate",
                elem_id="decompx-steps",
            )
            run = gr.Button("Generate and explain", variant="primary", elem_id="decompx-run")
        status = gr.Markdown(elem_id="decompx-status")
        matrix_view = gr.HTML(elem_id="decompx-matrix")
        files = gr.File(label="Downloads", file_count="multiple", elem_id="decompx-downloads", interactive=False)
        values = gr.JSON(label="Values (JSON)", elem_id="decompx-values")
        run.click(on_generate, [prompt, steps, continuation], [status, matrix_view, files, values], api_visibility="private")
        gr.api(explain_api, api_name="explain")
    app.decompx_explorer = explorer  # type: ignore[attr-defined]
    return app


# ------------------------------------------------------------------------------------------------
# Serving


def launch_options(host: str = DEFAULT_HOST, port: Optional[int] = DEFAULT_PORT) -> dict[str, Any]:
    """The ``Blocks.launch`` options of the explorer: local address, no share link, no server-side rendering."""
    return {
        "server_name": host,
        "server_port": port,
        "share": False,
        "inbrowser": False,
        "ssr_mode": False,
        "mcp_server": False,
        "css": _CSS,
    }


def load_for_app(name_or_path: Optional[str]) -> tuple[nn.Module, Any, str]:
    """A sequence classifier or a causal LM from a local folder (or the demo classifier), float32, eval mode.

    Returns:
        the model, its tokenizer and where it came from.
    """
    from ..demo import ModelLoadError, load_model_and_tokenizer, resolve_model_source

    location, options = resolve_model_source(name_or_path)
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(location, **options)
    architectures = getattr(config, "architectures", None) or []
    if any(name.endswith(("ForCausalLM", "LMHeadModel")) for name in architectures):
        try:
            model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32, **options).eval()
            tokenizer = AutoTokenizer.from_pretrained(location, **options)
        except Exception as error:
            raise ModelLoadError(f"Cannot load the causal LM at {location}: {error}") from error
        return model, tokenizer, str(name_or_path or location)
    loaded = load_model_and_tokenizer(name_or_path)
    return loaded.model, loaded.tokenizer, loaded.source


def serve(model: Optional[str] = None, host: str = DEFAULT_HOST, port: Optional[int] = DEFAULT_PORT, *, block: bool = True):
    """Load ``model`` (the demo classifier by default) and serve the explorer at ``http://host:port``.

    Requests queue and are answered one at a time on the one model copy.

    Returns:
        what ``Blocks.launch`` returns (when ``block`` is False; otherwise it returns when the server stops).
    """
    loaded, tokenizer, source = load_for_app(model)
    app = build_app(loaded, tokenizer, source=source)
    app.queue(default_concurrency_limit=1)
    return app.launch(prevent_thread_lock=not block, **launch_options(host, port))
