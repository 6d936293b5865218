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
deterministic share of the parts (see :mod:`captum_decompx.distributed`) and the union equals a
single-process run. A rerun of the same call after a crash computes only the missing parts (see
:mod:`captum_decompx.parts`).

Example::

    torchrun --nproc_per_node 2 -m captum_decompx attribute --data data/sst2/dev.tsv --out sst2-dev-decompx
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .attribution import DecompX
from .datasets import DataFileError, TextTable, read_text_table
from .distributed import JobProgress, ProcessGroup, balance, join_process_group, unwrap_parallel
from .parts import OutputFolderError, PartFolder, PartLayout

METHODS = ("exact", "fast")
DEFAULT_BATCH_SIZE = 16
#: A new output folder gets about this many parts per process (at least MIN, at most MAX rows each),
#: so that the parts balance over the processes and a resumed run redoes little.
PARTS_PER_PROCESS = 8
MIN_ROWS_PER_PART = 16
MAX_ROWS_PER_PART = 1024
#: Largest |sum of contributions + bias - logit| allowed, relative to max(1, max |logit|) of the row.
COMPLETENESS_TOLERANCE = 1e-4
_ROBERTA_FAMILY = ("roberta", "xlm-roberta", "camembert")


class DatasetAttributionError(ValueError):
    """A problem with the input, the output folder or the options; the message says what to do.

    Attributes:
        reported_by: the rank that found the problem (every rank raises the same error).
    """

    def __init__(self, message: str, reported_by: int = 0) -> None:
        super().__init__(message)
        self.reported_by = reported_by


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
# Model, fingerprints


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the model class and every parameter and buffer (names, dtypes, shapes, values)."""
    digest = hashlib.sha256(type(model).__name__.encode())
    for name, tensor in sorted(model.state_dict().items()):
        value = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{value.dtype}:{tuple(value.shape)}".encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 of the tokenizer class, vocabulary, special tokens and padding/truncation sides."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    for token, index in sorted(tokenizer.get_vocab().items()):
        digest.update(f"{token}\t{index}\n".encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    digest.update(f"{getattr(tokenizer, 'padding_side', '')}/{getattr(tokenizer, 'truncation_side', '')}".encode())
    return digest.hexdigest()


def file_fingerprint(path: Path) -> str:
    """SHA-256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_max_length(model: nn.Module, tokenizer: Any) -> int:
    """The longest input the model takes: the tokenizer's limit, capped by the position embeddings."""
    config = model.config
    limits = []
    tokenizer_limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(tokenizer_limit, int) and tokenizer_limit < 1_000_000:
        limits.append(tokenizer_limit)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int):
        # RoBERTa-style models number positions from padding_idx + 1 = 2.
        limits.append(positions - 2 if getattr(config, "model_type", None) in _ROBERTA_FAMILY else positions)
    return min(limits) if limits else 512


def _forward(model: nn.Module) -> Callable[..., Tensor]:
    def forward(input_ids: Tensor, attention_mask: Tensor, token_type_ids: Optional[Tensor] = None) -> Tensor:
        extra = {} if token_type_ids is None else {"token_type_ids": token_type_ids}
        return model(input_ids=input_ids, attention_mask=attention_mask, **extra).logits

    return forward


def _load(model: Union[None, str, Path, nn.Module], tokenizer: Any, device: torch.device) -> tuple[nn.Module, Any, str]:
    """The model (float32 when loaded here, on ``device``), its tokenizer and a description of the source."""
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise DatasetAttributionError(
                "Pass the model's tokenizer too: attribute_dataset(data, out_dir, model=model, tokenizer=tokenizer)."
            )
        unwrapped = unwrap_parallel(model)
        return unwrapped, tokenizer, type(unwrapped).__name__
    from transformers.utils import logging as hf_logging

    from .demo import DemoError, load_classifier

    hf_logging.set_verbosity_error()
    try:
        classifier = load_classifier(model)
    except DemoError as error:
        raise DatasetAttributionError(str(error)) from error
    return classifier.model.to(device), tokenizer if tokenizer is not None else classifier.tokenizer, classifier.source


# --------------------------------------------------------------------------------------------
# One part


