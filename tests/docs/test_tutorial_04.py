"""Tutorial 4 (question answering and token classification) runs from a fresh kernel and is exact."""

from __future__ import annotations

import re

import pytest
from support.notebooks import count_outputs, execute, printed


@pytest.mark.slow  # executes a notebook in a fresh kernel
def test_tutorial_4_question_answering_and_ner(monkeypatch):
    notebook = execute("04_question_answering_and_ner.ipynb", monkeypatch)
    text = printed(notebook)
    for name in ("start", "end"):
        line = re.search(
            rf"^{name}: forward output ([-+][\d.]+), sum of the contributions ([-+][\d.]+), convergence delta (\S+)$", text, re.M
        )
        assert line, f"{name} line not printed"
        assert abs(float(line.group(1)) - float(line.group(2))) <= 2e-6
        assert abs(float(line.group(3))) < 1e-4
    line = re.search(r"^start logit at position 3: ([-+][\d.]+), sum of the contributions ([-+][\d.]+)$", text, re.M)
    assert line and abs(float(line.group(1)) - float(line.group(2))) <= 2e-6
    line = re.search(
        r"^explained: \S+ at position \d+ \(london\), logit ([-+][\d.]+), sum of the contributions ([-+][\d.]+), convergence delta (\S+)$",
        text,
        re.M,
    )
    assert line, "the token-classification line was not printed"
    assert abs(float(line.group(1)) - float(line.group(2))) <= 2e-6
    assert abs(float(line.group(3))) < 1e-4
    assert "random head" in text
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "DecompX(squad_pos_forward_func, model=model)" in sources
    assert "additional_forward_args=(token_type_ids, position_ids, attention_mask, 0)" in sources
    assert count_outputs(notebook, "text/html") >= 2  # visualize_text and the position page
    assert count_outputs(notebook, "image/png") == 1  # the position figure
