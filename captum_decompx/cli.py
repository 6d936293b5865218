"""The ``captum-decompx`` command: explain a prediction, compare methods, run the faithfulness study.

Examples::

    captum-decompx explain "a good piece of work more often than not."
    captum-decompx explain "a dull, lifeless and utterly boring mess." --html view.html --png classes.png
    captum-decompx explain "A man is sleeping." --pair "Nobody sleeps." --model PATH --target LABEL
    captum-decompx compare "a good piece of work more often than not." --methods decompx,ig,gxi
    captum-decompx evaluate --data sst2-dev --limit 50 --methods decompx,gxi,random

Without ``--model`` the demo sentiment classifier of the repository is used (``models/minilm-sst2``,
or ``$CAPTUM_DECOMPX_DEMO_MODEL``); nothing is downloaded. Errors the user can fix are reported in
one message with exit status 2.

torch, transformers and the attribution code load only when a command runs, so that ``--help`` and
usage errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, TextIO

from .demo import (
    DemoError,
    LoadedClassifier,
    dataset_path,
    load_model_and_tokenizer,
    read_labelled_tsv,
    resolve_model_source,
    stored_label_names,
)
from .formatting import AWAY_RGB, TOWARDS_RGB, probability_text, text_colour_on

if TYPE_CHECKING:
    from torch import Tensor

    from .attribution import DecompXOutput

#: Exit status of errors the user can act on (the same as argparse's usage errors).
USAGE_ERROR = 2
DEFAULT_COMPARE_METHODS = "decompx,ig,gxi"
DEFAULT_EVALUATE_METHODS = "decompx,gxi,random"
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


def _quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers on the command line."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def _load(model: Optional[str]) -> LoadedClassifier:
    resolve_model_source(model)  # a missing folder or an unreachable hub fails before torch loads
    _quiet_transformers()
    return load_model_and_tokenizer(model)


def _shown_source(classifier: LoadedClassifier) -> str:
    """The model's folder relative to the working directory when it lies inside it."""
    try:
        return str(Path(classifier.source).resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return classifier.source


def _checked_text(text: str, what: str = "TEXT") -> str:
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
        tokens=[_readable(t) for t in tokens],
        untruncated_length=max(untruncated_length, input_ids.shape[1]),
    )


def _check_ids_in_vocabulary(classifier: LoadedClassifier, input_ids: Tensor) -> None:
    """The tokenizer's ids must index the model's embedding table (a tokenizer of another model does not)."""
    from .validation import token_embedding

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
    print(f"model: {_shown_source(classifier)} ({classifier.model_type})", file=out)
    print(f"text: {shortened(text)}" + (f"\npair: {shortened(pair)}" if pair is not None else ""), file=out)
    if encoded.truncated:
        print(
            f"truncated: {len(encoded.tokens):,} of {encoded.untruncated_length:,} tokens kept (the model's maximum "
            "length); the tokens cut off are not explained",
            file=out,
        )


def _readable(token: str) -> str:
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

    from .attribution import DecompX

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


