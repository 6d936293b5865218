"""Shared fixtures. Builders and constants shared by several test files live in ``tests/support/``
(imported as ``from support.<module> import ...``); fixtures live here.

Why a support package besides this file: ``conftest.py`` is pytest's plugin file, not a module to
import; once the tests live in subfolders with a ``conftest.py`` each, ``from conftest import ...``
would name whichever of them was imported first. Plain functions that tests call with arguments (a
seed, an architecture, a list of lengths) are not fixtures, so they live in ordinary modules.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The models are tiny: one thread avoids thread start-up and contention costs that dominate them.
torch.set_num_threads(1)

# The builders are also importable from here for test files written before tests/support existed.
from support.classifiers import (  # noqa: E402, F401
    ARCHITECTURE_NAMES,
    ARCHITECTURES,
    BATCH_LENGTHS,
    FIRST_REAL_TOKEN,
    HEADS,
    HIDDEN_SIZE,
    INTERMEDIATE_SIZE,
    LAYERS,
    NUM_LABELS,
    SPECIAL_TOKENS,
    VOCAB_SIZE,
    PaddedBatch,
    assert_close_to_scale,
    cached_model,
    make_model,
    make_padded_batch,
    make_word_tokenizer,
    padding_id,
    reinit_parameters,
)
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
