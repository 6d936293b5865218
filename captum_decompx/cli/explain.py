"""What ``captum-decompx explain`` and ``compare`` compute and print, and what the explorer
(:mod:`captum_decompx.app`) shows: a text encoded for the demo classifier (or any sequence
classifier), its DecompX explanation, the coloured token lines and the sum check, the HTML and PNG
views, and the methods ``compare`` puts side by side.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, TextIO

from ..colors import AWAY_RGB, TOWARDS_RGB, probability_text, text_colour_on
from ..demo import (
    LoadedClassifier,
    load_model_and_tokenizer,
    resolve_model_source,
    stored_label_names,
)

if TYPE_CHECKING:
    from torch import Tensor

    from ..attribution import DecompXOutput


#: Exit status of errors the user can act on (the same as argparse's usage errors).
USAGE_ERROR = 2
IG_STEPS = 50
#: Texts longer than this many characters are echoed shortened (the explanation covers the tokens kept).
ECHO_CHARACTERS = 200


class CommandError(Exception):
    """A mistake in the command line or its inputs; the message says what to do."""


# ------------------------------------------------------------------------------------------------
# Loading and encoding


@dataclass
class Encoded:
    """One tokenized input.

    Attributes:
        input_ids: (1, seq).
        extra_args: what the forward function takes after the ids: the attention mask (1, seq),
            and the token type ids (1, seq) for models that use them.
        tokens: the seq token strings, special tokens included.
        untruncated_length: how many tokens the input has before truncation to the model's
            maximum length (``seq`` when nothing was cut).
    """

    input_ids: Tensor
    extra_args: tuple[Tensor, ...]
    tokens: list[str]
    untruncated_length: int

    @property
    def truncated(self) -> bool:
        return self.untruncated_length > len(self.tokens)


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers on the command line."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_classifier_for_command(model: Optional[str]) -> LoadedClassifier:
    resolve_model_source(model)  # a missing folder or an unreachable hub fails before torch loads
    quiet_transformers()
    return load_model_and_tokenizer(model)


def shown_source(classifier: LoadedClassifier) -> str:
    """The model's folder relative to the working directory when it lies inside it."""
    try:
        return str(Path(classifier.source).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return classifier.source


def checked_text(text: str, what: str = "TEXT") -> str:
    if text is None or not text.strip():
        raise CommandError(f'{what} is empty: pass the sentence to explain, e.g. captum-decompx explain "a fine film."')
    return text


def encode(classifier: LoadedClassifier, text: str, pair: Optional[str] = None) -> Encoded:
    """Tokenize ``text`` (and ``pair``) for ``classifier``, truncated to the model's maximum length."""
    import torch

    tokenizer = classifier.tokenizer
    batch = tokenizer(text, pair, return_tensors="pt", truncation=True)
    input_ids = batch["input_ids"]
    _check_ids_in_vocabulary(classifier, input_ids)
    extra = [batch.get("attention_mask", torch.ones_like(input_ids))]
    if "token_type_ids" in batch:
        extra.append(batch["token_type_ids"])
    tokens = tokenizer.convert_ids_to_tokens(input_ids[0].tolist())
    untruncated_length = len(tokenizer(text, pair, truncation=False)["input_ids"])
    return Encoded(
        input_ids=input_ids,
        extra_args=tuple(extra),
        tokens=[readable_token(t) for t in tokens],
        untruncated_length=max(untruncated_length, input_ids.shape[1]),
    )


def _check_ids_in_vocabulary(classifier: LoadedClassifier, input_ids: Tensor) -> None:
    """The tokenizer's ids must index the model's embedding table (a tokenizer of another model does not)."""
    from ..core.validation import token_embedding

    embedding = token_embedding(classifier.model)
    if embedding is None or input_ids.numel() == 0:
        return
    largest = int(input_ids.max())
    if largest >= embedding.num_embeddings:
        raise CommandError(
            f"The tokenizer of {classifier.source} gives token id {largest}, but the model's vocabulary has "
            f"{embedding.num_embeddings} entries (ids 0 to {embedding.num_embeddings - 1}): the tokenizer belongs to "
            "another model. Save the model's own tokenizer in the folder (tokenizer.save_pretrained)."
        )


def shortened(text: str, limit: int = ECHO_CHARACTERS) -> str:
    """``text`` itself, or its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit].rstrip()}... ({len(text):,} characters)"


def print_input(classifier: LoadedClassifier, encoded: Encoded, text: str, pair: Optional[str], out: TextIO) -> None:
    """The model, the text (shortened when long) and, when the tokenizer cut it, how much was kept."""
    print(f"model: {shown_source(classifier)} ({classifier.model_type})", file=out)
    print(f"text: {shortened(text)}" + (f"\npair: {shortened(pair)}" if pair is not None else ""), file=out)
    if encoded.truncated:
        print(
            f"truncated: {len(encoded.tokens):,} of {encoded.untruncated_length:,} tokens kept (the model's maximum "
            "length); the tokens cut off are not explained",
            file=out,
        )


def readable_token(token: str) -> str:
    """Byte-level BPE marks spaces with 'Ġ' and SentencePiece with '▁': show them as plain text."""
    return token.replace("Ġ", " ").replace("▁", " ").strip() or token


def forward_function(classifier: LoadedClassifier) -> Callable[..., Tensor]:
    """``forward(input_ids, attention_mask, token_type_ids=None) -> logits`` (batch, classes)."""
    model = classifier.model

    def forward(input_ids: Tensor, attention_mask: Tensor, token_type_ids: Optional[Tensor] = None) -> Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    return forward


def resolve_label(classifier: LoadedClassifier, label: Optional[str]) -> Optional[int]:
    """The class index of ``label`` (a name, any case, or an index); None stays None."""
    if label is None:
        return None
    return label_index(classifier.labels, label)


def check_label_before_loading(model: Optional[str], label: Optional[str]) -> None:
    """Refuse an unknown ``--target`` from the model's ``config.json``, before the weights load.

    Where the configuration names no classes (or is not at hand), the label is checked after loading.
    """
    if label is None:
        return
    location, _ = resolve_model_source(model)
    names = stored_label_names(location)
    if names is not None:
        label_index(names, label)


def label_index(names: Sequence[str], label: str) -> int:
    """The index of ``label`` among the class ``names`` (a name, any case, or an index)."""
    for index, name in enumerate(names):
        if label.strip().lower() == name.lower():
            return index
    if label.strip().isdigit() and int(label) < len(names):
        return int(label)
    listing = ", ".join(f"{name} ({index})" for index, name in enumerate(names))
    raise CommandError(f"Unknown label {label!r}. The model's labels are: {listing}.")


# ------------------------------------------------------------------------------------------------
# explain


@dataclass
class Explanation:
    """DecompX's explanation of one input, every class at once.

    Attributes:
        tokens: the seq token strings.
        labels: the class names.
        logits: (classes,), the model's logits.
        probabilities: (classes,), their softmax.
        contributions: (seq, classes), each token's contribution to each class logit.
        bias: (classes,), the part of each logit assigned to no token (0 with the exact algorithm).
        algorithm: ``"exact"`` or ``"fast"``.
        output: DecompX's full result, for the visualizations.
        encoded: the tokenized input.
        tokenizer: its tokenizer.
    """

    tokens: list[str]
    labels: list[str]
    logits: Tensor
    probabilities: Tensor
    contributions: Tensor
    bias: Tensor
    algorithm: str
    output: DecompXOutput
    encoded: Encoded
    tokenizer: object

    @property
    def predicted(self) -> int:
        return int(self.logits.argmax())


def explain_text(classifier: LoadedClassifier, text: str, pair: Optional[str] = None, algorithm: str = "exact") -> Explanation:
    """Decompose every class logit of ``classifier`` on ``text`` (and ``pair``) with DecompX.

    ``algorithm="exact"`` decomposes the biases too (the paper's DecompX, bias 0);
    ``algorithm="fast"`` is the bias-free variant, whose bias share is reported in ``bias``.
    """
    return explain_encoded(classifier, encode(classifier, text, pair), algorithm)


def explain_encoded(classifier: LoadedClassifier, encoded: Encoded, algorithm: str = "exact") -> Explanation:
    """:func:`explain_text` for an input that is already tokenized."""
    import torch

    from ..attribution import DecompX

    explainer = DecompX(
        forward_function(classifier), model=classifier.model, include_biases=algorithm == "exact", algorithm=algorithm
    )
    output = explainer.decompose(encoded.input_ids, additional_forward_args=encoded.extra_args)
    assert output.bias is not None  # the head is decomposed, so the bias share exists
    logits = output.logits[0].detach().double()
    return Explanation(
        tokens=encoded.tokens,
        labels=classifier.labels,
        logits=logits,
        probabilities=torch.softmax(logits, dim=-1),
        contributions=output.attributions[0].detach().double(),
        bias=output.bias[0].detach().double(),
        algorithm=output.algorithm,
        output=output,
        encoded=encoded,
        tokenizer=classifier.tokenizer,
    )


def _rgb_for(share: float) -> tuple[int, int, int]:
    """White to blue for ``share`` in (0, 1] (towards the class), white to orange for [-1, 0) (away from it).

    The same colour-blind-safe scale as the HTML and PNG views (:mod:`captum_decompx.visualization`).
    """
    strength = min(1.0, abs(share))
    base = TOWARDS_RGB if share >= 0 else AWAY_RGB
    return tuple(round(255 + (channel - 255) * strength) for channel in base)  # type: ignore[return-value]


def _coloured(token: str, share: float) -> str:
    if abs(share) < 0.05:
        return token
    red, green, blue = _rgb_for(share)
    foreground = "97" if text_colour_on(share) == "white" else "30"
    return f"\x1b[{foreground};48;2;{red};{green};{blue}m{token}\x1b[0m"


def format_token_line(tokens: Sequence[str], scores: Sequence[float], scale: float, colour: bool) -> str:
    """``token:+0.123`` for every token; with ``colour``, the token on a background whose hue is the sign
    (blue towards the class, orange away from it) and whose strength is ``|score| / scale``."""
    parts = []
    for token, score in zip(tokens, scores):
        shown = _coloured(token, score / scale if scale > 0 else 0.0) if colour else token
        parts.append(f"{shown}:{score:+.3f}")
    return " ".join(parts)


def print_explanation(explanation: Explanation, classes: Sequence[int], colour: bool, out: TextIO) -> None:
    """The prediction, one line of token contributions per class, and the sum check."""
    labels = explanation.labels
    width = max(len(labels[c]) for c in classes)
    predicted = explanation.predicted
    probabilities = ", ".join(f"{name} {probability_text(float(p))}" for name, p in zip(labels, explanation.probabilities))
    print(f"prediction: {labels[predicted]} (p = {probability_text(float(explanation.probabilities[predicted]))})", file=out)
    print(f"probabilities: {probabilities}", file=out)
    print("", file=out)
    print(f"token contributions to each class logit (DecompX, {explanation.algorithm}):", file=out)
    scale = float(explanation.contributions[:, list(classes)].abs().max())
    for c in classes:
        line = format_token_line(explanation.tokens, explanation.contributions[:, c].tolist(), scale, colour)
        print(f"{labels[c]:>{width}}: {line}", file=out)
    if colour:
        print(f"{'':>{width}}  (blue: pushes towards the class, orange: away from it; full colour = {scale:.3f})", file=out)
    print("", file=out)
    print("sum check (token contributions + bias, against the model's logit):", file=out)
    for c in classes:
        line = format_sum_check(
            float(explanation.contributions[:, c].sum()), float(explanation.bias[c]), float(explanation.logits[c])
        )
        print(f"{labels[c]:>{width}}: {line}", file=out)


def format_sum_check(total: float, bias: float, logit: float, decimals: int = 6) -> str:
    """``total + bias = sum   (logit L, |difference| d)``, the printed sum being the sum of the printed terms.

    The terms are rounded first and added as decimals, so the printed equation adds up exactly; the
    model's logit is printed next to it with the (float rounding) difference from the unrounded sum.
    """
    quantum = Decimal(1).scaleb(-decimals)
    total_shown = Decimal(repr(total)).quantize(quantum)
    bias_shown = Decimal(repr(abs(bias))).quantize(quantum)
    sign = "-" if bias < 0 else "+"
    sum_shown = total_shown - bias_shown if bias < 0 else total_shown + bias_shown
    difference = abs(total + bias - logit)
    return (
        f"{total_shown:+.{decimals}f} {sign} {bias_shown:.{decimals}f} = {sum_shown:+.{decimals}f}   "
        f"(logit {logit:+.{decimals}f}, |difference| {difference:.1e})"
    )


def use_colour(choice: str, out: TextIO) -> bool:
    if choice == "always":
        return True
    if choice == "never":
        return False
    return bool(getattr(out, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def write_views(views: Sequence[tuple[Optional[Path], str, Callable[[Path], Path]]], out: TextIO) -> None:
    """Writes the views that were asked for and says where, after a blank line.

    Args:
        views: ``(path, what, write)`` per view: the file (None: not asked for), what the view is
            (``"HTML view"``), and the function that writes it there and returns the path written.
        out: where the lines go.
    """
    wanted = [(path, what, write) for path, what, write in views if path is not None]
    if wanted:
        print("", file=out)
    for path, what, write in wanted:
        print(f"wrote the {what} to {write(path)}", file=out)


def output_path(path: str) -> Path:
    """``path`` as a file to write, checked before any work is done."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise CommandError(f"{path} is a folder: pass a file name, e.g. {Path(path) / 'explanation'}.")
    if not target.parent.exists():
        raise CommandError(f"Cannot write {path}: the folder {target.parent} does not exist.")
    return target


def _class_view_arguments(explanation: Explanation) -> dict[str, Any]:
    """What the per-class views (HTML page and figure) are drawn from, as keyword arguments."""
    return {
        "output": explanation.output,
        "input_ids": explanation.encoded.input_ids,
        "tokenizer": explanation.tokenizer,
        "attention_mask": explanation.encoded.extra_args[0],
        "label_names": explanation.labels,
        "title": f"DecompX: per-class token contributions ({explanation.algorithm})",
    }


def write_class_contributions_html(explanation: Explanation, path: Path) -> Path:
    """Write the per-class view as a standalone HTML page: one row per class, tokens coloured by
    their contribution to it. Returns the path written."""
    from ..visualization import class_contributions_html

    destination = Path(path)
    class_contributions_html(**_class_view_arguments(explanation), path=destination)
    return destination


def write_class_contributions_png(explanation: Explanation, path: Path) -> Path:
    """Write the per-class figure as PNG: one row per class, tokens coloured by their signed contribution.

    A path without an extension gets ``.png`` (as matplotlib would add); any other name is written
    as given, in PNG format. Returns the path actually written.
    """
    from ..visualization import plot_class_contributions

    destination = Path(path)
    if not destination.suffix:
        destination = destination.with_name(destination.name + ".png")
    plot_class_contributions(**_class_view_arguments(explanation), path=destination, image_format="png")
    return destination


#: Former names of :func:`write_class_contributions_html` and :func:`write_class_contributions_png`.
write_html = write_class_contributions_html
write_png = write_class_contributions_png


# ------------------------------------------------------------------------------------------------
# compare


#: Command-line method names -> the names of :func:`captum_decompx.evaluation.paper_methods`.
METHODS: dict[str, str] = {
    "decompx": "DecompX",
    "decompx-fast": "DecompX w/o bias (fast)",
    "globenc": "GlobEnc",
    "alti": "ALTI",
    "ig": "IG (sum)",
    "ig-l2": "IG (L2)",
    "gxi": "Gradient x Input (sum)",
    "saliency": "Saliency (L2)",
    "random": "random",
}


def method_specs(classifier: LoadedClassifier, names: Sequence[str]) -> dict:
    """The :class:`~captum_decompx.evaluation.MethodSpec` of each command-line method name.

    The same definitions as the faithfulness benchmark: DecompX exact (biases decomposed) and fast
    (bias-free), GlobEnc, ALTI, Integrated Gradients (50 steps against ``[CLS] [PAD]... [SEP]``,
    signed sum or L2 norm over the embedding), Gradient x Input on the word embeddings (signed sum),
    Saliency (L2 norm of the gradient) and random scores.
    """
    from ..evaluation import paper_methods

    specs = paper_methods(classifier.model, classifier.tokenizer, ig_steps=IG_STEPS)
    return {name: specs[METHODS[name]] for name in names}


def batch_of(encoded: Encoded, classifier: LoadedClassifier):
    import torch

    from ..evaluation import Batch

    special = classifier.tokenizer.get_special_tokens_mask(encoded.input_ids[0].tolist(), already_has_special_tokens=True)
    attention_mask = encoded.extra_args[0]
    return Batch(
        input_ids=encoded.input_ids,
        attention_mask=attention_mask,
        token_type_ids=encoded.extra_args[1] if len(encoded.extra_args) > 1 else None,
        candidates=attention_mask.bool() & ~torch.tensor([special], dtype=torch.bool),
        labels=torch.zeros(1, dtype=torch.long),
    )


def parse_methods(text: str) -> list[str]:
    methods = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not methods:
        raise CommandError(f"--methods is empty; choose from: {', '.join(METHODS)}.")
    unknown = [name for name in methods if name not in METHODS]
    if unknown:
        raise CommandError(f"Unknown method(s) {', '.join(unknown)}; choose from: {', '.join(METHODS)}.")
    return list(dict.fromkeys(methods))


def format_comparison(tokens: Sequence[str], scores: dict[str, Tensor]) -> str:
    """An aligned table: one row per token, one column per method, each divided by its max |score|."""
    names = list(scores)
    token_width = max(5, max(len(t) for t in tokens))
    column = max(8, max(len(n) for n in names) + 2)
    lines = [f"{'token':<{token_width}}" + "".join(f"{name:>{column}}" for name in names)]
    scales = {name: float(values.abs().max()) for name, values in scores.items()}
    for index, token in enumerate(tokens):
        row = f"{token:<{token_width}}"
        for name in names:
            value = float(scores[name][index]) / scales[name] if scales[name] > 0 else 0.0
            row += f"{value:>+{column}.2f}"
        lines.append(row)
    lines.append(f"{'max|s|':<{token_width}}" + "".join(f"{scales[name]:>{column}.3g}" for name in names))
    return "\n".join(lines)
