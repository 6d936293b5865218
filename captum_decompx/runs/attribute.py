"""DecompX over a whole data set: Parquet parts, many processes (``torchrun``), resumable.

:func:`attribute_dataset` is the Python function behind ``captum-decompx attribute``. It reads a
``.tsv``, ``.csv``, ``.jsonl`` or ``.parquet`` file, decomposes every class logit of every row with
DecompX, and writes the rows to Parquet parts under an output folder. The parts form one table
(``pyarrow.parquet.read_table(DIR)``), one row per input row:

=================  ======================  =================================================
column             type                    content
=================  ======================  =================================================
``id``             int64                   row index in the input (0-based)
``text``           string                  the text
``text_pair``      string                  the second text (only with a text pair column)
``tokens``         list<string>            the tokens, special tokens included
``input_ids``      list<int32>             the token ids
``logits``         list<float32>           the logits
``prediction``     int64                   the predicted class (argmax of the logits)
``attributions``   list<list<float32>>     tokens x classes contributions to each logit
``bias``           list<float32>           the logit share assigned to no token (0 when exact)
``label``          int64                   the label (only with a label column)
=================  ======================  =================================================

For every row ``sum(attributions, over tokens) + bias == logits`` (checked before a part is
written). Under ``torchrun`` every process runs the same function; each takes a disjoint,
deterministic share of the parts (see :mod:`captum_decompx.runs.distributed`) and the union equals a
single-process run. A rerun of the same call after a crash computes only the missing parts (see
:mod:`captum_decompx.runs.parts`).

Example::

    torchrun --nproc_per_node 2 -m captum_decompx attribute --data data/sst2/dev.tsv --out sst2-dev-decompx
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..adapters import position_offset
from ..adapters.wrappers import unwrap_parallel
from ..attribution import DecompX
from ..llm import LLMDecompX
from .distributed import ProcessGroup
from .generation import attribute_causal_part, causal_output_schema, is_causal_lm, load_causal_lm
from .jobs import MAX_ROWS_PER_PART as MAX_ROWS_PER_PART
from .jobs import MIN_ROWS_PER_PART as MIN_ROWS_PER_PART
from .jobs import PARTS_PER_PROCESS as PARTS_PER_PROCESS
from .jobs import Columns, JobInputs, PartJob, in_process_group, report_on_one_rank, run_identity, run_parts
from .jobs import DatasetAttributionError as DatasetAttributionError
from .jobs import default_rows_per_part as default_rows_per_part
from .jobs import file_fingerprint as file_fingerprint
from .jobs import model_fingerprint as model_fingerprint
from .jobs import tokenizer_fingerprint as tokenizer_fingerprint
from .parts import PartFolder
from .tables import TextTable

ALGORITHMS = ("exact", "fast")
DEFAULT_BATCH_SIZE = 16
#: Largest |sum of contributions + bias - logit| allowed, relative to max(1, max |logit|) of the row.
COMPLETENESS_TOLERANCE = 1e-4


@dataclass
class DatasetAttributionResult:
    """What :func:`attribute_dataset` did.

    Attributes:
        out_dir: the output folder.
        rows: rows of the whole table.
        parts: parts of the whole table.
        rows_per_part: rows of every part but possibly the last.
        computed_rows: rows computed by this run (all processes).
        reused_parts: parts found complete and kept.
        redone_parts: damaged parts found, deleted and computed again, with the reason.
        truncated_rows: rows longer than ``max_length`` tokens, explained truncated (all processes).
        world_size: processes of the job.
        seconds: wall time of this run (reading, loading and checking included).
        compute_seconds: wall time of the computing phase, until the slowest rank finished.
        padding_positions: padding positions in the batches computed by this run (all processes);
            length bucketing keeps them few.
    """

    out_dir: Path
    rows: int
    parts: int
    rows_per_part: int
    computed_rows: int
    reused_parts: int
    redone_parts: dict[int, str] = field(default_factory=dict)
    truncated_rows: int = 0
    world_size: int = 1
    seconds: float = 0.0
    compute_seconds: float = 0.0
    padding_positions: int = 0

    @property
    def rows_per_second(self) -> float:
        """Rows computed per second of the computing phase (from the first part to the last rank's end)."""
        return self.computed_rows / self.compute_seconds if self.compute_seconds > 0 else float("nan")

    def read_table(self) -> Any:
        """The whole output as one ``pyarrow.Table``, sorted by id."""
        import pyarrow.parquet as pq

        return pq.read_table(self.out_dir).sort_by("id")


# --------------------------------------------------------------------------------------------
# The output schema


def output_schema(with_pairs: bool, with_labels: bool) -> Any:
    """The ``pyarrow.Schema`` of the parts (see the module docstring)."""
    import pyarrow as pa

    fields = [pa.field("id", pa.int64(), nullable=False), pa.field("text", pa.string())]
    if with_pairs:
        fields.append(pa.field("text_pair", pa.string()))
    fields += [
        pa.field("tokens", pa.list_(pa.string())),
        pa.field("input_ids", pa.list_(pa.int32())),
        pa.field("logits", pa.list_(pa.float32())),
        pa.field("prediction", pa.int64()),
        pa.field("attributions", pa.list_(pa.list_(pa.float32()))),
        pa.field("bias", pa.list_(pa.float32())),
    ]
    if with_labels:
        fields.append(pa.field("label", pa.int64()))
    return pa.schema(fields)


# --------------------------------------------------------------------------------------------
# Model


def model_max_length(model: nn.Module, tokenizer: Any) -> int:
    """The longest input the model takes: the tokenizer's limit, capped by the position embeddings."""
    config = model.config
    limits = []
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int):
        limits.append(positions - position_offset(getattr(config, "model_type", None)))
    return min(limits) if limits else 512


