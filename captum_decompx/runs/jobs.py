"""The resumable job over Parquet parts that ``captum-decompx attribute`` and ``evaluate --out`` share.

A job reads a data file, computes one Parquet part per range of input rows and writes it to an
output folder (:mod:`captum_decompx.runs.parts`), as one process or as every process of a ``torchrun``
job (:mod:`captum_decompx.runs.distributed`). :func:`run_parts` is the one runner; a job gives it a
:class:`PartJob`: its output folder, how costly a range of rows is, and how to compute one part.

The runner, on every rank:

1. rank 0 checks (or creates) the output folder and lists the parts present;
2. the parts present are checked, shared over the ranks; damaged ones are deleted and reported;
3. the missing parts are dealt out to the ranks, balanced by their cost;
4. each rank computes and writes its parts under one progress bar;
5. every rank's tally is gathered, and rank 0 checks that no part is missing.

An error found by any rank before step 4 (a bad row, a missing column, an output folder of another
run) is raised on every rank as :class:`DatasetAttributionError`, before any part is written.
"""

from __future__ import annotations

import hashlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union

import torch
from torch import nn

from ..adapters.wrappers import unwrap_parallel
from .distributed import JobProgress, ProcessGroup, balance, join_process_group
from .parts import OutputFolderError, PartFolder, PartLayout
from .tables import TextTable, read_text_table

T = TypeVar("T")

#: A new output folder gets about this many parts per process (at least MIN, at most MAX rows each),
#: so that the parts balance over the processes and a resumed run redoes little.
PARTS_PER_PROCESS = 8
MIN_ROWS_PER_PART = 16
MAX_ROWS_PER_PART = 1024


class DatasetAttributionError(ValueError):
    """A problem with the input, the output folder or the options; the message says what to do.

    Attributes:
        reported_by: the rank that found the problem (every rank raises the same error).
    """

    def __init__(self, message: str, reported_by: int = 0) -> None:
        super().__init__(message)
        self.reported_by = reported_by


def default_rows_per_part(n_rows: int, world_size: int) -> int:
    """About :data:`PARTS_PER_PROCESS` parts per process, within [MIN_ROWS_PER_PART, MAX_ROWS_PER_PART]."""
    wanted = math.ceil(n_rows / (PARTS_PER_PROCESS * world_size))
    return max(MIN_ROWS_PER_PART, min(MAX_ROWS_PER_PART, wanted))


def first_error(group: ProcessGroup, local: Optional[str]) -> None:
    """Raise on every rank the first error any rank found (rank order); a collective call."""
    errors = group.gather(local)
    for rank, message in enumerate(errors):
        if message is not None:
            raise DatasetAttributionError(message if rank == 0 else f"(rank {rank}) {message}", reported_by=rank)


def in_process_group(
    device: Union[None, str, torch.device],
    log: Optional[Callable[[str], None]],
    job: Callable[[ProcessGroup, Callable[[str], None]], T],
) -> T:
    """Run ``job(group, say)`` as this process's share of the job, then leave the process group.

    ``say(line)`` writes a status line to ``log`` on rank 0 (and nothing elsewhere). Every rank
    leaves together: none tears the process group down while another still uses it (rank 0 reads
    and aggregates the parts after the others are done).
    """
    group = join_process_group(device)

    def say(message: str) -> None:
        if log is not None and group.is_main:
            log(message)

    try:
        result = job(group, say)
        group.barrier()
        return result
    finally:
        group.close()


@dataclass(frozen=True)
class Columns:
    """The columns of a data file to read (None: the default, see :func:`~captum_decompx.runs.tables.read_text_table`)."""

    text: Optional[str] = None
    text_pair: Optional[str] = None
    label: Optional[str] = None

    def read(self, data: Path) -> TextTable:
        """Read and check every row of ``data``."""
        return read_text_table(data, self.text, self.text_pair, self.label)


@dataclass(frozen=True)
class JobInputs:
    """What a dataset job starts from, as the caller gave it.

    Attributes:
        data: the data file; columns: which of its columns to read.
        out_dir: the output folder.
        model: a classifier folder or hub id, None for the demo model, or a loaded classifier.
        tokenizer: the tokenizer (required with a loaded model), or None.
    """

    data: Path
    columns: Columns
    out_dir: Path
    model: Any
    tokenizer: Any

    def load(
        self, group: ProcessGroup, prepare: Callable[[TextTable, nn.Module, Any], T]
    ) -> tuple[TextTable, nn.Module, Any, str, T]:
        """Every rank reads and checks the data, loads the model and calls ``prepare(table, model,
        tokenizer)`` (a job's own checks and set-up); the first error any rank found
        (:class:`DataFileError`, :class:`DatasetAttributionError`, or another ``ValueError`` of
        ``prepare``) is raised on every rank.

        Returns:
            The table, the model (unwrapped, in eval mode), its tokenizer, a description of the
            model's source, and what ``prepare`` returned.
        """
        error: Optional[str] = None
        loaded: Optional[tuple[TextTable, nn.Module, Any, str, T]] = None
        try:
            table = self.columns.read(self.data)
            model, tokenizer, source = load_classifier(self.model, self.tokenizer, group.device)
            if model.training:
                raise DatasetAttributionError("The model is in training mode: call model.eval() first.")
            loaded = (table, model, tokenizer, source, prepare(table, model, tokenizer))
        except ValueError as problem:  # DataFileError and DatasetAttributionError included
            error = str(problem)
        first_error(group, error)
        assert loaded is not None
        return loaded


