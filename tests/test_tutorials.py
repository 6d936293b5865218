"""The tutorials run from a fresh kernel, offline, from the ``tutorials/`` folder, and show what they say.

Each notebook is executed with ``nbclient`` in a ``python3`` kernel of this interpreter (the
committed outputs, if any, are discarded first); a cell that raises fails the test. The printed
checks are then read back from the fresh outputs.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbclient  # the dev extra: pip install -e ".[dev]"
import nbformat
import pytest

from captum_decompx.demo import DEMO_MODEL_ENV

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
# A guard against a hung kernel, not a speed requirement.
CELL_TIMEOUT_S = 600


def execute(name: str, monkeypatch) -> nbformat.NotebookNode:
    """Run ``tutorials/<name>`` top to bottom in a fresh kernel, from the tutorials folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(DEMO_MODEL_ENV, raising=False)  # the notebooks find ../models/minilm-sst2
    notebook = nbformat.read(TUTORIALS / name, as_version=4)
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


def test_the_kernel_is_this_interpreter(monkeypatch):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    assert printed(notebook).strip() == sys.prefix


def test_tutorial_1_swaps_integrated_gradients_for_decompx(monkeypatch):
    notebook = execute("01_swap_integrated_gradients.ipynb", monkeypatch)
    text = printed(notebook)
    assert "predicted: positive" in text
    assert abs(number_after(text, "DecompX, convergence delta:")) < 1e-4
    logit = number_after(text, "logit of 'positive':")
    assert number_after(text, "DecompX contributions sum to:") == pytest.approx(logit, abs=1e-3)
    assert count_outputs(notebook, "text/html") >= 1  # Captum's visualize_text
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "LayerIntegratedGradients(predict, model.bert.embeddings)" in sources
    assert "DecompX(predict, model=model)" in sources


def test_tutorial_2_per_class_views(monkeypatch):
    notebook = execute("02_per_class_and_visualization.ipynb", monkeypatch)
    text = printed(notebook)
    assert number_after(text, "largest difference:") < 1e-4
    assert re.search(r"^positive \(0\.\d+\)  a good piece of work", text, re.M)
    assert re.search(r"^negative \(0\.\d+\)  a dull, lifeless", text, re.M)
    assert count_outputs(notebook, "text/html") >= 2  # Captum's view and the per-class page
    assert count_outputs(notebook, "image/png") == 3  # per-class figure and two token maps


def test_tutorial_3_faithfulness_study(monkeypatch):
    notebook = execute("03_faithfulness_study.ipynb", monkeypatch)
    text = printed(notebook)
    assert "24 sentences" in text
    aopc = {name.strip(): float(value) for name, value in re.findall(r"^\s*(.+?): AOPC \(most important masked\) ([\d.]+)", text, re.M)}
    assert set(aopc) == {"DecompX", "Gradient x Input", "random"}
    assert aopc["DecompX"] > aopc["random"]
    assert count_outputs(notebook, "text/markdown") == 1  # the results table
    assert count_outputs(notebook, "image/png") == 1  # the curves


def test_notebooks_use_paths_relative_to_the_tutorials_folder():
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
        assert "/work/" not in source and str(TUTORIALS.parent) not in source, path.name
        assert "../models/minilm-sst2" in source, path.name