@dataclass
class _Texts:
    texts: list[str]
    pairs: Optional[list[str]]

    def batch(self, indices: Sequence[int]) -> tuple[list[str], Optional[list[str]]]:
        return [self.texts[i] for i in indices], None if self.pairs is None else [self.pairs[i] for i in indices]


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
        input_ids = encoded["input_ids"].to(device)
        attention_mask = encoded["attention_mask"].to(device)
        extra: tuple[Tensor, ...] = (attention_mask,)
        if "token_type_ids" in encoded:
            extra = (attention_mask, encoded["token_type_ids"].to(device))
        output = explainer.decompose(input_ids, extra)
        padding += int((attention_mask == 0).sum())
        ids_cpu = input_ids.cpu()
        real_cpu = attention_mask.bool().cpu()
        logits = output.logits.detach().float().cpu()
        attributions = output.attributions.detach().float().cpu()
        bias = output.bias.detach().float().cpu() if output.bias is not None else torch.zeros_like(logits)
        for position, index in enumerate(indices):
            real = real_cpu[position]
            row_attributions = attributions[position][real]
            error = float((row_attributions.sum(0) + bias[position] - logits[position]).abs().max())
            scale = max(1.0, float(logits[position].abs().max()))
            if not error <= COMPLETENESS_TOLERANCE * scale:
                raise RuntimeError(
                    f"Row {start + index}: the contributions plus the bias differ from the logits by {error:.3g}; "
                    "nothing was written for its part. This is a bug in DecompX: please report it with the row."
                )
            token_ids = ids_cpu[position][real].tolist()
            rows[index] = {
                "tokens": tokenizer.convert_ids_to_tokens(token_ids),
                "input_ids": token_ids,
                "logits": logits[position].tolist(),
                "prediction": int(logits[position].argmax()),
                "attributions": row_attributions.tolist(),
                "bias": bias[position].tolist(),
            }
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


def default_rows_per_part(n_rows: int, world_size: int) -> int:
    """About :data:`PARTS_PER_PROCESS` parts per process, within [MIN_ROWS_PER_PART, MAX_ROWS_PER_PART]."""
    wanted = math.ceil(n_rows / (PARTS_PER_PROCESS * world_size))
    return max(MIN_ROWS_PER_PART, min(MAX_ROWS_PER_PART, wanted))


def _first_error(group: ProcessGroup, local: Optional[str]) -> None:
    """Raise on every rank the first error any rank found (rank order)."""
    errors = group.gather(local)
    for rank, message in enumerate(errors):
        if message is not None:
            raise DatasetAttributionError(message if rank == 0 else f"(rank {rank}) {message}", reported_by=rank)


