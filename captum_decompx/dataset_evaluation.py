"""The faithfulness study over a whole data set: per-example metric rows in Parquet parts, many
processes (``torchrun``), resumable; rank 0 aggregates the rows into the usual table.

:func:`evaluate_dataset` is the function behind ``captum-decompx evaluate --out DIR``. It uses the
evaluation module's per-example API (:func:`~captum_decompx.evaluation.encode_examples`,
:func:`~captum_decompx.evaluation.example_rows`, :func:`~captum_decompx.evaluation.aggregate_rows`)
and the same output-folder machinery as ``captum-decompx attribute`` (:mod:`captum_decompx.parts`):
part ``i`` holds the rows of every method for the examples ``[i * R, (i + 1) * R)``, written
atomically, checked on resume, described by a manifest; the missing parts are dealt out to the
ranks by the length of their texts. Methods that cost many forward passes (Integrated Gradients at
50 steps) then use every process of every node.

Example::

    torchrun --nproc_per_node 2 -m captum_decompx evaluate --data sst2-dev --methods decompx,ig,gxi --out runs/faithfulness
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn

from .dataset_attribution import (
    DatasetAttributionError,
    _first_error,
    _load,
    default_rows_per_part,
    file_fingerprint,
    model_fingerprint,
    tokenizer_fingerprint,
)
from .datasets import DataFileError, TextTable, read_text_table
from .distributed import JobProgress, ProcessGroup, balance, join_process_group
from .parts import OutputFolderError, PartFolder, PartLayout

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
        out_dir: the output folder (see :func:`captum_decompx.dataset_attribution.attribute_dataset`).
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
    group = join_process_group(device)
    try:
        result = _evaluate_dataset(
            group,
            log,
            Path(data).expanduser(),
            Path(out_dir).expanduser(),
            model,
            tokenizer,
            list(dict.fromkeys(methods)),
            text_column,
            text_pair_column,
            label_column,
            limit,
            batch_size,
            max_length,
            ig_steps,
            rows_per_part,
            show_progress,
        )
        # Every rank leaves together: none tears the process group down while another still
        # uses it (rank 0 reads and aggregates the parts after the others are done).
        group.barrier()
        return result
    finally:
        group.close()


def _evaluate_dataset(
    group: ProcessGroup,
    log: Optional[Callable[[str], None]],
    data: Path,
    out_dir: Path,
    model_source: Any,
    tokenizer: Any,
    methods: list[str],
    text_column: Optional[str],
    text_pair_column: Optional[str],
    label_column: Optional[str],
    limit: Optional[int],
    batch_size: int,
    max_length: Optional[int],
    ig_steps: int,
    rows_per_part: Optional[int],
    show_progress: bool,
) -> Any:
    from . import evaluation

    def say(message: str) -> None:
        if log is not None and group.is_main:
            log(message)

    error: Optional[str] = None
    table: Optional[TextTable] = None
    model: Optional[nn.Module] = None
    specs: dict[str, Any] = {}
    try:
        table = read_text_table(data, text_column, text_pair_column, label_column)
        if table.labels is None:
            raise DatasetAttributionError(
                f"{data} has no label column: the protocol scores masked inputs against gold labels. Pass --label-column NAME."
            )
        model, tokenizer, source = _load(model_source, tokenizer, group.device)
        specs = evaluation.build_methods(methods, model, tokenizer, ig_steps=ig_steps)
    except (DataFileError, DatasetAttributionError, ValueError) as problem:
        error = str(problem)
    _first_error(group, error)
    assert table is not None and model is not None and table.labels is not None
    n_examples = len(table) if limit is None else min(limit, len(table))
    pairs = table.text_pairs is not None
    metrics = evaluation.default_metrics(pairs=pairs)
    columns = list(evaluation.ROW_KEYS) + [column for metric in metrics for column in metric.columns]
    folder = PartFolder(
        out_dir,
        kind="captum-decompx evaluate",
        identity={
            "model": {
                "fingerprint": model_fingerprint(model) if group.is_main else None,
                "type": getattr(model.config, "model_type", None),
            },
            "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer) if group.is_main else None},
            "input": {"sha256": file_fingerprint(table.path) if group.is_main else None, "rows": n_examples},
            "options": {
                "methods": ",".join(methods),
                "metrics": repr([(type(metric).__name__, sorted(vars(metric).items())) for metric in metrics]),
                "max_length": max_length,
                "ig_steps": ig_steps,
                "text_column": table.text_column,
                "text_pair_column": table.text_pair_column,
                "label_column": table.label_column,
            },
        },
        about={"model": source, "input": str(table.path.resolve())},
        columns=columns,
        id_column="example",
        rows_per_id=len(specs),
    )
    layout: Optional[PartLayout] = None
    present: list[int] = []
    if group.is_main:
        try:
            layout = folder.prepare(n_examples, rows_per_part, default_rows_per_part(n_examples, group.world_size))
            present = folder.present_parts(layout)
        except OutputFolderError as problem:
            error = str(problem)
    _first_error(group, error)
    layout, present = group.broadcast((layout, present))
    assert layout is not None
    kept_local, damaged_local = folder.check_parts(layout, present[group.rank :: group.world_size])
    checked = group.gather((kept_local, damaged_local))
    kept = {index for local, _ in checked for index in local}
    damaged = {index: reason for _, local in checked for index, reason in local.items()}
    missing = [index for index in range(layout.n_parts) if index not in kept]
    costs = []
    for index in missing:
        start, end = layout.bounds(index)
        costs.append(sum(len(text) + 8 for text in table.texts[start:end]))
    mine = [missing[i] for i in balance(costs, group.world_size)[group.rank]]
    done = sum(layout.bounds(i)[1] - layout.bounds(i)[0] for i in kept)
    say(
        f"output: {out_dir}: {layout.n_parts} part{'s' if layout.n_parts != 1 else ''} of up to {layout.rows_per_part} examples; {len(kept)} complete"
        + (f", {len(damaged)} damaged (computed again)" if damaged else "")
        + f"; evaluating {n_examples - done} examples x {len(specs)} methods on {group.world_size} process{'es' if group.world_size > 1 else ''}"
    )
    device = next(model.parameters()).device
    with JobProgress(
        group, total=n_examples * len(specs), done=done * len(specs), show=show_progress, description="faithfulness"
    ) as progress:
        for index in mine:
            start, end = layout.bounds(index)
            rows: list[dict[str, Any]] = []
            # Examples of similar lengths share a batch (less padding); the rows carry their ids.
            order = sorted(
                range(start, end), key=lambda i: (len(table.texts[i]) + (len(table.text_pairs[i]) if table.text_pairs else 0), i)
            )
            for first in range(0, len(order), batch_size):
                ids = order[first : first + batch_size]
                second = table.text_pairs if pairs else None
                examples: list[Any] = (
                    [table.texts[i] for i in ids] if second is None else [(table.texts[i], second[i]) for i in ids]
                )
                batch = evaluation.encode_examples(
                    tokenizer, examples, [table.labels[i] for i in ids], max_length=max_length, device=device
                )
                rows += evaluation.example_rows(
                    model,
                    batch,
                    specs,
                    metrics,
                    mask_token_id=getattr(tokenizer, "mask_token_id", None),
                    example_ids=ids,
                    on_method_done=lambda _name, size: progress.add(size),
                )
            import pyarrow as pa

            folder.write_part(layout, index, pa.Table.from_pylist(rows))
        group.barrier()
    if not group.is_main:
        return None
    missing_after = folder.missing_parts(layout)
    if missing_after:
        raise RuntimeError(f"Parts {missing_after[:10]} are missing after the run; run the same command again to compute them.")
    return evaluation.aggregate_rows(folder.read().to_pylist(), metrics, methods=list(specs))


def run_evaluate_command(args: Any, out: Any) -> int:
    """``captum-decompx evaluate --out DIR``: the distributed, resumable study; rank 0 prints the table."""
    from transformers.utils import logging as hf_logging

    from .demo import dataset_path

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    def log(message: str) -> None:
        print(message, file=out, flush=True)

    try:
        result = evaluate_dataset(
            dataset_path(args.data),
            args.out,
            model=args.model,
            methods=[name.strip().lower() for name in args.methods.split(",") if name.strip()],
            limit=args.limit,
            show_progress=not args.no_progress,
            log=log,
        )
    except DatasetAttributionError as error:
        if int(os.environ.get("RANK", "0")) != error.reported_by:
            return 2
        raise
    if result is not None:
        log(f"model accuracy on these examples: {100 * result.accuracy:.2f}%")
        log("")
        log(result.to_markdown(timings=True))
    return 0


__all__ = ["evaluate_dataset", "run_evaluate_command"]
