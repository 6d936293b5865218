"""An output folder of Parquet parts that together form one table, written so that a run can resume.

The folder holds ``part-NNNNN.parquet`` files, each covering a fixed range of input rows, and
``.manifest.json``, which records what produced them (model, options, input fingerprint) and the
part layout. ``pyarrow.parquet.read_table(DIR)`` and ``datasets.load_dataset("parquet",
data_dir=DIR)`` read the parts as one table: both skip hidden files (``datasets`` would try to read
any other file as Parquet), which is why the manifest and the temporary files start with ``.``.

Decisions recorded here:

- A part is written to a temporary file next to it (``.part-NNNNN.parquet.tmp-HOST-PID``), flushed
  to disk, then renamed: a reader or a resumed run sees a whole part or none. Temporary files left by
  a killed run are removed before a run starts.
- A resumed run keeps a part only when it reads back whole: Parquet page checksums verified (parts
  are written with them), the expected columns, the expected number of rows and exactly the
  expected ids. Anything else is deleted and computed again.
- The manifest is compared field by field; any difference in the model, the options or the input
  refuses the run with a message listing what differs. The part layout (rows per part) is part of
  the manifest, so a resumed run uses the same parts whatever its number of processes.
- A folder holding files this module did not write is refused: the parts must stay readable as one
  table.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

MANIFEST_FILE = ".manifest.json"
MANIFEST_VERSION = 1
_PART_NAME = re.compile(r"^part-(\d+)\.parquet$")
_TEMP_NAME = re.compile(r"^\.(part-\d+\.parquet|\.manifest\.json)\.tmp-")


class OutputFolderError(ValueError):
    """An output folder that cannot be used for this run; the message says why and what to do."""


@dataclass(frozen=True)
class PartLayout:
    """Which input rows each part holds: part ``i`` holds ids ``[i * rows_per_part, (i + 1) * rows_per_part)``.

    Attributes:
        n_rows: rows of the whole table.
        rows_per_part: rows of every part but possibly the last.
    """

    n_rows: int
    rows_per_part: int

    @property
    def n_parts(self) -> int:
        return -(-self.n_rows // self.rows_per_part)

    def bounds(self, index: int) -> tuple[int, int]:
        """The ids ``[start, end)`` of part ``index``."""
        start = index * self.rows_per_part
        return start, min(start + self.rows_per_part, self.n_rows)

    def file_name(self, index: int) -> str:
        return f"part-{index:05d}.parquet"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: value}


def _write_atomically(path: Path, write: Any) -> None:
    """``write(temporary_path)``, flush it to disk, then rename it to ``path``."""
    temporary = path.with_name(f".{path.name}.tmp-{socket.gethostname()}-{os.getpid()}")
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


class PartFolder:
    """An output folder of Parquet parts plus a manifest.

    Args:
        path: the folder (created when missing).
        kind: what the parts hold (e.g. ``"attributions"``); a folder of another kind is refused.
        identity: what must be the same for a run to continue this folder: the model's, the
            options' and the input's fingerprints, as nested dicts of JSON values.
        about: descriptive values recorded in the manifest but not compared (paths, versions).
        schema: the ``pyarrow.Schema`` of every part, or None to check only the column names.
        columns: the column names of every part (default: the schema's).
        id_column: the column holding the input row index.
        rows_per_id: rows per input row (e.g. one per attribution method).
    """

    def __init__(
        self,
        path: Union[str, Path],
        kind: str,
        identity: dict[str, Any],
        about: dict[str, Any],
        schema: Any = None,
        *,
        columns: Optional[Sequence[str]] = None,
        id_column: str = "id",
        rows_per_id: int = 1,
    ) -> None:
        self.path = Path(path).expanduser()
        self.kind = kind
        self.identity = identity
        self.about = about
        self.schema = schema
        self.columns = list(columns) if columns is not None else [field.name for field in schema]
        self.id_column = id_column
        self.rows_per_id = rows_per_id

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST_FILE

    # ----------------------------------------------------------------------------------------
    # Before the run (rank 0)

    def prepare(self, n_rows: int, rows_per_part: Optional[int], default_rows_per_part: int) -> PartLayout:
        """Check (or create) the folder and its manifest and remove temporary files of killed runs.

        Args:
            n_rows: rows of the input.
            rows_per_part: asked for by the user, or None to use the manifest's (a new folder:
                ``default_rows_per_part``).
            default_rows_per_part: the layout of a new folder when none is asked for.

        Returns:
            The part layout.

        Raises:
            OutputFolderError: the path is a file; the folder holds foreign files, or parts without
                a manifest; or the manifest records another model, options, input or layout.
        """
        if self.path.exists() and not self.path.is_dir():
            raise OutputFolderError(f"--out {self.path} is a file; pass a folder (it is created when missing).")
        self.path.mkdir(parents=True, exist_ok=True)
        names = sorted(entry.name for entry in self.path.iterdir())
        foreign = [name for name in names if name != MANIFEST_FILE and not _PART_NAME.match(name) and not _TEMP_NAME.match(name)]
        if foreign:
            listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
            raise OutputFolderError(
                f"The output folder {self.path} holds files this command did not write ({listed}); the parts "
                "must be alone to be read as one table. Pass an empty or new folder to --out."
            )
        for name in names:
            if _TEMP_NAME.match(name):
                (self.path / name).unlink(missing_ok=True)
        parts = [name for name in names if _PART_NAME.match(name)]
        if not self.manifest_path.exists():
            if parts:
                raise OutputFolderError(
                    f"The output folder {self.path} holds {len(parts)} parts but no {MANIFEST_FILE}, so what produced "
                    "them is unknown. Pass an empty or new folder to --out, or delete the parts."
                )
            layout = PartLayout(n_rows, rows_per_part or default_rows_per_part)
            self._write_manifest(layout)
            return layout
        manifest = self._read_manifest()
        recorded_layout = manifest.get("layout", {})
        layout = PartLayout(n_rows, int(rows_per_part or recorded_layout.get("rows_per_part", default_rows_per_part)))
        differences = self._differences(manifest, layout)
        if differences:
            raise OutputFolderError(
                f"The output folder {self.path} was written by another run; it differs in:\n  "
                + "\n  ".join(differences)
                + "\nRun the same command as before to resume it, or pass a new folder to --out (or delete this one) to start over."
            )
        return layout

    def _read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise OutputFolderError(
                f"Cannot read {self.manifest_path} ({error}). Pass a new folder to --out, or delete this one to start over."
            ) from error
        if not isinstance(manifest, dict):
            raise OutputFolderError(f"{self.manifest_path} is not a manifest of captum-decompx. Pass a new folder to --out.")
        return manifest

    def _differences(self, manifest: dict[str, Any], layout: PartLayout) -> list[str]:
        if manifest.get("kind") != self.kind:
            return [f"what it holds: {manifest.get('kind')!r}, not {self.kind!r}"]
        if manifest.get("version") != MANIFEST_VERSION:
            return [f"manifest version: {manifest.get('version')!r}, not {MANIFEST_VERSION}"]
        recorded = _flatten(manifest.get("identity", {}))
        recorded.update({f"layout.{key}": value for key, value in manifest.get("layout", {}).items()})
        current = _flatten(self.identity)
        current.update({"layout.rows_per_part": layout.rows_per_part, "layout.n_rows": layout.n_rows})
        about = _flatten(manifest.get("about", {}))
        lines = []
        for key in sorted(set(recorded) | set(current)):
            if recorded.get(key) != current.get(key):
                lines.append(f"{key}: recorded {recorded.get(key)!r}, this run {current.get(key)!r}")
        if lines and about:
            lines.append("(the recorded run: " + ", ".join(f"{key} {value}" for key, value in about.items()) + ")")
        return lines

    def _write_manifest(self, layout: PartLayout) -> None:
        manifest = {
            "kind": self.kind,
            "version": MANIFEST_VERSION,
            "identity": self.identity,
            "layout": {"n_rows": layout.n_rows, "rows_per_part": layout.rows_per_part},
            "about": self.about,
            "columns": self.columns,
        }
        text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
        _write_atomically(self.manifest_path, lambda temporary: temporary.write_text(text, encoding="utf-8"))

    def present_parts(self, layout: PartLayout) -> list[int]:
        """Indices of the part files present (not yet checked)."""
        present = []
        for entry in self.path.iterdir():
            match = _PART_NAME.match(entry.name)
            if match and int(match.group(1)) < layout.n_parts and entry.name == layout.file_name(int(match.group(1))):
                present.append(int(match.group(1)))
        return sorted(present)

    # ----------------------------------------------------------------------------------------
    # Parts

    def check_part(self, layout: PartLayout, index: int) -> Optional[str]:
        """Why part ``index`` cannot be kept (None when it reads back whole and right)."""
        import pyarrow.parquet as pq

        start, end = layout.bounds(index)
        path = self.path / layout.file_name(index)
        try:
            table = pq.read_table(path, page_checksum_verification=True)
        except Exception as error:  # truncated, corrupt, not Parquet: pyarrow raises several types
            return f"unreadable ({str(error).splitlines()[0] if str(error) else type(error).__name__})"
        if self.schema is not None and not table.schema.remove_metadata().equals(self.schema.remove_metadata()):
            return "other columns than this run writes"
        if sorted(table.schema.names) != sorted(self.columns):
            return "other columns than this run writes"
        expected = (end - start) * self.rows_per_id
        if table.num_rows != expected:
            return f"{table.num_rows} rows instead of {expected}"
        ids = np.sort(table.column(self.id_column).to_numpy())
        if not np.array_equal(ids, np.repeat(np.arange(start, end), self.rows_per_id)):
            return f"not exactly the ids {start}..{end - 1}"
        return None

    def check_parts(self, layout: PartLayout, indices: Sequence[int]) -> tuple[list[int], dict[int, str]]:
        """Check parts; delete the damaged ones.

        Returns:
            The indices of the parts kept, and the damaged ones with the reason.
        """
        kept, damaged = [], {}
        for index in indices:
            reason = self.check_part(layout, index)
            if reason is None:
                kept.append(index)
            else:
                damaged[index] = reason
                (self.path / layout.file_name(index)).unlink(missing_ok=True)
        return kept, damaged

    def write_part(self, layout: PartLayout, index: int, table: Any) -> Path:
        """Write part ``index`` atomically (temporary file, flush, rename), with page checksums."""
        import pyarrow.parquet as pq

        start, end = layout.bounds(index)
        expected = (end - start) * self.rows_per_id
        if table.num_rows != expected:
            raise RuntimeError(f"Part {index} has {table.num_rows} rows, expected {expected}; nothing was written.")
        path = self.path / layout.file_name(index)
        if self.schema is not None:
            table = table.cast(self.schema)
        _write_atomically(path, lambda temporary: pq.write_table(table, temporary, write_page_checksum=True))
        return path

    def missing_parts(self, layout: PartLayout) -> list[int]:
        """Indices of the parts not present in the folder."""
        present = set(self.present_parts(layout))
        return [index for index in range(layout.n_parts) if index not in present]

    def read(self) -> Any:
        """The whole table (``pyarrow.Table``), sorted by id."""
        import pyarrow.parquet as pq

        return pq.read_table(self.path).sort_by(self.id_column)


__all__ = ["MANIFEST_FILE", "OutputFolderError", "PartFolder", "PartLayout"]
