"""What the explorer computes, without Gradio: one model, its explanations, and their views.

:class:`ClassifierExplorer` answers the views of ``captum-decompx serve`` for a sequence
classifier: DecompX's per-class contributions (with the sum check), several methods side by side,
the layer-by-layer token-to-token maps, the sentence's deletion curve and the downloads.
:class:`CausalLMExplorer` answers the causal-LM view: the prompt and the generated tokens as a
token x token matrix. Both hold one copy of the model and use it under one lock, so that
concurrent requests take turns on it.

The HTML and PNG views, the method definitions and the masking are the package's own
(:mod:`captum_decompx.visualization`, :mod:`captum_decompx.evaluation`); token text is always
HTML-escaped.
"""

from __future__ import annotations

import html
import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

import torch
from torch import Tensor, nn

from ..cli.explain import Encoded, Explanation, batch_of, explain_encoded, forward_function, readable_token
from ..colors import probability_text, signed_hex, text_colour_on
from ..demo import LoadedClassifier
from ..evaluation import DEFAULT_FRACTIONS, METHOD_REGISTRY, MethodSpec, build_methods, mask_ranked_tokens

#: The methods of the side-by-side view (registry keys of :data:`captum_decompx.evaluation.METHOD_REGISTRY`).
COMPARE_METHODS: tuple[str, ...] = ("decompx", "decompx-fast", "ig", "gxi", "globenc", "alti")
#: The methods of the deletion curve.
DELETION_METHODS: tuple[str, ...] = ("decompx", "gxi", "random")
#: Token maps kept per explorer (the layer slider and the token menu reread them), least recently used out.
CACHE_SIZE = 16
#: Integrated Gradients steps in the side-by-side view (the command line's ``compare`` uses the same).
IG_STEPS = 50

_Value = TypeVar("_Value")


class ExplorerInputError(ValueError):
    """An input the explorer cannot explain (an empty text); the message says what to do."""


def _mark(token: str, value: float, shown: float) -> str:
    """One token on its colour: ``value`` in [-1, 1] sets the colour, ``shown`` is the hover text."""
    return (
        f'<mark style="background-color: {signed_hex(value)}; color: {text_colour_on(value)}; padding: 2px 3px; '
        f'border-radius: 3px" title="{shown:+.4f}" data-value="{shown:.8g}">{html.escape(token, quote=True)}</mark>'
    )


def _scaled(values: Tensor) -> tuple[Tensor, float]:
    scale = float(values.abs().max()) if values.numel() else 0.0
    return (values / scale if scale > 0 else torch.zeros_like(values)), scale


class _Cache:
    """A small least-recently-used cache of computed results."""

    def __init__(self, size: int = CACHE_SIZE) -> None:
        self.size = size
        self._items: OrderedDict[tuple, Any] = OrderedDict()

    def get(self, key: tuple, compute: Callable[[], _Value]) -> _Value:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = compute()
        self._items[key] = value
        while len(self._items) > self.size:
            self._items.popitem(last=False)
        return value


# ------------------------------------------------------------------------------------------------
# Sequence classifiers


@dataclass
class ReadInput:
    """A text (and its pair) as the model reads it.

    Attributes:
        text: the text.
        pair: the second text of a sentence pair, or None.
        encoded: the tokenized input (cut to the model's maximum length).
        notice: a sentence saying what was cut, or None.
    """

    text: str
    pair: Optional[str]
    encoded: Encoded
    notice: Optional[str]


