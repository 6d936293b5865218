"""Tutorial 5 (DecompX in SHAP and inseq) runs from a fresh kernel, offline, and shows what it says."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("shap", reason="tutorial 5 needs the shap extra: pip install -e '.[shap,inseq]'")
pytest.importorskip("inseq", reason="tutorial 5 needs the inseq extra: pip install -e '.[shap,inseq]'")
from support.notebooks import count_outputs, execute, number_after, printed  # noqa: E402


@pytest.mark.slow  # executes a notebook in a fresh kernel
def test_tutorial_5_shap_and_inseq(monkeypatch):
    notebook = execute("05_shap_and_inseq.ipynb", monkeypatch)
    text = printed(notebook)
    assert "sentence: despite its title , punch-drunk love is never heavy-handed ." in text
    assert re.search(r"^gold: positive, predicted: (positive|negative)$", text, re.M)
    assert number_after(text, "largest difference:") < 1e-4  # SHAP values + base values = logits
    assert number_after(text, "largest step difference:") < 1e-4  # inseq steps = logit step scores
    assert count_outputs(notebook, "image/png") == 2  # waterfall and bar
    html = [
        output["data"]["text/html"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if "text/html" in output.get("data", {})
    ]
    assert any("background: rgba(" in page and "np.float" not in page for page in html)  # the coloured text plot
    assert any("background:rgba(" in page and "np.float" not in page for page in html)  # inseq's coloured heatmap
