#!/usr/bin/env python
"""Execute the tutorials and store them with their outputs, without noise.

Each notebook runs top to bottom in a fresh ``python3`` kernel of this interpreter, from the
``tutorials/`` folder, offline. The stored copy keeps what a reader should see and drops what only
differs from run to run: no execution timings in the cell metadata, no interpreter version in the
notebook metadata, and progress-bar streams reduced to their final state (what Jupyter shows),
consecutive stream outputs merged.

    python scripts/execute_tutorials.py                  # every tutorial
    python scripts/execute_tutorials.py 02_per_class_and_visualization.ipynb

``tests/docs/test_tutorials.py`` checks that the stored notebooks are executed and clean, and executes
them again.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

import nbclient
import nbformat

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
CELL_TIMEOUT_S = 600


def final_terminal_text(text: str) -> str:
    """What a terminal (and Jupyter) shows of ``text``: on each line, only what follows the last ``\\r``."""
    lines = text.replace("\r\n", "\n").split("\n")
    return "\n".join(line.rsplit("\r", 1)[-1] for line in lines)


def clean_outputs(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Merge consecutive stream outputs of one cell, reduce ``\\r`` updates, drop run-specific metadata."""
    for cell in notebook.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        merged: list = []
        for output in cell.outputs:
            if output.output_type == "stream" and merged and merged[-1].output_type == "stream" and merged[-1].name == output.name:
                merged[-1].text += output.text
            else:
                merged.append(output)
        for output in merged:
            if output.output_type == "stream":
                output.text = re.sub(r"\n{3,}", "\n\n", final_terminal_text(output.text))
        cell.outputs = [output for output in merged if output.output_type != "stream" or output.text.strip()]
    notebook.metadata["language_info"] = {"name": "python"}
    return notebook


def execute(path: Path) -> nbformat.NotebookNode:
    """Run ``path`` in a fresh kernel from the tutorials folder; outputs replace the stored ones."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", record_timing=False,
        resources={"metadata": {"path": str(path.parent)}},
    )
    client.execute()
    return clean_outputs(notebook)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook file names in tutorials/ (default: all)")
    args = parser.parse_args(argv)
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ.pop("CAPTUM_DECOMPX_DEMO_MODEL", None)
    paths = [TUTORIALS / name for name in args.names] or sorted(TUTORIALS.glob("*.ipynb"))
    for path in paths:
        started = time.perf_counter()
        notebook = execute(path)
        nbformat.validate(notebook)
        nbformat.write(notebook, path)
        print(f"{path.name}: executed in {time.perf_counter() - started:.0f} s, {path.stat().st_size / 1024:.0f} KiB stored", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