@dataclass
class ClassExplanation:
    """DecompX's explanation of one input, with what the views show of it.

    Attributes:
        read: the input.
        explanation: every class logit decomposed (contributions (seq, classes), logits, bias).
    """

    read: ReadInput
    explanation: Explanation

    @property
    def tokens(self) -> list[str]:
        return self.explanation.tokens

    def payload(self) -> dict[str, Any]:
        """The JSON of the explanation: tokens, labels, contributions (labels x tokens), logits, bias, prediction."""
        explanation = self.explanation
        return {
            "tokens": list(explanation.tokens),
            "labels": list(explanation.labels),
            "contributions": explanation.contributions.T.tolist(),
            "logits": explanation.logits.tolist(),
            "bias": explanation.bias.tolist(),
            "prediction": explanation.labels[explanation.predicted],
            "probabilities": explanation.probabilities.tolist(),
            "algorithm": explanation.algorithm,
            "truncated": explanation.encoded.truncated,
            "input_tokens": explanation.encoded.untruncated_length,
            "notice": self.read.notice,
        }

    def summary_markdown(self) -> str:
        """The prediction, the probabilities and the notice, as Markdown with any text escaped."""
        explanation = self.explanation
        labels = [html.escape(name) for name in explanation.labels]
        predicted = explanation.predicted
        probabilities = ", ".join(f"{name} {probability_text(float(p))}" for name, p in zip(labels, explanation.probabilities))
        lines = [
            f"**Prediction: {labels[predicted]}** (p = {probability_text(float(explanation.probabilities[predicted]))}); "
            f"probabilities: {probabilities}. DecompX, {explanation.algorithm}, {len(explanation.tokens)} tokens."
        ]
        if self.read.notice:
            lines.append(f"**Note:** {html.escape(self.read.notice)}")
        return "\n\n".join(lines)

    def sum_check_html(self) -> str:
        """A table: per class, the sum of the token contributions, the bias, their total and the model's logit."""
        explanation = self.explanation
        rows = [
            "<tr><th>class</th><th>sum of token contributions</th><th>bias</th><th>total</th>"
            "<th>model's logit</th><th>|difference|</th></tr>"
        ]
        for index, name in enumerate(explanation.labels):
            total = float(explanation.contributions[:, index].sum())
            bias = float(explanation.bias[index])
            logit = float(explanation.logits[index])
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{total:+.6f}</td><td>{bias:+.6f}</td><td>{total + bias:+.6f}</td>"
                f"<td>{logit:+.6f}</td><td>{abs(total + bias - logit):.1e}</td></tr>"
            )
        return '<table class="decompx-sum-check">' + "".join(rows) + "</table>"

    def page(self) -> str:
        """The standalone HTML view (one row per class, the package's blue/orange scale and legend)."""
        from ..visualization import class_contributions_html

        explanation = self.explanation
        return class_contributions_html(
            explanation.output,
            explanation.encoded.input_ids,
            explanation.tokenizer,
            attention_mask=explanation.encoded.extra_args[0],
            label_names=explanation.labels,
            title=f"DecompX: per-class token contributions ({explanation.algorithm})",
        )

    def write_files(self, folder: Path) -> dict[str, Path]:
        """Write the downloads into ``folder``: ``html`` (the view), ``png`` (the figure), ``json`` (the values)."""
        from ..cli.explain import write_class_contributions_png

        folder.mkdir(parents=True, exist_ok=True)
        page = folder / "decompx_explanation.html"
        page.write_text(self.page(), encoding="utf-8")
        figure = write_class_contributions_png(self.explanation, folder / "decompx_explanation.png")
        values = folder / "decompx_explanation.json"
        values.write_text(json.dumps(self.payload(), indent=1), encoding="utf-8")
        return {"html": page, "png": figure, "json": values}