# --------------------------------------------------------------------------------------------
# What a run is: model, tokenizer, input


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


def run_identity(
    group: ProcessGroup, model: nn.Module, tokenizer: Any, data: Path, rows: int, options: dict[str, Any]
) -> dict[str, Any]:
    """What must be the same for a run to continue an output folder (see :class:`PartFolder`).

    The fingerprints are computed on rank 0 only (the rank that compares them); ``rows`` is the
    number of input rows the run covers.
    """
    return {
        "model": {
            "fingerprint": model_fingerprint(model) if group.is_main else None,
            "type": getattr(model.config, "model_type", None),
        },
        "tokenizer": {"fingerprint": tokenizer_fingerprint(tokenizer) if group.is_main else None},
        "input": {"sha256": file_fingerprint(data) if group.is_main else None, "rows": rows},
        "options": options,
    }


def load_classifier(model: Union[None, str, Path, nn.Module], tokenizer: Any, device: torch.device) -> tuple[nn.Module, Any, str]:
    """The model (float32 when loaded here, on ``device``), its tokenizer and a description of the source.

    Raises:
        DatasetAttributionError: a loaded model without its tokenizer, or a model that cannot be loaded.
    """
    if isinstance(model, nn.Module):
        if tokenizer is None:
            raise DatasetAttributionError(
                "Pass the model's tokenizer too: attribute_dataset(data, out_dir, model=model, tokenizer=tokenizer)."
            )
        unwrapped = unwrap_parallel(model)
        return unwrapped, tokenizer, type(unwrapped).__name__
    from transformers.utils import logging as hf_logging

    from ..demo import DemoError
    from ..demo import load_classifier as load_demo_classifier

    hf_logging.set_verbosity_error()
    try:
        classifier = load_demo_classifier(model)
    except DemoError as error:
        raise DatasetAttributionError(str(error)) from error
    return classifier.model.to(device), tokenizer if tokenizer is not None else classifier.tokenizer, classifier.source


# --------------------------------------------------------------------------------------------
# The runner


@dataclass
class PartJob:
    """What :func:`run_parts` needs from one kind of job.

    Attributes:
        folder: the output folder (its manifest identity and part schema).
        n_rows: input rows the job covers.
        rows_per_part: asked for by the user, or None for the folder's (a new folder: the default).
        unit: what a row is called in status lines (``"rows"``, ``"examples"``).
        cost: the relative cost of computing rows ``[start, end)``, to balance the ranks.
        compute: computes rows ``[start, end)``; calls ``progress(units)`` as it goes and returns the
            part (a ``pyarrow.Table``) and a tally of this part (anything picklable, or None).
        work: the status line's description of ``rows`` rows still to do (``"computing 40 rows"``).
        progress_per_row: progress units per row (e.g. one per attribution method).
        description: the progress bar's label.
        show_progress: show the progress bar (on rank 0).
    """

    folder: PartFolder
    n_rows: int
    rows_per_part: Optional[int]
    unit: str
    cost: Callable[[int, int], float]
    compute: Callable[[int, int, Callable[[int], None]], tuple[Any, Any]]
    work: Callable[[int], str]
    progress_per_row: int = 1
    description: str = "DecompX"
    show_progress: bool = True


@dataclass
class PartsRun:
    """What :func:`run_parts` did, the same on every rank but ``tallies``' order of collection.

    Attributes:
        layout: the part layout.
        kept: the parts found complete and kept.
        damaged: the damaged parts found, deleted and computed again, with the reason.
        computed: progress units computed by this run (all processes).
        compute_seconds: wall time of the computing phase, until the slowest rank finished.
        tallies: the tallies that ``compute`` returned, of every rank's parts.
    """

    layout: PartLayout
    kept: list[int]
    damaged: dict[int, str]
    computed: int
    compute_seconds: float
    tallies: list[Any]


def _rows_in(layout: PartLayout, parts: list[int]) -> int:
    """Input rows in ``parts``."""
    return sum(layout.bounds(index)[1] - layout.bounds(index)[0] for index in parts)


