"""The faithfulness study over a whole data set: per-example metric rows in Parquet parts, many
processes (``torchrun``), resumable; rank 0 aggregates the rows into the usual table.

:func:`evaluate_dataset` is the function behind ``captum-decompx evaluate --out DIR``. It uses the
evaluation module's per-example API (:func:`~captum_decompx.evaluation.encode_examples`,
:func:`~captum_decompx.evaluation.example_rows`, :func:`~captum_decompx.evaluation.aggregate_rows`)
and the same output-folder machinery as ``captum-decompx attribute`` (:mod:`captum_decompx.runs.parts`):
part ``i`` holds the rows of every method for the examples ``[i * R, (i + 1) * R)``, written
atomically, checked on resume, described by a manifest; the missing parts are dealt out to the
ranks by the length of their texts. Methods that cost many forward passes (Integrated Gradients at
50 steps) then use every process of every node.

Example::

    torchrun --nproc_per_node 2 -m captum_decompx evaluate --data sst2-dev --methods decompx,ig,gxi --out runs/faithfulness
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from .distributed import ProcessGroup
from .jobs import (
    Columns,
    DatasetAttributionError,
    JobInputs,
    PartJob,
    in_process_group,
    report_on_one_rank,
    run_identity,
    run_parts,
)
from .parts import PartFolder
from .tables import TextTable

DEFAULT_METHODS = ("decompx", "gxi", "random")


def evaluate_dataset(
    data: Union[str, Path],
    out_dir: Union[str, Path],
    *,
    model: Union[None, str, Path, nn.Module] = None,
    tokenizer: Any = None,
    methods: Sequence[str] = DEFAULT_METHODS,
    text_column: Optional[str] = None,
    text_pair_column: Optional[str] = None,
    label_column: Optional[str] = None,
    limit: Optional[int] = None,
    batch_size: int = 16,
    max_length: Optional[int] = 128,
    ig_steps: int = 50,
    rows_per_part: Optional[int] = None,
    show_progress: bool = True,
    device: Union[None, str, torch.device] = None,
    log: Optional[Callable[[str], None]] = None,
) -> Any:
    """Run the faithfulness protocol on every row of a data file, per-example rows into Parquet parts.

    Args:
        data: a ``.tsv``, ``.csv``, ``.jsonl`` or ``.parquet`` file with texts and integer labels.
        out_dir: the output folder (see :func:`captum_decompx.runs.attribute.attribute_dataset`).
        model: a classifier folder or hub id, None for the demo model, or a loaded classifier (with
            ``tokenizer``).
        tokenizer: the tokenizer (required with a loaded model).
        methods: keys of :data:`captum_decompx.evaluation.METHOD_REGISTRY` (``decompx``, ``ig``, ...).
        text_column: column of the texts; text_pair_column: of the second texts; label_column: of
            the labels (default ``label``; required).
        limit: use the first ``limit`` rows.
        batch_size: examples per attribution call.
        max_length: truncate longer inputs (the protocol's default, 128).
        ig_steps: Integrated Gradients steps.
        rows_per_part: examples per part (default: the folder's, or about 8 parts per process).
        show_progress: a progress bar on rank 0 over examples x methods.
        device: where to compute (default ``cuda:LOCAL_RANK`` with CUDA, else the CPU).
        log: where rank 0 writes short status lines.

    Returns:
        On rank 0 the :class:`~captum_decompx.evaluation.FaithfulnessResult` of all examples; None
        on the other ranks.

    Raises:
        DatasetAttributionError: bad rows or options, no labels, an output folder of another run.
    """
    if not methods:
        raise DatasetAttributionError("Give at least one attribution method.")
    if limit is not None and limit < 1:
        raise DatasetAttributionError(f"limit must be a positive number of examples, got {limit}.")
    columns = Columns(text_column, text_pair_column, label_column)
    inputs = JobInputs(Path(data).expanduser(), columns, Path(out_dir).expanduser(), model, tokenizer)
    options = _Options(list(dict.fromkeys(methods)), limit, batch_size, max_length, ig_steps, rows_per_part, show_progress)
    return in_process_group(device, log, lambda group, say: _evaluate_dataset(group, say, inputs, options))


@dataclass
class _Options:
    """The options of one :func:`evaluate_dataset` call."""

    methods: list[str]
    limit: Optional[int]
    batch_size: int
    max_length: Optional[int]
    ig_steps: int
    rows_per_part: Optional[int]
    show_progress: bool


def _labelled_and_methods(options: _Options, data: Path) -> Callable[[TextTable, nn.Module, Any], dict[str, Any]]:
    """The evaluate job's own check and set-up after loading: labels are required; the methods are built."""
    from .. import evaluation

    def prepare(table: TextTable, model: nn.Module, tokenizer: Any) -> dict[str, Any]:
        if table.labels is None:
            raise DatasetAttributionError(
                f"{data} has no label column: the protocol scores masked inputs against gold labels. Pass --label-column NAME."
            )
        return evaluation.build_methods(options.methods, model, tokenizer, ig_steps=options.ig_steps)

    return prepare


def _length_order(table: TextTable, start: int, end: int) -> list[int]:
    """Rows ``[start, end)`` by the length of their texts (ties by id), so that a batch pads little."""
    pairs = table.text_pairs
    return sorted(range(start, end), key=lambda i: (len(table.texts[i]) + (len(pairs[i]) if pairs else 0), i))


def _evaluation_part(
    model: nn.Module, tokenizer: Any, table: TextTable, specs: dict[str, Any], metrics: list[Any], options: _Options
) -> Callable[[int, int, Callable[[int], None]], tuple[Any, None]]:
    """The function that evaluates one part: every method's metric rows of examples ``[start, end)``."""
    import pyarrow as pa

    from .. import evaluation

    assert table.labels is not None
    labels = table.labels
    device = next(model.parameters()).device

    def compute(start: int, end: int, progress: Callable[[int], None]) -> tuple[Any, None]:
        rows: list[dict[str, Any]] = []
        order = _length_order(table, start, end)
        for first in range(0, len(order), options.batch_size):
            ids = order[first : first + options.batch_size]
            second = table.text_pairs
            examples: list[Any] = [table.texts[i] for i in ids] if second is None else [(table.texts[i], second[i]) for i in ids]
            batch = evaluation.encode_examples(
                tokenizer, examples, [labels[i] for i in ids], max_length=options.max_length, device=device
            )
            rows += evaluation.example_rows(
                model,
                batch,
                specs,
                metrics,
                mask_token_id=getattr(tokenizer, "mask_token_id", None),
                example_ids=ids,
                on_method_done=lambda _name, size: progress(size),
            )
        return pa.Table.from_pylist(rows), None

    return compute


def _evaluate_dataset(group: ProcessGroup, say: Callable[[str], None], inputs: JobInputs, options: _Options) -> Any:
    from .. import evaluation

    table, model, tokenizer, source, specs = inputs.load(group, _labelled_and_methods(options, inputs.data))
    n_examples = len(table) if options.limit is None else min(options.limit, len(table))
    metrics = evaluation.default_metrics(pairs=table.text_pairs is not None)
    options_identity = {
        "methods": ",".join(options.methods),
        "metrics": repr([(type(metric).__name__, sorted(vars(metric).items())) for metric in metrics]),
        "max_length": options.max_length,
        "ig_steps": options.ig_steps,
        "text_column": table.text_column,
        "text_pair_column": table.text_pair_column,
        "label_column": table.label_column,
    }
    folder = PartFolder(
        inputs.out_dir,
        kind="captum-decompx evaluate",
        identity=run_identity(group, model, tokenizer, table.path, n_examples, options_identity),
        about={"model": source, "input": str(table.path.resolve())},
        columns=list(evaluation.ROW_KEYS) + [column for metric in metrics for column in metric.columns],
        id_column="example",
        rows_per_id=len(specs),
    )
    job = PartJob(
        folder=folder,
        n_rows=n_examples,
        rows_per_part=options.rows_per_part,
        unit="examples",
        cost=lambda start, end: sum(len(text) + 8 for text in table.texts[start:end]),
        compute=_evaluation_part(model, tokenizer, table, specs, metrics, options),
        work=lambda rows: f"evaluating {rows} examples x {len(specs)} methods",
        progress_per_row=len(specs),
        description="faithfulness",
        show_progress=options.show_progress,
    )
    run_parts(group, job, say)
    if not group.is_main:
        return None
    return evaluation.aggregate_rows(folder.read().to_pylist(), metrics, methods=list(specs))


def run_evaluate_command(args: Any, out: Any) -> int:
    """``captum-decompx evaluate --out DIR``: the distributed, resumable study; rank 0 prints the table."""
    from transformers.utils import logging as hf_logging

    from ..demo import dataset_path

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def log(message: str) -> None:
        print(message, file=out, flush=True)

    outcome = report_on_one_rank(
        lambda: evaluate_dataset(
            dataset_path(args.data),
            args.out,
            model=args.model,
            methods=[name.strip().lower() for name in args.methods.split(",") if name.strip()],
            limit=args.limit,
            show_progress=not args.no_progress,
            log=log,
        )
    )
    if isinstance(outcome, int):
        return outcome
    result = outcome
    if result is not None:
        log(f"model accuracy on these examples: {100 * result.accuracy:.2f}%")
        log("")
        log(result.to_markdown(timings=True))
    return 0


__all__ = ["evaluate_dataset", "run_evaluate_command"]