@dataclass
class Comparison:
    """One input explained by several methods for one class.

    Attributes:
        tokens: the seq tokens.
        target: the explained class's name.
        scores: per method label, (seq,) token scores as the method returns them (reduced to one per token).
    """

    tokens: list[str]
    target: str
    scores: dict[str, Tensor]

    def normalized(self) -> dict[str, Tensor]:
        """Each method's scores divided by their largest magnitude (in [-1, 1])."""
        return {name: _scaled(values)[0] for name, values in self.scores.items()}

    def html(self) -> str:
        """One row per method, tokens coloured by the method's normalized score (hover: the raw score)."""
        rows = ["<tr><th>method</th><th>max |score|</th><th>tokens (each row divided by its max |score|)</th></tr>"]
        for name, values in self.scores.items():
            scaled, scale = _scaled(values)
            marks = " ".join(_mark(t, float(n), float(v)) for t, n, v in zip(self.tokens, scaled, values))
            rows.append(
                f'<tr data-method="{html.escape(name)}"><td>{html.escape(name)}</td><td>{scale:.3g}</td><td>{marks}</td></tr>'
            )
        caption = f"Explained class: <b>{html.escape(self.target)}</b> (the predicted class)."
        return f'<p>{caption}</p><table class="decompx-compare">' + "".join(rows) + "</table>"


@dataclass
class TokenMaps:
    """The layer-by-layer token-to-token maps of one input.

    Attributes:
        tokens: the seq tokens.
        maps: per layer, (seq, seq) norms ``||X_l[i, k]||`` of input token ``k``'s piece of token ``i``.
        output: the decomposition they come from (for :func:`captum_decompx.visualization.plot_token_map`).
        encoded: the tokenized input.
        tokenizer: its tokenizer.
    """

    tokens: list[str]
    maps: list[Tensor]
    output: Any
    encoded: Encoded
    tokenizer: Any

    def composition(self, token: int, layer: int) -> Tensor:
        """(seq,) shares of the input tokens in token ``token``'s representation after layer ``layer``
        (1-based): the norms of its pieces divided by their sum."""
        row = self.maps[layer - 1][token].double()
        total = float(row.sum())
        return row / total if total > 0 else torch.zeros_like(row)

    def composition_html(self, token: int, layer: int) -> str:
        """The shares of :meth:`composition` on the blue scale, the chosen token framed."""
        shares = self.composition(token, layer)
        scaled, _ = _scaled(shares)
        marks = [_mark(t, float(n), float(s)) for t, n, s in zip(self.tokens, scaled, shares)]
        marks[token] = f'<span style="outline: 2px solid #333; border-radius: 3px; padding: 1px">{marks[token]}</span>'
        return (
            f"<p>What <b>{html.escape(self.tokens[token])}</b> (token {token}) is made of after layer {layer} of "
            f"{len(self.maps)}: each input token's share ||X[i, k]|| / sum over k (hover for the share).</p>"
            f'<div class="decompx-composition" style="line-height: 2.1">{" ".join(marks)}</div>'
        )

    def figure(self, layer: int):
        """The heatmap of layer ``layer`` (1-based), a matplotlib figure."""
        from ..visualization import plot_token_map

        return plot_token_map(
            self.output, self.encoded.input_ids, self.tokenizer, layer=layer - 1, attention_mask=self.encoded.extra_args[0]
        )


@dataclass
class DeletionCurve:
    """The probability of the predicted class as the most important tokens are masked.

    Attributes:
        fractions: K, the fractions of the candidate tokens masked.
        probabilities: per method label, p(predicted class) at each K.
        predicted: the predicted class's name.
    """

    fractions: list[float]
    probabilities: dict[str, list[float]] = field(default_factory=dict)
    predicted: str = ""

    def figure(self):
        """The curves, one line per method (matplotlib figure, Agg canvas)."""
        from ..visualization.figures import _new_figure

        figure = _new_figure(6.4, 3.6)
        axes = figure.add_subplot(1, 1, 1)
        percent = [100 * k for k in self.fractions]
        for name, values in self.probabilities.items():
            axes.plot(percent, values, marker="o", label=name)
        axes.set_xlabel("K: most important tokens masked (%)")
        axes.set_ylabel(f"p({self.predicted})")
        axes.set_ylim(-0.02, 1.02)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=9)
        axes.set_title("Deletion curve of this sentence (lower is more faithful)", fontsize=11)
        figure.tight_layout()
        return figure

    def rows(self) -> list[list[Any]]:
        """A table: one row per K, one column per method."""
        return [[f"{100 * k:.0f}%"] + [round(v[i], 4) for v in self.probabilities.values()] for i, k in enumerate(self.fractions)]