def _use_colour(choice: str, out: TextIO) -> bool:
    if choice == "always":
        return True
    if choice == "never":
        return False
    return bool(getattr(out, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


def run_explain(args: argparse.Namespace, out: TextIO) -> int:
    text = _checked_text(args.text)
    pair = _checked_text(args.pair, "--pair TEXT2") if args.pair is not None else None
    html_path = _output_path(args.html) if args.html else None
    png_path = _output_path(args.png) if args.png else None
    check_label_before_loading(args.model, args.target)
    classifier = _load(args.model)
    target = resolve_label(classifier, args.target)
    encoded = encode(classifier, text, pair)
    print_input(classifier, encoded, text, pair, out)
    explanation = explain_encoded(classifier, encoded, algorithm=args.algorithm)
    classes = list(range(len(explanation.labels))) if target is None else [target]
    print_explanation(explanation, classes, _use_colour(args.color, out), out)
    if html_path or png_path:
        print("", file=out)
    if html_path:
        print(f"wrote the HTML view to {write_class_contributions_html(explanation, html_path)}", file=out)
    if png_path:
        print(f"wrote the per-class figure to {write_class_contributions_png(explanation, png_path)}", file=out)
    return 0


def _output_path(path: str) -> Path:
    """``path`` as a file to write, checked before any work is done."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise CommandError(f"{path} is a folder: pass a file name, e.g. {Path(path) / 'explanation'}.")
    if not target.parent.exists():
        raise CommandError(f"Cannot write {path}: the folder {target.parent} does not exist.")
    return target


def write_class_contributions_html(explanation: Explanation, path: Path) -> Path:
    """Write the per-class view as a standalone HTML page: one row per class, tokens coloured by
    their contribution to it. Returns the path written."""
    from .visualization import class_contributions_html

    destination = Path(path)
    class_contributions_html(
        explanation.output,
        explanation.encoded.input_ids,
        explanation.tokenizer,
        attention_mask=explanation.encoded.extra_args[0],
        label_names=explanation.labels,
        path=destination,
        title=f"DecompX: per-class token contributions ({explanation.algorithm})",
    )
    return destination


def write_class_contributions_png(explanation: Explanation, path: Path) -> Path:
    """Write the per-class figure as PNG: one row per class, tokens coloured by their signed contribution.

    A path without an extension gets ``.png`` (as matplotlib would add); any other name is written
    as given, in PNG format. Returns the path actually written.
    """
    from .visualization import plot_class_contributions

    destination = Path(path)
    if not destination.suffix:
        destination = destination.with_name(destination.name + ".png")
    plot_class_contributions(
        explanation.output,
        explanation.encoded.input_ids,
        explanation.tokenizer,
        attention_mask=explanation.encoded.extra_args[0],
        label_names=explanation.labels,
        path=destination,
        title=f"DecompX: per-class token contributions ({explanation.algorithm})",
        image_format="png",
    )
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
    from .evaluation import paper_methods

    specs = paper_methods(classifier.model, classifier.tokenizer, ig_steps=IG_STEPS)
    return {name: specs[METHODS[name]] for name in names}


def _batch_of(encoded: Encoded, classifier: LoadedClassifier):
    import torch

    from .evaluation import Batch

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


def run_compare(args: argparse.Namespace, out: TextIO) -> int:
    text = _checked_text(args.text)
    pair = _checked_text(args.pair, "--pair TEXT2") if args.pair is not None else None
    methods = parse_methods(args.methods)
    check_label_before_loading(args.model, args.target)
    classifier = _load(args.model)
    target = resolve_label(classifier, args.target)
    import torch

    encoded = encode(classifier, text, pair)
    print_input(classifier, encoded, text, pair, out)
    with torch.no_grad():
        logits = forward_function(classifier)(encoded.input_ids, *encoded.extra_args)[0]
    probabilities = torch.softmax(logits.double(), -1)
    predicted = int(logits.argmax())
    target = predicted if target is None else target
    labels = classifier.labels
    print(f"prediction: {labels[predicted]} (p = {probability_text(float(probabilities[predicted]))})", file=out)
    print(f"explaining: {labels[target]}; each column divided by its method's max |score|", file=out)
    print("", file=out)
    batch = _batch_of(encoded, classifier)
    specs = method_specs(classifier, methods)
    scores = {name: spec.scores(batch, torch.tensor([target]))[0] for name, spec in specs.items()}
    print(format_comparison(encoded.tokens, scores), file=out)
    return 0


# ------------------------------------------------------------------------------------------------
# evaluate


def run_evaluate(args: argparse.Namespace, out: TextIO) -> int:
    if getattr(args, "out", None) is not None:  # Parquet parts, resumable, torchrun: dataset_evaluation.py
        return run_evaluate_parts(args, out)
    methods = parse_methods(args.methods)
    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be a positive number of examples, got {args.limit}.")
    texts, labels = read_labelled_tsv(dataset_path(args.data), limit=args.limit)
    if not texts:
        raise CommandError(f"No examples in {args.data}.")
    from .evaluation import evaluate_faithfulness  # torch loads once the data file has been read

    classifier = _load(args.model)
    print(f"model: {_shown_source(classifier)} ({classifier.model_type})", file=out)
    print(f"data: {args.data}, {len(texts)} examples; methods: {', '.join(methods)}", file=out, flush=True)
    specs = method_specs(classifier, methods)
    result = evaluate_faithfulness(
        classifier.model,
        classifier.tokenizer,
        texts,
        labels,
        {name: specs[name] for name in methods},
        show_progress=not args.no_progress,
    )
    print(f"model accuracy on these examples: {100 * result.accuracy:.2f}%", file=out)
    print("masking K = 0%, 10%, ..., 90% of the tokens, most or least important first (DecompX paper, Table 1):", file=out)
    print("", file=out)
    print(result.to_markdown(timings=True), file=out)
    return 0


# ------------------------------------------------------------------------------------------------
# attribute (a whole data set, also under torchrun; see captum_decompx/dataset_attribution.py)


def data_file_is_readable(
    path: Path, text_column: Optional[str], text_pair_column: Optional[str], label_column: Optional[str]
) -> bool:
    """Read and check every row of a data file before torch, transformers and the model load.

    The dataset code reads the file again: its mistakes (a missing file or column, an empty text, a
    label that is not an integer) are reported here within a second instead of after the imports
    and the model. Under torchrun every process checks and stops; only rank 0 reports.

    Returns:
        True when the file reads; False on a process other than rank 0 when it does not.

    Raises:
        CommandError: on rank 0 (or without torchrun), the file's mistakes.
    """
    from .datasets import DataFileError, read_text_table

    try:
        read_text_table(path, text_column, text_pair_column, label_column)
    except DataFileError as error:
        if int(os.environ.get("RANK", "0")) != 0:
            return False
        raise CommandError(str(error)) from error
    return True


def run_attribute(args: argparse.Namespace, out: TextIO) -> int:
    if not data_file_is_readable(Path(args.data).expanduser(), args.text_column, args.text_pair_column, args.label_column):
        return USAGE_ERROR
    from .dataset_attribution import DatasetAttributionError, run_attribute_command

    try:
        return run_attribute_command(args, out)
    except DatasetAttributionError as error:
        raise CommandError(str(error)) from error


def run_evaluate_parts(args: argparse.Namespace, out: TextIO) -> int:
    if not data_file_is_readable(dataset_path(args.data), None, None, None):
        return USAGE_ERROR
    from .dataset_attribution import DatasetAttributionError
    from .dataset_evaluation import run_evaluate_command

    try:
        return run_evaluate_command(args, out)
    except DatasetAttributionError as error:
        raise CommandError(str(error)) from error


def add_attribute_command(commands) -> None:
    """Register ``captum-decompx attribute``."""
    attribute = commands.add_parser(
        "attribute",
        help="DecompX over a whole data file into Parquet parts (resumable; runs under torchrun)",
        description=(
            "Decompose every class logit of every row of a .tsv, .csv, .jsonl or .parquet file with DecompX and write "
            "the rows to Parquet parts under --out (one table: pyarrow.parquet.read_table(DIR)). Runs unchanged under "
            "torchrun --nproc_per_node K [--nnodes M ...] -m captum_decompx attribute ...; rerun the same command "
            "after a crash to compute only what is missing."
        ),
    )
    attribute.add_argument("--data", required=True, metavar="PATH", help="the input file (.tsv, .csv, .jsonl or .parquet)")
    attribute.add_argument(
        "--out", required=True, metavar="DIR", help="the output folder of Parquet parts (created when missing)"
    )
    attribute.add_argument(
        "--model",
        metavar="PATH_OR_HUB_ID",
        help="a sequence classifier or causal LM folder or hub id (default: the demo model)",
    )
    attribute.add_argument("--text-column", metavar="NAME", help="column of the texts (default: text, sentence or content)")
    attribute.add_argument("--text-pair-column", metavar="NAME", help="column of the second texts of sentence pairs")
    attribute.add_argument("--label-column", metavar="NAME", help="column of integer labels (default: label, when present)")
    attribute.add_argument(
        "--target-column", metavar="NAME", help="causal LMs: column of each prompt's target text (explained token by token)"
    )
    attribute.add_argument(
        "--generate", type=int, metavar="TOKENS", help="causal LMs: generate this many tokens greedily and explain them"
    )
    attribute.add_argument(
        "--algorithm",
        choices=("exact", "fast"),
        default="exact",
        help="exact: biases decomposed too (default); fast: bias-free, O(N)",
    )
    attribute.add_argument("--batch-size", type=int, default=16, help="rows per DecompX call (default: 16)")
    attribute.add_argument("--max-length", type=int, help="truncate inputs to this many tokens (default: the model's limit)")
    attribute.add_argument(
        "--rows-per-part", type=int, help="rows per Parquet part (default: the folder's, or about 8 parts per process)"
    )
    attribute.add_argument(
        "--no-bucketing", action="store_true", help="batch rows in input order instead of sorted by length within a part"
    )
    attribute.add_argument("--no-progress", action="store_true", help="no progress bar")
    attribute.set_defaults(run=run_attribute)


# ------------------------------------------------------------------------------------------------
# serve (the interactive explorer in the browser; needs the [app] extra, see captum_decompx/app/)


def run_serve(args: argparse.Namespace, out: TextIO) -> int:
    resolve_model_source(args.model)  # a missing folder fails before Gradio and torch load
    try:
        from .app.ui import serve
    except ImportError as error:
        from .app import INSTALL_HINT

        raise CommandError(INSTALL_HINT if (error.name or "").startswith("gradio") else str(error)) from None
    _quiet_transformers()
    print(f"serving the DecompX explorer on http://{args.host}:{args.port} (Ctrl+C stops it)", file=out, flush=True)
    serve(args.model, host=args.host, port=args.port)
    return 0


def add_serve_command(commands) -> None:
    """Register ``captum-decompx serve``."""
    serve = commands.add_parser(
        "serve",
        help="the interactive explorer in the browser (needs the [app] extra)",
        description=(
            "Serve the DecompX explorer (Gradio): per-class contributions, methods side by side, layer-by-layer "
            "token maps, the deletion curve, downloads, and the API endpoint /explain. Binds 127.0.0.1 unless --host "
            "says otherwise; nothing is sent off the machine."
        ),
    )
    serve.add_argument(
        "--model", metavar="DIR", help="a sequence classifier or causal LM folder or hub id (default: the demo model)"
    )
    serve.add_argument("--host", default="127.0.0.1", help="the address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="the port (default: 7860)")
    serve.set_defaults(run=run_serve)


# ------------------------------------------------------------------------------------------------
# The command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captum-decompx",
        description="Explain transformer classifiers with DecompX: signed per-token contributions to every class logit.",
        epilog="Without --model, the demo sentiment classifier shipped in the repository (models/minilm-sst2) is used.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def model_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--model", metavar="PATH_OR_HUB_ID", help="a sequence classifier folder or hub id (default: the demo model)"
        )

    explain = commands.add_parser(
        "explain", help="explain one prediction with DecompX", description="Explain one prediction with DecompX."
    )
    explain.add_argument("text", metavar="TEXT", help="the sentence to explain")
    model_option(explain)
    explain.add_argument("--pair", metavar="TEXT2", help="second sentence of a sentence-pair input")
    explain.add_argument(
        "--target",
        metavar="LABEL",
        help="print only this class (a label name or index; default: every class; the HTML/PNG views show every class)",
    )
    explain.add_argument(
        "--algorithm",
        choices=("exact", "fast"),
        default="exact",
        help="exact: biases decomposed too (default); fast: bias-free, O(N)",
    )
    explain.add_argument("--html", metavar="FILE", help="write a standalone HTML view")
    explain.add_argument("--png", metavar="FILE", help="write the per-class figure as PNG")
    explain.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="ANSI colours (auto: on a terminal)"
    )
    explain.set_defaults(run=run_explain)

    compare = commands.add_parser(
        "compare",
        help="one text explained by several methods, side by side",
        description="One text explained by several attribution methods, each normalized by its max |score|.",
    )
    compare.add_argument("text", metavar="TEXT", help="the sentence to explain")
    model_option(compare)
    compare.add_argument("--pair", metavar="TEXT2", help="second sentence of a sentence-pair input")
    compare.add_argument("--target", metavar="LABEL", help="the class to explain (default: the predicted one)")
    compare.add_argument(
        "--methods",
        default=DEFAULT_COMPARE_METHODS,
        help=f"comma-separated, from: {', '.join(METHODS)} (default: {DEFAULT_COMPARE_METHODS})",
    )
    compare.set_defaults(run=run_compare)

    evaluate = commands.add_parser(
        "evaluate",
        help="the paper's faithfulness protocol (AOPC, accuracy) on a data set",
        description="Mask the most important tokens by each method and measure AOPC and accuracy (DecompX paper, Table 1).",
    )
    evaluate.add_argument(
        "--data",
        default="sst2-dev",
        help="sst2-dev, sst2-train or a TSV file with a header and label<TAB>text rows (default: sst2-dev)",
    )
    evaluate.add_argument("--limit", type=int, help="use the first N examples")
    model_option(evaluate)
    evaluate.add_argument(
        "--methods",
        default=DEFAULT_EVALUATE_METHODS,
        help=f"comma-separated, from: {', '.join(METHODS)} (default: {DEFAULT_EVALUATE_METHODS})",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument(
        "--out", metavar="DIR", help="write per-example metric rows to Parquet parts in DIR: resumable, runs under torchrun"
    )
    evaluate.set_defaults(run=run_evaluate)
    add_attribute_command(commands)
    add_serve_command(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for an error the user can fix)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help, or a usage error argparse has reported
        return exit_request.code if isinstance(exit_request.code, int) else USAGE_ERROR
    try:
        return args.run(args, sys.stdout)
    except (CommandError, DemoError) as error:
        print(f"captum-decompx {args.command}: error: {error}", file=sys.stderr)
        return USAGE_ERROR
    except BrokenPipeError:  # the output was piped into a command that stopped reading (e.g. head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except Exception as error:
        from .decomposition import DecompXMemoryError  # loaded by then: the command has run

        if isinstance(error, DecompXMemoryError):
            print(f"captum-decompx {args.command}: error: {error} On the command line: --algorithm fast.", file=sys.stderr)
            return USAGE_ERROR
        raise


if __name__ == "__main__":
    sys.exit(main())
