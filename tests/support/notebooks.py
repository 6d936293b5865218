"""Running the tutorial notebooks in a fresh kernel and reading back what they printed and showed."""

from __future__ import annotations

import re
from typing import Optional

import nbclient  # the dev extra: pip install -e ".[dev]"
import nbformat

from captum_decompx.demo import DEMO_MODEL_ENV
from support.paths import REPOSITORY

TUTORIALS = REPOSITORY / "tutorials"


# A guard against a hung kernel, not a speed requirement.
CELL_TIMEOUT_S = 600


def execute(name: str, monkeypatch, smaller: Optional[dict[str, str]] = None) -> nbformat.NotebookNode:
    """Run ``tutorials/<name>`` top to bottom in a fresh kernel, from the tutorials folder.

    ``smaller``: source text -> replacement, each found in the notebook, for a run with smaller
    settings (fewer samples or steps of the slow baselines) than the stored one.
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(DEMO_MODEL_ENV, raising=False)  # the notebooks find ../models/minilm-sst2
    notebook = nbformat.read(TUTORIALS / name, as_version=4)
    for original, replacement in (smaller or {}).items():
        cells = [cell for cell in notebook.cells if cell.cell_type == "code" and original in cell.source]
        assert cells, f"{name} has no {original!r} to make smaller"
        for cell in cells:
            cell.source = cell.source.replace(original, replacement)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(TUTORIALS)}},
    )
    client.execute()
    return notebook


def printed(notebook) -> str:
    """Everything the code cells printed to stdout."""
    return "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "stream" and output.name == "stdout"
    )


def count_outputs(notebook, mime: str) -> int:
    return sum(
        mime in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type in ("display_data", "execute_result")
    )


def number_after(text: str, prefix: str) -> float:
    match = re.search(re.escape(prefix) + r"\s*([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)", text)
    assert match, f"{prefix!r} not printed"
    return float(match.group(1))