class ClassifierExplorer:
    """The explorer's computations for one sequence classifier.

    Args:
        model: a ``*ForSequenceClassification`` model DecompX supports, in eval mode; it is used
            as it is (one copy), never changed.
        tokenizer: its tokenizer.
        source: where the model came from, for the page's title.
        ig_steps: Integrated Gradients steps in the side-by-side view.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, source: str = "", ig_steps: int = IG_STEPS) -> None:
        self.classifier = LoadedClassifier(model=model, tokenizer=tokenizer, source=source)
        self.ig_steps = ig_steps
        self._lock = threading.RLock()
        self._cache = _Cache()
        self._methods: dict[tuple[str, ...], dict[str, MethodSpec]] = {}

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    @property
    def device(self) -> torch.device:
        """Where the model's parameters are (the inputs are moved there)."""
        parameter = next(self.classifier.model.parameters(), None)
        return parameter.device if parameter is not None else torch.device("cpu")

    @property
    def max_length(self) -> int:
        """How many tokens the model reads at most (the tokenizer's ``model_max_length``)."""
        return int(self.classifier.tokenizer.model_max_length)

    def read(self, text: Optional[str], pair: Optional[str] = None) -> ReadInput:
        """Tokenize ``text`` (and ``pair``), cut to the model's maximum length.

        Raises:
            ExplorerInputError: the text is empty.
        """
        from ..cli.explain import encode

        if text is None or not text.strip():
            raise ExplorerInputError("The text is empty: type a sentence to explain.")
        pair = pair if pair is not None and pair.strip() else None
        encoded = encode(self.classifier, text, pair)
        device = self.device
        encoded.input_ids = encoded.input_ids.to(device)
        encoded.extra_args = tuple(argument.to(device) for argument in encoded.extra_args)
        notice = None
        if encoded.truncated:
            notice = (
                f"The input has {encoded.untruncated_length:,} tokens and the model reads at most {len(encoded.tokens):,}: "
                f"it was cut to the first {len(encoded.tokens):,}, and the tokens cut off are not explained."
            )
        return ReadInput(text=text, pair=pair, encoded=encoded, notice=notice)

    def explain(self, text: Optional[str], pair: Optional[str] = None, algorithm: str = "exact") -> ClassExplanation:
        """Every class logit decomposed by DecompX (``"exact"``: biases decomposed; ``"fast"``: bias-free)."""
        read = self.read(text, pair)

        with self._lock:
            return ClassExplanation(read=read, explanation=explain_encoded(self.classifier, read.encoded, algorithm))

    def _specs(self, keys: Sequence[str]) -> dict[str, MethodSpec]:
        key = tuple(keys)
        if key not in self._methods:
            self._methods[key] = build_methods(key, self.classifier.model, self.classifier.tokenizer, ig_steps=self.ig_steps)
        return self._methods[key]

    def _predicted(self, read: ReadInput) -> int:
        with torch.no_grad():
            logits = forward_function(self.classifier)(read.encoded.input_ids, *read.encoded.extra_args)
        return int(logits[0].argmax())

    def compare(self, text: Optional[str], pair: Optional[str] = None, methods: Sequence[str] = COMPARE_METHODS) -> Comparison:
        """The predicted class explained by each method of ``methods`` (registry keys)."""
        read = self.read(text, pair)

        with self._lock:
            target = self._predicted(read)
            batch = batch_of(read.encoded, self.classifier)
            specs = self._specs(methods)
            scores = {
                name: spec.scores(batch, torch.tensor([target], device=self.device))[0].double() for name, spec in specs.items()
            }
        return Comparison(tokens=read.encoded.tokens, target=self.labels[target], scores=scores)

    def token_maps(self, text: Optional[str], pair: Optional[str] = None) -> TokenMaps:
        """Every layer's token-to-token map (exact DecompX with the biases decomposed)."""
        from ..attribution import DecompX

        read = self.read(text, pair)

        def compute() -> TokenMaps:
            with self._lock:
                explainer = DecompX(forward_function(self.classifier), model=self.classifier.model)
                output = explainer.decompose(
                    read.encoded.input_ids, additional_forward_args=read.encoded.extra_args, return_token_maps=True
                )
            assert output.token_maps is not None
            maps = [layer[0].detach().double() for layer in output.token_maps]
            return TokenMaps(read.encoded.tokens, maps, output, read.encoded, self.classifier.tokenizer)

        with self._lock:
            return self._cache.get(("maps", read.text, read.pair), compute)

    def deletion_curve(
        self, text: Optional[str], pair: Optional[str] = None, methods: Sequence[str] = DELETION_METHODS
    ) -> DeletionCurve:
        """p(predicted class) after masking the K% most important tokens by each method, K = 0, 10, ..., 90%.

        The tokens that may be masked are the real tokens the tokenizer did not add; they are
        replaced by the mask token (the unknown token when the tokenizer has none), as in the
        faithfulness study (:mod:`captum_decompx.evaluation`).
        """
        read = self.read(text, pair)
        tokenizer = self.classifier.tokenizer
        mask_id = tokenizer.mask_token_id if tokenizer.mask_token_id is not None else tokenizer.unk_token_id

        with self._lock:
            forward = forward_function(self.classifier)
            target = self._predicted(read)
            batch = batch_of(read.encoded, self.classifier)
            curve = DeletionCurve(fractions=list(DEFAULT_FRACTIONS), predicted=self.labels[target])
            for name, spec in self._specs(methods).items():
                scores = spec.scores(batch, torch.tensor([target], device=self.device))
                masked = torch.cat(
                    [mask_ranked_tokens(batch.input_ids, scores, batch.candidates, k, mask_id) for k in DEFAULT_FRACTIONS]
                )
                extra = tuple(arg.expand(len(DEFAULT_FRACTIONS), -1) for arg in read.encoded.extra_args)
                with torch.no_grad():
                    probabilities = torch.softmax(forward(masked, *extra).double(), dim=-1)[:, target]
                curve.probabilities[name] = probabilities.tolist()
        return curve


