"""Read a text classification data set from ``.tsv``, ``.csv``, ``.jsonl`` or ``.parquet``.

:func:`read_text_table` returns every row's text (and second text and label, when asked) in file
order, after checking every row: an empty text, a missing field or a label that is not an integer
raises :class:`DataFileError`, which names the file and the rows (``row`` is the 0-based row index,
the ``id`` of the output tables; text files also give the line number).

Decisions recorded here:

- TSV files are read without quote processing (GLUE's convention: a ``"`` is part of the text);
  CSV files use standard CSV quoting.
- A text column defaults to ``text``, or else to the one of ``sentence`` and ``content`` the file has;
  the label column defaults to ``label`` when the file has one (labels are optional).
- A TSV/CSV row with more fields than the header is refused: the text most likely contained the
  delimiter, and cutting it silently would explain another text.
- Labels must be integers; ``"1"`` and ``1.0`` are read as 1, ``"pos"`` or ``1.5`` are refused.
- Blank lines of a JSONL file are skipped (they are not rows); its columns are the fields of its
  first record.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Union

#: File suffixes read by :func:`read_text_table`.
SUPPORTED_SUFFIXES = (".tsv", ".csv", ".jsonl", ".parquet")
#: Text columns tried, in order, when none is named.
DEFAULT_TEXT_COLUMNS = ("text", "sentence", "content")
DEFAULT_LABEL_COLUMN = "label"
#: How many bad rows an error message lists before it counts the rest.
LISTED_BAD_ROWS = 10


class DataFileError(ValueError):
    """A data file that cannot be read as asked; the message names the file (and the rows)."""


@dataclass
class TextTable:
    """The rows of a data file, in file order.

    Attributes:
        path: the file.
        texts: the text of every row.
        text_pairs: the second text of every row, or None without ``text_pair_column``.
        labels: the integer label of every row, or None without a label column.
        text_column: the column the texts came from.
        text_pair_column: the column of the second texts, or None.
        label_column: the column of the labels, or None.
    """

    path: Path
    texts: list[str]
    text_pairs: Optional[list[str]]
    labels: Optional[list[int]]
    text_column: str
    text_pair_column: Optional[str]
    label_column: Optional[str]

    def __len__(self) -> int:
        return len(self.texts)


@dataclass
class _RawRow:
    index: int
    line: Optional[int]
    values: dict[str, Any]
    problem: Optional[str] = None


def _where(path: Path, row: _RawRow) -> str:
    line = f", line {row.line}" if row.line is not None else ""
    return f"row {row.index}{line}"


def _csv_rows(path: Path, delimiter: str) -> tuple[list[str], Iterator[_RawRow]]:
    handle = open(path, encoding="utf-8", newline="")
    if delimiter == "\t":
        reader = csv.reader(handle, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(handle, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        handle.close()
        raise DataFileError(f"{path} is empty: expected a header row naming the columns, then one row per example.") from None
    header = [name.strip().lstrip("\ufeff") for name in header]

    def rows() -> Iterator[_RawRow]:
        with handle:
            index = 0
            line_before = reader.line_num
            for fields in reader:
                line = line_before + 1
                line_before = reader.line_num
                if not fields:  # a blank line
                    continue
                problem = None
                if len(fields) > len(header):
                    problem = (
                        f"{len(fields)} fields but the header has {len(header)} (does the text contain a "
                        f"{'tab' if delimiter == chr(9) else 'comma'}? quote it, or use .jsonl or .parquet)"
                    )
                yield _RawRow(index, line, dict(zip(header, fields)), problem)
                index += 1

    return header, rows()


def _jsonl_rows(path: Path) -> tuple[list[str], Iterator[_RawRow]]:
    """The rows of a JSONL file; its columns are the fields of its first record."""
    rows: list[_RawRow] = []
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            index = len(rows)
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                rows.append(_RawRow(index, line_number, {}, f"not valid JSON ({error.msg})"))
                continue
            if isinstance(record, dict):
                rows.append(_RawRow(index, line_number, record))
            else:
                rows.append(_RawRow(index, line_number, {}, f"a JSON {type(record).__name__}, not an object with named fields"))
    header = next((list(row.values) for row in rows if row.problem is None), [])
    return header, iter(rows)


def _parquet_rows(path: Path, wanted: list[str]) -> tuple[list[str], Iterator[_RawRow]]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError, ...
        raise DataFileError(f"Cannot read {path} as Parquet: {error}") from error
    header = list(schema.names)
    present = [name for name in wanted if name in header]
    table = pq.read_table(path, columns=present)
    columns = {name: table.column(name).to_pylist() for name in present}

    def rows() -> Iterator[_RawRow]:
        for index in range(table.num_rows):
            yield _RawRow(index, None, {name: values[index] for name, values in columns.items()})

    return header, rows()


def _pick_column(
    path: Path, header: list[str], asked: Optional[str], defaults: tuple[str, ...], option: str, required: bool
) -> Optional[str]:
    """The column to read: the one asked for (checked against the header), or the first default present."""
    if asked is not None:
        if asked not in header:
            raise DataFileError(f"{path} has no column {asked!r}; its columns are: {', '.join(header)}. Pass {option} NAME.")
        return asked
    for name in defaults:
        if name in header:
            return name
    if required:
        raise DataFileError(
            f"{path} has none of the columns {', '.join(defaults)}; its columns are: {', '.join(header)}. Pass {option} NAME."
        )
    return None


def _integer_label(value: Any) -> Optional[int]:
    """``value`` as an int, or None when it is not an integer."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("+-").isdigit():
            return int(text)
    return None