def _prepare_folder(group: ProcessGroup, job: PartJob) -> tuple[PartLayout, list[int]]:
    """Rank 0 checks (or creates) the folder; every rank gets the layout and the parts present."""
    error: Optional[str] = None
    layout: Optional[PartLayout] = None
    present: list[int] = []
    if group.is_main:
        try:
            layout = job.folder.prepare(job.n_rows, job.rows_per_part, default_rows_per_part(job.n_rows, group.world_size))
            present = job.folder.present_parts(layout)
        except OutputFolderError as problem:
            error = str(problem)
    first_error(group, error)
    layout, present = group.broadcast((layout, present))
    assert layout is not None
    return layout, present


def _check_present(group: ProcessGroup, job: PartJob, layout: PartLayout, present: list[int]) -> tuple[list[int], dict[int, str]]:
    """The parts present that read back whole (checked by the ranks in turn); damaged ones are deleted."""
    kept_local, damaged_local = job.folder.check_parts(layout, present[group.rank :: group.world_size])
    checked = group.gather((kept_local, damaged_local))
    kept = sorted(index for local, _ in checked for index in local)
    damaged = {index: reason for _, local in checked for index, reason in local.items()}
    return kept, dict(sorted(damaged.items()))


def _plural(count: int, word: str, plural: str) -> str:
    return word if count == 1 else plural


def _report_plan(
    job: PartJob,
    say: Callable[[str], None],
    layout: PartLayout,
    kept: list[int],
    damaged: dict[int, str],
    todo: int,
    world_size: int,
) -> None:
    say(
        f"output: {job.folder.path}: {layout.n_parts} {_plural(layout.n_parts, 'part', 'parts')} of up to "
        f"{layout.rows_per_part} {job.unit}; {len(kept)} complete"
        + (f", {len(damaged)} damaged (computed again)" if damaged else "")
        + f"; {job.work(todo)} on {world_size} {_plural(world_size, 'process', 'processes')}"
    )
    for index, reason in damaged.items():
        say(f"  part {layout.file_name(index)}: {reason}; computing it again")


def run_parts(group: ProcessGroup, job: PartJob, say: Callable[[str], None]) -> PartsRun:
    """Compute the parts of ``job`` that are missing or damaged in its output folder (see the module docstring).

    Every rank of ``group`` calls it with the same job.

    Args:
        group: the job's processes.
        job: the output folder and the per-job hooks.
        say: writes a status line (call it on every rank; it writes on rank 0).

    Returns:
        What was done (see :class:`PartsRun`).

    Raises:
        DatasetAttributionError: on every rank, the output folder cannot be used for this run.
        RuntimeError: on rank 0, parts are missing after the run.
    """
    layout, present = _prepare_folder(group, job)
    kept, damaged = _check_present(group, job, layout, present)
    complete = set(kept)
    missing = [index for index in range(layout.n_parts) if index not in complete]
    costs = [job.cost(*layout.bounds(index)) for index in missing]
    mine = [missing[i] for i in balance(costs, group.world_size)[group.rank]]
    done_rows = _rows_in(layout, kept)
    _report_plan(job, say, layout, kept, damaged, job.n_rows - done_rows, group.world_size)
    tallies: list[Any] = []
    group.barrier()
    compute_began = time.perf_counter()
    scale = job.progress_per_row
    with JobProgress(
        group, total=job.n_rows * scale, done=done_rows * scale, show=job.show_progress, description=job.description
    ) as progress:
        for index in mine:
            part, tally = job.compute(*layout.bounds(index), progress.add)
            job.folder.write_part(layout, index, part)
            tallies.append(tally)
        group.barrier()
        compute_seconds = time.perf_counter() - compute_began
        computed = progress.finish()
    gathered = group.gather(tallies)
    missing_after = job.folder.missing_parts(layout) if group.is_main else []
    if missing_after:
        raise RuntimeError(f"Parts {missing_after[:10]} are missing after the run; run the same command again to compute them.")
    return PartsRun(layout, kept, damaged, computed, compute_seconds, [tally for local in gathered for tally in local])


def report_on_one_rank(run: Callable[[], T]) -> Union[T, int]:
    """``run()``; a :class:`DatasetAttributionError` is raised only on the rank that reports it.

    Every rank of a failed job raises the same error; the others return the exit status 2, so that
    the message is printed once.
    """
    try:
        return run()
    except DatasetAttributionError as error:
        if int(os.environ.get("RANK", "0")) != error.reported_by:
            return 2
        raise


__all__ = [
    "Columns",
    "DatasetAttributionError",
    "JobInputs",
    "PartJob",
    "PartsRun",
    "default_rows_per_part",
    "first_error",
    "in_process_group",
    "load_classifier",
    "report_on_one_rank",
    "run_identity",
    "run_parts",
]