def method_label(key: str) -> str:
    """The display label of a registered method key."""
    return METHOD_REGISTRY[key].label


# ------------------------------------------------------------------------------------------------
# Causal language models


@dataclass
class GenerationMatrix:
    """A causal LM's generated tokens, each next-token logit decomposed over the prompt and the tokens before it.

    Attributes:
        prompt_tokens: the prompt's tokens (columns first).
        generated_tokens: the generated (or given) tokens: the rows, and the columns after the prompt.
        matrix: (generated, prompt + generated), ``[t, s]`` the share of token ``s`` in the logit of
            generated token ``t`` (zero where ``s`` is not before ``t``).
        logits: (generated,), each generated token's next-token logit.
        bias: (generated,), the biases' share of each logit (zero when the biases are decomposed).
        probabilities: (generated,), the model's probability of each generated token.
    """

    prompt_tokens: list[str]
    generated_tokens: list[str]
    matrix: Tensor
    logits: Tensor
    bias: Tensor
    probabilities: Tensor

    def payload(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "matrix": self.matrix.tolist(),
            "logits": self.logits.tolist(),
            "bias": self.bias.tolist(),
            "probabilities": self.probabilities.tolist(),
        }

    def html(self) -> str:
        """The matrix as a table: one row per generated token, one column per prompt or generated token,
        cells coloured on one shared scale (blue raises the row's logit, orange lowers it)."""
        scaled, scale = _scaled(self.matrix)
        columns = self.prompt_tokens + self.generated_tokens
        n_prompt = len(self.prompt_tokens)
        head = "".join(
            f'<th class="{"prompt" if i < n_prompt else "generated"}">{html.escape(t)}</th>' for i, t in enumerate(columns)
        )
        rows = [f"<tr><th>generated \\ source</th>{head}<th>sum + bias = logit</th></tr>"]
        for t, token in enumerate(self.generated_tokens):
            cells = []
            for s in range(len(columns)):
                if s >= n_prompt + t:
                    cells.append('<td style="background: #f0f0f0"></td>')
                    continue
                value, shade = float(self.matrix[t, s]), float(scaled[t, s])
                cells.append(
                    f'<td style="background-color: {signed_hex(shade)}; color: {text_colour_on(shade)}" '
                    f'title="{value:+.4f}">{value:+.2f}</td>'
                )
            total = float(self.matrix[t].sum())
            check = f"{total:+.3f} {float(self.bias[t]):+.3f} = {float(self.logits[t]):+.3f}"
            rows.append(f"<tr><th>{html.escape(token)}</th>{''.join(cells)}<td>{check}</td></tr>")
        legend = (
            f"<p>Row t: the next-token logit of generated token t decomposed over the prompt and the tokens generated "
            f"before it. Colour: <span style='background: {signed_hex(1)}; color: white'>&nbsp;raises the logit&nbsp;</span> "
            f"<span style='background: {signed_hex(-1)}'>&nbsp;lowers it&nbsp;</span>; full colour = &plusmn;{scale:.3f}.</p>"
        )
        return legend + '<div style="overflow-x: auto"><table class="decompx-llm-matrix">' + "".join(rows) + "</table></div>"


