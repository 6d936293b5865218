"""Tutorial 8 (vision: a ViT against known object masks, then CLIP) runs from a fresh kernel, and its
stored outputs say what a fresh run says: exact sums, fast = exact without biases, the table."""

from __future__ import annotations

import nbformat
import pytest
from support.notebooks import TUTORIALS, count_outputs, execute, number_after, printed

NAME = "08_vision.ipynb"


def check(notebook) -> None:
    text = printed(notebook)
    assert number_after(text, "accuracy on 64 held-out images:") > 0.8
    assert "attributions: (8, 65)" in text  # the class token, then 64 patches
    assert abs(number_after(text, "largest convergence delta:")) < 1e-4
    assert number_after(text, "fast path against the exact path without biases, largest difference:") < 1e-4
    assert "image side: (2, 17) largest convergence delta" in text and "text side: (2, 5) largest convergence delta" in text
    for line in text.splitlines():
        if "largest convergence delta" in line:
            assert abs(float(line.rsplit(" ", 1)[1])) < 1e-4, line
    assert "matrix: (2, 2, 17, 5)" in text
    assert number_after(text, "matrix sum + bias against the logits, largest difference:") < 1e-4
    assert count_outputs(notebook, "text/markdown") == 1  # the table
    assert count_outputs(notebook, "image/png") == 3  # patches, examples, the CLIP view
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "../models/vit-shapes" in sources and "exact.attribute(pixels, target=labels, return_convergence_delta=True)" in sources


@pytest.mark.slow  # executes a notebook in a fresh kernel
def test_tutorial_8_runs_and_is_exact(monkeypatch):
    check(execute(NAME, monkeypatch))


def test_stored_tutorial_8_says_the_same_and_stays_small():
    notebook = nbformat.read(TUTORIALS / NAME, as_version=4)
    check(notebook)
    assert (TUTORIALS / NAME).stat().st_size < 200_000
    outputs = [output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not any(noise in text for text in outputs for noise in ("UserWarning", "Traceback", "/tmp/", "Loading weights"))