def read_text_table(
    path: Union[str, Path],
    text_column: Optional[str] = None,
    text_pair_column: Optional[str] = None,
    label_column: Optional[str] = None,
) -> TextTable:
    """Read and check every row of a ``.tsv``, ``.csv``, ``.jsonl`` or ``.parquet`` file.

    Args:
        path: the data file; TSV and CSV files start with a header row naming the columns.
        text_column: the column holding the text (default: ``text``, ``sentence`` or ``content``,
            the first the file has).
        text_pair_column: the column holding the second text of sentence pairs (default: none).
        label_column: the column holding integer labels (default: ``label`` when present).

    Returns:
        The rows in file order.

    Raises:
        DataFileError: the file is missing or unreadable, a named column does not exist, or rows
            have an empty text, a missing field or a non-integer label (all such rows are listed,
            by row index and line, up to :data:`LISTED_BAD_ROWS`).
    """
    source = Path(path).expanduser()
    header, rows = _raw_rows(source, [name for name in (text_column, text_pair_column, label_column) if name is not None])
    text_name = _pick_column(source, header, text_column, DEFAULT_TEXT_COLUMNS, "--text-column", required=True)
    assert text_name is not None
    pair_name = _pick_column(source, header, text_pair_column, (), "--text-pair-column", required=False)
    label_name = _pick_column(source, header, label_column, (DEFAULT_LABEL_COLUMN,), "--label-column", required=False)
    table = TextTable(
        source,
        [],
        [] if pair_name is not None else None,
        [] if label_name is not None else None,
        text_name,
        pair_name,
        label_name,
    )
    problems: list[str] = []
    n_bad = 0
    for row in rows:
        issues = [row.problem] if row.problem else _row_issues(row, text_name, pair_name, label_name)
        if issues:
            n_bad += 1
            if len(problems) < LISTED_BAD_ROWS:
                problems.append(f"{_where(source, row)}: {'; '.join(issues)}")
            continue
        table.texts.append(str(row.values[text_name]))
        if table.text_pairs is not None and pair_name is not None:
            table.text_pairs.append(str(row.values[pair_name]))
        if table.labels is not None and label_name is not None:
            label = _integer_label(row.values[label_name])
            assert label is not None
            table.labels.append(label)
    if n_bad:
        raise _bad_rows_error(source, n_bad, problems)
    if not table.texts:
        raise DataFileError(f"{source} has no data rows.")
    return table


def _raw_rows(source: Path, named_columns: list[str]) -> tuple[list[str], Iterator[_RawRow]]:
    """The header and the rows of a data file, by its suffix (a Parquet file: only the columns that may be read)."""
    if not source.is_file():
        raise DataFileError(f"No data file at {source}.")
    suffix = source.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise DataFileError(f"Cannot read {source}: the file name must end in {', '.join(SUPPORTED_SUFFIXES)}.")
    if suffix in (".tsv", ".csv"):
        return _csv_rows(source, "\t" if suffix == ".tsv" else ",")
    if suffix == ".jsonl":
        return _jsonl_rows(source)
    return _parquet_rows(source, named_columns + list(DEFAULT_TEXT_COLUMNS) + [DEFAULT_LABEL_COLUMN])


def _row_issues(row: _RawRow, text_name: str, pair_name: Optional[str], label_name: Optional[str]) -> list[str]:
    """What is wrong with a row that was read: missing or empty texts, a missing or non-integer label."""
    issues = []
    for name, what in ((text_name, "text"), (pair_name, "second text")):
        if name is None:
            continue
        value = row.values.get(name)
        if name not in row.values:
            issues.append(f"no {what} (the field {name!r} is missing)")
        elif value is None or not str(value).strip():
            issues.append(f"an empty {what} in {name!r}")
    if label_name is not None:
        value = row.values.get(label_name)
        if label_name not in row.values or value is None or (isinstance(value, str) and not value.strip()):
            issues.append(f"no label (the field {label_name!r} is missing or empty)")
        elif _integer_label(value) is None:
            issues.append(f"the label {value!r} in {label_name!r} is not an integer")
    return issues


def _bad_rows_error(source: Path, n_bad: int, problems: list[str]) -> DataFileError:
    """The error listing the bad rows (the first :data:`LISTED_BAD_ROWS` of them)."""
    more = f"\n  ... and {n_bad - len(problems)} more" if n_bad > len(problems) else ""
    rows_word = "row" if n_bad == 1 else "rows"
    return DataFileError(
        f"{source}: {n_bad} bad {rows_word} (row = 0-based index of the data rows; nothing was computed):\n  "
        + "\n  ".join(problems)
        + more
        + "\nFix or remove these rows and run the same command again."
    )


__all__ = ["DataFileError", "TextTable", "read_text_table", "SUPPORTED_SUFFIXES"]