class CausalLMExplorer:
    """The explorer's computations for a causal language model (GPT-2, the Llama family).

    Args:
        model: a Hugging Face causal LM, in eval mode (one copy, never changed).
        tokenizer: its tokenizer.
        source: where the model came from, for the page's title.
        max_new_tokens: the most tokens a request may generate.
    """

    def __init__(self, model: nn.Module, tokenizer: Any, *, source: str = "", max_new_tokens: int = 16) -> None:
        from ..llm import LLMDecompX

        self.model = model
        self.tokenizer = tokenizer
        self.source = source
        self.max_new_tokens = max_new_tokens
        self.explainer = LLMDecompX(model, tokenizer)
        self._lock = threading.RLock()

    @property
    def max_length(self) -> int:
        configured = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", None
        )
        return int(configured or self.tokenizer.model_max_length)

    def generate(
        self, prompt: Optional[str], max_new_tokens: int = 8, continuation: Optional[str] = None
    ) -> tuple[GenerationMatrix, Optional[str]]:
        """Generate up to ``max_new_tokens`` greedily (or take ``continuation``) and decompose every step.

        Returns:
            the matrix and a notice when the prompt was cut to fit the model, else None.

        Raises:
            ExplorerInputError: the prompt is empty.
        """
        if prompt is None or not prompt.strip():
            raise ExplorerInputError("The prompt is empty: type a prompt to continue.")
        steps = max(1, min(int(max_new_tokens), self.max_new_tokens))
        ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"]
        keep = self.max_length - steps
        notice = None
        if ids.shape[1] > keep:
            notice = (
                f"The prompt has {ids.shape[1]:,} tokens; with {steps} tokens to generate the model reads at most {keep:,} "
                f"of them: it was cut to its last {keep:,}."
            )
            ids = ids[:, -keep:]
        target = continuation if continuation is not None and continuation.strip() else None

        with self._lock:
            result = self.explainer.attribute(ids[0], target=target, gen_args={"max_new_tokens": steps, "do_sample": False})
        matrix = GenerationMatrix(
            prompt_tokens=[readable_token(t) for t in result.input_tokens],
            generated_tokens=[readable_token(t) for t in result.output_tokens],
            matrix=torch.cat([result.token_attr.double(), result.generated_attr.double()], dim=1),
            logits=result.logits.double(),
            bias=result.bias.double(),
            probabilities=result.output_probs.double(),
        )
        return matrix, notice
