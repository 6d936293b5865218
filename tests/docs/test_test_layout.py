"""The test tree keeps its layout: test files live in the layer folders, and no test file imports
another (shared code comes from ``tests/support/`` and fixtures from ``conftest.py``)."""

from __future__ import annotations

import ast

from support.paths import TESTS

LAYERS = {"contract", "docs", "engine", "integrations", "models", "runs", "views"}


def test_every_test_file_sits_in_a_layer_folder():
    misplaced = [
        str(path.relative_to(TESTS)) for path in TESTS.rglob("test_*.py") if path.relative_to(TESTS).parts[0] not in LAYERS
    ]
    assert misplaced == [], f"move these into one of {sorted(LAYERS)}: {misplaced}"


def test_no_test_file_imports_another_or_conftest():
    offending = []
    for path in TESTS.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                if name.split(".")[0] == "conftest" or name.split(".")[0].startswith("test_"):
                    offending.append(f"{path.relative_to(TESTS)}:{node.lineno} imports {name}")
    assert offending == [], "share code through tests/support/ or conftest fixtures: " + "; ".join(offending)