def attribute_dataset(
    data: Union[str, Path],
    out_dir: Union[str, Path],
    *,
    model: Union[None, str, Path, nn.Module] = None,
    tokenizer: Any = None,
    text_column: Optional[str] = None,
    text_pair_column: Optional[str] = None,
    label_column: Optional[str] = None,
    method: str = "exact",
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    rows_per_part: Optional[int] = None,
    bucket_by_length: bool = True,
    show_progress: bool = True,
    device: Union[None, str, torch.device] = None,
    log: Optional[Callable[[str], None]] = None,
) -> DatasetAttributionResult:
    """Decompose every row of a data file with DecompX into Parquet parts under ``out_dir``.

    Runs as one process, or as every process of a ``torchrun`` job (each takes a disjoint share of
    the parts). Calling it again with the same arguments after a crash computes only the parts that
    are missing or damaged.

    Args:
        data: a ``.tsv``, ``.csv``, ``.jsonl`` or ``.parquet`` file (see
            :func:`captum_decompx.datasets.read_text_table` for the columns).
        out_dir: the output folder (created when missing; refused when it holds another run's parts).
        model: a classifier folder or hub id, None for the demo model, or a loaded
            ``*ForSequenceClassification`` (also wrapped in ``DistributedDataParallel`` or
            ``nn.DataParallel``: its ``.module`` is explained), in eval mode, on its device.
        tokenizer: the tokenizer (required with a loaded model; default: the model folder's).
        text_column: column of the texts (default ``text``, ``sentence`` or ``content``).
        text_pair_column: column of the second texts of sentence pairs.
        label_column: column of integer labels (default ``label`` when present).
        method: ``"exact"`` (biases decomposed; ``bias`` is 0) or ``"fast"`` (bias-free O(N) path;
            ``bias`` holds the biases' share).
        batch_size: rows per DecompX call.
        max_length: truncate longer inputs to this many tokens (default: the model's limit).
        rows_per_part: rows per Parquet part (default: the folder's, or about 8 parts per process).
        bucket_by_length: sort the rows of a part by length before batching (less padding).
        show_progress: a progress bar on rank 0 for the whole job.
        device: where to compute (default ``cuda:LOCAL_RANK`` with CUDA, else the CPU); a loaded
            model stays on its own device.
        log: where rank 0 writes short status lines (default: nowhere).

    Returns:
        A :class:`DatasetAttributionResult`; ``.read_table()`` gives the whole table.

    Raises:
        DatasetAttributionError: a bad row (file and row named), a missing column, an output folder
            written by another run or holding foreign files, bad options. Raised on every rank
            before any part is written.
    """
    began = time.perf_counter()
    if method not in METHODS:
        raise DatasetAttributionError(f"method={method!r} is not valid; choose 'exact' or 'fast'.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise DatasetAttributionError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if rows_per_part is not None and (not isinstance(rows_per_part, int) or rows_per_part < 1):
        raise DatasetAttributionError(f"rows_per_part must be a positive integer, got {rows_per_part!r}.")
    if max_length is not None and (not isinstance(max_length, int) or max_length < 2):
        raise DatasetAttributionError(f"max_length must be an integer of at least 2, got {max_length!r}.")
    group = join_process_group(device)

    def say(message: str) -> None:
        if log is not None and group.is_main:
            log(message)

    try:
        result = _attribute_dataset(
            group,
            began,
            say,
            Path(data).expanduser(),
            Path(out_dir).expanduser(),
            model,
            tokenizer,
            text_column,
            text_pair_column,
            label_column,
            method,
            batch_size,
            max_length,
            rows_per_part,
            bucket_by_length,
            show_progress,
        )
        # Every rank leaves together: none tears the process group down while another still
        # uses it (rank 0 reads and aggregates the parts after the others are done).
        group.barrier()
        return result
    finally:
        group.close()


def _attribute_dataset(
    group: ProcessGroup,
    began: float,
    say: Callable[[str], None],
    data: Path,
    out_dir: Path,
    model_source: Union[None, str, Path, nn.Module],
    tokenizer: Any,
    text_column: Optional[str],
    text_pair_column: Optional[str],
    label_column: Optional[str],
    method: str,
    batch_size: int,
    max_length: Optional[int],
    rows_per_part: Optional[int],
    bucket_by_length: bool,
    show_progress: bool,
) -> DatasetAttributionResult:
    # 1. Every rank reads and checks the input and loads the model; rank 0 checks the output folder.
    error: Optional[str] = None
    table: Optional[TextTable] = None
    model: Optional[nn.Module] = None
    try:
        table = read_text_table(data, text_column, text_pair_column, label_column)
        model, tokenizer, source = _load(model_source, tokenizer, group.device)
        if model.training:
            raise DatasetAttributionError("The model is in training mode: call model.eval() first.")
    except (DataFileError, DatasetAttributionError) as problem:
        error = str(problem)
    _first_error(group, error)
    assert table is not None and model is not None
    limit = max_length if max_length is not None else model_max_length(model, tokenizer)
    schema = output_schema(table.text_pairs is not None, table.labels is not None)
    folder = PartFolder(
        out_dir,
        kind="captum-decompx attribute",
        identity={
            "model": {
                "fingerprint": model_fingerprint(model) if group.is_main else None,
                "type": getattr(model.config, "model_type", None),
            },
            "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer) if group.is_main else None},
            "input": {"sha256": file_fingerprint(table.path) if group.is_main else None, "rows": len(table)},
            "options": {
                "method": method,
                "max_length": limit,
                "text_column": table.text_column,
                "text_pair_column": table.text_pair_column,
                "label_column": table.label_column,
            },
        },
        about={"model": source, "input": str(table.path.resolve())},
        schema=schema,
    )
    layout: Optional[PartLayout] = None
    present: list[int] = []
    if group.is_main:
        try:
            layout = folder.prepare(len(table), rows_per_part, default_rows_per_part(len(table), group.world_size))
            present = folder.present_parts(layout)
        except OutputFolderError as problem:
            error = str(problem)
    _first_error(group, error)
    layout, present = group.broadcast((layout, present))
    assert layout is not None

    # 2. The parts already there are checked (shared over the ranks); damaged ones are deleted.
    mine_to_check = present[group.rank :: group.world_size]
    kept_local, damaged_local = folder.check_parts(layout, mine_to_check)
    checked = group.gather((kept_local, damaged_local))
    kept = sorted(index for local, _ in checked for index in local)
    damaged = {index: reason for _, local in checked for index, reason in local.items()}
    missing = [index for index in range(layout.n_parts) if index not in set(kept)]

    # 3. The missing parts are shared over the ranks, balanced by their texts' lengths.
    exponent = 2 if method == "exact" else 1  # exact DecompX costs O(N^2) per example, fast O(N)
    costs = []
    for index in missing:
        start, end = layout.bounds(index)
        pairs = table.text_pairs[start:end] if table.text_pairs is not None else [""] * (end - start)
        costs.append(sum((len(text) + len(pair) + 8) ** exponent for text, pair in zip(table.texts[start:end], pairs)))
    mine = [missing[i] for i in balance(costs, group.world_size)[group.rank]]
    done_rows = sum(layout.bounds(index)[1] - layout.bounds(index)[0] for index in kept)
    say(
        f"output: {out_dir}: {layout.n_parts} part{'s' if layout.n_parts != 1 else ''} of up to {layout.rows_per_part} rows; {len(kept)} complete"
        + (f", {len(damaged)} damaged (computed again)" if damaged else "")
        + f"; computing {len(table) - done_rows} rows on {group.world_size} process{'es' if group.world_size > 1 else ''}"
    )
    for index, reason in sorted(damaged.items()):
        say(f"  part {layout.file_name(index)}: {reason}; computing it again")

    # 4. Each rank computes and writes its parts.
    explainer = DecompX(_forward(model), model=model, include_biases=method == "exact", algorithm=method)
    truncated = padding = 0
    group.barrier()
    compute_began = time.perf_counter()
    with JobProgress(group, total=len(table), done=done_rows, show=show_progress, description=f"DecompX ({method})") as progress:
        for index in mine:
            start, end = layout.bounds(index)
            part, part_truncated, part_padding = attribute_part(
                explainer,
                tokenizer,
                table,
                start,
                end,
                schema=schema,
                batch_size=batch_size,
                max_length=limit,
                bucket_by_length=bucket_by_length,
                device=next(model.parameters()).device,
                on_batch=progress.add,
            )
            folder.write_part(layout, index, part)
            truncated += part_truncated
            padding += part_padding
        group.barrier()
        compute_seconds = time.perf_counter() - compute_began
        computed = progress.finish()
    totals = group.gather((truncated, padding))
    missing_after = folder.missing_parts(layout) if group.is_main else []
    if missing_after:
        raise RuntimeError(f"Parts {missing_after[:10]} are missing after the run; run the same command again to compute them.")
    result = DatasetAttributionResult(
        out_dir=out_dir,
        rows=len(table),
        parts=layout.n_parts,
        rows_per_part=layout.rows_per_part,
        computed_rows=computed,
        reused_parts=len(kept),
        redone_parts=damaged,
        truncated_rows=sum(t for t, _ in totals),
        world_size=group.world_size,
        seconds=time.perf_counter() - began,
        compute_seconds=compute_seconds,
        padding_positions=sum(p for _, p in totals),
    )
    return result


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

    try:
        result = attribute_dataset(
            args.data,
            args.out,
            model=args.model,
            text_column=args.text_column,
            text_pair_column=args.text_pair_column,
            label_column=args.label_column,
            method=args.method,
            batch_size=args.batch_size,
            max_length=args.max_length,
            rows_per_part=args.rows_per_part,
            bucket_by_length=not args.no_bucketing,
            show_progress=not args.no_progress,
            log=log,
        )
    except DatasetAttributionError as error:
        if int(os.environ.get("RANK", "0")) != error.reported_by:
            return 2  # the reporting rank prints the message once
        raise
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
