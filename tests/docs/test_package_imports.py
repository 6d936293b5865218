"""Every import inside the package names something that exists.

Imports inside functions (the lazy imports of plotting, the app and the integrations) run only when
their feature is used, so a module move can leave one pointing at a name that is gone without any
import-time error. This reads every relative import of ``captum_decompx`` and resolves it; a module
whose optional extra is not installed (Gradio, inseq, ...) is skipped with that reason.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "captum_decompx"


def relative_imports() -> list[tuple[str, int, str, str]]:
    """(file, line, module imported from, name) for every ``from .x import name`` in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        package = parts[:-1]  # the package a module (or an __init__) is in
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    found.append((str(path.relative_to(PACKAGE.parent)), node.lineno, module, alias.name))
    return found


def test_every_relative_import_resolves():
    missing, skipped = [], set()
    for file, line, module, name in relative_imports():
        try:
            imported = importlib.import_module(module)
        except ModuleNotFoundError as error:  # an optional extra (gradio, inseq, ...) is not installed
            if error.name and not error.name.startswith("captum_decompx"):
                skipped.add(error.name)
                continue
            raise
        if hasattr(imported, name):
            continue
        try:
            importlib.import_module(f"{module}.{name}")
        except ModuleNotFoundError as error:
            if error.name and not error.name.startswith("captum_decompx"):
                skipped.add(error.name)
                continue
            missing.append(f"{file}:{line}: from {module} import {name}")
    assert not missing, "imports of names that do not exist:\n" + "\n".join(missing)
    assert len(relative_imports()) > 100  # the reader found the package's imports