def _forward(model: nn.Module) -> Callable[..., Tensor]:
    def forward(input_ids: Tensor, attention_mask: Tensor, token_type_ids: Optional[Tensor] = None) -> Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    return forward


# --------------------------------------------------------------------------------------------
# One part


@dataclass
class _Texts:
    texts: list[str]
    pairs: Optional[list[str]]

    def batch(self, indices: Sequence[int]) -> tuple[list[str], Optional[list[str]]]:
        return [self.texts[i] for i in indices], None if self.pairs is None else [self.pairs[i] for i in indices]


def _decompose_batch(explainer: DecompX, encoded: Any, device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """DecompX on one tokenized batch.

    Returns:
        On the CPU: ``input_ids`` and the real-token mask ``(batch, seq)``, ``logits`` ``(batch,
        classes)``, ``attributions`` ``(batch, seq, classes)`` and ``bias`` ``(batch, classes)``
        (zeros when the biases are decomposed), in float32.
    """
    input_ids = encoded["input_ids"].to(device)
    attention_mask = encoded["attention_mask"].to(device)
    extra: tuple[Tensor, ...] = (attention_mask,)
    if "token_type_ids" in encoded:
        extra = (attention_mask, encoded["token_type_ids"].to(device))
    output = explainer.decompose(input_ids, extra)
    logits = output.logits.detach().float().cpu()
    bias = output.bias.detach().float().cpu() if output.bias is not None else torch.zeros_like(logits)
    return input_ids.cpu(), attention_mask.bool().cpu(), logits, output.attributions.detach().float().cpu(), bias


def _row(tokenizer: Any, row_id: int, token_ids: list[int], logits: Tensor, attributions: Tensor, bias: Tensor) -> dict[str, Any]:
    """One output row's computed columns, after checking that its contributions plus bias give its logits.

    Args:
        logits: ``(classes,)``; attributions: ``(tokens, classes)``, real tokens only; bias: ``(classes,)``.
    """
    error = float((attributions.sum(0) + bias - logits).abs().max())
    scale = max(1.0, float(logits.abs().max()))
    if not error <= COMPLETENESS_TOLERANCE * scale:
        raise RuntimeError(
            f"Row {row_id}: the contributions plus the bias differ from the logits by {error:.3g}; "
            "nothing was written for its part. This is a bug in DecompX: please report it with the row."
        )
    return {
        "tokens": tokenizer.convert_ids_to_tokens(token_ids),
        "input_ids": token_ids,
        "logits": logits.tolist(),
        "prediction": int(logits.argmax()),
        "attributions": attributions.tolist(),
        "bias": bias.tolist(),
    }


def attribute_part(
    explainer: DecompX,
    tokenizer: Any,
    table: TextTable,
    start: int,
    end: int,
    *,
    schema: Any,
    batch_size: int,
    max_length: int,
    bucket_by_length: bool,
    device: torch.device,
    on_batch: Optional[Callable[[int], None]] = None,
) -> tuple[Any, int, int]:
    """Decompose rows ``[start, end)`` of ``table``.

    Returns:
        The part as a ``pyarrow.Table`` sorted by id, the number of rows that were truncated, and
        the number of padding positions computed.

    Raises:
        RuntimeError: a row's contributions plus bias do not give its logits (a DecompX bug: nothing
            is written).
    """
    import pyarrow as pa

    texts = _Texts(table.texts[start:end], None if table.text_pairs is None else table.text_pairs[start:end])
    count = end - start
    full = tokenizer(texts.texts, texts.pairs, truncation=False)["input_ids"]
    lengths = [min(len(ids), max_length) for ids in full]
    truncated = sum(len(ids) > max_length for ids in full)
    order = sorted(range(count), key=lambda i: (lengths[i], i)) if bucket_by_length else list(range(count))
    rows: dict[int, dict[str, Any]] = {}
    padding = 0
    for first in range(0, count, batch_size):
        indices = order[first : first + batch_size]
        batch_texts, batch_pairs = texts.batch(indices)
        encoded = tokenizer(batch_texts, batch_pairs, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        input_ids, real, logits, attributions, bias = _decompose_batch(explainer, encoded, device)
        padding += int((~real).sum())
        for position, index in enumerate(indices):
            token_ids = input_ids[position][real[position]].tolist()
            row_attributions = attributions[position][real[position]]
            rows[index] = _row(tokenizer, start + index, token_ids, logits[position], row_attributions, bias[position])
        if on_batch is not None:
            on_batch(len(indices))
    columns: dict[str, list[Any]] = {"id": list(range(start, end)), "text": texts.texts}
    if texts.pairs is not None:
        columns["text_pair"] = texts.pairs
    for name in ("tokens", "input_ids", "logits", "prediction", "attributions", "bias"):
        columns[name] = [rows[i][name] for i in range(count)]
    if table.labels is not None:
        columns["label"] = table.labels[start:end]
    return pa.table(columns, schema=schema), truncated, padding


# --------------------------------------------------------------------------------------------
# The whole data set


def attribute_dataset(
    data: Union[str, Path],
    out_dir: Union[str, Path],
    *,
    model: Union[None, str, Path, nn.Module] = None,
    tokenizer: Any = None,
    text_column: Optional[str] = None,
    text_pair_column: Optional[str] = None,
    label_column: Optional[str] = None,
    algorithm: str = "exact",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    rows_per_part: Optional[int] = None,
    bucket_by_length: bool = True,
    show_progress: bool = True,
    device: Union[None, str, torch.device] = None,
    log: Optional[Callable[[str], None]] = None,
    target_column: Optional[str] = None,
    generate: Optional[int] = None,
) -> DatasetAttributionResult:
    """Decompose every row of a data file with DecompX into Parquet parts under ``out_dir``.

    Runs as one process, or as every process of a ``torchrun`` job (each takes a disjoint share of
    the parts). Calling it again with the same arguments after a crash computes only the parts that
    are missing or damaged.

    Args:
        data: a ``.tsv``, ``.csv``, ``.jsonl`` or ``.parquet`` file (see
            :func:`captum_decompx.runs.tables.read_text_table` for the columns).
        out_dir: the output folder (created when missing; refused when it holds another run's parts).
        model: a classifier folder or hub id, None for the demo model, or a loaded
            ``*ForSequenceClassification`` (also wrapped in ``DistributedDataParallel`` or
            ``nn.DataParallel``: its ``.module`` is explained), in eval mode, on its device.
        tokenizer: the tokenizer (required with a loaded model; default: the model folder's).
        text_column: column of the texts (default ``text``, ``sentence`` or ``content``).
        text_pair_column: column of the second texts of sentence pairs.
        label_column: column of integer labels (default ``label`` when present).
        algorithm: ``"exact"`` (biases decomposed; ``bias`` is 0) or ``"fast"`` (bias-free O(N) path;
            ``bias`` holds the biases' share).
        batch_size: rows per DecompX call.
        max_length: truncate longer inputs to this many tokens (default: the model's limit).
        rows_per_part: rows per Parquet part (default: the folder's, or about 8 parts per process).
        bucket_by_length: sort the rows of a part by length before batching (less padding).
        show_progress: a progress bar on rank 0 for the whole job.
        device: where to compute (default ``cuda:LOCAL_RANK`` with CUDA, else the CPU); a loaded
            model stays on its own device.
        log: where rank 0 writes short status lines (default: nowhere).
        target_column, generate: for a causal LM (``*ForCausalLM``, ``*LMHeadModel``, a folder or a
            loaded model) exactly one: the column of each prompt's target text, or the number of
            tokens to generate greedily and explain. Each row is then explained by
            :class:`~captum_decompx.LLMDecompX` in one pass; the parts' columns are those of
            :mod:`captum_decompx.runs.generation`.

    Returns:
        A :class:`DatasetAttributionResult`; ``.read_table()`` gives the whole table.

    Raises:
        DatasetAttributionError: a bad row (file and row named), a missing column, an output folder
            written by another run or holding foreign files, bad options. Raised on every rank
            before any part is written.
    """
    began = time.perf_counter()
    _check_options(algorithm, batch_size, rows_per_part, max_length)
    if generate is not None and (not isinstance(generate, int) or isinstance(generate, bool) or generate < 1):
        raise DatasetAttributionError(f"generate must be a positive number of tokens, got {generate!r}.")
    causal_lm = _causal_lm(model, tokenizer)
    _check_causal_options(causal_lm is not None, target_column, generate, text_pair_column)
    if causal_lm is not None:  # a causal LM's target column is read where a classifier's second texts are
        text_pair_column = target_column
    loaded_here = causal_lm is not None and not isinstance(model, nn.Module)
    if causal_lm is not None:
        model, tokenizer = causal_lm
    columns = Columns(text_column, text_pair_column, label_column)
    inputs = JobInputs(Path(data).expanduser(), columns, Path(out_dir).expanduser(), model, tokenizer)
    options = _Options(
        algorithm, batch_size, max_length, rows_per_part, bucket_by_length, show_progress, target_column, generate, loaded_here
    )
    return in_process_group(device, log, lambda group, say: _attribute_dataset(group, say, inputs, options, began))


@dataclass
class _Options:
    """The options of one :func:`attribute_dataset` call, after checking."""

    algorithm: str
    batch_size: int
    max_length: Optional[int]
    rows_per_part: Optional[int]
    bucket_by_length: bool
    show_progress: bool
    target_column: Optional[str] = None  # causal LMs: the targets' column, or
    generate: Optional[int] = None  # the number of tokens to generate
    loaded_here: bool = False  # the model was loaded from a folder here (moved to each rank's device)


def _causal_lm(model: Union[None, str, Path, nn.Module], tokenizer: Any) -> Optional[tuple[nn.Module, Any]]:
    """The causal LM and its tokenizer when ``model`` is one (loaded here from a folder or hub id
    whose config names a causal LM architecture), else None."""
    if isinstance(model, nn.Module):
        return (model, tokenizer) if is_causal_lm(unwrap_parallel(model)) else None
    from ..demo import DemoError

    try:
        loaded = load_causal_lm(model)
    except DemoError as error:
        raise DatasetAttributionError(str(error)) from error
    if loaded is None:
        return None
    return loaded[0], tokenizer if tokenizer is not None else loaded[1]


def _check_causal_options(
    causal: bool, target_column: Optional[str], generate: Optional[int], pair_column: Optional[str]
) -> None:
    """A causal LM needs exactly one of a target column and a generation length; a classifier neither."""
    if causal and (target_column is None) == (generate is None):
        raise DatasetAttributionError(
            "A causal LM explains a target after each prompt: give the column of the targets "
            "(--target-column / target_column=) or the number of tokens to generate (--generate / generate=), not both."
        )
    if causal and pair_column is not None:
        raise DatasetAttributionError(
            "A causal LM reads one prompt per row: drop --text-pair-column (the target column is --target-column)."
        )
    if not causal and (target_column is not None or generate is not None):
        raise DatasetAttributionError(
            "--target-column and --generate are for causal LMs (*ForCausalLM, *LMHeadModel); this model is a "
            "classifier, whose every class logit is explained."
        )


def _check_options(algorithm: str, batch_size: Any, rows_per_part: Any, max_length: Any) -> None:
    if algorithm not in ALGORITHMS:
        raise DatasetAttributionError(f"algorithm={algorithm!r} is not valid; choose 'exact' or 'fast'.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetAttributionError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if rows_per_part is not None and (not isinstance(rows_per_part, int) or rows_per_part < 1):
        raise DatasetAttributionError(f"rows_per_part must be a positive integer, got {rows_per_part!r}.")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise DatasetAttributionError(f"max_length must be an integer of at least 2, got {max_length!r}.")


def _text_cost(table: TextTable, exponent: int, start: int, end: int) -> float:
    """The relative cost of rows ``[start, end)``: (characters + 8) ** exponent summed over the rows."""
    pairs = table.text_pairs[start:end] if table.text_pairs is not None else [""] * (end - start)
    return sum((len(text) + len(pair) + 8) ** exponent for text, pair in zip(table.texts[start:end], pairs))


def _output_folder(
    group: ProcessGroup,
    out_dir: Path,
    model: nn.Module,
    tokenizer: Any,
    source: str,
    table: TextTable,
    schema: Any,
    *,
    algorithm: str,
    max_length: int,
    extra: Optional[dict[str, Any]] = None,
) -> PartFolder:
    """The output folder of an attribute run: what must match to resume it, and the parts' schema."""
    options = {
        "algorithm": algorithm,
        "max_length": max_length,
        "text_column": table.text_column,
        "text_pair_column": table.text_pair_column,
        "label_column": table.label_column,
        **(extra or {}),
    }
    identity = run_identity(group, model, tokenizer, table.path, len(table), options)
    return PartFolder(
        out_dir, "captum-decompx attribute", identity, {"model": source, "input": str(table.path.resolve())}, schema
    )


def _attribute_dataset(
    group: ProcessGroup, say: Callable[[str], None], inputs: JobInputs, options: _Options, began: float
) -> DatasetAttributionResult:
    table, model, tokenizer, source, _ = inputs.load(group, lambda *loaded: None)
    out_dir = inputs.out_dir
    algorithm = options.algorithm
    limit = options.max_length if options.max_length is not None else model_max_length(model, tokenizer)
    device = next(model.parameters()).device
    if is_causal_lm(model):  # one LLMDecompX pass per row
        if options.loaded_here:  # loaded from a folder: onto this rank's device
            model.to(group.device)
            device = group.device
        schema = causal_output_schema(table.labels is not None)
        extra = {"target_column": options.target_column, "generate": options.generate}
        folder = _output_folder(
            group, out_dir, model, tokenizer, source, table, schema, algorithm=algorithm, max_length=limit, extra=extra
        )
        llm = LLMDecompX(model, tokenizer, include_biases=algorithm == "exact", algorithm=algorithm)
        part_of: Callable[..., tuple[Any, int, int]] = partial(
            attribute_causal_part,
            llm,
            tokenizer,
            table,
            schema=schema,
            max_length=limit,
            generate=options.generate,
            device=device,
        )
    else:
        schema = output_schema(table.text_pairs is not None, table.labels is not None)
        folder = _output_folder(group, out_dir, model, tokenizer, source, table, schema, algorithm=algorithm, max_length=limit)
        explainer = DecompX(_forward(model), model=model, include_biases=algorithm == "exact", algorithm=algorithm)
        part_of = partial(
            attribute_part,
            explainer,
            tokenizer,
            table,
            schema=schema,
            batch_size=options.batch_size,
            max_length=limit,
            bucket_by_length=options.bucket_by_length,
            device=device,
        )

    def compute(start: int, end: int, progress: Callable[[int], None]) -> tuple[Any, tuple[int, int]]:
        part, truncated, padding = part_of(start, end, on_batch=progress)
        return part, (truncated, padding)

    return _run_attribute_job(group, say, table, folder, compute, options, began)


def _run_attribute_job(
    group: ProcessGroup,
    say: Callable[[str], None],
    table: TextTable,
    folder: PartFolder,
    compute: Callable[[int, int, Callable[[int], None]], tuple[Any, tuple[int, int]]],
    options: _Options,
    began: float,
) -> DatasetAttributionResult:
    """Compute the missing parts with ``compute`` over the ranks and report the run."""
    algorithm, out_dir = options.algorithm, folder.path
    job = PartJob(
        folder=folder,
        n_rows=len(table),
        rows_per_part=options.rows_per_part,
        unit="rows",
        # exact DecompX costs O(N^2) per example, fast O(N)
        cost=partial(_text_cost, table, 2 if algorithm == "exact" else 1),
        compute=compute,
        work=lambda rows: f"computing {rows} rows",
        description=f"DecompX ({algorithm})",
        show_progress=options.show_progress,
    )
    run = run_parts(group, job, say)
    return DatasetAttributionResult(
        out_dir=out_dir,
        rows=len(table),
        parts=run.layout.n_parts,
        rows_per_part=run.layout.rows_per_part,
        computed_rows=run.computed,
        reused_parts=len(run.kept),
        redone_parts=run.damaged,
        truncated_rows=sum(truncated for truncated, _ in run.tallies),
        world_size=group.world_size,
        seconds=time.perf_counter() - began,
        compute_seconds=run.compute_seconds,
        padding_positions=sum(padding for _, padding in run.tallies),
    )


__all__ = [
    "DatasetAttributionError",
    "DatasetAttributionResult",
    "attribute_dataset",
    "attribute_part",
    "output_schema",
    "unwrap_parallel",
]


# --------------------------------------------------------------------------------------------
# The command line (``captum-decompx attribute``)


def run_attribute_command(args: Any, out: Any) -> int:
    """Run ``captum-decompx attribute`` with parsed ``args``; status lines go to ``out`` on rank 0.

    Returns:
        The exit status: 0, or 2 on ranks other than the one that reports an error to the user.

    Raises:
        DatasetAttributionError: on the rank that reports it (rank 0 for errors every rank found).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    def log(message: str) -> None:
        print(message, file=out, flush=True)

    passed = (
        "model",
        "text_column",
        "text_pair_column",
        "label_column",
        "algorithm",
        "batch_size",
        "max_length",
        "rows_per_part",
    )
    options = {name: getattr(args, name) for name in passed}
    options.update(target_column=getattr(args, "target_column", None), generate=getattr(args, "generate", None))
    outcome = report_on_one_rank(
        lambda: attribute_dataset(
            args.data, args.out, bucket_by_length=not args.no_bucketing, show_progress=not args.no_progress, log=log, **options
        )
    )
    if isinstance(outcome, int):
        return outcome  # the reporting rank prints the message once
    result = outcome
    if int(os.environ.get("RANK", "0")) == 0:
        log(
            f"wrote {result.rows} rows in {result.parts} parts to {result.out_dir} "
            f"({result.computed_rows} computed in {result.compute_seconds:.1f} s, {result.rows_per_second:.1f} rows/s on "
            f"{result.world_size} process{'es' if result.world_size > 1 else ''}; {result.seconds:.1f} s in all)"
        )
        if result.computed_rows:
            log(
                f"padding: {result.padding_positions} padding positions computed ({'bucketed by length' if not args.no_bucketing else 'input order'})"
            )
        if result.truncated_rows:
            log(
                f"note: {result.truncated_rows} rows were longer than the maximum length and were explained truncated (see their tokens)."
            )
        log(f"read it with: pyarrow.parquet.read_table({str(result.out_dir)!r})")
    return 0
