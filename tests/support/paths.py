"""The repository's folders, for test files at any depth under ``tests/``."""

from __future__ import annotations

from pathlib import Path

#: The ``tests/`` folder (this file is ``tests/support/paths.py``).
TESTS = Path(__file__).resolve().parents[1]
#: The repository root: ``README.md``, ``pyproject.toml``, ``benchmarks/``, ``tutorials/``, ``models/``.
REPOSITORY = TESTS.parent
#: Stored test inputs and the authors' reference outputs (``public_refs.pt``).
DATA = TESTS / "data"
#: The benchmark scripts, which the smoke tests import as modules.
BENCHMARKS = REPOSITORY / "benchmarks"
